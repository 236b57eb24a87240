/* Sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty,
 * seeds, and the checks on the parameters. Frequencies are measured over
 * many draws with fixed seeds, so the test is deterministic and still
 * checks the distribution, not a hard-coded answer. */
#include <math.h>

#include "mixtral.h"
#include "mx_common.h"
#include "test_util.h"

#define DRAWS 40000

static mx_sampling plain(float temperature, uint64_t seed) {
        return (mx_sampling){.temperature = temperature, .top_k = 0, .top_p = 1, .min_p = 0,
                             .repeat_penalty = 1, .repeat_last_n = 0, .seed = seed};
}

/* Frequencies of each id over DRAWS draws from the same logits. */
static void frequencies(const mx_sampling *p, const float *logits, uint32_t n, double *freq) {
        mx_sampler *s = NULL;
        CHECK(mx_sampler_new(p, n, &s) == 0, "sampler");
        float tmp[16];
        for (uint32_t i = 0; i < n; i++)
                freq[i] = 0;
        for (int d = 0; d < DRAWS; d++) {
                memcpy(tmp, logits, n * sizeof(float));
                int32_t id = mx_sampler_next(s, tmp, NULL, 0);
                CHECK(id >= 0 && (uint32_t)id < n, "id %d", id);
                freq[id] += 1.0 / DRAWS;
        }
        mx_sampler_free(s);
}

static void expect_freq(const char *what, const double *got, const double *want, uint32_t n) {
        for (uint32_t i = 0; i < n; i++)
                CHECK(fabs(got[i] - want[i]) < 0.015, "%s: id %u drawn %.3f of the time, expected %.3f", what,
                      i, got[i], want[i]);
}

static void distributions(void) {
        float l[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
        double f[4];
        mx_sampling p = plain(1, 7);
        frequencies(&p, l, 4, f);
        expect_freq("temperature 1", f, (double[]){0.5, 0.3, 0.15, 0.05}, 4);

        p = plain(2, 7); /* p ~ sqrt(original) */
        frequencies(&p, l, 4, f);
        double z = sqrt(0.5) + sqrt(0.3) + sqrt(0.15) + sqrt(0.05);
        expect_freq("temperature 2", f, (double[]){sqrt(0.5) / z, sqrt(0.3) / z, sqrt(0.15) / z, sqrt(0.05) / z}, 4);

        p = plain(1, 7), p.top_k = 2;
        frequencies(&p, l, 4, f);
        expect_freq("top-k 2", f, (double[]){0.625, 0.375, 0, 0}, 4);

        p = plain(1, 7), p.top_p = 0.6f; /* 0.5 < 0.6, then 0.8: two tokens */
        frequencies(&p, l, 4, f);
        expect_freq("top-p 0.6", f, (double[]){0.625, 0.375, 0, 0}, 4);

        p = plain(1, 7), p.top_p = 0.9f; /* 0.5, 0.8, 0.95: three */
        frequencies(&p, l, 4, f);
        expect_freq("top-p 0.9", f, (double[]){0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0}, 4);

        p = plain(1, 7), p.min_p = 0.5f; /* keep p >= 0.25 */
        frequencies(&p, l, 4, f);
        expect_freq("min-p 0.5", f, (double[]){0.625, 0.375, 0, 0}, 4);

        p = plain(1, 7), p.top_k = 1;
        frequencies(&p, l, 4, f);
        expect_freq("top-k 1", f, (double[]){1, 0, 0, 0}, 4);
}

static int32_t one(const mx_sampling *p, const float *logits, uint32_t n, const int32_t *hist, size_t nh) {
        mx_sampler *s = NULL;
        float tmp[16];
        memcpy(tmp, logits, n * sizeof(float));
        CHECK(mx_sampler_new(p, n, &s) == 0, "sampler");
        int32_t id = mx_sampler_next(s, tmp, hist, nh);
        mx_sampler_free(s);
        return id;
}

static void greedy_and_penalty(void) {
        mx_sampling g = plain(0, 1);
        CHECK(one(&g, (float[]){0.1f, 3.0f, -2.0f, 3.0f}, 4, NULL, 0) == 1, "greedy: highest, lowest id on ties");
        g.repeat_penalty = 1.5f;
        CHECK(one(&g, (float[]){2.0f, 1.9f}, 2, (int32_t[]){0}, 1) == 1, "a positive logit is divided");
        CHECK(one(&g, (float[]){-1.0f, -1.2f}, 2, (int32_t[]){0}, 1) == 1, "a negative logit is multiplied");
        g.repeat_penalty = 1.04f; /* once: 1.923 > 1.9; three times it would be 1.778 */
        CHECK(one(&g, (float[]){2.0f, 1.9f}, 2, (int32_t[]){0, 0, 0}, 3) == 0, "penalised once, not per repeat");
        g.repeat_penalty = 1.5f;
        g.repeat_last_n = 2;
        CHECK(one(&g, (float[]){2.0f, 1.9f, 0.0f}, 3, (int32_t[]){0, 2, 2}, 3) == 0, "outside the window");
}

static void seeds(void) {
        float l[8] = {1, 0.5f, 0.2f, 0.9f, 0.3f, 0.8f, 0.1f, 0.7f};
        int32_t a[64], b[64], c[64];
        int32_t *runs[3] = {a, b, c};
        uint64_t seed[3] = {42, 42, 43};
        for (int r = 0; r < 3; r++) {
                mx_sampling p = plain(1, seed[r]);
                mx_sampler *s = NULL;
                mx_sampler_new(&p, 8, &s);
                for (int i = 0; i < 64; i++) {
                        float tmp[8];
                        memcpy(tmp, l, sizeof(l));
                        runs[r][i] = mx_sampler_next(s, tmp, NULL, 0);
                }
                mx_sampler_free(s);
        }
        CHECK(memcmp(a, b, sizeof(a)) == 0, "the same seed gives the same draws");
        CHECK(memcmp(a, c, sizeof(a)) != 0, "another seed gives other draws");
}

static void expect_bad(mx_sampling p, const char *needle) {
        mx_error err = {0};
        CHECK(mx_sampling_check(&p, &err) < 0 && strstr(err.msg, needle), "expected \"%s\", got \"%s\"", needle,
              err.msg);
}

static void checks(void) {
        mx_sampling d;
        mx_error err = {0};
        mx_sampling_defaults(&d);
        CHECK(mx_sampling_check(&d, &err) == 0, "defaults are valid: %s", err.msg);
        mx_sampling p = d;
        p.temperature = NAN;
        expect_bad(p, "temperature");
        p = d, p.temperature = -1;
        expect_bad(p, "temperature");
        p = d, p.top_p = 0;
        expect_bad(p, "top_p");
        p = d, p.top_p = 1.5f;
        expect_bad(p, "top_p");
        p = d, p.min_p = -0.1f;
        expect_bad(p, "min_p");
        p = d, p.repeat_penalty = 0;
        expect_bad(p, "repeat_penalty");
        p = d, p.repeat_penalty = INFINITY;
        expect_bad(p, "repeat_penalty");
}

int main(void) {
        distributions();
        greedy_and_penalty();
        seeds();
        checks();
        return test_result();
}
