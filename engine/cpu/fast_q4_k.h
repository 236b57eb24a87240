/* Q4_K against MX_ACT_Q8K on the fast path, as fast_q4_0.h does Q4_0:
 * one fp32 chain per output, super-block by super-block (kernels.h), with
 * 4 rows (decode) or 16 tokens (prefill) in the lanes of a register.
 *
 * - decode: each row's super-block gives one integer vector, its lanes
 *   0-7 the scaled level x value sums (as the other K-quant kernels make
 *   them), its lanes 8-15 min x the token's sums of each sub-block; a
 *   transposing sum then gives 4 rows' S and M at once. 4 rows, not 16
 *   as Q4_0: 16 streams of 144-byte steps ran decode of the b1 model 10%
 *   slower (Zen 5, 2 threads) than 4, read row after row;
 * - prefill: a tile's rows unpacked on the stack (levels, scales, mins
 *   and what the values' + 128 add), each 4 levels broadcast against 16
 *   tokens' values; a sub-block's sums are scaled once per 32 values
 *   with an integer multiply.
 *
 * Integer sums are exact; the float steps are the scalar kernel's, in
 * its order, so every instruction set, tile and batch gives the same
 * bits. */

/* ---- decode: rows in the lanes ---------------------------------------------------------- */

/* One row's super-block against a token's 4 chunks of values x and its
 * sub-block sums bs (int32): lanes 0-7 sum to S, lanes 8-15 to M. */
static inline vi q4_k_row_sums(const mx_block_q4_k *b, const vb x[4], __m256i bs) {
        __m128i sc, m;
        kmin_ints(b->scales, &sc, &m);
        vi v = vi_zero();
        UNROLL for (int c = 0; c < 4; c++)
                v = vi_dpwssd(v, vi_maddubs(vb_nibbles(b->qs + 32 * c), x[c]), vi_pair16(sc, 2 * c));
        return vi_join8(vi_fold8(v), _mm256_mullo_epi32(_mm256_cvtepu16_epi32(m), bs));
}

typedef mx_block_q4_k q4_k_block;

static inline void q4_k_scales(const mx_block_q4_k *b, uint16_t *d, uint16_t *dmin) {
        *d = b->d, *dmin = b->dmin;
}

static inline void q4_k_token(const uint8_t *xt, uint64_t K, uint64_t sb, vb x[4], __m256i *bs) {
        UNROLL for (int c = 0; c < 4; c++) x[c] = vb_load(xt + 256 * sb + 64 * c);
        *bs = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(mx_act_bsums(xt, K) + 16 * sb)),
                                _mm256_set1_epi16(1));
}

/* ---- prefill: tokens in the lanes ------------------------------------------------------- */

/* A row's super-block unpacked: 256 unsigned levels (as signed bytes),
 * the sub-blocks' scales and pairs of mins (int16 each), -128 x the
 * scaled sum of the levels (what the values' + 128 add), d and -dmin. */
typedef struct q4_k_unpacked {
        int8_t u[256];
        int32_t sc[8], mp[4], c;
        float d, nd;
        int32_t pad;
} q4_k_unpacked;

static inline int32_t sum_bytes(__m256i v) {
        return sum_bytes16(_mm256_castsi256_si128(v)) + sum_bytes16(_mm256_extracti128_si256(v, 1));
}

static void q4_k_unpack(const uint8_t *row, uint64_t nsb, q4_k_unpacked *u) {
        const __m256i f = _mm256_set1_epi8(0x0f);
        for (uint64_t sb = 0; sb < nsb; sb++) {
                const mx_block_q4_k *b = (const mx_block_q4_k *)row + sb;
                q4_k_unpacked *o = u + sb;
                __m128i sc, m;
                uint16_t m16[8];
                kmin_ints(b->scales, &sc, &m);
                _mm256_storeu_si256((__m256i *)o->sc, _mm256_cvtepu16_epi32(sc));
                _mm_storeu_si128((__m128i *)m16, m);
                int32_t c = 0;
                for (int p = 0; p < 4; p++)
                        o->mp[p] = (int32_t)(m16[2 * p] | (uint32_t)m16[2 * p + 1] << 16);
                for (int ch = 0; ch < 4; ch++) {
                        __m256i v = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * ch));
                        __m256i lo = _mm256_and_si256(v, f), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), f);
                        _mm256_storeu_si256((__m256i *)(o->u + 64 * ch), lo);
                        _mm256_storeu_si256((__m256i *)(o->u + 64 * ch + 32), hi);
                        c += o->sc[2 * ch] * sum_bytes(lo) + o->sc[2 * ch + 1] * sum_bytes(hi);
                }
                o->c = -128 * c, o->d = f16c(b->d), o->nd = -f16c(b->dmin);
        }
}

/* The mins' step: M from the group's sums of each 32 values. */
static inline vf q4_k_min_step(const q4_k_unpacked *u, const uint8_t *xs, vf dx, vf F) {
        vi M = vi_zero();
        UNROLL for (int p = 0; p < 4; p++)
                M = vi_dpwssd(M, vb_load(xs + 64 * 64 + MX_ACT_GROUP * 4 + 64 * p), vi_set1(u->mp[p]));
        return vf_fma(vf_mul(vf_set1(u->nd), dx), vf_cvt(M), F);
}

DEFINE_K_KERNELS(q4_k, Q4_K_R, 8, 1)
