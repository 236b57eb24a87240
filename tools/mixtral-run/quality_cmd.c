/* Measuring what a quantization costs, as llama.cpp's perplexity tool lets
 * people do:
 *
 *   --perplexity FILE   the text in chunks of --ctx tokens (512 by default),
 *                       each starting with BOS, each scored on its second
 *                       half (so every scored token sees at least half a
 *                       chunk of context): perplexity and its uncertainty;
 *   --kl-base MODEL     also the same chunks through MODEL (the reference,
 *                       e.g. bf16): the KL divergence of this model's token
 *                       distributions from the base's, and how often the
 *                       two agree on the likeliest token;
 *   --logits FILE       the prompt's last-position logits, vocab_size
 *                       little-endian float32 (with --max-tokens 0 nothing
 *                       is generated).
 *
 * One JSON object on standard output; progress on standard error. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mx_common.h"
#include "run.h"

/* The last-position logits of ids (BOS first) into logits (vocab floats);
 * all of them (n x vocab) when all. */
static int eval(mx_engine *e, const int32_t *ids, size_t n, float *logits, bool all, mx_error *err) {
        _cleanup_(mx_seq_freep) mx_seq *s = NULL;
        int r = mx_seq_new(e, (uint32_t)n + 1, &s, err);
        mx_batch_item it = {.seq = s, .tokens = ids, .n_tokens = (uint32_t)n, .logits = logits, .all_logits = all};
        return r < 0 ? r : mx_forward(e, &it, 1, err);
}

int run_logits(const run_opts *o, const mx_load *l, const mx_ids *prompt, mx_error *err) {
        size_t vocab = l->model->cfg.vocab_size;
        _cleanup_free_ float *logits = malloc(vocab * sizeof(float));
        if (!logits)
                return mx_error_set(err, -ENOMEM, "out of memory");
        int r = eval(l->engine, prompt->v, prompt->n, logits, false, err);
        if (r < 0)
                return r;
        _cleanup_fclose_ FILE *f = fopen(o->logits, "we");
        /* The host is little-endian (x86-64, aarch64): the floats as they are. */
        if (!f || fwrite(logits, sizeof(float), vocab, f) != vocab || fflush(f) != 0)
                return mx_error_set(err, -EIO, "%s: cannot write the logits", o->logits);
        return 0;
}

/* log(sum(exp(x))) and softmax into p. */
static double log_softmax(const float *x, size_t n, double *p) {
        double max = -INFINITY, sum = 0;
        for (size_t i = 0; i < n; i++)
                max = x[i] > max ? x[i] : max;
        for (size_t i = 0; i < n; i++)
                sum += p[i] = exp(x[i] - max);
        for (size_t i = 0; i < n; i++)
                p[i] /= sum;
        return max + log(sum);
}

static size_t argmax(const float *x, size_t n) {
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
                if (x[i] > x[best])
                        best = i;
        return best;
}

typedef struct tally {
        double nll, nll2, base_nll;   /* sums over scored tokens */
        double kl, kl_max;
        uint64_t scored, agree;
} tally;

/* One position: the model's logits x (and the base's y) predicting next. */
static void score(tally *t, const float *x, const float *y, size_t vocab, int32_t next, double *p, double *q) {
        double lse = log_softmax(x, vocab, p), nll = lse - x[next];
        t->nll += nll, t->nll2 += nll * nll, t->scored++;
        if (!y)
                return;
        double base_lse = log_softmax(y, vocab, q), kl = 0;
        t->base_nll += base_lse - y[next];
        for (size_t i = 0; i < vocab; i++)
                if (q[i] > 0)
                        kl += q[i] * (log(q[i]) - log(p[i] > 1e-300 ? p[i] : 1e-300));
        t->kl += kl;
        t->kl_max = kl > t->kl_max ? kl : t->kl_max;
        t->agree += argmax(x, vocab) == argmax(y, vocab);
}

static int text_ids(const run_opts *o, const mx_tokenizer *tok, mx_ids *ids, mx_error *err) {
        _cleanup_free_ char *text = NULL;
        size_t len;
        int r = mx_read_file(o->perplexity, 1u << 30, &text, &len, err);
        if (r < 0)
                return r;
        int32_t bos = mx_tokenizer_bos(tok);
        if ((bos >= 0 && mx_ids_push(ids, bos) < 0) || mx_tokenize(tok, text, len, ids) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        return 0;
}

static void print_result(const run_opts *o, const tally *t, uint32_t ctx, size_t chunks, bool base) {
        double mean = t->nll / (double)t->scored;
        double var = t->nll2 / (double)t->scored - mean * mean;
        double ppl = exp(mean), err = ppl * sqrt(var > 0 ? var : 0) / sqrt((double)t->scored);
        printf("{\"text\": \"%s\", \"ctx\": %u, \"chunks\": %zu, \"scored_tokens\": %llu, \"perplexity\": %.6f, "
               "\"perplexity_stderr\": %.6f",
               o->perplexity, ctx, chunks, (unsigned long long)t->scored, ppl, err);
        if (base)
                printf(", \"base\": \"%s\", \"base_perplexity\": %.6f, \"kl_mean\": %.8f, \"kl_max\": %.6f, "
                       "\"top1_agreement\": %.6f",
                       o->kl_base, exp(t->base_nll / (double)t->scored), t->kl / (double)t->scored, t->kl_max,
                       (double)t->agree / (double)t->scored);
        printf("}\n");
}

/* The base model, opened as this one is but for its path. */
static int load_base(const run_opts *o, mx_load *base, mx_error *err) {
        run_opts bo = *o;
        bo.model = o->kl_base, bo.tokenizer = NULL, bo.expert_memory = NULL;
        return run_load(&bo, false, base, err);
}

int run_perplexity(const run_opts *o) {
        mx_error err = {0};
        _cleanup_(mx_load_free) mx_load l = {.gpu = -1}, base = {.gpu = -1};
        _cleanup_(mx_ids_free) mx_ids ids = {0};
        if (run_load(o, true, &l, &err) < 0 || text_ids(o, l.tok, &ids, &err) < 0 ||
            (o->kl_base && load_base(o, &base, &err) < 0))
                return run_fail(&err);
        size_t vocab = l.model->cfg.vocab_size;
        if (o->kl_base && base.model->cfg.vocab_size != vocab) {
                mx_error_set(&err, -EINVAL, "--kl-base %s has a vocabulary of %u, this model %zu", o->kl_base,
                             base.model->cfg.vocab_size, vocab);
                return run_fail(&err);
        }
        uint32_t ctx = o->ctx ? o->ctx : 512;
        size_t chunks = ids.n / ctx;
        if (ctx < 4 || chunks == 0) {
                mx_error_set(&err, -EINVAL, "%s: %zu tokens, not one chunk of --ctx %u", o->perplexity, ids.n, ctx);
                return run_fail(&err);
        }
        _cleanup_free_ float *x = malloc((size_t)ctx * vocab * sizeof(float));
        _cleanup_free_ float *y = o->kl_base ? malloc((size_t)ctx * vocab * sizeof(float)) : NULL;
        _cleanup_free_ double *p = malloc(vocab * sizeof(double)), *q = malloc(vocab * sizeof(double));
        _cleanup_free_ int32_t *chunk = malloc(ctx * sizeof(int32_t));
        if (!x || (o->kl_base && !y) || !p || !q || !chunk)
                return run_fail(&(mx_error){.msg = "out of memory"});
        tally t = {0};
        int32_t bos = mx_tokenizer_bos(l.tok);
        for (size_t c = 0; c < chunks; c++) {
                memcpy(chunk, ids.v + c * ctx, ctx * sizeof(int32_t));
                if (bos >= 0)
                        chunk[0] = bos; /* each chunk a document of its own */
                if (eval(l.engine, chunk, ctx, x, true, &err) < 0 ||
                    (y && eval(base.engine, chunk, ctx, y, true, &err) < 0))
                        return run_fail(&err);
                for (uint32_t j = ctx / 2; j + 1 < ctx; j++)
                        score(&t, x + (size_t)j * vocab, y ? y + (size_t)j * vocab : NULL, vocab, chunk[j + 1], p, q);
                fprintf(stderr, "\rmixtral-run: chunk %zu of %zu, perplexity %.4f", c + 1, chunks,
                        exp(t.nll / (double)t.scored));
        }
        fputc('\n', stderr);
        print_result(o, &t, ctx, chunks, o->kl_base != NULL);
        return fflush(stdout) == 0 ? 0 : 1;
}
