/* Continuous batching, measured: the same N requests sent one at a time
 * and all at once to a real mixtrald, each on its own connection.
 * Aggregate tokens/s and time to first token (median and worst) for each,
 * as one JSON line per run.
 *
 *   daemon-bench MIXTRALD MODEL_DIR CLIENTS TOKENS [THREADS] */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

typedef struct run_stats {
        double seconds, tokens, ttft_p50, ttft_max;
} run_stats;

static int finish(int n, dh_result *res, double t0, run_stats *st) {
        double *ttft = calloc((size_t)n, sizeof(double));
        st->seconds = dh_now_s() - t0;
        st->tokens = 0;
        for (int i = 0; i < n; i++) {
                if (res[i].error) {
                        fprintf(stderr, "request %d failed: %s\n", i, res[i].message);
                        free(ttft);
                        return -1;
                }
                st->tokens += res[i].completion_tokens;
                ttft[i] = res[i].ttft_s;
        }
        qsort(ttft, (size_t)n, sizeof(double), dh_cmp_double);
        st->ttft_p50 = ttft[n / 2];
        st->ttft_max = ttft[n - 1];
        free(ttft);
        return 0;
}

static int one_at_a_time(dh_daemon *d, int n, uint32_t tokens, run_stats *st) {
        dh_result *res = calloc((size_t)n, sizeof(*res));
        double t0 = dh_now_s();
        for (int i = 0; i < n; i++) {
                dh_gen g = dh_bench_request(i, tokens);
                if (dh_run(d, &g, &res[i]) < 0)
                        return -1;
        }
        int r = finish(n, res, t0, st);
        for (int i = 0; i < n; i++)
                dh_result_free(&res[i]);
        free(res);
        return r;
}

static int all_at_once(dh_daemon *d, int n, uint32_t tokens, run_stats *st) {
        dh_result *res = calloc((size_t)n, sizeof(*res));
        int *fds = calloc((size_t)n, sizeof(int));
        double t0 = dh_now_s();
        for (int i = 0; i < n; i++) {
                dh_gen g = dh_bench_request(i, tokens);
                if ((fds[i] = dh_connect(d)) < 0 || dh_send_generate(fds[i], 1, &g) < 0)
                        return -1;
        }
        /* Each collect returns when its request ends; the others keep
         * running meanwhile, so waiting in order costs nothing. */
        for (int i = 0; i < n; i++) {
                if (dh_collect(fds[i], 1, &res[i], 600000) < 0)
                        return -1;
                close(fds[i]);
        }
        int r = finish(n, res, t0, st);
        for (int i = 0; i < n; i++)
                dh_result_free(&res[i]);
        free(res);
        free(fds);
        return r;
}

int main(int argc, char **argv) {
        if (argc < 5) {
                fprintf(stderr, "usage: daemon-bench MIXTRALD MODEL_DIR CLIENTS TOKENS [THREADS]\n");
                return 2;
        }
        int n = atoi(argv[3]);
        uint32_t tokens = (uint32_t)atoi(argv[4]);
        char config[256];
        snprintf(config, sizeof(config), "[daemon]\nthreads=%s\nmax_batch=%d\nmax_queue=%d\n[quota]\nmax_concurrent=0\n",
                 argc > 5 ? argv[5] : "0", n, n);
        signal(SIGPIPE, SIG_IGN);
        dh_daemon d;
        if (n < 1 || dh_init(&d, argv[1], argv[2], config) < 0 || dh_start(&d, NULL) < 0) {
                fprintf(stderr, "cannot start the daemon\n");
                return 1;
        }
        /* One warm-up request pages the weights in. */
        run_stats warm, seq, par;
        int r = one_at_a_time(&d, 1, 4, &warm);
        if (r == 0)
                r = one_at_a_time(&d, n, tokens, &seq);
        if (r == 0)
                r = all_at_once(&d, n, tokens, &par);
        if (r == 0)
                printf("{\"clients\": %d, \"tokens_each\": %u, \"threads\": \"%s\", "
                       "\"one_at_a_time\": {\"tokens_per_s\": %.1f, \"ttft_p50_s\": %.3f, \"ttft_max_s\": %.3f}, "
                       "\"batched\": {\"tokens_per_s\": %.1f, \"ttft_p50_s\": %.3f, \"ttft_max_s\": %.3f}, "
                       "\"speedup\": %.2f}\n",
                       n, tokens, argc > 5 ? argv[5] : "all", seq.tokens / seq.seconds, seq.ttft_p50, seq.ttft_max,
                       par.tokens / par.seconds, par.ttft_p50, par.ttft_max,
                       (par.tokens / par.seconds) / (seq.tokens / seq.seconds));
        dh_stop(&d);
        dh_cleanup(&d);
        return r == 0 ? 0 : 1;
}
