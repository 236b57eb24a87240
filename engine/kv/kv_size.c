/* How big the KV pool is and what it holds: the kv_type and kv_memory
 * texts the tools and the daemon take, and the size. The engine asks its
 * backend for the free memory (the host's available memory, or the GPU's
 * after the weights) and what an auto-sized pool may take, and turns the
 * answer into blocks here. */
#include <string.h>

#include "kv.h"
#include "mx_common.h"

int mx_kv_type_from_string(const char *s, mx_kv_type *out) {
        static const char *const names[] = {"bf16", "f32"};
        for (size_t i = 0; i < MX_ELEMENTSOF(names); i++)
                if (!strcmp(s, names[i])) {
                        *out = (mx_kv_type)i;
                        return 0;
                }
        return -EINVAL;
}

const char *mx_kv_type_name(mx_kv_type t) {
        return t == MX_KV_F32 ? "f32" : "bf16";
}

int mx_kv_memory_parse(const char *s, uint64_t *bytes, uint32_t *percent, mx_error *err) {
        double fraction = 0, b = 0;
        bool ok = !strcmp(s, "auto") || mx_parse_amount(s, &fraction, &b);
        /* Whole percents (what "free memory" is measured to is coarse anyway). */
        double pct = fraction * 100;
        if (!ok || (fraction > 0 && (pct < 1 || pct != (double)(uint32_t)pct)))
                return mx_error_set(err, -EINVAL, "KV memory \"%s\": expected auto, bytes (K, M, G, T) or a "
                                    "whole percentage (1%% to 100%%) of the free memory", s);
        if (bytes)
                *bytes = (uint64_t)b;
        if (percent)
                *percent = (uint32_t)pct;
        return 0;
}

int mx_kv_pool_size(uint64_t bytes, uint32_t percent, uint64_t free, uint64_t auto_bytes, uint64_t block_bytes,
                    uint32_t context, uint32_t *blocks, mx_error *err) {
        uint64_t want = bytes;
        if (percent)
                want = free / 100 * percent;
        else if (!bytes) {
                uint64_t most = ((uint64_t)context + MX_KV_BLOCK - 1) / MX_KV_BLOCK * 8 * block_bytes;
                want = auto_bytes < most || !context ? auto_bytes : most;
        }
        uint64_t n = want / block_bytes;
        if (n < MX_KV_MIN_BLOCKS)
                return mx_error_set(err, -EINVAL, "the KV cache (kv_memory) gets %.1f MiB of %.1f MiB free: fewer "
                                    "than the %u blocks of %u tokens (%.1f MiB) it needs at least",
                                    (double)want / (1 << 20), (double)free / (1 << 20), MX_KV_MIN_BLOCKS,
                                    MX_KV_BLOCK, (double)MX_KV_MIN_BLOCKS * (double)block_bytes / (1 << 20));
        *blocks = n > UINT32_MAX / MX_KV_BLOCK ? UINT32_MAX / MX_KV_BLOCK : (uint32_t)n;
        return 0;
}
