/* The engine thread and its continuous batching. Each step advances every
 * running job together: decoding jobs by one token, prefilling ones by a
 * chunk of their prompt (within a per-step budget, so a long prompt never
 * stalls the others for long). New jobs join at the next step; free
 * places go round-robin between users, not jobs, so one user's hundred
 * requests do not starve another's one.
 *
 * The KV cache is one pool of blocks. A job joins the batch only once it
 * holds blocks for its whole prompt (less what the cache already has) and
 * its first token, leaving a block spare for each job already running; if
 * the pool cannot give them, it waits at the head of the queue and nobody
 * else is admitted until a job ends. Before each step every running job
 * grows by the block its next token needs, oldest first; when the pool is
 * empty the newest running job is suspended (its blocks go back, the full
 * ones staying cached) and waits at the head of the queue to resume where
 * it was. The oldest job can always grow (no request is longer than the
 * pool), so the batch never deadlocks.
 *
 * Before it serves, the thread loads the model (md_sched_load): paging in
 * and uploading take minutes on a large model, and the daemon answers
 * meanwhile; jobs submitted during the load wait in the queue.
 *
 * The lock is this file's alone. The main thread submits, cancels and
 * collects through the functions below; the engine thread alone touches
 * the engine, and publishes each job's output to the job's buffers, then
 * wakes the main thread through an eventfd. A collect moves every job's
 * new output out under the lock, so the main thread reads it after
 * without racing the next step. */
#include <pthread.h>
#include <string.h>
#include <syslog.h>

#include "mx_common.h"
#include "mixtrald.h"

struct md_job {
        md_job_spec spec;          /* main thread's, fixed at submit */
        mx_gen *gen;               /* engine thread; made when first admitted */
        uint64_t admitted;         /* engine thread: order of its last admission (the newest is suspended first) */
        /* locked */
        md_state state;
        uint32_t cached_tokens;
        bool cancel, dirty;
        mx_buf out_text;           /* new output since the last collect */
        mx_ids out_ids;
        mx_finish finish;
        int error_code;
        char error_msg[256];
        uint32_t completion_tokens;
        double t_start, t_first, t_end;
        md_job *queue_next, *dirty_next;
        /* main thread, between collects: what the last collect moved out */
        mx_buf shipped_text;
        mx_ids shipped_ids;
};

struct md_sched {
        const mx_tokenizer *tok;
        md_sched_load *load;
        pthread_t thread;
        bool thread_started;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        /* locked */
        md_sched_opts o;
        mx_engine *e;              /* once loaded */
        bool loaded;
        double load_fraction;
        md_job *queue;             /* FIFO by queue_next */
        md_job **running;          /* [n_running], engine thread writes */
        size_t n_running, cap_running;
        md_job *dirty;
        uint32_t last_uid;         /* round-robin cursor for admission */
        bool stop;
        int stop_code;
        char stop_msg[256];
        mx_expert_stats xstats;    /* as of the last step */
        mx_kv_stats kstats;
        bool kv_wait;              /* the job at the head waits for KV blocks: nobody is admitted until a job ends */
        uint64_t admissions;
        /* engine thread */
        int notify_fd;
        uint32_t last_prefill_uid;
        mx_buf text;               /* one step's new text for one job */
        uint64_t expert_memory;    /* the budget in force */
        uint64_t host_cache;       /* a GPU's host cache in force */
        /* main thread */
        md_news *news;             /* [cap_news], what the last collect returned */
        size_t cap_news;
};

const char *md_state_name(md_state s) {
        static const char *const names[] = {"queued", "prefill", "decode", "done"};
        return s <= MD_DONE ? names[s] : "?";
}

static void wake_main(md_sched *s) {
        uint64_t one = 1;
        ssize_t k = write(s->notify_fd, &one, sizeof(one));
        (void)k; /* an eventfd at its maximum is already awake */
}

static void mark_dirty(md_sched *s, md_job *j) {
        if (j->dirty)
                return;
        j->dirty = true;
        j->dirty_next = s->dirty;
        s->dirty = j;
}

static void remove_running(md_sched *s, md_job *j) {
        for (size_t i = 0; i < s->n_running; i++)
                if (s->running[i] == j) {
                        s->running[i] = s->running[--s->n_running];
                        return;
                }
}

static void unqueue(md_sched *s, md_job *j) {
        for (md_job **p = &s->queue; *p; p = &(*p)->queue_next)
                if (*p == j) {
                        *p = j->queue_next;
                        j->queue_next = NULL;
                        return;
                }
}

static void set_error(md_job *j, int code, const char *msg) {
        if (code && !j->error_code) {
                j->error_code = code;
                snprintf(j->error_msg, sizeof(j->error_msg), "%s", msg);
        }
}

/* Ends j (locked): it leaves the engine, its KV cache is freed, and the
 * main thread learns of it; from here on only the main thread touches it. */
static void end_locked(md_sched *s, md_job *j, int code, const char *msg) {
        set_error(j, code, msg);
        s->kv_wait = false; /* (its blocks, if any, are back) */
        if (j->state == MD_QUEUED)
                unqueue(s, j);
        else
                remove_running(s, j);
        mx_gen_free(j->gen);
        j->gen = NULL;
        j->state = MD_DONE;
        j->t_end = md_now();
        mark_dirty(s, j);
}

/* Cancelled jobs leave at once: the queued ones and, between steps, the
 * running ones, whose KV cache is freed here. */
static void reap_locked(md_sched *s) {
        for (md_job *j = s->queue, *next; j; j = next) {
                next = j->queue_next;
                if (j->cancel)
                        end_locked(s, j, MIXTRALD__V1__ERROR_CODE__CANCELLED, "cancelled");
        }
        for (size_t i = 0; i < s->n_running;) {
                md_job *j = s->running[i];
                if (j->cancel)
                        end_locked(s, j, MIXTRALD__V1__ERROR_CODE__CANCELLED, "cancelled");
                else
                        i++;
        }
}

static uint32_t running_of(const md_sched *s, uint32_t uid) {
        uint32_t n = 0;
        for (size_t i = 0; i < s->n_running; i++)
                n += s->running[i]->spec.uid == uid;
        return n;
}

/* The queued job to admit next: one that ran before (it was suspended,
 * or it waits for KV blocks), in queue order; else the first of the next
 * user after the cursor (in uid order, wrapping) who is under their
 * concurrency limit. */
static md_job **pick_locked(md_sched *s) {
        md_job **best = NULL, **first = NULL;
        for (md_job **p = &s->queue; *p; p = &(*p)->queue_next) {
                const md_job_spec *j = &(*p)->spec;
                if (j->max_concurrent && running_of(s, j->uid) >= j->max_concurrent)
                        continue;
                if ((*p)->gen)
                        return p;
                if (j->uid > s->last_uid && (!best || j->uid < (*best)->spec.uid))
                        best = p;
                if (!first || j->uid < (*first)->spec.uid)
                        first = p;
        }
        return best ? best : first;
}

/* Its request, and its KV blocks (leaving one spare for each running
 * job): 0, -ENOBUFS to wait, or another error that ended it. */
static int start_locked(md_sched *s, md_job *j) {
        mx_error err = {0};
        int rc = j->gen ? 0 : mx_gen_new(s->e, s->tok, j->spec.prompt, j->spec.n_prompt, &j->spec.opts, &j->gen, &err);
        if (rc == 0)
                rc = mx_gen_start(j->gen, (uint32_t)s->n_running, &err);
        /* With nothing running the whole pool is there: it never fits. */
        if (rc == -ENOBUFS && s->n_running == 0) {
                snprintf(err.msg, sizeof(err.msg), "the request does not fit the KV cache (kv_memory)");
                rc = -E2BIG;
        }
        if (rc < 0 && rc != -ENOBUFS)
                end_locked(s, j, rc == -E2BIG ? MIXTRALD__V1__ERROR_CODE__TOO_LONG : MIXTRALD__V1__ERROR_CODE__INTERNAL,
                           err.msg);
        if (rc == 0)
                j->cached_tokens = (uint32_t)mx_gen_cached_tokens(j->gen);
        return rc;
}

static void admit_locked(md_sched *s) {
        md_job **p;
        while (!s->kv_wait && s->n_running < s->o.max_batch && (p = pick_locked(s))) {
                md_job *j = *p;
                if (mx_grow((void **)&s->running, &s->cap_running, s->n_running + 1, sizeof(*s->running)) < 0)
                        return; /* try again next step */
                int rc = start_locked(s, j);
                if (rc == -ENOBUFS)
                        s->kv_wait = true; /* (it waits at its place) */
                if (rc < 0)
                        continue;
                *p = j->queue_next;
                j->queue_next = NULL;
                j->state = MD_PREFILL;
                j->admitted = ++s->admissions;
                if (j->t_start <= 0)
                        j->t_start = md_now();
                s->last_uid = j->spec.uid;
                s->running[s->n_running++] = j;
                mark_dirty(s, j); /* (status shows it running) */
        }
}

/* j goes back to the head of the queue without its blocks, to resume once
 * a job has ended. */
static void suspend_locked(md_sched *s, md_job *j) {
        md_log(LOG_INFO, "a request of uid %u is suspended: the KV cache is full; it resumes when a request ends",
               j->spec.uid);
        mx_gen_suspend(j->gen);
        remove_running(s, j);
        j->queue_next = s->queue;
        s->queue = j;
        j->state = MD_QUEUED;
        s->kv_wait = true;
        mark_dirty(s, j);
}

static md_job *newest_running(md_sched *s) {
        md_job *newest = NULL;
        for (size_t i = 0; i < s->n_running; i++)
                if (!newest || s->running[i]->admitted > newest->admitted)
                        newest = s->running[i];
        return newest;
}

static int by_admission(const void *a, const void *b) {
        const md_job *x = *(md_job *const *)a, *y = *(md_job *const *)b;
        return x->admitted < y->admitted ? -1 : x->admitted > y->admitted;
}

/* Every running job gets the block its next token needs, oldest first,
 * suspending the newest while the pool has none; then run[*n] is what
 * still runs, oldest first. */
static void grow_locked(md_sched *s, md_job **run, size_t *n) {
        qsort(s->running, s->n_running, sizeof(*s->running), by_admission);
        for (size_t i = 0; i < s->n_running; i++) {
                md_job *j = s->running[i];
                while (mx_gen_grow(j->gen) == -ENOBUFS) {
                        md_job *victim = newest_running(s);
                        suspend_locked(s, victim);
                        if (victim == j)
                                break;
                }
        }
        if (s->n_running == 0)
                s->kv_wait = false; /* (then the head job has the whole pool to try) */
        *n = s->n_running;
        memcpy(run, s->running, *n * sizeof(*run));
}

/* Prefilling jobs take prompt chunks in round-robin by uid until the
 * step's budget is spent; decoding ones always go. */
static size_t build_batch(md_sched *s, md_job **run, size_t n, mx_batch_item *items, md_job **who) {
        size_t k = 0;
        uint32_t budget = s->o.prefill_chunk;
        for (size_t i = 0; i < n; i++)
                if (run[i]->gen && run[i]->state == MD_DECODE) {
                        mx_gen_prepare(run[i]->gen, &items[k]);
                        who[k++] = run[i];
                }
        bool any = false;
        /* Users after the one served last go first: pass 0 takes uids above
         * the cursor, pass 1 the rest. */
        uint32_t cursor = s->last_prefill_uid;
        for (int pass = 0; pass < 2; pass++)
                for (size_t i = 0; i < n; i++) {
                        md_job *j = run[i];
                        if (!j->gen || j->state != MD_PREFILL || (j->spec.uid > cursor) != (pass == 0))
                                continue;
                        mx_batch_item it;
                        mx_gen_prepare(j->gen, &it);
                        if (any && it.n_tokens > budget)
                                continue;
                        budget = it.n_tokens > budget ? 0 : budget - it.n_tokens;
                        any = true;
                        items[k] = it;
                        who[k++] = j;
                        s->last_prefill_uid = j->spec.uid;
                }
        return k;
}

/* After a step: each job's new text and ids go to its buffers. */
static void publish(md_sched *s, md_job *j, int32_t token, int rc) {
        pthread_mutex_lock(&s->lock);
        double t = md_now();
        if (rc == 0 && token >= 0) {
                if (j->state == MD_PREFILL)
                        j->state = MD_DECODE;
                if (j->t_first <= 0)
                        j->t_first = t;
                j->completion_tokens++;
                if (j->spec.want_ids && mx_ids_push(&j->out_ids, token) < 0)
                        rc = -ENOMEM;
        }
        if (rc == 0 && s->text.n && mx_buf_append(&j->out_text, s->text.p, s->text.n) < 0)
                rc = -ENOMEM;
        if (rc == 0)
                j->finish = mx_gen_finished(j->gen);
        if (rc < 0)
                end_locked(s, j, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
        else if (j->finish != MX_FINISH_NONE)
                end_locked(s, j, 0, NULL);
        else if (s->text.n || token >= 0)
                mark_dirty(s, j);
        pthread_mutex_unlock(&s->lock);
}

static void step(md_sched *s, md_job **run, size_t n, mx_batch_item *items, md_job **who) {
        size_t k = build_batch(s, run, n, items, who);
        if (k == 0)
                return;
        mx_error err = {0};
        int rc = mx_forward(s->e, items, k, &err);
        if (rc < 0) {
                pthread_mutex_lock(&s->lock);
                for (size_t i = 0; i < k; i++)
                        end_locked(s, who[i], MIXTRALD__V1__ERROR_CODE__INTERNAL, err.msg);
                pthread_mutex_unlock(&s->lock);
                return;
        }
        for (size_t i = 0; i < k; i++) {
                int32_t token = -1;
                s->text.n = 0;
                int r = mx_gen_advance(who[i]->gen, &s->text, &token);
                publish(s, who[i], token, r);
        }
}

/* A new expert budget or host cache (SIGHUP, memory pressure) takes
 * effect between steps, on this thread, which alone touches the engine. */
static void apply_budget(md_sched *s, uint64_t want, uint64_t host) {
        mx_error err = {0};
        if (want != s->expert_memory) {
                if (mx_engine_set_expert_memory(s->e, want, &err) < 0)
                        md_log(LOG_ERR, "expert memory stays at %llu bytes: %s", (unsigned long long)s->expert_memory,
                               err.msg);
                else
                        md_log(LOG_INFO, "expert memory now %llu bytes%s", (unsigned long long)want,
                               want ? "" : " (all mapped)");
        }
        if (host != s->host_cache) {
                if (mx_engine_set_host_cache(s->e, host, &err) < 0)
                        md_log(LOG_ERR, "the host cache stays at %llu bytes: %s", (unsigned long long)s->host_cache,
                               err.msg);
                else
                        md_log(LOG_INFO, "the GPU's host cache now %llu bytes", (unsigned long long)host);
        }
        s->expert_memory = want, s->host_cache = host; /* (tried once per change) */
}

/* Progress of the load, for status (and the caller's own callback). */
typedef struct load_watch {
        md_sched *s;
        void (*progress)(const char *what, uint64_t done, uint64_t total, void *arg);
        void *arg;
} load_watch;

static void on_load_progress(const char *what, uint64_t done, uint64_t total, void *arg) {
        load_watch *w = arg;
        pthread_mutex_lock(&w->s->lock);
        w->s->load_fraction = total ? (double)done / (double)total : 1;
        pthread_mutex_unlock(&w->s->lock);
        if (w->progress)
                w->progress(what, done, total, w->arg);
}

static void load(md_sched *s) {
        md_sched_load *ld = s->load;
        load_watch w = {s, ld->opts->progress, ld->opts->progress_arg};
        mx_load_opts o = *ld->opts;
        o.progress = on_load_progress, o.progress_arg = &w;
        ld->rc = mx_load_engine(ld->load, &o, &ld->err);
        mx_expert_stats xs = {0};
        mx_kv_stats ks = {0};
        if (ld->rc == 0)
                mx_engine_expert_stats(ld->load->engine, &xs), mx_engine_kv_stats(ld->load->engine, &ks);
        pthread_mutex_lock(&s->lock);
        s->loaded = true;
        s->e = ld->rc == 0 ? ld->load->engine : NULL;
        s->xstats = xs;
        s->kstats = ks;
        /* What the engine opened with is what is in force (a GPU chose
         * its host cache itself). */
        s->expert_memory = s->o.expert_memory = ld->load->expert_memory;
        s->host_cache = s->o.host_cache = xs.host_budget;
        if (!s->e) { /* nothing will ever run: the main thread stops */
                s->stop = true, s->stop_code = MIXTRALD__V1__ERROR_CODE__UNAVAILABLE;
                snprintf(s->stop_msg, sizeof(s->stop_msg), "the model could not be loaded: %.200s", ld->err.msg);
        }
        pthread_mutex_unlock(&s->lock);
        wake_main(s);
}

/* Buffers for one step of n jobs; false when out of memory. */
typedef struct step_bufs {
        md_job **run, **who;
        mx_batch_item *items;
        size_t cap;
} step_bufs;

static bool reserve_bufs(step_bufs *b, size_t n) {
        if (n <= b->cap)
                return true;
        free(b->run), free(b->who), free(b->items);
        b->run = calloc(n, sizeof(*b->run)), b->who = calloc(n, sizeof(*b->who));
        b->items = calloc(n, sizeof(*b->items));
        b->cap = b->run && b->who && b->items ? n : 0;
        return b->cap != 0;
}

/* One turn of the loop, locked: false when there is nothing to run now
 * (it waited, or changed a budget). */
static bool prepare_locked(md_sched *s) {
        reap_locked(s);
        admit_locked(s);
        if (s->dirty)
                wake_main(s);
        if (s->o.expert_memory != s->expert_memory || s->o.host_cache != s->host_cache) {
                uint64_t budget = s->o.expert_memory, host = s->o.host_cache;
                pthread_mutex_unlock(&s->lock);
                apply_budget(s, budget, host);
                mx_expert_stats xs;
                mx_engine_expert_stats(s->e, &xs);
                pthread_mutex_lock(&s->lock);
                s->xstats = xs;
                return false;
        }
        if (s->n_running == 0) {
                pthread_cond_wait(&s->wake, &s->lock);
                return false;
        }
        return true;
}

static void *engine_thread(void *arg) {
        md_sched *s = arg;
        if (s->load)
                load(s);
        step_bufs b = {0};
        pthread_mutex_lock(&s->lock);
        if (!s->load)
                s->expert_memory = s->o.expert_memory, s->host_cache = s->o.host_cache;
        while (!s->stop) {
                if (!prepare_locked(s))
                        continue;
                size_t n = s->n_running;
                if (!reserve_bufs(&b, n)) {
                        pthread_mutex_unlock(&s->lock);
                        nanosleep(&(struct timespec){0, 10000000}, NULL);
                        pthread_mutex_lock(&s->lock);
                        continue;
                }
                grow_locked(s, b.run, &n);
                pthread_mutex_unlock(&s->lock);
                step(s, b.run, n, b.items, b.who);
                mx_expert_stats xs;
                mx_engine_expert_stats(s->e, &xs);
                pthread_mutex_lock(&s->lock);
                s->xstats = xs;
                mx_engine_kv_stats(s->e, &s->kstats);
        }
        while (s->queue)
                end_locked(s, s->queue, s->stop_code, s->stop_msg);
        while (s->n_running)
                end_locked(s, s->running[0], s->stop_code, s->stop_msg);
        wake_main(s);
        pthread_mutex_unlock(&s->lock);
        free(b.run), free(b.who), free(b.items);
        return NULL;
}

int md_sched_start(md_sched **out, md_sched_load *ld, const mx_tokenizer *tok, const md_sched_opts *o,
                   int notify_fd, mx_error *err) {
        md_sched *s = calloc(1, sizeof(*s));
        if (!s)
                return mx_error_set(err, -ENOMEM, "out of memory");
        *s = (md_sched){.tok = tok, .load = ld, .o = *o, .notify_fd = notify_fd, .loaded = !ld};
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->wake, NULL);
        int r = pthread_create(&s->thread, NULL, engine_thread, s);
        if (r) {
                md_sched_free(s);
                return mx_error_set(err, -r, "cannot start the engine thread: %s", strerror(r));
        }
        s->thread_started = true;
        *out = s;
        return 0;
}

bool md_sched_loaded(md_sched *s, double *fraction) {
        pthread_mutex_lock(&s->lock);
        bool loaded = s->loaded;
        if (fraction)
                *fraction = loaded ? 1 : s->load_fraction;
        pthread_mutex_unlock(&s->lock);
        return loaded;
}

mx_engine *md_sched_engine(md_sched *s) {
        pthread_mutex_lock(&s->lock);
        mx_engine *e = s->e;
        pthread_mutex_unlock(&s->lock);
        return e;
}

void md_sched_stop(md_sched *s, int code, const char *msg) {
        if (!s)
                return;
        pthread_mutex_lock(&s->lock);
        if (!s->stop) {
                s->stop = true;
                s->stop_code = code;
                snprintf(s->stop_msg, sizeof(s->stop_msg), "%s", msg);
        }
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        if (s->thread_started)
                pthread_join(s->thread, NULL);
        s->thread_started = false;
}

static void job_free(md_job *j) {
        mx_gen_free(j->gen);
        mx_buf_free(&j->out_text);
        mx_ids_free(&j->out_ids);
        mx_buf_free(&j->shipped_text);
        mx_ids_free(&j->shipped_ids);
        free(j);
}

/* After md_sched_stop, and after the main thread released every job. */
void md_sched_free(md_sched *s) {
        if (!s)
                return;
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->wake);
        free(s->running);
        free(s->news);
        mx_buf_free(&s->text);
        free(s);
}

void md_sched_set_opts(md_sched *s, const md_sched_opts *o) {
        pthread_mutex_lock(&s->lock);
        s->o = *o;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
}

md_job *md_sched_submit(md_sched *s, const md_job_spec *spec) {
        md_job *j = calloc(1, sizeof(*j));
        if (!j)
                return NULL;
        j->spec = *spec;
        pthread_mutex_lock(&s->lock);
        j->state = MD_QUEUED;
        md_job **p = &s->queue;
        while (*p)
                p = &(*p)->queue_next;
        *p = j;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        return j;
}

void md_sched_cancel(md_sched *s, md_job *j, int code, const char *msg) {
        pthread_mutex_lock(&s->lock);
        if (j->state != MD_DONE) {
                if (code)
                        set_error(j, code, msg);
                j->cancel = true;
                pthread_cond_signal(&s->wake);
        }
        pthread_mutex_unlock(&s->lock);
}

void md_sched_abort_queued(md_sched *s, int code, const char *msg) {
        pthread_mutex_lock(&s->lock);
        /* (A job suspended for KV blocks has started: it stays.) */
        for (md_job *j = s->queue, *next; j; j = next) {
                next = j->queue_next;
                if (j->t_start <= 0)
                        end_locked(s, j, code, msg);
        }
        pthread_mutex_unlock(&s->lock);
        wake_main(s);
}

void md_sched_abort_all(md_sched *s, int code, const char *msg) {
        pthread_mutex_lock(&s->lock);
        while (s->queue)
                end_locked(s, s->queue, code, msg);
        for (size_t i = 0; i < s->n_running; i++) {
                set_error(s->running[i], code, msg);
                s->running[i]->cancel = true;
        }
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        wake_main(s);
}

/* A job's output moves to its shipped buffers (emptied first); the news
 * points at them. */
static void take(md_job *j, md_news *n) {
        mx_buf t = j->shipped_text;
        j->shipped_text = j->out_text, j->out_text = t;
        j->out_text.n = 0;
        mx_ids ids = j->shipped_ids;
        j->shipped_ids = j->out_ids, j->out_ids = ids;
        j->out_ids.n = 0;
        *n = (md_news){.job = j, .owner = j->spec.owner, .text = j->shipped_text.p, .text_len = j->shipped_text.n,
                       .ids = j->shipped_ids.v, .n_ids = j->shipped_ids.n, .state = j->state,
                       .completion_tokens = j->completion_tokens, .cached_tokens = j->cached_tokens,
                       .finish = j->finish, .error_code = j->error_code,
                       .error_msg = j->error_msg, .t_start = j->t_start, .t_first = j->t_first, .t_end = j->t_end};
}

size_t md_sched_collect(md_sched *s, const md_news **out) {
        pthread_mutex_lock(&s->lock);
        size_t n = 0;
        for (md_job *j = s->dirty; j; j = j->dirty_next)
                n++;
        if (mx_grow((void **)&s->news, &s->cap_news, n, sizeof(*s->news)) < 0) {
                pthread_mutex_unlock(&s->lock);
                wake_main(s); /* try again */
                return 0;
        }
        size_t k = 0;
        for (md_job *j = s->dirty; j; j = j->dirty_next) {
                j->dirty = false;
                take(j, &s->news[k++]);
        }
        s->dirty = NULL;
        pthread_mutex_unlock(&s->lock);
        *out = s->news;
        return k;
}

void md_sched_release(md_sched *s, md_job *j) {
        (void)s; /* ended: the engine thread no longer knows it */
        job_free(j);
}

void md_sched_expert_stats(md_sched *s, mx_expert_stats *out) {
        pthread_mutex_lock(&s->lock);
        *out = s->xstats;
        pthread_mutex_unlock(&s->lock);
}

void md_sched_kv_stats(md_sched *s, mx_kv_stats *out) {
        pthread_mutex_lock(&s->lock);
        *out = s->kstats;
        pthread_mutex_unlock(&s->lock);
}
