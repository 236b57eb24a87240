/* Expert streaming on the GPU. Each layer has the same number of device
 * slots, one expert each (w13 then w2, bf16, the layout the kernels read).
 * Experts come from the model's files through the host cache (the CPU's
 * mx_expert_cache, its arena page-locked), then up on the context's copy
 * stream; the compute stream waits for a slot's copy with an event, and the
 * copy stream waits for the compute stream's last use of a slot before it
 * overwrites it, so the host never waits for the GPU here except to learn
 * the routing (a few ints per layer). A host slot stays pinned until its
 * copy has left it. */
#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda_backend.h"
#include "stream.h"
#include "mx_common.h"

typedef struct dslot {
        int32_t expert;    /* -1: empty */
        int32_t pin;       /* the host cache's expert its last copy read from, until released; -1 */
        uint64_t used;     /* tick of its last use */
        mxk_event *ready;  /* copy stream: its copy landed */
        mxk_event *freed;  /* compute stream: its last use ended */
} dslot;

struct cuda_stream {
        mx_expert_cache *host;
        uint32_t layers, E, k, spl, host_spl;
        uint64_t slot_elems;     /* bf16 elements of one expert: 3 F H */
        uint16_t **arena;        /* [layer]: spl slots */
        dslot *slots;            /* [layer][spl] */
        uint32_t *freq;          /* [layer][expert]: times chosen */
        uint64_t *guessed;       /* [layer]: experts guessed for it (bit mask) */
        bool lfu;
        uint64_t tick;
        void *raw;               /* device: one f16/f32 matrix before conversion */
        size_t raw_bytes;
        float *d_pred;           /* the next layer's router logits */
        float *h_pred;
        uint32_t pred_cap;
        uint32_t counts[3 * 64 + 1];
        uint64_t configured;     /* the budget asked for; pressure may hold less */
        double calm_since;       /* since when free memory allowed growing back */
        double checked;          /* when free memory was last looked at */
        mx_expert_stats st;
};

static const mx_expert_pin host_pin = {mxk_host_register, mxk_host_unregister};

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t file_expert_bytes(const mx_model *m) {
        const mx_layer *l = &m->layers[0];
        return l->w1[0]->nbytes + l->w2[0]->nbytes + l->w3[0]->nbytes;
}

static dslot *slot_at(struct cuda_stream *s, uint32_t L, uint32_t i) {
        return &s->slots[(size_t)L * s->spl + i];
}

static uint16_t *slot_w13(struct cuda_stream *s, const dslot *d) {
        size_t i = (size_t)(d - s->slots);
        return s->arena[i / s->spl] + (i % s->spl) * s->slot_elems;
}

static uint32_t layer_of(struct cuda_stream *s, const dslot *d) {
        return (uint32_t)((size_t)(d - s->slots) / s->spl);
}

/* Gives the host slot its copy read from back, once the copy is done (or
 * at once, waiting for it, when `wait`). */
static void unpin(cuda_backend *cb, dslot *d, bool wait) {
        struct cuda_stream *s = cb->stream;
        if (d->pin < 0)
                return;
        if (wait)
                mxk_event_sync(cb->ctx, d->ready);
        else if (!mxk_event_done(cb->ctx, d->ready))
                return;
        mx_expert_cache_release(s->host, layer_of(s, d), (uint32_t)d->pin);
        d->pin = -1;
}

static uint32_t pins_in(struct cuda_stream *s, uint32_t L) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < s->spl; i++)
                n += slot_at(s, L, i)->pin >= 0;
        return n;
}

static void unpin_layer(cuda_backend *cb, uint32_t L, bool wait) {
        for (uint32_t i = 0; i < cb->stream->spl; i++)
                unpin(cb, slot_at(cb->stream, L, i), wait);
}

static void free_slots(cuda_backend *cb) {
        struct cuda_stream *s = cb->stream;
        for (size_t i = 0; s->slots && i < (size_t)s->layers * s->spl; i++) {
                unpin(cb, &s->slots[i], true);
                mxk_event_free(s->slots[i].ready);
                mxk_event_free(s->slots[i].freed);
        }
        for (uint32_t L = 0; s->arena && L < s->layers; L++)
                mxk_free(cb->ctx, s->arena[L]);
        free(s->slots);
        s->slots = NULL;
        if (s->arena)
                memset(s->arena, 0, s->layers * sizeof(*s->arena));
        s->spl = 0;
}

/* spl slots per layer, or fewer (down to top-k) while cudaMalloc fails. */
static int make_slots(cuda_backend *cb, uint32_t spl, mx_error *err) {
        struct cuda_stream *s = cb->stream;
        for (; spl >= s->k; spl--) {
                bool ok = true;
                for (uint32_t L = 0; ok && L < s->layers; L++)
                        ok = mxk_malloc(cb->ctx, (void **)&s->arena[L], spl * s->slot_elems * 2) == 0;
                if (ok)
                        break;
                for (uint32_t L = 0; L < s->layers; L++)
                        mxk_free(cb->ctx, s->arena[L]);
                memset(s->arena, 0, s->layers * sizeof(*s->arena));
        }
        if (spl < s->k)
                return mx_error_set(err, -ENOMEM, "out of GPU memory for %u streamed experts per layer (%.1f GiB)",
                                    s->k, (double)s->layers * s->k * s->slot_elems * 2 / (1u << 30));
        s->spl = spl;
        size_t n = (size_t)s->layers * spl;
        if (!(s->slots = calloc(n, sizeof(dslot))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
                s->slots[i] = (dslot){.expert = -1, .pin = -1};
                if (mxk_event_new(cb->ctx, &s->slots[i].ready) < 0 || mxk_event_new(cb->ctx, &s->slots[i].freed) < 0)
                        return mx_error_set(err, -ENOMEM, "cannot make CUDA events for the expert slots");
        }
        s->st.slots_per_layer = spl;
        s->st.budget = (uint64_t)spl * s->layers * s->slot_elems * 2;
        return 0;
}

static uint32_t slots_for(const struct cuda_stream *s, uint64_t budget) {
        uint64_t per = budget / s->layers / (s->slot_elems * 2);
        return (uint32_t)(per < s->k ? s->k : per > s->E ? s->E : per);
}

void mx_cuda_stream_free(cuda_backend *cb) {
        struct cuda_stream *s = cb->stream;
        if (!s)
                return;
        mxk_sync(cb->ctx, NULL, 0);
        free_slots(cb);
        mx_expert_cache_free(s->host);
        mxk_free(cb->ctx, s->raw);
        mxk_free(cb->ctx, s->d_pred);
        free(s->h_pred), free(s->arena), free(s->freq), free(s->guessed), free(s);
        cb->stream = NULL;
}

/* Auto: every expert when they take under a quarter of the machine's
 * memory (it is page-locked: the rest of the machine cannot have it), else
 * a quarter; never less than the device's slots plus one per layer, so a
 * read always finds a host slot no copy is leaving from. */
static uint64_t host_budget(const struct cuda_stream *s, const mx_model *m, uint64_t asked, uint32_t spl) {
        uint64_t per = file_expert_bytes(m), all = per * s->layers * s->E;
        uint64_t quarter = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE) / 4;
        uint64_t want = asked ? asked : all < quarter ? all : quarter;
        uint32_t least = spl + 1 > s->E ? s->E : spl + 1;
        uint64_t floor = per * s->layers * least;
        return want < floor ? floor : want > all ? all : want;
}

/* The host cache at `bytes` (0: auto): made anew unless it would have as
 * many slots per layer as now; the counters carry over. The old one goes
 * first (it is shrunk when memory is short); if the new size cannot be
 * had, the least is tried. */
int mx_cuda_stream_set_host(cuda_backend *cb, uint64_t bytes, mx_error *err) {
        struct cuda_stream *s = cb->stream;
        const mx_model *m = cb->base.model;
        uint64_t per = file_expert_bytes(m);
        uint64_t hb = host_budget(s, m, bytes, s->spl);
        if (s->host && hb / s->layers / per == s->host_spl)
                return 0;
        mx_expert_stats before = {0};
        if (s->host) {
                for (size_t i = 0; i < (size_t)s->layers * s->spl; i++)
                        unpin(cb, &s->slots[i], true);
                mx_expert_cache_stats(s->host, &before);
                mx_expert_cache_free(s->host);
                s->host = NULL, s->host_spl = 0, s->st.host_budget = 0;
        }
        int r = mx_expert_cache_new(m, hb, &host_pin, &s->host, err);
        if (r == -ENOMEM)
                r = mx_expert_cache_new(m, host_budget(s, m, 1, s->spl), &host_pin, &s->host, err);
        if (r < 0)
                return r;
        mx_expert_cache_carry(s->host, &before);
        s->host_spl = mx_expert_cache_slots(s->host);
        s->st.host_budget = (uint64_t)s->host_spl * s->layers * per;
        return 0;
}

/* An expert in a block format (the slots and copies here take float
 * types), or NULL. */
static const mx_tensor *block_expert(const mx_model *m) {
        for (uint32_t L = 0; L < m->cfg.n_layers; L++)
                for (uint32_t e = 0; e < m->cfg.n_experts; e++) {
                        const mx_tensor *w[3] = {m->layers[L].w1[e], m->layers[L].w2[e], m->layers[L].w3[e]};
                        for (int k = 0; k < 3; k++)
                                if (mx_dtype_is_block(w[k]->dtype))
                                        return w[k];
                }
        return NULL;
}

int mx_cuda_stream_new(cuda_backend *cb, uint64_t budget, uint64_t host_cache, mx_error *err) {
        const mx_model *m = cb->base.model;
        const mx_config *c = &m->cfg;
        if (c->n_experts > 64)
                return mx_error_set(err, -EOPNOTSUPP, "expert streaming on the GPU takes at most 64 experts");
        struct cuda_stream *s = calloc(1, sizeof(*s));
        if (!s)
                return mx_error_set(err, -ENOMEM, "out of memory");
        cb->stream = s;
        s->layers = c->n_layers, s->E = c->n_experts, s->k = c->n_experts_per_tok;
        s->slot_elems = 3ull * c->intermediate_size * c->hidden_size;
        s->lfu = mx_expert_policy_lfu();
        s->configured = budget;
        if (!(s->arena = calloc(s->layers, sizeof(*s->arena))) ||
            !(s->freq = calloc((size_t)s->layers * s->E, sizeof(uint32_t))) ||
            !(s->guessed = calloc(s->layers, sizeof(uint64_t))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        const mx_tensor *w = m->layers[0].w1[0], *q = block_expert(m);
        if (q)
                return mx_error_set(err, -EOPNOTSUPP, "%s: tensor \"%s\" is %s: streaming experts to the GPU takes "
                                    "bf16, f16 or f32 experts (the GPU does not compute with blocks yet); "
                                    "use a GPU that holds the model, or the CPU", m->dir, q->name, mx_dtype_name(q->dtype));
        if (w->dtype != MX_DTYPE_BF16) {
                s->raw_bytes = m->layers[0].w2[0]->nbytes > w->nbytes ? m->layers[0].w2[0]->nbytes : w->nbytes;
                if (mxk_malloc(cb->ctx, &s->raw, s->raw_bytes) < 0)
                        return mx_error_set(err, -ENOMEM, "out of GPU memory");
        }
        int r = make_slots(cb, slots_for(s, budget), err);
        if (r == 0)
                r = mx_cuda_stream_set_host(cb, host_cache, err);
        s->st.streaming = r == 0;
        return r;
}

const char *mx_cuda_stream_describe(cuda_backend *cb, char *buf, size_t len) {
        struct cuda_stream *s = cb->stream;
        mx_expert_stats h;
        mx_expert_cache_stats(s->host, &h);
        snprintf(buf, len, "streaming experts: %u of %u per layer on the GPU, a %s host cache of %.1f GiB (%s)", s->spl,
                 s->E, mx_expert_cache_locked(s->host) ? "page-locked" : "pageable (copies slower)",
                 (double)s->st.host_budget / (1u << 30), h.how);
        return buf;
}

static dslot *find(struct cuda_stream *s, uint32_t L, uint32_t e) {
        for (uint32_t i = 0; i < s->spl; i++)
                if (slot_at(s, L, i)->expert == (int32_t)e)
                        return slot_at(s, L, i);
        return NULL;
}

/* An empty slot, else the first to evict among those not guessed (mask)
 * for the next step. A layer computes every expert already on the device
 * before it takes a slot for a miss, so no slot still wanted is taken. */
static dslot *victim(struct cuda_stream *s, uint32_t L, uint64_t mask) {
        dslot *best = NULL;
        const uint32_t *f = s->freq + (size_t)L * s->E;
        for (uint32_t i = 0; i < s->spl; i++) {
                dslot *d = slot_at(s, L, i);
                if (d->expert < 0)
                        return d;
                if (mask >> d->expert & 1)
                        continue;
                if (!best || mx_expert_evict_first(s->lfu, f[d->expert], d->used, f[best->expert], best->used))
                        best = d;
        }
        return best;
}

/* One matrix from the host slot into the device slot, as bf16. */
static void put(cuda_backend *cb, const mx_tensor *t, uint16_t *dst) {
        struct cuda_stream *s = cb->stream;
        uint64_t n = t->shape[0] * t->shape[1];
        if (t->dtype == MX_DTYPE_BF16) {
                mxk_copy_upload(cb->ctx, dst, t->data, n * 2);
                return;
        }
        mxk_copy_upload(cb->ctx, s->raw, t->data, t->nbytes);
        mxk_copy_to_bf16(cb->ctx, s->raw, t->dtype == MX_DTYPE_F16 ? MXK_F16 : MXK_F32, dst, n);
}

/* Expert e of layer L into slot d: from the host cache (waiting for its
 * reads), up on the copy stream once the slot's last use is over. */
static int upload(cuda_backend *cb, uint32_t L, uint32_t e, dslot *d) {
        struct cuda_stream *s = cb->stream;
        const mx_config *c = &cb->base.model->cfg;
        unpin(cb, d, true);
        d->expert = -1;
        if (pins_in(s, L) >= s->host_spl)
                unpin_layer(cb, L, true); /* a small host cache: its slots are all being copied from */
        double t0 = now();
        mx_expert_view v;
        int r = mx_expert_cache_acquire(s->host, L, e, &v, &cb->err);
        s->st.read_wait_s += now() - t0;
        if (r < 0)
                return r;
        uint16_t *w13 = slot_w13(s, d);
        uint64_t FH = (uint64_t)c->intermediate_size * c->hidden_size;
        mxk_event_wait(cb->ctx, d->freed, true);
        put(cb, &v.w1, w13);
        put(cb, &v.w3, w13 + FH);
        put(cb, &v.w2, w13 + 2 * FH);
        mxk_event_record(cb->ctx, d->ready, true);
        d->expert = (int32_t)e, d->pin = (int32_t)e, d->used = ++s->tick;
        s->st.bytes_uploaded += v.w1.nbytes + v.w2.nbytes + v.w3.nbytes; /* as stored: f32 moves twice bf16's */
        return 0;
}

static void compute(cuda_backend *cb, uint32_t e, dslot *d, const float *x) {
        struct cuda_stream *s = cb->stream;
        const mx_config *c = &cb->base.model->cfg;
        uint64_t FH = (uint64_t)c->intermediate_size * c->hidden_size;
        uint16_t *w13 = slot_w13(s, d);
        mxk_event_wait(cb->ctx, d->ready, false);
        mxk_moe_expert(cb->ctx, &cb->moe, w13, w13 + 2 * FH, s->counts[s->E + e], s->counts[e], x,
                       c->hidden_size, c->intermediate_size);
        mxk_event_record(cb->ctx, d->freed, false);
        d->used = ++s->tick;
}

static void want(struct cuda_stream *s, uint32_t L, uint32_t e) {
        s->freq[(size_t)L * s->E + e]++;
        if (s->guessed[L] >> e & 1)
                s->st.predicted_used++;
        if (find(s, L, e)) {
                s->st.hits++;
        } else {
                s->st.misses++;
                mx_expert_cache_want(s->host, L, e);
        }
}

/* The next layer's router on this layer's input, its top-k per token. */
static int guess_next(cuda_backend *cb, uint32_t L, const float *x, uint32_t n, uint64_t *mask) {
        struct cuda_stream *s = cb->stream;
        const mx_model *m = cb->base.model;
        *mask = 0;
        if (L + 1 >= s->layers)
                return 0;
        if (n > s->pred_cap) {
                mxk_free(cb->ctx, s->d_pred);
                free(s->h_pred);
                s->d_pred = NULL, s->pred_cap = 0;
                if (mxk_malloc(cb->ctx, (void **)&s->d_pred, (size_t)n * s->E * 4) < 0 ||
                    !(s->h_pred = malloc((size_t)n * s->E * 4)))
                        return -ENOMEM;
                s->pred_cap = n;
        }
        const mx_tensor *router = m->layers[L + 1].router;
        mxk_matmul(cb->ctx, mx_cuda_dev(cb, router), s->E, (uint32_t)router->shape[1], x, s->d_pred, n, false,
                   cb->bf16_scratch);
        int r = mxk_download(cb->ctx, s->h_pred, s->d_pred, (size_t)n * s->E * 4);
        for (uint32_t t = 0; r == 0 && t < n; t++) {
                const float *l = s->h_pred + (size_t)t * s->E;
                uint64_t taken = 0;
                for (uint32_t i = 0; i < s->k; i++) {
                        uint32_t best = UINT32_MAX;
                        for (uint32_t e = 0; e < s->E; e++)
                                if (!(taken >> e & 1) && (best == UINT32_MAX || l[e] > l[best]))
                                        best = e;
                        taken |= 1ull << best;
                }
                *mask |= taken;
        }
        return r;
}

/* Guesses for layer L + 1 not on the device: a copy starts for those the
 * host holds (the others' reads started when the layer was routed). */
static void prefetch_next(cuda_backend *cb, uint32_t L, uint64_t mask) {
        struct cuda_stream *s = cb->stream;
        s->guessed[L] = 0;
        for (uint32_t e = 0; e < s->E; e++) {
                if (!(mask >> e & 1) || find(s, L, e))
                        continue;
                s->st.predicted++;
                s->guessed[L] |= 1ull << e;
                if (!mx_expert_cache_ready(s->host, L, e))
                        continue;
                dslot *d = victim(s, L, mask);
                if (d && pins_in(s, L) + 1 < s->host_spl && upload(cb, L, e, d) < 0)
                        cb->err = (mx_error){0}; /* only a guess: the step reads it again if it needs it */
        }
}

int mx_cuda_stream_moe(cuda_backend *cb, uint32_t L, const float *x, float *acc, uint32_t n) {
        struct cuda_stream *s = cb->stream;
        uint32_t E = s->E;
        if (!s->host)
                return mx_error_set(&cb->err, -ENOMEM, "no host memory for streamed experts (a host cache could "
                                    "not be made again)");
        int r = mxk_moe_route(cb->ctx, &cb->moe, cb->router_logits, n, E, s->k);
        uint64_t mask = 0;
        if (r == 0)
                r = mxk_download(cb->ctx, s->counts, cb->moe.counts, (3 * (size_t)E + 1) * 4);
        if (r == 0)
                r = guess_next(cb, L, x, n, &mask);
        if (r < 0)
                return r;
        mx_expert_cache_next_layer(s->host);
        unpin_layer(cb, L, false);
        uint32_t active = s->counts[2 * E], *ids = s->counts + 2 * E + 1;
        if (active > E)
                return mx_error_set(&cb->err, -EIO, "CUDA routing returned %u experts of %u", active, E);
        for (uint32_t i = 0; i < active; i++)
                want(s, L, ids[i]);
        s->guessed[L] = 0;
        for (uint32_t e = 0; L + 1 < s->layers && e < E; e++)
                if (mask >> e & 1 && !find(s, L + 1, e) && !mx_expert_cache_ready(s->host, L + 1, e))
                        mx_expert_cache_prefetch(s->host, L + 1, e); /* disk reads start now */
        /* Those on the device (or on their way) first: their compute hides
         * the others' reads and copies. A miss may then take the slot of
         * one computed already: `computed` remembers them. */
        uint64_t computed = 0;
        for (uint32_t i = 0; i < active; i++) {
                dslot *d = find(s, L, ids[i]);
                if (d)
                        compute(cb, ids[i], d, x), computed |= 1ull << ids[i];
        }
        for (uint32_t i = 0; i < active; i++) {
                if (computed >> ids[i] & 1)
                        continue;
                dslot *d = victim(s, L, 0);
                if (!d)
                        return mx_error_set(&cb->err, -EIO, "layer %u: no expert slot free", L);
                if ((r = upload(cb, L, ids[i], d)) < 0)
                        return r;
                compute(cb, ids[i], d, x);
        }
        mxk_moe_combine(cb->ctx, &cb->moe, acc, n, s->k, cb->base.model->cfg.hidden_size);
        if (L + 1 < s->layers) {
                unpin_layer(cb, L + 1, false);
                prefetch_next(cb, L + 1, mask);
        }
        return mxk_status(cb->ctx, NULL, 0);
}

static int stream_budget_apply(cuda_backend *cb, uint64_t budget, mx_error *err) {
        struct cuda_stream *s = cb->stream;
        uint32_t spl = slots_for(s, budget);
        if (spl == s->spl)
                return 0;
        mxk_sync(cb->ctx, NULL, 0);
        free_slots(cb);
        int r = make_slots(cb, spl, err);
        if (r < 0 && spl > s->k) { /* what was there before may not come back either: the least */
                free_slots(cb);
                r = make_slots(cb, s->k, err);
        }
        return r;
}

int mx_cuda_stream_set(cuda_backend *cb, uint64_t budget, mx_error *err) {
        struct cuda_stream *s = cb->stream;
        s->configured = budget ? budget : (uint64_t)s->layers * s->E * s->slot_elems * 2;
        return stream_budget_apply(cb, s->configured, err);
}

int mx_cuda_stream_make_room(cuda_backend *cb, uint64_t bytes) {
        struct cuda_stream *s = cb->stream;
        uint64_t per_slot = (uint64_t)s->layers * s->slot_elems * 2, margin = 256ull << 20;
        uint64_t drop = (bytes + margin + per_slot - 1) / per_slot;
        if (s->spl <= s->k)
                return -ENOMEM;
        uint32_t spl = drop >= s->spl - s->k ? s->k : s->spl - (uint32_t)drop;
        mx_error err = {0};
        s->calm_since = 0;
        return stream_budget_apply(cb, (uint64_t)spl * per_slot, &err);
}

/* Between steps, at most every half second: another program took GPU
 * memory (free below 256 MiB): half the slots go; when 10 s later the
 * configured budget fits again with 2 GiB to spare, it comes back. */
void mx_cuda_stream_pressure(cuda_backend *cb) {
        struct cuda_stream *s = cb->stream;
        size_t free_b = 0, total_b = 0;
        double t = now();
        if (t - s->checked < 0.5)
                return;
        s->checked = t;
        if (mxk_free_memory(cb->ctx, &free_b, &total_b) < 0)
                return;
        uint64_t have = s->st.budget, low = 256ull << 20, spare = 2ull << 30;
        mx_error err = {0};
        if (free_b < low && s->spl > s->k) {
                s->calm_since = 0;
                stream_budget_apply(cb, have / 2, &err);
                return;
        }
        uint32_t target = slots_for(s, s->configured);
        if (target <= s->spl || free_b < (target - s->spl) * s->layers * s->slot_elems * 2 + spare) {
                s->calm_since = 0;
                return;
        }
        if (!s->calm_since)
                s->calm_since = now();
        else if (now() - s->calm_since >= 10)
                stream_budget_apply(cb, s->configured, &err), s->calm_since = 0;
}

void mx_cuda_stream_stats(cuda_backend *cb, mx_expert_stats *out) {
        struct cuda_stream *s = cb->stream;
        mx_expert_stats h = {0};
        if (s->host)
                mx_expert_cache_stats(s->host, &h);
        *out = s->st;
        uint64_t n = 0;
        for (size_t i = 0; i < (size_t)s->layers * s->spl; i++)
                n += s->slots[i].expert >= 0;
        out->resident = n * s->slot_elems * 2;
        out->resident_max = s->st.resident_max > out->resident ? s->st.resident_max : out->resident;
        s->st.resident_max = out->resident_max;
        out->bytes_read = h.bytes_read, out->reads = h.reads, out->uring_reads = h.uring_reads;
        out->read_wait_s = s->st.read_wait_s;
        out->host_hits = h.hits, out->host_misses = h.misses;
        snprintf(out->how, sizeof(out->how), "%s", h.how);
}
