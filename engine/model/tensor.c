/* Element types and row access for mapped tensors. */
#include "mixtral.h"

size_t mx_dtype_size(mx_dtype t) {
        return t == MX_DTYPE_F32 ? 4 : 2;
}

const char *mx_dtype_name(mx_dtype t) {
        switch (t) {
        case MX_DTYPE_F32:
                return "F32";
        case MX_DTYPE_F16:
                return "F16";
        case MX_DTYPE_BF16:
                return "BF16";
        }
        return "?";
}

/* mistral-inference stores each head's q/k rows with the two halves of
 * every rotation pair adjacent (0,1 | 2,3 | ...); Hugging Face's converter
 * permuted them to first halves then second halves. Reading row r in the
 * HF order from the stored one keeps the file mapped and the math single. */
const void *mx_tensor_row(const mx_tensor *t, uint64_t r) {
        uint64_t cols = t->ndim >= 2 ? t->shape[1] : 1;
        uint64_t stored = r;
        if (t->rope_head_dim) {
                uint64_t hd = t->rope_head_dim, half = hd / 2;
                uint64_t head = r / hd, j = r % hd;
                stored = head * hd + (j < half ? 2 * j : 2 * (j - half) + 1);
        }
        return (const uint8_t *)t->data + stored * cols * mx_dtype_size(t->dtype);
}
