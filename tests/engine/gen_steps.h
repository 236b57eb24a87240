/* What the engine tests share to drive several mx_gen requests in the
 * same forward steps, as the daemon's scheduler does. */
#pragma once

#include <errno.h>

#include "mixtral.h"

/* One step of every request not finished yet (g[i] NULL: none), all in one
 * mx_forward, each one's new text appended to texts[i]: how many stepped
 * (0 when all are done), or a negative errno with err set. At most 8. */
static inline int gen_step_all(mx_engine *e, mx_gen *const *g, size_t n, mx_buf *texts, mx_error *err) {
        mx_batch_item items[8];
        size_t who[8], k = 0;
        for (size_t i = 0; i < n && k < 8; i++)
                if (g[i] && mx_gen_finished(g[i]) == MX_FINISH_NONE) {
                        mx_gen_prepare(g[i], &items[k]);
                        who[k++] = i;
                }
        int r = k ? mx_forward(e, items, k, err) : 0;
        for (size_t j = 0; r == 0 && j < k; j++) {
                int32_t token;
                if (mx_gen_advance(g[who[j]], &texts[who[j]], &token) < 0)
                        r = mx_error_set(err, -ENOMEM, "out of memory");
        }
        return r < 0 ? r : (int)k;
}
