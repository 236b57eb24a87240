/* Element types and row access for mapped tensors. */
#include "mx_common.h"

#include "mixtral.h"

static const struct {
        const char *name;
        uint32_t elems, bytes; /* per block */
} types[MX_DTYPE_COUNT] = {
        [MX_DTYPE_F32] = {"F32", 1, 4},       [MX_DTYPE_F16] = {"F16", 1, 2},
        [MX_DTYPE_BF16] = {"BF16", 1, 2},     [MX_DTYPE_Q8_0] = {"Q8_0", 32, 34},
        [MX_DTYPE_Q4_0] = {"Q4_0", 32, 18},   [MX_DTYPE_Q4_K] = {"Q4_K", 256, 144},
        [MX_DTYPE_Q5_K] = {"Q5_K", 256, 176}, [MX_DTYPE_Q6_K] = {"Q6_K", 256, 210},
};

static bool known(mx_dtype t) {
        return (unsigned)t < MX_DTYPE_COUNT;
}

uint32_t mx_dtype_block_elems(mx_dtype t) {
        return known(t) ? types[t].elems : 0;
}

uint32_t mx_dtype_block_bytes(mx_dtype t) {
        return known(t) ? types[t].bytes : 0;
}

bool mx_dtype_is_block(mx_dtype t) {
        return known(t) && types[t].elems > 1;
}

const char *mx_dtype_name(mx_dtype t) {
        return known(t) ? types[t].name : "?";
}

int mx_dtype_row_bytes(mx_dtype t, uint64_t cols, uint64_t *out) {
        if (!known(t) || cols % types[t].elems)
                return -EINVAL;
        return mx_mul_u64(cols / types[t].elems, types[t].bytes, out) ? 0 : -EOVERFLOW;
}

int mx_dtype_tensor_bytes(mx_dtype t, const uint64_t *shape, uint32_t ndim, uint64_t *out) {
        uint64_t bytes;
        int r = mx_dtype_row_bytes(t, ndim ? shape[ndim - 1] : 1, &bytes);
        for (uint32_t i = 0; r == 0 && i + 1 < ndim; i++)
                if (!mx_mul_u64(bytes, shape[i], &bytes))
                        r = -EOVERFLOW;
        if (r == 0)
                *out = bytes;
        return r;
}

uint64_t mx_tensor_elems(const mx_tensor *t) {
        uint64_t n = 1;
        for (uint32_t i = 0; i < t->ndim; i++)
                n *= t->shape[i];
        return n;
}

/* mistral-inference stores each head's q/k rows with the two halves of
 * every rotation pair adjacent (0,1 | 2,3 | ...); Hugging Face's converter
 * permuted them to first halves then second halves. Reading row r in the
 * HF order from the stored one keeps the file mapped and the math single.
 * (The tensor's shape was checked when it was bound, so its row size is
 * known to be whole blocks.) */
const void *mx_tensor_row(const mx_tensor *t, uint64_t r) {
        uint64_t cols = t->ndim >= 2 ? t->shape[1] : t->shape[0], row_bytes = 0;
        mx_dtype_row_bytes(t->dtype, cols, &row_bytes);
        uint64_t stored = r;
        if (t->rope_head_dim) {
                uint64_t hd = t->rope_head_dim, half = hd / 2;
                uint64_t head = r / hd, j = r % hd;
                stored = head * hd + (j < half ? 2 * j : 2 * (j - half) + 1);
        }
        return (const uint8_t *)t->data + stored * row_bytes;
}
