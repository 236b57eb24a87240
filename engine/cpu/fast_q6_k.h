/* Q6_K against MX_ACT_Q8K on the fast path, as fast_q4_k.h does Q4_K:
 * one fp32 chain per output, super-block by super-block (kernels.h), with
 * 4 rows (decode) or 16 tokens (prefill) in the lanes of a register.
 * The levels' offset of -32 is taken out in integers: in decode as 32 x
 * the scaled sums of each 16 values (the activations' bs), in prefill in
 * the signed levels themselves. Integer sums are exact and the float
 * steps the scalar kernel's, so every instruction set, tile and batch
 * gives the same bits. */

/* ---- decode: rows in the lanes ---------------------------------------------------------- */

/* One row's super-block against a token's 4 chunks of values x and its
 * sums of each 16 values bs16: lanes 0-7 sum to S (lanes 8-15 zero). */
static inline vi q6_k_row_sums(const mx_block_q6_k *b, const vb x[4], __m256i bs16) {
        kw W = {.blk = b};
        int16_t s16[16];
        __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
        _mm256_storeu_si256((__m256i *)s16, sc);
        vi v = vi_zero();
        UNROLL for (int c = 0; c < 4; c++)
                v = vi_dpwssd(v, vi_maddubs(q6_k_u(&W, c), x[c]), vi_quarters16(s16 + 4 * c));
        __m256i off = _mm256_madd_epi16(_mm256_slli_epi16(sc, 5), bs16);
        return vi_join8(_mm256_sub_epi32(vi_fold8(v), off), _mm256_setzero_si256());
}

typedef mx_block_q6_k q6_k_block;

static inline void q6_k_scales(const mx_block_q6_k *b, uint16_t *d, uint16_t *dmin) {
        *d = b->d, *dmin = 0;
}

static inline void q6_k_token(const uint8_t *xt, uint64_t K, uint64_t sb, vb x[4], __m256i *bs16) {
        UNROLL for (int c = 0; c < 4; c++) x[c] = vb_load(xt + 256 * sb + 64 * c);
        *bs16 = _mm256_loadu_si256((const __m256i *)(mx_act_bsums(xt, K) + 16 * sb));
}

/* ---- prefill: tokens in the lanes ------------------------------------------------------- */

/* A row's super-block unpacked: 256 levels q - 32, the sub-blocks'
 * scales, -128 x the scaled sum of the levels (what the values' + 128
 * add), and d. */
typedef struct q6_k_unpacked {
        int8_t u[256];
        int32_t sc[16], c;
        float d;
        int32_t pad[2];
} q6_k_unpacked;

static void q6_k_unpack(const uint8_t *row, uint64_t nsb, q6_k_unpacked *u) {
        const __m128i k32 = _mm_set1_epi8(32);
        for (uint64_t sb = 0; sb < nsb; sb++) {
                const mx_block_q6_k *b = (const mx_block_q6_k *)row + sb;
                q6_k_unpacked *o = u + sb;
                kw W = {.blk = b};
                int32_t c = 0;
                UNROLL for (int ch = 0; ch < 4; ch++) vb_store(o->u + 64 * ch, q6_k_u(&W, ch));
                for (int j = 0; j < 16; j++) {
                        __m128i q = _mm_loadu_si128((const __m128i *)(o->u + 16 * j));
                        o->sc[j] = b->scales[j];
                        c += o->sc[j] * (sum_bytes16(q) - 16 * 32);
                        _mm_storeu_si128((__m128i *)(o->u + 16 * j), _mm_sub_epi8(q, k32));
                }
                o->c = -128 * c, o->d = f16c(b->d);
        }
}

/* No mins: their offset of -32 is in the levels. */
static inline vf q6_k_min_step(const q6_k_unpacked *u, const uint8_t *xs, vf dx, vf F) {
        (void)u, (void)xs, (void)dx;
        return F;
}

DEFINE_K_KERNELS(q6_k, Q6_K_R, 16, 0)
