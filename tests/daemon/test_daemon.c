/* mixtrald as clients meet it, over its real socket with the demo model:
 * the same text as mixtral-run, batching that changes nothing, cancel and
 * disconnect, bad input of every kind, slow and many clients.
 *
 *   test-daemon MIXTRALD MIXTRAL_RUN DEMO_MODEL_DIR */
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "harness.h"
#include "test_util.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* AddressSanitizer keeps freed memory in quarantine (256 MiB), so resident
 * memory says nothing about the daemon's own bounds there. */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_SLACK_KIB (512L * 1024)
#else
#define RSS_SLACK_KIB (64L * 1024)
#endif

static const char *mixtrald, *mixtral_run, *model;

static const char config[] =
        "[daemon]\n"
        "threads = 1\n"
        "max_batch = 8\n"
        "max_queue = 256\n"
        "max_connections_per_uid = 300\n"
        "max_output_bytes = 64K\n"
        "max_frame_bytes = 64K\n"
        "prefill_chunk = 16\n"
        "[quota]\n"
        "max_concurrent = 0\n"
        "max_queued = 0\n";

/* mixtral-run's stdout for the same request (it adds a final newline). */
static char *run_offline(const char *const *argv) {
        int p[2];
        if (pipe(p) < 0)
                return NULL;
        pid_t pid = fork();
        if (pid == 0) {
                dup2(p[1], STDOUT_FILENO);
                close(p[0]);
                execv(argv[0], (char *const *)argv);
                _exit(127);
        }
        close(p[1]);
        char *out = NULL;
        size_t n = 0;
        FILE *f = fdopen(p[0], "r");
        char buf[4096];
        size_t k;
        while ((k = fread(buf, 1, sizeof(buf), f)) > 0) {
                out = realloc(out, n + k + 1);
                memcpy(out + n, buf, k);
                n += k;
                out[n] = '\0';
        }
        fclose(f);
        int st;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                free(out);
                return NULL;
        }
        if (n && out[n - 1] == '\n')
                out[n - 1] = '\0';
        return out ? out : strdup("");
}

static void test_same_as_offline(dh_daemon *d) {
        /* Raw prompts keep the leading space; chat answers drop it. */
        struct {
                const char *prompt, *system;
                bool raw;
                const char *temp, *seed, *n;
        } cases[] = {
                {"Once upon a time", NULL, true, "0.7", "7", "24"},
                {"Hello", NULL, false, "0.8", "3", "16"},
                {"Write a haiku", "Be brief.", false, "0", "1", "12"},
                {"Ünïcödé ✓ 日本語", NULL, true, "1.0", "99", "20"},
        };
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                const char *argv[24] = {mixtral_run, "--model", model, "--threads", "1", "--temperature",
                                        cases[i].temp, "--seed", cases[i].seed, "--max-tokens", cases[i].n};
                size_t k = 11;
                argv[k++] = cases[i].raw ? "--prompt" : "--chat";
                argv[k++] = cases[i].prompt;
                if (cases[i].system)
                        argv[k++] = "--system", argv[k++] = cases[i].system;
                char *want = run_offline(argv);
                CHECK(want, "mixtral-run failed for case %zu", i);
                dh_gen g = {.prompt = cases[i].prompt, .system = cases[i].system, .raw = cases[i].raw,
                            .has_temperature = true, .temperature = atof(cases[i].temp),
                            .seed = strtoull(cases[i].seed, NULL, 10), .max_tokens = atoi(cases[i].n)};
                dh_result res = {0};
                int rc = dh_run(d, &g, &res);
                CHECK(rc == 0 && res.error == 0, "case %zu: rc %d, error %d: %s", i, rc, res.error, res.message);
                CHECK(want && res.text && strcmp(want, res.text) == 0, "case %zu: daemon '%s' != mixtral-run '%s'",
                      i, res.text ? res.text : "", want ? want : "");
                CHECK(res.completion_tokens == (uint32_t)atoi(cases[i].n) || strcmp(res.reason, "length"),
                      "case %zu: %u tokens, reason %s", i, res.completion_tokens, res.reason);
                free(want);
                dh_result_free(&res);
        }
}

#define N_BATCH 12

static dh_gen batch_gen(size_t i) {
        static const char *prompts[] = {"The cat", "A long time ago in a galaxy", "1 2 3 4 5 6 7 8 9 10 11 12 13",
                                        "def main():", "Bonjour", "Ω"};
        return (dh_gen){.prompt = prompts[i % 6], .raw = i % 2 == 0, .want_ids = true, .seed = 1000 + i,
                        .has_temperature = true, .temperature = i % 3 == 0 ? 0.0 : 0.9,
                        .max_tokens = 10 + 7 * (uint32_t)i};
}

/* Requests alone, then all at once on one connection and on many: the
 * engine's batching must not change a single token. */
static void test_batched_equals_alone(dh_daemon *d) {
        dh_result alone[N_BATCH] = {{0}}, muxed[N_BATCH] = {{0}}, parallel[N_BATCH] = {{0}};
        for (size_t i = 0; i < N_BATCH; i++) {
                dh_gen g = batch_gen(i);
                CHECK(dh_run(d, &g, &alone[i]) == 0 && alone[i].error == 0, "alone %zu failed", i);
        }
        int fd = dh_connect(d);
        for (size_t i = 0; i < N_BATCH; i++) {
                dh_gen g = batch_gen(i);
                CHECK(dh_send_generate(fd, i + 1, &g) == 0, "send %zu", i);
        }
        CHECK(dh_collect_many(fd, muxed, N_BATCH, 120000) == 0, "multiplexed requests did not all end");
        close(fd);

        int fds[N_BATCH];
        for (size_t i = 0; i < N_BATCH; i++) {
                dh_gen g = batch_gen(i);
                fds[i] = dh_connect(d);
                CHECK(fds[i] >= 0 && dh_send_generate(fds[i], 1, &g) == 0, "connect/send %zu", i);
        }
        for (size_t i = 0; i < N_BATCH; i++) {
                CHECK(dh_collect(fds[i], 1, &parallel[i], 120000) == 0, "parallel %zu did not end", i);
                close(fds[i]);
        }
        for (size_t i = 0; i < N_BATCH; i++) {
                CHECK(alone[i].n_ids > 0, "request %zu produced nothing", i);
                CHECK(ids_eq(alone[i].ids, alone[i].n_ids, muxed[i].ids, muxed[i].n_ids) && muxed[i].text &&
                              strcmp(alone[i].text, muxed[i].text) == 0,
                      "request %zu: batched on one connection differs from alone", i);
                CHECK(ids_eq(alone[i].ids, alone[i].n_ids, parallel[i].ids, parallel[i].n_ids),
                      "request %zu: batched over connections differs from alone", i);
                dh_result_free(&alone[i]), dh_result_free(&muxed[i]), dh_result_free(&parallel[i]);
        }
}

static uint32_t live_requests(dh_daemon *d) {
        Mixtrald__V1__Response *r = dh_status(d);
        if (!r)
                return UINT32_MAX;
        uint32_t n = r->status->queued + r->status->running;
        mixtrald__v1__response__free_unpacked(r, NULL);
        return n;
}

static bool wait_idle(dh_daemon *d, int ms) {
        for (int t = 0; t < ms; t += 20) {
                if (live_requests(d) == 0)
                        return true;
                usleep(20000);
        }
        return false;
}

static void test_cancel_and_disconnect(dh_daemon *d) {
        /* A request that would run to the end of the context. */
        dh_gen g = {.prompt = "Tell me everything", .raw = true, .seed = 5, .ignore_eos = true};
        int fd = dh_connect(d);
        CHECK(dh_send_generate(fd, 1, &g) == 0, "send");
        int rc;
        uint64_t id = 0;
        for (int i = 0; i < 5 && !id; i++) {
                Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
                if (r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_CHUNK)
                        id = r->request_id;
                if (r)
                        mixtrald__v1__response__free_unpacked(r, NULL);
        }
        CHECK(id != 0, "no output before cancelling");
        /* Cancelled from another connection of the same user. */
        int fd2 = dh_connect(d);
        CHECK(dh_send_cancel(fd2, 9, id) == 0, "send cancel");
        Mixtrald__V1__Response *r = dh_recv(fd2, 10000, &rc);
        CHECK(r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_CANCELLED, "no cancel reply");
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        dh_result res = {0};
        CHECK(dh_collect(fd, 1, &res, 10000) == 0 && res.error == MIXTRALD__V1__ERROR_CODE__CANCELLED,
              "the cancelled request ended with %d (%s)", res.error, res.message);
        dh_result_free(&res);
        CHECK(dh_send_cancel(fd2, 10, id) == 0, "send second cancel");
        r = dh_recv(fd2, 10000, &rc);
        CHECK(r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR &&
                      r->error->code == MIXTRALD__V1__ERROR_CODE__NOT_FOUND,
              "cancelling an ended request is not NOT_FOUND");
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        close(fd2);
        CHECK(wait_idle(d, 2000), "the cancelled request is still there");

        /* A client that goes away mid-request frees it at once. */
        CHECK(dh_send_generate(fd, 2, &g) == 0, "send");
        r = dh_recv(fd, 10000, &rc);
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        CHECK(live_requests(d) == 1, "the request is not running");
        close(fd);
        CHECK(wait_idle(d, 2000), "a disconnected client's request is still there");
}

/* Sends raw bytes, then expects a BAD_FRAME error (when expect_error) and
 * the connection closed by the daemon. */
static void bad_bytes(dh_daemon *d, const char *what, const void *bytes, size_t n, bool expect_error, bool half_close) {
        int fd = dh_connect(d);
        CHECK(fd >= 0, "%s: connect", what);
        CHECK(mxp_write_all(fd, bytes, n) == 0, "%s: write", what);
        if (half_close)
                shutdown(fd, SHUT_WR);
        int rc;
        Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
        if (expect_error) {
                CHECK(r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR &&
                              r->error->code == MIXTRALD__V1__ERROR_CODE__BAD_FRAME,
                      "%s: no BAD_FRAME error (rc %d)", what, rc);
                if (r)
                        mixtrald__v1__response__free_unpacked(r, NULL);
                r = dh_recv(fd, 10000, &rc);
        }
        CHECK(!r && rc == -ECONNRESET, "%s: the connection stayed open (rc %d)", what, rc);
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        close(fd);
}

static void test_bad_frames(dh_daemon *d) {
        bad_bytes(d, "zero-length frame", "\x00", 1, true, false);
        bad_bytes(d, "oversized frame", "\xff\xff\x7f", 3, true, false);      /* 2 MiB > 64K */
        bad_bytes(d, "malformed varint", "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11, true, false);
        bad_bytes(d, "unparsable body", "\x04\xff\xff\xff\xff", 5, true, false);
        bad_bytes(d, "truncated frame", "\x64\x08\x01", 3, false, true);      /* 100 promised, 2 sent */
        char junk[4096];
        srand(42);
        for (int round = 0; round < 20; round++) {
                for (size_t i = 0; i < sizeof(junk); i++)
                        junk[i] = (char)rand();
                int fd = dh_connect(d);
                (void)!write(fd, junk, (size_t)(rand() % (int)sizeof(junk)) + 1);
                close(fd);
        }
        /* A frame that parses but asks for nothing known: an error, and
         * the connection goes on. */
        int fd = dh_connect(d), rc;
        CHECK(mxp_write_all(fd, "\x02\x08\x05", 3) == 0, "write");
        Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
        CHECK(r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR && r->tag == 5 &&
                      r->error->code == MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT,
              "an empty request is not INVALID_ARGUMENT");
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        dh_gen g = {.prompt = "still here", .raw = true, .max_tokens = 3, .ignore_eos = true};
        dh_result res = {0};
        CHECK(dh_send_generate(fd, 6, &g) == 0 && dh_collect(fd, 6, &res, 10000) == 0 && res.error == 0 &&
                      res.completion_tokens == 3,
              "the connection does not serve after an unknown request");
        dh_result_free(&res);
        close(fd);
}

/* Sends one Generate with fields set by `set`, expecting error `code`. */
static void expect_refused(dh_daemon *d, const char *what, void (*set)(Mixtrald__V1__Generate *), int code) {
        Mixtrald__V1__Generate g = MIXTRALD__V1__GENERATE__INIT;
        g.prompt = "hello";
        set(&g);
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.has_tag = true, req.tag = 3;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_GENERATE, req.generate = &g;
        int fd = dh_connect(d);
        dh_result res = {0};
        CHECK(mxp_send(fd, &req.base) == 0 && dh_collect(fd, 3, &res, 10000) == 0, "%s: no answer", what);
        CHECK(res.error == code && !res.accepted, "%s: got error %d (%s), expected %s", what, res.error, res.message,
              mxp_error_name(code));
        dh_result_free(&res);
        close(fd);
}

static void set_nan(Mixtrald__V1__Generate *g) { g->has_temperature = true, g->temperature = NAN; }
static void set_neg_temp(Mixtrald__V1__Generate *g) { g->has_temperature = true, g->temperature = -1; }
static void set_huge_temp(Mixtrald__V1__Generate *g) { g->has_temperature = true, g->temperature = 1e300; }
static void set_top_p0(Mixtrald__V1__Generate *g) { g->has_top_p = true, g->top_p = 0; }
static void set_top_p_big(Mixtrald__V1__Generate *g) { g->has_top_p = true, g->top_p = 1.5; }
static void set_min_p_neg(Mixtrald__V1__Generate *g) { g->has_min_p = true, g->min_p = -0.1; }
static void set_penalty0(Mixtrald__V1__Generate *g) { g->has_repeat_penalty = true, g->repeat_penalty = 0; }
static void set_inf_penalty(Mixtrald__V1__Generate *g) { g->has_repeat_penalty = true, g->repeat_penalty = INFINITY; }
static void set_bad_utf8(Mixtrald__V1__Generate *g) { g->prompt = "caf\xc3"; }
static void set_surrogate(Mixtrald__V1__Generate *g) { g->prompt = "\xed\xa0\x80"; }
static void set_empty(Mixtrald__V1__Generate *g) { g->prompt = ""; }
static void set_no_prompt(Mixtrald__V1__Generate *g) { g->prompt = NULL; }
static void set_raw_system(Mixtrald__V1__Generate *g) { g->has_raw = g->raw = true, g->system = "sys"; }
static void set_bad_utf8_system(Mixtrald__V1__Generate *g) { g->system = "\xff"; }
static void set_empty_stop(Mixtrald__V1__Generate *g) {
        static char *stops[] = {""};
        g->n_stop = 1, g->stop = stops;
}
static void set_many_stops(Mixtrald__V1__Generate *g) {
        static char *stops[100];
        for (int i = 0; i < 100; i++)
                stops[i] = "x";
        g->n_stop = 100, g->stop = stops;
}
static void set_bad_role(Mixtrald__V1__Generate *g) {
        static Mixtrald__V1__ChatMessage m = MIXTRALD__V1__CHAT_MESSAGE__INIT, *ms[] = {&m};
        m.role = "wizard", m.content = "hi";
        g->prompt = NULL, g->n_messages = 1, g->messages = ms;
}
static void set_prompt_and_messages(Mixtrald__V1__Generate *g) {
        static Mixtrald__V1__ChatMessage m = MIXTRALD__V1__CHAT_MESSAGE__INIT, *ms[] = {&m};
        m.role = "user", m.content = "hi";
        g->n_messages = 1, g->messages = ms;
}
static void set_too_long(Mixtrald__V1__Generate *g) {
        /* About 6000 tokens: past the demo model's 4096. */
        static char big[30000];
        for (size_t i = 0; i + 5 < sizeof(big); i += 5)
                memcpy(big + i, "word ", 5);
        g->prompt = big;
}

static void test_validation(dh_daemon *d) {
        enum { INVALID = MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT };
        expect_refused(d, "NaN temperature", set_nan, INVALID);
        expect_refused(d, "negative temperature", set_neg_temp, INVALID);
        expect_refused(d, "huge temperature", set_huge_temp, INVALID);
        expect_refused(d, "top_p 0", set_top_p0, INVALID);
        expect_refused(d, "top_p 1.5", set_top_p_big, INVALID);
        expect_refused(d, "negative min_p", set_min_p_neg, INVALID);
        expect_refused(d, "repeat_penalty 0", set_penalty0, INVALID);
        expect_refused(d, "infinite repeat_penalty", set_inf_penalty, INVALID);
        expect_refused(d, "truncated UTF-8", set_bad_utf8, INVALID);
        expect_refused(d, "a surrogate", set_surrogate, INVALID);
        expect_refused(d, "empty prompt", set_empty, INVALID);
        expect_refused(d, "no prompt", set_no_prompt, INVALID);
        expect_refused(d, "raw with a system prompt", set_raw_system, INVALID);
        expect_refused(d, "system not UTF-8", set_bad_utf8_system, INVALID);
        expect_refused(d, "empty stop string", set_empty_stop, INVALID);
        expect_refused(d, "100 stop strings", set_many_stops, INVALID);
        expect_refused(d, "unknown role", set_bad_role, INVALID);
        expect_refused(d, "prompt and messages", set_prompt_and_messages, INVALID);
        expect_refused(d, "prompt longer than the context", set_too_long, MIXTRALD__V1__ERROR_CODE__TOO_LONG);
}

/* A client that asks for a lot and never reads is dropped; the daemon's
 * memory does not follow its backlog. */
static void test_slow_reader(dh_daemon *d) {
        long before = dh_rss_kib(d);
        int fd = dh_connect(d);
        int small = 4096;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
        dh_gen g = {.prompt = "Talk", .raw = true, .seed = 3, .ignore_eos = true};
        for (int i = 0; i < 8; i++)
                CHECK(dh_send_generate(fd, (uint64_t)i + 1, &g) == 0, "send %d", i);
        /* The daemon hangs up on us (unread output past max_output_bytes),
         * then our requests go. */
        struct pollfd p = {.fd = fd, .events = POLLRDHUP};
        CHECK(poll(&p, 1, 60000) == 1 && (p.revents & (POLLHUP | POLLRDHUP)), "the slow reader was not dropped");
        CHECK(wait_idle(d, 60000), "the slow reader's requests were not dropped");
        /* Everything it had not read is gone with the connection. */
        char buf[65536];
        ssize_t k;
        size_t total = 0;
        while ((k = read(fd, buf, sizeof(buf))) > 0)
                total += (size_t)k;
        CHECK(k == 0 || errno == ECONNRESET, "the connection was not closed");
        close(fd);
        long after = dh_rss_kib(d);
        CHECK(after - before < RSS_SLACK_KIB, "RSS grew from %ld to %ld KiB", before, after);
        dh_result res = {0};
        dh_gen ok = {.prompt = "fine", .raw = true, .max_tokens = 2, .ignore_eos = true};
        CHECK(dh_run(d, &ok, &res) == 0 && res.error == 0, "the daemon does not serve after a slow reader");
        dh_result_free(&res);
}

/* A long prompt read in small chunks: while it is being read, status and
 * new connections are answered (the engine has its own thread). */
static void test_answers_during_prefill(dh_daemon *d) {
        static char prompt[6000]; /* 1200 words: 1202 tokens, 3602 with the trained tokenizer */
        for (size_t i = 0; i + 5 < sizeof(prompt); i += 5)
                memcpy(prompt + i, "rain ", 5);
        dh_gen g = {.prompt = prompt, .raw = true, .max_tokens = 1};
        int fd = dh_connect(d), rc;
        CHECK(dh_send_generate(fd, 1, &g) == 0, "send");
        Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
        CHECK(r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ACCEPTED && r->accepted->prompt_tokens > 1000,
              "the long prompt was not accepted");
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        bool seen_prefill = false;
        for (int i = 0; i < 50 && !seen_prefill; i++) {
                Mixtrald__V1__Response *s = dh_status(d);
                CHECK(s, "no status while a prompt is read");
                if (!s)
                        break;
                seen_prefill = s->status->prefilling == 1 && s->status->running == 1;
                mixtrald__v1__response__free_unpacked(s, NULL);
        }
        CHECK(seen_prefill, "status never answered while the prompt was being read");
        dh_result res = {0};
        CHECK(dh_collect(fd, 1, &res, 60000) == 0 && res.error == 0 && res.completion_tokens == 1,
              "the long prompt did not finish: %s", res.message);
        dh_result_free(&res);
        close(fd);
}

#define N_CLIENTS 200

static void test_many_clients(dh_daemon *d) {
        long before = dh_rss_kib(d);
        static int fds[N_CLIENTS];
        for (int i = 0; i < N_CLIENTS; i++) {
                fds[i] = dh_connect(d);
                CHECK(fds[i] >= 0, "client %d cannot connect: %s", i, strerror(-fds[i]));
                dh_gen g = {.prompt = "Hi", .raw = i % 2, .seed = (uint64_t)i, .max_tokens = 4, .ignore_eos = true};
                if (fds[i] >= 0)
                        CHECK(dh_send_generate(fds[i], 1, &g) == 0, "client %d cannot send", i);
        }
        int ok = 0;
        for (int i = 0; i < N_CLIENTS; i++) {
                dh_result res = {0};
                if (fds[i] >= 0 && dh_collect(fds[i], 1, &res, 120000) == 0 && res.error == 0 &&
                    res.completion_tokens == 4)
                        ok++;
                else
                        fprintf(stderr, "client %d: error %d %s\n", i, res.error, res.message);
                dh_result_free(&res);
                if (fds[i] >= 0)
                        close(fds[i]);
        }
        CHECK(ok == N_CLIENTS, "%d of %d concurrent clients were served", ok, N_CLIENTS);
        /* Kill -9 clients mid-request: their requests go, the daemon stays. */
        for (int i = 0; i < 5; i++) {
                pid_t pid = fork();
                if (pid == 0) {
                        int fd = dh_connect(d);
                        dh_gen g = {.prompt = "Go on", .raw = true, .ignore_eos = true};
                        dh_send_generate(fd, 1, &g);
                        pause();
                        _exit(0);
                }
                usleep(100000);
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
        }
        CHECK(wait_idle(d, 5000), "killed clients' requests were not freed");
        long after = dh_rss_kib(d);
        CHECK(after - before < RSS_SLACK_KIB, "RSS grew from %ld to %ld KiB", before, after);
}

/* quantize = q4_0: the daemon serves what mixtral-run --quantize q4_0
 * computes, says so once loaded, and keeps the setting over a reload. */
static void test_quantized(void) {
        static const char qconfig[] = "[daemon]\nthreads = 1\nquantize = q4_0\n";
        dh_daemon d;
        CHECK(dh_init(&d, mixtrald, model, qconfig) == 0, "init");
        if (dh_start(&d, NULL) < 0) {
                CHECK(false, "the daemon with quantize = q4_0 did not start");
                dh_show_log(&d, 20);
                dh_cleanup(&d);
                return;
        }
        const char *argv[] = {mixtral_run, "--model", model, "--threads", "1", "--quantize", "q4_0", "--temperature",
                              "0", "--max-tokens", "16", "--prompt", "Once upon a time", NULL};
        char *want = run_offline(argv);
        dh_gen g = {.prompt = "Once upon a time", .raw = true, .has_temperature = true, .temperature = 0,
                    .max_tokens = 16};
        dh_result res = {0};
        int rc = dh_run(&d, &g, &res);
        CHECK(want && rc == 0 && res.text && strcmp(res.text, want) == 0, "quantized: daemon '%s' (rc %d: %s), "
              "mixtral-run --quantize q4_0 '%s'", res.text ? res.text : "", rc, res.message ? res.message : "",
              want ? want : "(failed)");
        CHECK(dh_file_has(d.log, "quantized to q4_0"), "the log does not say the model was quantized");
        free(want);
        dh_result_free(&res);
        CHECK(dh_stop(&d) == 0, "the quantized daemon's exit status");
        dh_cleanup(&d);
}

int main(int argc, char **argv) {
        if (argc != 4) {
                fprintf(stderr, "usage: test-daemon MIXTRALD MIXTRAL_RUN DEMO_MODEL_DIR\n");
                return 2;
        }
        mixtrald = argv[1], mixtral_run = argv[2], model = argv[3];
        signal(SIGPIPE, SIG_IGN);
        dh_daemon d;
        CHECK(dh_init(&d, mixtrald, model, config) == 0, "init");
        if (dh_start(&d, NULL) < 0) {
                dh_cleanup(&d);
                fprintf(stderr, "the daemon did not start\n");
                return 1;
        }
        struct {
                const char *name;
                void (*fn)(dh_daemon *);
        } tests[] = {
                {"same text as mixtral-run", test_same_as_offline},
                {"batched equals alone", test_batched_equals_alone},
                {"cancel and disconnect", test_cancel_and_disconnect},
                {"bad frames", test_bad_frames},
                {"validation", test_validation},
                {"answers during prefill", test_answers_during_prefill},
                {"slow reader", test_slow_reader},
                {"200 clients", test_many_clients},
        };
        for (size_t i = 0; i < ARRAY_SIZE(tests); i++) {
                int before = test_failures;
                const char *only = getenv("TEST_ONLY");
                if (only && !strstr(tests[i].name, only))
                        continue;
                tests[i].fn(&d);
                printf("%s: %s\n", tests[i].name, test_failures == before ? "ok" : "FAILED");
                fflush(stdout);
                CHECK(dh_alive(&d), "the daemon died during '%s'", tests[i].name);
                if (!dh_alive(&d))
                        break;
        }
        int st = dh_stop(&d);
        CHECK(st == 0, "the daemon exited with %d after SIGTERM", st);
        if (test_failures)
                dh_show_log(&d, 40);
        dh_cleanup(&d);
        const char *only = getenv("TEST_ONLY");
        if (!only || strstr("quantized", only))
                test_quantized();
        return test_result();
}
