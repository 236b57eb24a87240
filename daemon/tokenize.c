/* Tokenizing off the event loop. A prompt of hundreds of kilobytes takes
 * tens of milliseconds to tokenize; on the main thread that is as long
 * for everyone's status, cancels and streamed chunks to wait. So prompts
 * go to this thread, one at a time, the next one from the user after the
 * one served last (as the engine's admission does), so that one user's
 * queue of long prompts delays another user's short one by at most one
 * prompt. The daemon refuses a prompt that cannot fit the context before
 * it gets here (md_gen_params_min_tokens), which bounds each job.
 *
 * The main thread submits and collects; the thread alone reads a job's
 * parameters and writes its ids and error while it works on it, and the
 * main thread leaves both alone until the job comes back. */
#include <pthread.h>
#include <string.h>

#include "mx_common.h"
#include "mixtrald.h"

struct md_tok_job {
        uint32_t uid;
        const md_gen_params *p;
        mx_ids *ids;
        mx_error *err;
        void *owner;
        int rc;
        bool cancel;     /* locked */
        md_tok_job *next;
};

struct md_tokenizer_thread {
        const mx_tokenizer *tok;
        int notify_fd;
        pthread_t thread;
        bool started;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        /* locked */
        md_tok_job *waiting;   /* FIFO by next */
        md_tok_job *done;      /* LIFO by next */
        size_t pending;        /* waiting or being tokenized */
        uint32_t last_uid;
        bool stop;
};

/* The first waiting job of the next uid after the last served (wrapping). */
static md_tok_job *pick_locked(md_tokenizer_thread *t) {
        md_tok_job **best = NULL, **first = NULL;
        for (md_tok_job **p = &t->waiting; *p; p = &(*p)->next) {
                uint32_t uid = (*p)->uid;
                if (uid > t->last_uid && (!best || uid < (*best)->uid))
                        best = p;
                if (!first || uid < (*first)->uid)
                        first = p;
        }
        md_tok_job **take = best ? best : first, *j = *take;
        *take = j->next;
        j->next = NULL;
        t->last_uid = j->uid;
        return j;
}

static void finish_locked(md_tokenizer_thread *t, md_tok_job *j) {
        j->next = t->done;
        t->done = j;
        uint64_t one = 1;
        ssize_t k = write(t->notify_fd, &one, sizeof(one));
        (void)k; /* an eventfd at its maximum is already awake */
}

static void *tokenizer_thread(void *arg) {
        md_tokenizer_thread *t = arg;
        pthread_mutex_lock(&t->lock);
        while (!t->stop) {
                if (!t->waiting) {
                        pthread_cond_wait(&t->wake, &t->lock);
                        continue;
                }
                md_tok_job *j = pick_locked(t);
                if (j->cancel) {
                        j->rc = -ECANCELED;
                        finish_locked(t, j);
                        continue;
                }
                pthread_mutex_unlock(&t->lock);
                j->rc = md_gen_params_ids(j->p, t->tok, j->ids, j->err);
                pthread_mutex_lock(&t->lock);
                finish_locked(t, j);
        }
        pthread_mutex_unlock(&t->lock);
        return NULL;
}

int md_tokenize_start(md_tokenizer_thread **out, const mx_tokenizer *tok, int notify_fd, mx_error *err) {
        md_tokenizer_thread *t = calloc(1, sizeof(*t));
        if (!t)
                return mx_error_set(err, -ENOMEM, "out of memory");
        *t = (md_tokenizer_thread){.tok = tok, .notify_fd = notify_fd};
        pthread_mutex_init(&t->lock, NULL);
        pthread_cond_init(&t->wake, NULL);
        int r = pthread_create(&t->thread, NULL, tokenizer_thread, t);
        if (r) {
                md_tokenize_stop(t);
                return mx_error_set(err, -r, "cannot start the tokenizing thread: %s", strerror(r));
        }
        t->started = true;
        *out = t;
        return 0;
}

/* Jobs still here are freed: their owners are being freed too. */
void md_tokenize_stop(md_tokenizer_thread *t) {
        if (!t)
                return;
        pthread_mutex_lock(&t->lock);
        t->stop = true;
        pthread_cond_signal(&t->wake);
        pthread_mutex_unlock(&t->lock);
        if (t->started)
                pthread_join(t->thread, NULL);
        for (md_tok_job *lists[] = {t->waiting, t->done}, **l = lists; l < lists + 2; l++)
                for (md_tok_job *j = *l, *next; j; j = next)
                        next = j->next, free(j);
        pthread_mutex_destroy(&t->lock);
        pthread_cond_destroy(&t->wake);
        free(t);
}

md_tok_job *md_tokenize_submit(md_tokenizer_thread *t, uint32_t uid, const md_gen_params *p, mx_ids *ids,
                               mx_error *err, void *owner) {
        md_tok_job *j = calloc(1, sizeof(*j));
        if (!j)
                return NULL;
        *j = (md_tok_job){.uid = uid, .p = p, .ids = ids, .err = err, .owner = owner};
        pthread_mutex_lock(&t->lock);
        md_tok_job **at = &t->waiting;
        while (*at)
                at = &(*at)->next;
        *at = j;
        t->pending++;
        pthread_cond_signal(&t->wake);
        pthread_mutex_unlock(&t->lock);
        return j;
}

void md_tokenize_cancel(md_tokenizer_thread *t, md_tok_job *j) {
        pthread_mutex_lock(&t->lock);
        j->cancel = true;
        pthread_mutex_unlock(&t->lock);
}

void md_tokenize_collect(md_tokenizer_thread *t, void (*fn)(void *owner, int rc, void *arg), void *arg) {
        pthread_mutex_lock(&t->lock);
        md_tok_job *done = t->done;
        t->done = NULL;
        for (md_tok_job *j = done; j; j = j->next)
                t->pending--;
        pthread_mutex_unlock(&t->lock);
        /* Oldest first: the list is LIFO. */
        md_tok_job *in_order = NULL;
        while (done) {
                md_tok_job *next = done->next;
                done->next = in_order, in_order = done, done = next;
        }
        for (md_tok_job *j = in_order, *next; j; j = next) {
                next = j->next;
                fn(j->owner, j->rc, arg);
                free(j);
        }
}

size_t md_tokenize_pending(md_tokenizer_thread *t) {
        pthread_mutex_lock(&t->lock);
        size_t n = t->pending;
        pthread_mutex_unlock(&t->lock);
        return n;
}
