/* Choosing the next token from the logits, in Hugging Face's order:
 *
 *   repetition penalty (each distinct token of the last repeat_last_n:
 *   positive logits divided, negative multiplied) -> temperature ->
 *   top-k -> top-p (smallest set holding p of the mass) -> min-p (keep
 *   tokens at least min_p times as likely as the best) -> draw.
 *
 * Temperature 0 is greedy: the highest logit, the lowest id among equals.
 * The draw uses xoshiro256** seeded from the request's seed, so a seed
 * reproduces a run on any machine. */
#include <math.h>
#include <string.h>

#include "mx_common.h"

#include "mixtral.h"

typedef struct cand {
        float logit;
        int32_t id;
} cand;

struct mx_sampler {
        mx_sampling p;
        uint32_t vocab;
        uint64_t s[4];
        cand *c;
        uint32_t *stamp; /* marks tokens already penalised this step */
        uint32_t step;
};

void mx_sampling_defaults(mx_sampling *p) {
        *p = (mx_sampling){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
                           .repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 0};
}

int mx_sampling_check(const mx_sampling *p, mx_error *err) {
        if (!isfinite(p->temperature) || p->temperature < 0 || p->temperature > 100)
                return mx_error_set(err, -EINVAL, "temperature %g is outside [0, 100]", p->temperature);
        if (!isfinite(p->top_p) || p->top_p <= 0 || p->top_p > 1)
                return mx_error_set(err, -EINVAL, "top_p %g is outside (0, 1]", p->top_p);
        if (!isfinite(p->min_p) || p->min_p < 0 || p->min_p > 1)
                return mx_error_set(err, -EINVAL, "min_p %g is outside [0, 1]", p->min_p);
        if (!isfinite(p->repeat_penalty) || p->repeat_penalty <= 0 || p->repeat_penalty > 100)
                return mx_error_set(err, -EINVAL, "repeat_penalty %g is outside (0, 100]",
                                    p->repeat_penalty);
        return 0;
}

static uint64_t splitmix(uint64_t *x) {
        uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
        return (x << k) | (x >> (64 - k));
}

static double uniform(mx_sampler *s) {
        uint64_t *t = s->s, r = rotl(t[1] * 5, 7) * 9, u = t[1] << 17;
        t[2] ^= t[0], t[3] ^= t[1], t[1] ^= t[2], t[0] ^= t[3], t[2] ^= u, t[3] = rotl(t[3], 45);
        return (double)(r >> 11) * 0x1.0p-53;
}

int mx_sampler_new(const mx_sampling *p, uint32_t vocab, mx_sampler **out) {
        mx_sampler *s = calloc(1, sizeof(*s));
        if (!s || !(s->c = malloc(vocab * sizeof(cand))) || !(s->stamp = calloc(vocab, sizeof(uint32_t)))) {
                mx_sampler_free(s);
                return -ENOMEM;
        }
        s->p = *p;
        s->vocab = vocab;
        uint64_t x = p->seed;
        for (int i = 0; i < 4; i++)
                s->s[i] = splitmix(&x);
        *out = s;
        return 0;
}

void mx_sampler_free(mx_sampler *s) {
        if (!s)
                return;
        free(s->c);
        free(s->stamp);
        free(s);
}

static void penalise(mx_sampler *s, float *logits, const int32_t *hist, size_t n) {
        float pen = s->p.repeat_penalty;
        if (pen == 1.0f)
                return;
        size_t from = s->p.repeat_last_n && n > s->p.repeat_last_n ? n - s->p.repeat_last_n : 0;
        if (++s->step == 0) { /* the stamps wrapped: start them over */
                memset(s->stamp, 0, s->vocab * sizeof(uint32_t));
                s->step = 1;
        }
        for (size_t i = from; i < n; i++) {
                int32_t id = hist[i];
                if (id < 0 || (uint32_t)id >= s->vocab || s->stamp[id] == s->step)
                        continue;
                s->stamp[id] = s->step;
                logits[id] = logits[id] > 0 ? logits[id] / pen : logits[id] * pen;
        }
}

static int by_logit(const void *a, const void *b) {
        const cand *x = a, *y = b;
        if (x->logit != y->logit)
                return x->logit > y->logit ? -1 : 1;
        return x->id < y->id ? -1 : x->id > y->id;
}

/* Keeps the k best of c[0..n) in c[0..k) (unordered): a heap of the k
 * best so far, its worst on top; O(n log k). */
static void sift_down(cand *h, uint32_t k, uint32_t i) {
        for (;;) {
                uint32_t w = i, l = 2 * i + 1, r = l + 1;
                if (l < k && by_logit(&h[l], &h[w]) > 0)
                        w = l;
                if (r < k && by_logit(&h[r], &h[w]) > 0)
                        w = r;
                if (w == i)
                        return;
                cand t = h[i];
                h[i] = h[w];
                h[w] = t;
                i = w;
        }
}

static void select_top(cand *c, uint32_t n, uint32_t k) {
        for (uint32_t i = k / 2; i-- > 0;)
                sift_down(c, k, i);
        for (uint32_t i = k; i < n; i++)
                if (by_logit(&c[i], &c[0]) < 0) {
                        c[0] = c[i];
                        sift_down(c, k, 0);
                }
}

/* The first of the highest logits (NaN never wins; a NaN first logit
 * does, as nothing compares above it). In two passes, the maximum over 16
 * lanes first, as the compiler vectorizes a fixed-width inner loop: the
 * search over a vocabulary runs once per decoded token while the other
 * threads wait. */
static int32_t greedy(const float *logits, uint32_t vocab) {
        if (!(logits[0] == logits[0]))
                return 0;
        float lane[16];
        uint32_t i = 0;
        for (int j = 0; j < 16; j++)
                lane[j] = logits[0];
        for (; i + 16 <= vocab; i += 16)
                for (int j = 0; j < 16; j++)
                        lane[j] = logits[i + j] > lane[j] ? logits[i + j] : lane[j];
        float max = logits[0];
        for (int j = 0; j < 16; j++)
                max = lane[j] > max ? lane[j] : max;
        for (; i < vocab; i++)
                max = logits[i] > max ? logits[i] : max;
        for (i = 0; logits[i] != max; i++)
                ;
        return (int32_t)i;
}

int32_t mx_sampler_next(mx_sampler *s, float *logits, const int32_t *history, size_t n_history) {
        penalise(s, logits, history, n_history);
        if (s->p.temperature == 0)
                return greedy(logits, s->vocab);

        uint32_t n = s->vocab;
        for (uint32_t i = 0; i < n; i++)
                s->c[i] = (cand){logits[i] / s->p.temperature, (int32_t)i};
        if (s->p.top_k > 0 && s->p.top_k < n) {
                select_top(s->c, n, s->p.top_k);
                n = s->p.top_k;
        }
        qsort(s->c, n, sizeof(cand), by_logit);

        /* Softmax over what is left (best first), then top-p and min-p; the
         * best token always stays. Its probability is 1/sum. */
        double sum = 0, max = s->c[0].logit;
        for (uint32_t i = 0; i < n; i++)
                sum += exp((double)s->c[i].logit - max);
        double mass = 0, floor = s->p.min_p / sum;
        uint32_t keep = 0;
        for (; keep < n; keep++) {
                double p = exp((double)s->c[keep].logit - max) / sum;
                if (keep > 0 && (mass >= s->p.top_p || p < floor))
                        break;
                mass += p;
        }
        double u = uniform(s) * mass, acc = 0;
        for (uint32_t i = 0; i < keep; i++) {
                acc += exp((double)s->c[i].logit - max) / sum;
                if (u < acc)
                        return s->c[i].id;
        }
        return s->c[keep - 1].id;
}

const mx_sampling *mx_sampler_settings(const mx_sampler *s) {
        return &s->p;
}

double mx_sampler_uniform(mx_sampler *s) {
        return uniform(s);
}
