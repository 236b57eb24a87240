/* Generation as the daemon and mixtral-run drive it (mx_gen): greedy
 * continuations equal the transformers reference, streamed text is whole
 * UTF-8 and adds up to the decoded ids, every finish reason happens when
 * it should, seeds reproduce, several requests in one step equal each run
 * alone, and a chunked prompt equals a whole one.
 *
 *   test-generate CHECKPOINT_DIR   (tests/data/hf-tiny: expected.json and
 *                                   tokenizer.model) */
#include <jansson.h>

#include "gen_steps.h"
#include "mixtral.h"
#include "mx_common.h"
#include "test_util.h"

static mx_model *model;
static mx_engine *engine;
static mx_tokenizer *tok;
static mx_ids prompt, want_greedy;

typedef struct run {
        mx_ids ids;
        mx_buf text;
        mx_finish finish;
        int err;
} run;

static mx_gen_opts greedy_opts(uint32_t max_tokens) {
        mx_gen_opts o = {.max_tokens = max_tokens};
        o.sampling = (mx_sampling){.temperature = 0, .top_p = 1, .repeat_penalty = 1};
        return o;
}

/* Runs several requests to the end, all in the same forward steps. */
static void run_together(const mx_gen_opts *opts, const mx_ids *prompts, size_t n, run *out) {
        mx_gen *g[8] = {0};
        mx_buf text[8] = {0};
        mx_error err = {0};
        for (size_t i = 0; i < n; i++) {
                out[i] = (run){0};
                mx_buf_append(&out[i].text, "", 0);
                out[i].err = mx_gen_new(engine, tok, prompts[i].v, prompts[i].n, &opts[i], &g[i], &err);
                CHECK(out[i].err == 0, "request %zu: %s", i, err.msg);
        }
        int k;
        while ((k = gen_step_all(engine, g, n, text, &err)) > 0)
                for (size_t i = 0; i < n; i++) {
                        CHECK(utf8_strict(text[i].p, text[i].n), "request %zu: a streamed chunk is not whole UTF-8", i);
                        mx_buf_append(&out[i].text, text[i].p, text[i].n);
                        text[i].n = 0;
                }
        CHECK(k == 0, "%s", err.msg);
        for (size_t i = 0; i < n; i++)
                mx_buf_free(&text[i]);
        for (size_t i = 0; i < n; i++) {
                if (!g[i])
                        continue;
                size_t m;
                const int32_t *ids = mx_gen_tokens(g[i], &m);
                mx_ids_append(&out[i].ids, ids, m);
                out[i].finish = mx_gen_finished(g[i]);
                mx_gen_free(g[i]);
        }
}

static void run_one(const mx_gen_opts *o, const mx_ids *p, run *out) {
        run_together(o, p, 1, out);
}

static void run_free(run *r) {
        mx_ids_free(&r->ids);
        mx_buf_free(&r->text);
}

static void greedy_matches_reference(void) {
        mx_gen_opts o = greedy_opts((uint32_t)want_greedy.n);
        run r;
        run_one(&o, &prompt, &r);
        CHECK(ids_eq(r.ids.v, r.ids.n, want_greedy.v, want_greedy.n), "greedy ids differ from transformers");
        CHECK(r.finish == MX_FINISH_LENGTH, "finish %s, expected length", mx_finish_name(r.finish));
        mx_buf whole = {0};
        mx_detokenize(tok, r.ids.v, r.ids.n, &whole);
        CHECK(whole.n == r.text.n && memcmp(whole.p, r.text.p, whole.n) == 0,
              "streamed text \"%s\" differs from the decoded ids \"%s\"", r.text.p, whole.p);
        mx_buf_free(&whole);

        /* A raw continuation keeps the first piece's space. */
        o.keep_leading_space = true;
        run k;
        run_one(&o, &prompt, &k);
        const char *first = mx_tokenizer_piece(tok, k.ids.v[0], NULL);
        bool spaced = strncmp(first, "\xE2\x96\x81", 3) == 0;
        CHECK(!spaced || (k.text.n == r.text.n + 1 && k.text.p[0] == ' '), "leading space kept: \"%s\"", k.text.p);
        run_free(&r), run_free(&k);
}

static void stop_strings(void) {
        mx_gen_opts o = greedy_opts(12);
        run r;
        run_one(&o, &prompt, &r);
        /* A stop string taken from the middle of the answer. */
        CHECK(r.text.n >= 6, "answer too short for the test: \"%s\"", r.text.p);
        char stop[4] = {0};
        size_t at = r.text.n / 2;
        while (at > 0 && ((unsigned char)r.text.p[at] & 0xC0) == 0x80)
                at--;
        memcpy(stop, r.text.p + at, 2);
        const char *stops[] = {"never appears \x01", stop};
        o.stop = stops, o.n_stop = 2;
        run s;
        run_one(&o, &prompt, &s);
        const char *first = strstr(r.text.p, stop);
        printf("answer \"%s\"; with stop \"%s\": \"%s\"\n", r.text.p, stop, s.text.p);
        CHECK(s.finish == MX_FINISH_STOP, "finish %s, expected stop", mx_finish_name(s.finish));
        CHECK(first && s.text.n == (size_t)(first - r.text.p) && memcmp(s.text.p, r.text.p, s.text.n) == 0,
              "text before the stop string: \"%s\" of \"%s\" (stop \"%s\")", s.text.p, r.text.p, stop);
        run_free(&r), run_free(&s);
}

static void context_and_errors(void) {
        mx_gen_opts o = greedy_opts(0);
        o.max_context = (uint32_t)prompt.n + 3;
        run r;
        run_one(&o, &prompt, &r);
        CHECK(r.finish == MX_FINISH_CONTEXT && r.ids.n == 4, "finish %s after %zu tokens, expected context after 4",
              mx_finish_name(r.finish), r.ids.n);
        run_free(&r);

        mx_gen *g = NULL;
        mx_error err = {0};
        o.max_context = (uint32_t)prompt.n;
        CHECK(mx_gen_new(engine, tok, prompt.v, prompt.n, &o, &g, &err) == -E2BIG &&
                      strstr(err.msg, "does not fit the context"), "%s", err.msg);
        o = greedy_opts(1);
        CHECK(mx_gen_new(engine, tok, prompt.v, 0, &o, &g, &err) < 0 && strstr(err.msg, "empty"), "%s", err.msg);
        o.sampling.top_p = 2;
        CHECK(mx_gen_new(engine, tok, prompt.v, prompt.n, &o, &g, &err) < 0 && strstr(err.msg, "top_p"), "%s",
              err.msg);
        o = greedy_opts(1);
        const char *empty[] = {""};
        o.stop = empty, o.n_stop = 1;
        CHECK(mx_gen_new(engine, tok, prompt.v, prompt.n, &o, &g, &err) < 0 && strstr(err.msg, "stop string 1"),
              "%s", err.msg);
}

/* With enough random draws the model ends some answers with EOS, which
 * must never appear in the ids or the text. */
static void eos(void) {
        int ended = 0;
        for (uint64_t seed = 1; seed <= 150 && ended < 3; seed++) {
                mx_gen_opts o = greedy_opts(40);
                o.sampling = (mx_sampling){.temperature = 1.5f, .top_p = 1, .repeat_penalty = 1, .seed = seed};
                run r;
                run_one(&o, &prompt, &r);
                if (r.finish == MX_FINISH_EOS) {
                        ended++;
                        for (size_t i = 0; i < r.ids.n; i++)
                                CHECK(r.ids.v[i] != mx_tokenizer_eos(tok), "EOS among the ids");
                }
                CHECK(r.finish == MX_FINISH_EOS || (r.finish == MX_FINISH_LENGTH && r.ids.n == 40),
                      "seed %llu: finish %s after %zu", (unsigned long long)seed, mx_finish_name(r.finish), r.ids.n);
                run_free(&r);
        }
        CHECK(ended > 0, "no answer ended with EOS in 150 sampled runs");
        printf("%d sampled answers ended with EOS\n", ended);
}

static void seeds_batches_chunks(void) {
        mx_gen_opts o[3];
        for (int i = 0; i < 3; i++) {
                o[i] = greedy_opts(16);
                o[i].sampling = (mx_sampling){.temperature = 1, .top_k = 20, .top_p = 0.9f, .repeat_penalty = 1.1f,
                                              .repeat_last_n = 8, .seed = i == 2 ? 99 : 5};
        }
        mx_ids prompts[3] = {prompt, prompt, prompt};
        run alone[3], together[3];
        for (int i = 0; i < 3; i++)
                run_one(&o[i], &prompt, &alone[i]);
        run_together(o, prompts, 3, together);
        CHECK(ids_eq(alone[0].ids.v, alone[0].ids.n, alone[1].ids.v, alone[1].ids.n), "the same seed, other ids");
        CHECK(!ids_eq(alone[0].ids.v, alone[0].ids.n, alone[2].ids.v, alone[2].ids.n), "another seed, same ids");
        for (int i = 0; i < 3; i++)
                CHECK(ids_eq(alone[i].ids.v, alone[i].ids.n, together[i].ids.v, together[i].ids.n),
                      "request %d: batched ids differ from alone", i);
        o[0].prefill_chunk = 5;
        run chunked;
        run_one(&o[0], &prompt, &chunked);
        CHECK(ids_eq(alone[0].ids.v, alone[0].ids.n, chunked.ids.v, chunked.ids.n), "a chunked prompt changes the ids");
        for (int i = 0; i < 3; i++)
                run_free(&alone[i]), run_free(&together[i]);
        run_free(&chunked);
}

static void load(const char *dir) {
        char path[4096];
        mx_error err = {0};
        snprintf(path, sizeof(path), "%s/tokenizer.model", dir);
        if (mx_model_open(&model, dir, &err) < 0 || mx_tokenizer_load(&tok, path, &err) < 0 ||
            mx_engine_open(&engine, model, NULL, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                exit(1);
        }
        snprintf(path, sizeof(path), "%s/expected.json", dir);
        json_error_t je;
        json_auto_t *root = json_load_file(path, 0, &je);
        json_t *c = json_array_get(json_object_get(root, "cases"), 0), *v;
        size_t i;
        json_array_foreach(json_object_get(c, "prompt"), i, v) mx_ids_push(&prompt, (int32_t)json_integer_value(v));
        json_array_foreach(json_object_get(c, "greedy"), i, v) mx_ids_push(&want_greedy, (int32_t)json_integer_value(v));
        if (prompt.n == 0 || want_greedy.n == 0) {
                fprintf(stderr, "%s: no case\n", path);
                exit(1);
        }
}

int main(int argc, char **argv) {
        if (argc != 2) {
                fprintf(stderr, "usage: %s CHECKPOINT_DIR\n", argv[0]);
                return 2;
        }
        load(argv[1]);
        greedy_matches_reference();
        stop_strings();
        context_and_errors();
        eos();
        seeds_batches_chunks();
        mx_engine_free(engine);
        mx_tokenizer_free(tok);
        mx_model_free(model);
        mx_ids_free(&prompt), mx_ids_free(&want_greedy);
        return test_result();
}
