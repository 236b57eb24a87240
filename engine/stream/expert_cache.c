/* Experts within a budget (stream.h). Each layer owns the same
 * number of slots, so reading ahead for the next layer never evicts what
 * the current one is using. A slot holds one expert's w1, w2, w3 as read:
 * each from the aligned block before it to the aligned block after it (so
 * O_DIRECT can read it), the tensor starting `delta` bytes in. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "stream.h"
#include "model.h"
#include "mx_common.h"

enum { EMPTY, LOADING, READY };

typedef struct part {
        uint32_t file;
        uint64_t off;   /* aligned */
        size_t len;     /* aligned */
        size_t delta;   /* where the tensor starts in what is read */
        size_t need;    /* delta + the tensor's bytes: a read shorter than this failed */
        size_t at;      /* where in the slot */
} part;

typedef struct slot {
        int32_t expert; /* -1: none */
        uint8_t state, pending;
        bool predicted, broken;
        uint32_t pins;
        uint64_t used, keep;
} slot;

struct mx_expert_cache {
        const mx_model *m;
        mx_io *io;
        uint8_t *arena;
        size_t slot_bytes;
        uint32_t layers, E, spl;
        slot *slots;  /* [layer][spl] */
        part *parts;  /* [layer][expert][3] */
        uint64_t tick, stamp, expert_bytes;
        char why[320]; /* the last failed read */
        uint64_t carried_uring, carried_reads; /* from caches this one replaced */
        uint32_t *freq;  /* [layer][expert]: times the router chose it (LFU) */
        bool lfu;        /* MX_EXPERT_POLICY=lru turns it off (bench/README.md: LFU measured better) */
        const mx_expert_pin *pin;
        bool locked;     /* pin->lock took the arena */
        mx_expert_stats st;
};

static uint64_t align_down(uint64_t x) {
        return x / MX_IO_ALIGN * MX_IO_ALIGN;
}

static uint64_t align_up(uint64_t x) {
        return (x + MX_IO_ALIGN - 1) / MX_IO_ALIGN * MX_IO_ALIGN;
}

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int file_index(const mx_model *m, const mx_tensor *t, uint32_t *out) {
        for (size_t i = 0; i < m->n_files; i++)
                if (strcmp(m->files[i].name, t->file) == 0) {
                        *out = (uint32_t)i;
                        return 0;
                }
        return -ENOENT;
}

/* Where every expert's three tensors are, and how big a slot must be. */
static int plan_parts(mx_expert_cache *c, mx_error *err) {
        const mx_model *m = c->m;
        size_t most = 0;
        for (uint32_t L = 0; L < c->layers; L++)
                for (uint32_t e = 0; e < c->E; e++) {
                        const mx_tensor *w[3] = {m->layers[L].w1[e], m->layers[L].w2[e], m->layers[L].w3[e]};
                        size_t at = 0;
                        for (int k = 0; k < 3; k++) {
                                part *p = &c->parts[((size_t)L * c->E + e) * 3 + k];
                                if (file_index(m, w[k], &p->file) < 0)
                                        return mx_error_set(err, -EINVAL, "%s: expert streaming needs the model's files",
                                                            m->dir);
                                p->off = align_down(w[k]->offset);
                                p->delta = w[k]->offset - p->off;
                                p->need = p->delta + w[k]->nbytes;
                                p->len = align_up(p->need);
                                p->at = at;
                                at += p->len;
                        }
                        most = at > most ? at : most;
                        if (L == 0 && e == 0)
                                c->expert_bytes = w[0]->nbytes + w[1]->nbytes + w[2]->nbytes;
                }
        c->slot_bytes = most;
        return 0;
}

void mx_expert_cache_free(mx_expert_cache *c) {
        if (!c)
                return;
        mx_io_close(c->io); /* waits for reads still landing in the arena */
        if (c->locked)
                c->pin->unlock(c->arena);
        free(c->arena);
        free(c->slots);
        free(c->parts);
        free(c->freq);
        free(c);
}

static int open_io(mx_expert_cache *c, mx_error *err) {
        const mx_model *m = c->m;
        _cleanup_free_ char **paths = calloc(m->n_files ? m->n_files : 1, sizeof(char *));
        if (!paths)
                return mx_error_set(err, -ENOMEM, "out of memory");
        int r = 0;
        for (size_t i = 0; i < m->n_files; i++)
                if (!(paths[i] = mx_path_join(m->dir, m->files[i].name)))
                        r = mx_error_set(err, -ENOMEM, "out of memory");
        if (r == 0)
                r = mx_io_open(&c->io, (const char *const *)paths, m->n_files, c->arena,
                               (size_t)c->layers * c->spl * c->slot_bytes, c->slot_bytes, err);
        for (size_t i = 0; i < m->n_files; i++)
                free(paths[i]);
        return r;
}

bool mx_expert_policy_lfu(void) {
        const char *policy = getenv("MX_EXPERT_POLICY");
        return !(policy && strcmp(policy, "lru") == 0);
}

int mx_expert_cache_new(const mx_model *m, uint64_t budget, const mx_expert_pin *pin, mx_expert_cache **out,
                        mx_error *err) {
        const mx_config *cfg = &m->cfg;
        if (m->n_files == 0)
                return mx_error_set(err, -EINVAL, "%s: expert streaming needs the model's files", m->dir);
        if (mx_model_quantized(m))
                return mx_error_set(err, -EINVAL, "%s: the experts were quantized in memory (%s) and no longer match "
                                    "the files expert streaming reads: stream from a saved GGUF of the quantized "
                                    "model instead", m->dir, mx_ftype_name(mx_model_quantized(m)));
        _cleanup_(mx_expert_cache_freep) mx_expert_cache *c = calloc(1, sizeof(*c));
        if (!c || !(c->parts = calloc((size_t)cfg->n_layers * cfg->n_experts * 3, sizeof(part))) ||
            !(c->freq = calloc((size_t)cfg->n_layers * cfg->n_experts, sizeof(uint32_t))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        c->lfu = mx_expert_policy_lfu();
        c->m = m, c->layers = cfg->n_layers, c->E = cfg->n_experts;
        int r = plan_parts(c, err);
        if (r < 0)
                return r;
        uint64_t per_layer = budget / cfg->n_layers / c->expert_bytes;
        c->spl = (uint32_t)(per_layer < cfg->n_experts_per_tok ? cfg->n_experts_per_tok
                            : per_layer > cfg->n_experts   ? cfg->n_experts
                                                           : per_layer);
        size_t n = (size_t)c->layers * c->spl, bytes;
        void *arena = NULL;
        if (!mx_mul_size(n, c->slot_bytes, &bytes) || posix_memalign(&arena, MX_IO_ALIGN, bytes ? bytes : 1) != 0 ||
            !(c->slots = calloc(n, sizeof(slot)))) {
                free(arena);
                return mx_error_set(err, -ENOMEM, "out of memory for %u experts per layer (%.1f GiB)", c->spl,
                                    (double)n * (double)c->slot_bytes / (1u << 30));
        }
        c->arena = arena;
        c->pin = pin;
        c->locked = pin && pin->lock(arena, bytes) == 0;
        for (size_t i = 0; i < n; i++)
                c->slots[i].expert = -1;
        if ((r = open_io(c, err)) < 0)
                return r;
        c->st.streaming = true;
        c->st.slots_per_layer = c->spl;
        c->st.budget = (uint64_t)c->spl * c->layers * c->expert_bytes;
        mx_io_info info;
        mx_io_get_info(c->io, &info);
        snprintf(c->st.how, sizeof(c->st.how), "%s, %s", info.how, c->lfu ? "LFU" : "LRU");
        *out = MX_TAKE_PTR(c);
        return 0;
}

static slot *slot_of(mx_expert_cache *c, uint32_t L, uint32_t i) {
        return &c->slots[(size_t)L * c->spl + i];
}

/* A slot whose reads failed, not wanted by the step under way (a guess
 * for the next layer, or left by a request that failed) holds nothing:
 * its expert is read again when asked for, and the slot is free. One the
 * step wants keeps its failure for acquire to report. */
static bool failed(const mx_expert_cache *c, const slot *s) {
        return s->state == READY && s->broken && !s->pins && s->keep != c->stamp;
}

static slot *find(mx_expert_cache *c, uint32_t L, uint32_t e) {
        for (uint32_t i = 0; i < c->spl; i++) {
                slot *s = slot_of(c, L, i);
                if (s->expert == (int32_t)e && s->state != EMPTY && !failed(c, s))
                        return s;
        }
        return NULL;
}

/* Whether a should go before b: least recently used (or, with LFU, least
 * often chosen, then least recently used). */
static bool evict_first(const mx_expert_cache *c, uint32_t L, const slot *a, const slot *b) {
        const uint32_t *f = c->freq + (size_t)L * c->E;
        return mx_expert_evict_first(c->lfu, f[a->expert], a->used, f[b->expert], b->used);
}

/* An empty slot, else the first to evict of those neither in use nor on
 * their way; those wanted by the current layer only when `hard`. */
static slot *victim(mx_expert_cache *c, uint32_t L, bool hard) {
        slot *best = NULL;
        for (uint32_t i = 0; i < c->spl; i++) {
                slot *s = slot_of(c, L, i);
                if (s->state == EMPTY || failed(c, s))
                        return s;
                if (s->state == LOADING || s->pins || (!hard && s->keep == c->stamp))
                        continue;
                if (!best || evict_first(c, L, s, best))
                        best = s;
        }
        return best;
}

static void update_resident(mx_expert_cache *c) {
        uint64_t n = 0;
        for (size_t i = 0; i < (size_t)c->layers * c->spl; i++)
                n += c->slots[i].state != EMPTY;
        c->st.resident = n * c->expert_bytes;
        if (c->st.resident > c->st.resident_max)
                c->st.resident_max = c->st.resident;
}

static void start_load(mx_expert_cache *c, slot *s, uint32_t L, uint32_t e, bool predicted) {
        size_t idx = (size_t)(s - c->slots);
        uint8_t *base = c->arena + idx * c->slot_bytes;
        *s = (slot){.expert = (int32_t)e, .state = LOADING, .predicted = predicted, .used = ++c->tick, .keep = s->keep};
        for (int k = 0; k < 3; k++) {
                const part *p = &c->parts[((size_t)L * c->E + e) * 3 + k];
                int r = mx_io_submit(c->io, p->file, p->off, p->len, base + p->at, idx * 4 + (uint64_t)k);
                if (r < 0) {
                        s->broken = true;
                        if (r == -ESTALE)
                                snprintf(c->why, sizeof(c->why), "%s was replaced by a different file (its header "
                                         "differs): restart to load it", mx_io_path(c->io, p->file));
                        else
                                snprintf(c->why, sizeof(c->why), "%s: cannot start a read: %s",
                                         mx_io_path(c->io, p->file), strerror(-r));
                        continue;
                }
                s->pending++;
                c->st.reads++;
        }
        if (!s->pending)
                s->state = READY; /* broken: acquire reports it */
        update_resident(c);
}

/* Says what a short read means: the file changed or got shorter. */
static void explain_short(mx_expert_cache *c, const part *p, int64_t got) {
        const char *path = mx_io_path(c->io, p->file);
        struct stat st;
        if (stat(path, &st) == 0 && (uint64_t)st.st_size < p->off + p->need)
                snprintf(c->why, sizeof(c->why), "%s is now %lld bytes, too short for the expert at %llu: "
                         "the file was truncated or replaced while in use", path, (long long)st.st_size,
                         (unsigned long long)(p->off + p->delta));
        else
                snprintf(c->why, sizeof(c->why), "%s: short read at %llu (%lld of %zu bytes)", path,
                         (unsigned long long)p->off, (long long)got, p->need);
}

/* Takes one completion. */
static int pump(mx_expert_cache *c) {
        uint64_t tag;
        int64_t res;
        int r = mx_io_wait(c->io, &tag, &res);
        if (r < 0)
                return r;
        slot *s = &c->slots[tag / 4];
        uint32_t L = (uint32_t)(tag / 4 / c->spl);
        const part *p = &c->parts[((size_t)L * c->E + (uint32_t)s->expert) * 3 + tag % 4];
        if (res < 0) {
                s->broken = true;
                snprintf(c->why, sizeof(c->why), "%s: read at %llu: %s", mx_io_path(c->io, p->file),
                         (unsigned long long)p->off, strerror((int)-res));
        } else if ((uint64_t)res < p->need) {
                s->broken = true;
                explain_short(c, p, res);
        } else {
                c->st.bytes_read += (uint64_t)res;
        }
        if (res < 0 || (uint64_t)res < p->need)
                mx_io_suspect(c->io, p->file);
        if (--s->pending == 0)
                s->state = READY;
        return 0;
}

void mx_expert_cache_want(mx_expert_cache *c, uint32_t L, uint32_t e) {
        slot *s = find(c, L, e);
        if (s && s->keep == c->stamp)
                return; /* another token of this step chose it too */
        c->freq[(size_t)L * c->E + e]++;
        if (s) {
                c->st.hits++; /* resident, or on its way since the last layer guessed it */
        } else {
                c->st.misses++;
                if (!(s = victim(c, L, false)))
                        return; /* every slot busy: acquire reads it in its turn */
                start_load(c, s, L, e, false);
        }
        s->keep = c->stamp;
}

void mx_expert_cache_prefetch(mx_expert_cache *c, uint32_t L, uint32_t e) {
        if (find(c, L, e))
                return;
        slot *s = victim(c, L, false);
        if (!s)
                return;
        start_load(c, s, L, e, true);
        c->st.predicted++;
}

static void fill_view(mx_expert_cache *c, const slot *s, uint32_t L, uint32_t e, mx_expert_view *v) {
        const mx_layer *l = &c->m->layers[L];
        const uint8_t *base = c->arena + (size_t)(s - c->slots) * c->slot_bytes;
        const part *p = &c->parts[((size_t)L * c->E + e) * 3];
        v->w1 = *l->w1[e], v->w2 = *l->w2[e], v->w3 = *l->w3[e];
        v->w1.data = base + p[0].at + p[0].delta;
        v->w2.data = base + p[1].at + p[1].delta;
        v->w3.data = base + p[2].at + p[2].delta;
}

int mx_expert_cache_acquire(mx_expert_cache *c, uint32_t L, uint32_t e, mx_expert_view *v, mx_error *err) {
        double t0 = now();
        slot *s = find(c, L, e);
        if (!s) { /* not started when wanted, or pushed out since */
                while (!(s = victim(c, L, true)))
                        if (pump(c) < 0) /* every slot on its way: let one land */
                                return mx_error_set(err, -EIO, "expert reads: nothing in flight and no slot free");
                start_load(c, s, L, e, false);
        }
        while (s->pending)
                if (pump(c) < 0)
                        return mx_error_set(err, -EIO, "expert reads: lost a completion");
        c->st.read_wait_s += now() - t0;
        if (s->broken) {
                s->state = EMPTY, s->expert = -1;
                update_resident(c);
                return mx_error_set(err, -EIO, "layer %u, expert %u: %s", L, e, c->why);
        }
        if (s->predicted)
                c->st.predicted_used++, s->predicted = false;
        s->pins++;
        s->used = ++c->tick;
        fill_view(c, s, L, e, v);
        return 0;
}

bool mx_expert_cache_ready(mx_expert_cache *c, uint32_t L, uint32_t e) {
        const slot *s = find(c, L, e);
        return s && s->state == READY && !s->broken;
}

void mx_expert_cache_release(mx_expert_cache *c, uint32_t L, uint32_t e) {
        slot *s = find(c, L, e);
        if (s && s->pins)
                s->pins--;
}

uint32_t mx_expert_cache_slots(const mx_expert_cache *c) {
        return c->spl;
}

bool mx_expert_cache_locked(const mx_expert_cache *c) {
        return c->locked;
}

void mx_expert_cache_next_layer(mx_expert_cache *c) {
        c->stamp++;
}

void mx_expert_cache_carry(mx_expert_cache *c, const mx_expert_stats *b) {
        c->st.hits += b->hits, c->st.misses += b->misses, c->st.bytes_read += b->bytes_read;
        c->st.reads += b->reads, c->st.read_wait_s += b->read_wait_s;
        c->carried_reads = b->reads;
        c->st.predicted += b->predicted, c->st.predicted_used += b->predicted_used;
        c->carried_uring = b->uring_reads;
        if (b->resident_max > c->st.resident_max)
                c->st.resident_max = b->resident_max;
}

void mx_expert_cache_stats(const mx_expert_cache *c, mx_expert_stats *s) {
        *s = c->st;
        mx_io_info info;
        mx_io_get_info(c->io, &info);
        s->uring_reads = c->carried_uring + (info.uring ? c->st.reads - c->carried_reads : 0);
}

int mx_host_cache_parse(const char *s, const mx_model *m, uint64_t *out, mx_error *err) {
        if (!strcmp(s, "all")) {
                *out = UINT64_MAX; /* (the cache holds at most all of them) */
                return 0;
        }
        return mx_expert_budget_parse(s, m, out, err);
}

static uint64_t experts_bytes(const mx_model *m) {
        uint64_t all = 0;
        for (uint32_t L = 0; L < m->cfg.n_layers; L++)
                for (uint32_t e = 0; e < m->cfg.n_experts; e++)
                        all += m->layers[L].w1[e]->nbytes + m->layers[L].w2[e]->nbytes + m->layers[L].w3[e]->nbytes;
        return all;
}

int mx_expert_budget_parse(const char *s, const mx_model *m, uint64_t *out, mx_error *err) {
        uint64_t all = m ? experts_bytes(m) : 0, v;
        double fraction = 0, bytes = 0;
        if (!strcmp(s, "auto") || !strcmp(s, "all"))
                v = 0;
        else if (!strcmp(s, "min"))
                v = 1; /* the cache keeps top-k per layer whatever it is given */
        else if (mx_parse_amount(s, &fraction, &bytes)) {
                double want = fraction > 0 ? fraction * (double)all : bytes;
                /* All of them or more: nothing to stream. */
                v = want < 1 ? 1 : want >= (double)all ? all : (uint64_t)want;
        } else if (m)
                return mx_error_set(err, -EINVAL, "expert memory \"%s\": expected auto, min, bytes (K, M, G, T) "
                                    "or a percentage (up to 100%%) of the experts' %.2f GiB", s,
                                    (double)all / (1u << 30));
        else
                return mx_error_set(err, -EINVAL, "\"%s\": expected auto, min, bytes (K, M, G, T) or a "
                                    "percentage (up to 100%%) of the experts", s);
        if (m && out)
                *out = v;
        return 0;
}
