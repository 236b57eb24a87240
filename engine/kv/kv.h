/* The KV cache's bookkeeping, private to the engine (docs/engine.md, "The
 * KV cache"). The memory itself is the backend's (backend.h: kv_init,
 * kv_copy); this room decides which block holds what:
 *
 *   pool      one per engine: MX_KV_BLOCK-token blocks, each free, held by
 *             sequences (refcounted), or cached and held by nobody (least
 *             recently used first out when a block is wanted)
 *   cache     a block that filled up (or a sequence's partial last block
 *             when the sequence lets go) is published under its identity:
 *             namespace, the identity of the block before it (0 at the
 *             start of a sequence) and its tokens; it is never written
 *             again, so any number of sequences may hold it
 *   table     a sequence's blocks in position order, the identity of each
 *             published one, and the tokens they hold
 *
 * Identities are never reused, so a lookup that matches namespace, parent
 * and tokens has found exactly the K and V this sequence would compute: no
 * hash collision can hand one prompt another's blocks. Used by engine.c
 * on the thread that steps the engine. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"

typedef struct mx_kv_pool mx_kv_pool;

#define MX_KV_NONE UINT32_MAX

/* A pool of `blocks` blocks, all free. */
int mx_kv_pool_new(uint32_t blocks, mx_kv_pool **out);
void mx_kv_pool_free(mx_kv_pool *p);
/* Counts as mx_engine_kv_stats reports them (block_tokens, blocks, used,
 * cached, free and the counters). */
void mx_kv_pool_stats(const mx_kv_pool *p, mx_kv_stats *s);
/* Blocks a holder could take now: free ones and cached ones nobody holds. */
uint32_t mx_kv_available(const mx_kv_pool *p);

/* A sequence's blocks. `cache` false: it neither reuses nor publishes. */
typedef struct mx_kv_table {
        uint32_t *blocks; /* [cap] pool blocks; block i holds positions [i, i + 1) * MX_KV_BLOCK */
        uint64_t *ids;    /* [cap] block i's identity once published (or an equal cached block's); 0: none */
        int32_t *tokens;  /* [cap * MX_KV_BLOCK] the tokens whose K and V the blocks hold */
        uint32_t n, cap;  /* blocks held, room for */
        uint64_t ns;      /* namespace of what it publishes and reuses */
        bool cache;
} mx_kv_table;

/* Holds blocks for `tokens` tokens in all; -ENOBUFS (holding what it held)
 * when that would leave fewer than `spare` blocks for others, -ENOMEM. */
int mx_kv_table_reserve(mx_kv_pool *p, mx_kv_table *t, uint32_t tokens, uint32_t spare);
/* Into an empty table: the longest cached prefix of tokens[0..n). Whole
 * blocks used whole are shared; a block used in part is copied (copy(arg,
 * dst, src)) so that the sequence can write the rest. Returns the tokens
 * reused (0 when the table is not empty, caches nothing, or nothing
 * matches). */
uint32_t mx_kv_table_reuse(mx_kv_pool *p, mx_kv_table *t, const int32_t *tokens, uint32_t n,
                           void (*copy)(void *arg, uint32_t dst, uint32_t src), void *arg);
/* Positions [from, from + n) now hold tokens[0..n): remembered, and blocks
 * that filled up are published. The blocks must be held. */
void mx_kv_table_commit(mx_kv_pool *p, mx_kv_table *t, uint32_t from, const int32_t *tokens, uint32_t n);
/* Lets go of every block: the partial last block of the `len` tokens held
 * is published first (a later sequence copies what it can use of it);
 * the rest of the blocks go back to the pool, the last first, so that the
 * start of a sequence, which more requests share, stays cached longest. */
void mx_kv_table_release(mx_kv_pool *p, mx_kv_table *t, uint32_t len);
void mx_kv_table_free(mx_kv_pool *p, mx_kv_table *t, uint32_t len);

/* The pool's size: bytes, a percentage (1 to 100) of `free` memory, or
 * (both 0) auto: the backend's auto_bytes, at most 8 contexts of `context`
 * tokens (when the model gives one); in blocks of block_bytes. -EINVAL
 * when fewer than MX_KV_MIN_BLOCKS blocks would fit. */
#define MX_KV_MIN_BLOCKS 16
int mx_kv_pool_size(uint64_t bytes, uint32_t percent, uint64_t free, uint64_t auto_bytes, uint64_t block_bytes,
                    uint32_t context, uint32_t *blocks, mx_error *err);
