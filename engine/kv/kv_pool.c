/* The pool of KV blocks and the prefix cache over it (kv.h). Every block
 * is in exactly one state:
 *
 *   free     ref 0, caches nothing            on the free stack
 *   held     ref > 0, cached or not           on no list
 *   idle     ref 0, cached                    on the LRU list, oldest first
 *
 * A cached block sits in the hash table under (namespace, parent), so a
 * bucket holds a block's cached successors: a lookup walks it for the one
 * whose tokens match. Taking a block when none is free evicts the oldest
 * idle one. */
#include <string.h>

#include "kv.h"
#include "mx_common.h"

typedef struct kv_block {
        uint32_t ref;
        uint32_t fill;                 /* tokens it caches; 0: not in the cache */
        uint64_t id, ns, parent;       /* while cached */
        uint32_t hnext;                /* next in its bucket */
        uint32_t lprev, lnext;         /* on the LRU list while idle */
        int32_t tokens[MX_KV_BLOCK];   /* [fill] while cached */
} kv_block;

struct mx_kv_pool {
        kv_block *b;          /* [n] */
        uint32_t n;
        uint32_t *free;       /* [n] stack of free blocks */
        uint32_t n_free;
        uint32_t *bucket;     /* [mask + 1] first cached block of each chain */
        uint32_t mask;
        uint32_t lru_head, lru_tail, n_idle;
        uint32_t n_cached;    /* held or idle */
        uint64_t next_id;
        uint64_t lookups, hits, hit_tokens, evictions;
};

int mx_kv_pool_new(uint32_t blocks, mx_kv_pool **out) {
        _cleanup_free_ mx_kv_pool *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        uint32_t buckets = 1;
        while (buckets < blocks && buckets < (1u << 31))
                buckets *= 2;
        p->b = calloc(blocks, sizeof(*p->b));
        p->free = calloc(blocks, sizeof(*p->free));
        p->bucket = malloc((size_t)buckets * sizeof(*p->bucket));
        if (!p->b || !p->free || !p->bucket) {
                free(p->b), free(p->free), free(p->bucket);
                return -ENOMEM;
        }
        memset(p->bucket, 0xff, (size_t)buckets * sizeof(*p->bucket));
        p->n = blocks;
        p->mask = buckets - 1;
        p->lru_head = p->lru_tail = MX_KV_NONE;
        /* Popped from the top: block 0 first. */
        for (uint32_t i = 0; i < blocks; i++)
                p->free[i] = blocks - 1 - i;
        p->n_free = blocks;
        *out = MX_TAKE_PTR(p);
        return 0;
}

void mx_kv_pool_free(mx_kv_pool *p) {
        if (!p)
                return;
        free(p->b), free(p->free), free(p->bucket);
        free(p);
}

void mx_kv_pool_stats(const mx_kv_pool *p, mx_kv_stats *s) {
        s->block_tokens = MX_KV_BLOCK;
        s->blocks = p->n;
        s->free = p->n_free;
        s->cached = p->n_idle;
        s->used = p->n - p->n_free - p->n_idle;
        s->lookups = p->lookups, s->hits = p->hits, s->hit_tokens = p->hit_tokens;
        s->evictions = p->evictions;
}

uint32_t mx_kv_available(const mx_kv_pool *p) {
        return p->n_free + p->n_idle;
}

/* ---- the LRU list and the hash table ------------------------------------------ */

static void lru_remove(mx_kv_pool *p, uint32_t i) {
        kv_block *b = &p->b[i];
        if (b->lprev == MX_KV_NONE)
                p->lru_head = b->lnext;
        else
                p->b[b->lprev].lnext = b->lnext;
        if (b->lnext == MX_KV_NONE)
                p->lru_tail = b->lprev;
        else
                p->b[b->lnext].lprev = b->lprev;
        p->n_idle--;
}

static void lru_append(mx_kv_pool *p, uint32_t i) {
        kv_block *b = &p->b[i];
        b->lprev = p->lru_tail, b->lnext = MX_KV_NONE;
        if (p->lru_tail == MX_KV_NONE)
                p->lru_head = i;
        else
                p->b[p->lru_tail].lnext = i;
        p->lru_tail = i;
        p->n_idle++;
}

/* splitmix64's finaliser over the pair. */
static uint32_t bucket_of(const mx_kv_pool *p, uint64_t ns, uint64_t parent) {
        uint64_t x = ns * 0x9e3779b97f4a7c15ull ^ (parent + 0x632be59bd9b4e019ull);
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return (uint32_t)(x ^ (x >> 31)) & p->mask;
}

static void unhash(mx_kv_pool *p, uint32_t i) {
        kv_block *b = &p->b[i];
        uint32_t *link = &p->bucket[bucket_of(p, b->ns, b->parent)];
        while (*link != i)
                link = &p->b[*link].hnext;
        *link = b->hnext;
        b->fill = 0, b->id = 0;
        p->n_cached--;
}

/* ---- holding ------------------------------------------------------------------ */

static void hold(mx_kv_pool *p, uint32_t i) {
        if (p->b[i].ref++ == 0 && p->b[i].fill)
                lru_remove(p, i);
}

static void drop(mx_kv_pool *p, uint32_t i) {
        kv_block *b = &p->b[i];
        if (--b->ref > 0)
                return;
        if (b->fill)
                lru_append(p, i);
        else
                p->free[p->n_free++] = i;
}

/* A block of one's own: a free one, or the oldest idle one, forgotten. */
static uint32_t take(mx_kv_pool *p) {
        uint32_t i;
        if (p->n_free)
                i = p->free[--p->n_free];
        else if ((i = p->lru_head) != MX_KV_NONE) {
                lru_remove(p, i);
                unhash(p, i);
                p->evictions++;
        } else
                return MX_KV_NONE;
        p->b[i].ref = 1;
        return i;
}

/* ---- the cache --------------------------------------------------------------------- */

static uint32_t common_prefix(const int32_t *a, const int32_t *b, uint32_t n) {
        uint32_t k = 0;
        while (k < n && a[k] == b[k])
                k++;
        return k;
}

/* The cached successor of parent that shares the most leading tokens
 * with tokens[0..n): a whole match ends the search. *common: how many. */
static uint32_t best_match(const mx_kv_pool *p, uint64_t ns, uint64_t parent, const int32_t *tokens, uint32_t n,
                           uint32_t *common) {
        uint32_t best = MX_KV_NONE;
        *common = 0;
        for (uint32_t i = p->bucket[bucket_of(p, ns, parent)]; i != MX_KV_NONE; i = p->b[i].hnext) {
                const kv_block *b = &p->b[i];
                if (b->ns != ns || b->parent != parent)
                        continue;
                uint32_t k = common_prefix(tokens, b->tokens, n < b->fill ? n : b->fill);
                if (k > *common)
                        best = i, *common = k;
                if (k == n)
                        break;
        }
        return best;
}

/* Block i (held) now caches tokens[0..n) after parent. When a cached block
 * already holds them (or more), that one's identity is the answer and i
 * stays private. */
static uint64_t publish(mx_kv_pool *p, uint32_t i, uint64_t ns, uint64_t parent, const int32_t *tokens, uint32_t n) {
        uint32_t common, same = best_match(p, ns, parent, tokens, n, &common);
        if (common == n && same != MX_KV_NONE)
                return p->b[same].id;
        kv_block *b = &p->b[i];
        uint32_t *head = &p->bucket[bucket_of(p, ns, parent)];
        *b = (kv_block){.ref = b->ref, .fill = n, .id = ++p->next_id, .ns = ns, .parent = parent, .hnext = *head};
        memcpy(b->tokens, tokens, n * sizeof(int32_t));
        *head = i;
        p->n_cached++;
        return b->id;
}

/* ---- tables ------------------------------------------------------------------------ */

static int table_room(mx_kv_table *t, uint32_t blocks) {
        if (blocks <= t->cap)
                return 0;
        uint32_t cap = t->cap ? t->cap : 8;
        while (cap < blocks)
                cap = cap > UINT32_MAX / 2 ? blocks : cap * 2;
        size_t tokens;
        if (!mx_mul_size(cap, MX_KV_BLOCK * sizeof(int32_t), &tokens))
                return -ENOMEM;
        uint32_t *b = realloc(t->blocks, cap * sizeof(*b));
        if (b)
                t->blocks = b;
        uint64_t *ids = b ? realloc(t->ids, cap * sizeof(*ids)) : NULL;
        if (ids)
                t->ids = ids;
        int32_t *tok = ids ? realloc(t->tokens, tokens) : NULL;
        if (!tok)
                return -ENOMEM;
        t->tokens = tok;
        t->cap = cap;
        return 0;
}

int mx_kv_table_reserve(mx_kv_pool *p, mx_kv_table *t, uint32_t tokens, uint32_t spare) {
        uint32_t want = (uint32_t)(((uint64_t)tokens + MX_KV_BLOCK - 1) / MX_KV_BLOCK);
        if (want <= t->n)
                return 0;
        uint32_t more = want - t->n;
        if (more > p->n || mx_kv_available(p) < (uint64_t)more + spare)
                return -ENOBUFS;
        int r = table_room(t, want);
        if (r < 0)
                return r;
        while (t->n < want) {
                t->ids[t->n] = 0;
                t->blocks[t->n++] = take(p);
        }
        return 0;
}

uint32_t mx_kv_table_reuse(mx_kv_pool *p, mx_kv_table *t, const int32_t *tokens, uint32_t n,
                           void (*copy)(void *arg, uint32_t dst, uint32_t src), void *arg) {
        if (t->n || !t->cache || n == 0)
                return 0;
        p->lookups++;
        uint32_t pos = 0;
        uint64_t parent = 0;
        while (pos < n && table_room(t, t->n + 1) == 0) {
                uint32_t m = n - pos < MX_KV_BLOCK ? n - pos : MX_KV_BLOCK, common;
                uint32_t src = best_match(p, t->ns, parent, tokens + pos, m, &common);
                if (common == 0)
                        break;
                if (common == MX_KV_BLOCK) {
                        hold(p, src);
                        t->ids[t->n] = parent = p->b[src].id;
                        t->blocks[t->n++] = src;
                        pos += MX_KV_BLOCK;
                        continue;
                }
                /* Copy on write: held while the copy's block is taken, so
                 * that taking it cannot evict the source. */
                hold(p, src);
                uint32_t dst = take(p);
                if (dst != MX_KV_NONE) {
                        copy(arg, dst, src);
                        t->ids[t->n] = 0;
                        t->blocks[t->n++] = dst;
                        pos += common;
                }
                drop(p, src);
                break;
        }
        memcpy(t->tokens, tokens, (size_t)pos * sizeof(int32_t));
        p->hits += pos > 0;
        p->hit_tokens += pos;
        return pos;
}

/* Publishes block k of t holding `fill` tokens, when the one before it is
 * known (a sequence that caches, whose start was published). */
static void publish_block(mx_kv_pool *p, mx_kv_table *t, uint32_t k, uint32_t fill) {
        uint64_t parent = k ? t->ids[k - 1] : 0;
        if (!t->cache || t->ids[k] || (k && !parent))
                return;
        uint64_t id = publish(p, t->blocks[k], t->ns, parent, t->tokens + (size_t)k * MX_KV_BLOCK, fill);
        /* A partial block is published only as its holder lets go: its
         * identity is not one to build on. */
        if (fill == MX_KV_BLOCK)
                t->ids[k] = id;
}

void mx_kv_table_commit(mx_kv_pool *p, mx_kv_table *t, uint32_t from, const int32_t *tokens, uint32_t n) {
        memcpy(t->tokens + from, tokens, (size_t)n * sizeof(int32_t));
        for (uint32_t k = from / MX_KV_BLOCK; k < (from + n) / MX_KV_BLOCK; k++)
                publish_block(p, t, k, MX_KV_BLOCK);
}

void mx_kv_table_release(mx_kv_pool *p, mx_kv_table *t, uint32_t len) {
        if (len % MX_KV_BLOCK && len / MX_KV_BLOCK < t->n)
                publish_block(p, t, len / MX_KV_BLOCK, len % MX_KV_BLOCK);
        while (t->n)
                drop(p, t->blocks[--t->n]);
}

void mx_kv_table_free(mx_kv_pool *p, mx_kv_table *t, uint32_t len) {
        mx_kv_table_release(p, t, len);
        free(t->blocks), free(t->ids), free(t->tokens);
        *t = (mx_kv_table){0};
}
