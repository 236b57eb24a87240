/* Decode steps as CUDA graphs. A step of up to MXK_PADDED_MAX tokens (no
 * host synchronisation inside) is recorded once per shape (tokens, logit
 * rows, attention slices, block-table entries) and replayed afterwards:
 * one launch instead of hundreds. What changes between steps (tokens,
 * positions, block tables) is data the graph's first copies bring from the
 * pinned step buffer, so replays stay valid until a buffer the graph holds
 * moves (epoch). */
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.h"

void mx_cuda_graph_begin(cuda_backend *cb, uint32_t T, uint32_t L, uint32_t slices, uint32_t tables) {
        cb->mode = RUN_DIRECT;
        cb->current = NULL;
        /* Up to MXK_PADDED_MAX tokens nothing in a step waits on the host. */
        if (cb->graphs_off || T > MXK_PADDED_MAX || L == 0)
                return;
        struct cuda_graph *g = NULL, *lru = &cb->graphs[0];
        for (size_t i = 0; i < sizeof(cb->graphs) / sizeof(cb->graphs[0]); i++) {
                struct cuda_graph *x = &cb->graphs[i];
                if (x->exec && x->T == T && x->L == L && x->slices == slices && x->tables == tables &&
                    x->epoch == cb->epoch)
                        g = x;
                if (!x->exec || (lru->exec && x->used < lru->used))
                        lru = x;
        }
        cb->tick++;
        if (g) {
                g->used = cb->tick;
                cb->current = g;
                cb->mode = RUN_REPLAY;
                return;
        }
        mxk_graph_free(lru->exec);
        *lru = (struct cuda_graph){T, L, slices, tables, cb->epoch, cb->tick, NULL};
        if (mxk_capture_begin(cb->ctx) == 0) {
                cb->current = lru;
                cb->mode = RUN_RECORD;
        }
}

int mx_cuda_graph_finish(cuda_backend *cb) {
        int r = 0;
        if (cb->mode == RUN_RECORD) {
                r = mxk_capture_end(cb->ctx, &cb->current->exec);
                if (r < 0)
                        cb->graphs_off = true; /* the error is recorded; later steps go direct */
        }
        if (r == 0 && cb->mode != RUN_DIRECT)
                r = mxk_graph_launch(cb->ctx, cb->current->exec);
        cb->mode = RUN_DIRECT;
        cb->current = NULL;
        return r;
}

void mx_cuda_graphs_free(cuda_backend *cb) {
        for (size_t i = 0; i < sizeof(cb->graphs) / sizeof(cb->graphs[0]); i++) {
                mxk_graph_free(cb->graphs[i].exec);
                cb->graphs[i].exec = NULL;
        }
}
