/* The step's view of the KV pool for the kernels (mixtral_kernels.h): each
 * token's row (where its sequence's block table starts, its position) and
 * the sequences' block tables one after another. The step uploads a
 * power-of-two number of table entries, so that a CUDA graph recorded for
 * a shape stays valid while its sequences grow (the count is part of the
 * shape). Plain layout, no CUDA: tests/gpu/test_kv_logic.c runs it with the
 * kernels' host twins. Called by backend_cuda.c's step_begin. */
#include "cuda_backend.h"

static uint32_t blocks_of(const mx_attn_seq *a) {
        return (a->pos0 + a->n + MX_KV_BLOCK - 1) / MX_KV_BLOCK;
}

uint32_t mx_cuda_kv_entries(const mx_attn_seq *seqs, size_t n) {
        uint64_t entries = 0;
        for (size_t i = 0; i < n; i++)
                entries += blocks_of(&seqs[i]);
        uint32_t cap = 64;
        while (cap < entries && cap < (1u << 31))
                cap *= 2;
        return cap;
}

void mx_cuda_kv_layout(const mx_attn_seq *seqs, size_t n, mxk_row *rows, uint32_t *tables) {
        uint32_t at = 0;
        for (size_t i = 0; i < n; i++) {
                const mx_attn_seq *a = &seqs[i];
                for (uint32_t j = 0; j < a->n; j++)
                        rows[a->row0 + j] = (mxk_row){at, a->pos0 + j};
                for (uint32_t b = 0; b < blocks_of(a); b++)
                        tables[at++] = a->blocks[b];
        }
}
