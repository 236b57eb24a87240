/* The KV cache (docs/engine.md "The KV cache"): prefix reuse gives the
 * same logits bit for bit and the same greedy tokens as computing
 * everything, for chats of several turns, batched and alone, with bf16
 * and f32 KV; bf16 KV stays close to f32 KV; a request sharing a prefix
 * reports the tokens the cache served, and after eviction it does not;
 * namespaces do not share; a pool too small for the requests makes them
 * wait (or refuses one that could never fit) and loses no block.
 *
 *   test-kv-cache CHECKPOINT_DIR   (tests/data/hf-tiny: tokenizer.model;
 *                                   a context of 256, so an auto-sized
 *                                   pool of 8 contexts: 128 blocks) */
#include <math.h>

#include "gen_steps.h"
#include "mixtral.h"
#include "mx_common.h"
#include "test_util.h"

static mx_model *model;
static mx_tokenizer *tok;
static uint32_t vocab;

/* (act: MX_ACTIVATIONS_F32 where bf16 KV's rounding must be the only
 * difference between the two types) */
static mx_engine *open_engine(mx_kv_type t, const char *kv_memory, mx_activations act) {
        mx_engine_opts o = {.threads = 2, .kv_type = t, .activations = act};
        mx_error err = {0};
        if (kv_memory)
                CHECK(mx_kv_memory_parse(kv_memory, &o.kv_memory, &o.kv_memory_percent, &err) == 0, "%s", err.msg);
        mx_engine *e = NULL;
        CHECK(mx_engine_open(&e, model, &o, &err) == 0, "%s", err.msg);
        return e;
}

static void made_up(uint64_t seed, size_t n, mx_ids *out) {
        uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);
        out->n = 0;
        mx_ids_push(out, 1);
        while (out->n < n) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                mx_ids_push(out, (int32_t)(3 + x % (vocab - 3)));
        }
}

static bool all_blocks_back(mx_engine *e, bool cached_ok) {
        mx_kv_stats s;
        mx_engine_kv_stats(e, &s);
        return s.used == 0 && s.blocks == s.free + s.cached && (cached_ok || s.cached == 0);
}

/* ---- logits ------------------------------------------------------------------------ */

/* Logits of q after prefix p: computed, or with p from the cache. */
static float *logits_after(mx_engine *e, const mx_ids *p, const mx_ids *q, bool reuse, uint32_t *reused) {
        float *l = malloc(q->n * vocab * sizeof(float));
        _cleanup_(mx_seq_freep) mx_seq *s = NULL;
        mx_error err = {0};
        CHECK(mx_seq_new(e, 0, &s, &err) == 0, "%s", err.msg);
        *reused = reuse ? mx_seq_reuse(s, p->v, p->n) : 0;
        mx_batch_item rest = {.seq = s, .tokens = p->v + *reused, .n_tokens = (uint32_t)p->n - *reused};
        mx_batch_item it = {.seq = s, .tokens = q->v, .n_tokens = (uint32_t)q->n, .logits = l, .all_logits = true};
        CHECK((rest.n_tokens == 0 || mx_forward(e, &rest, 1, &err) == 0) && mx_forward(e, &it, 1, &err) == 0, "%s",
              err.msg);
        return l;
}

static double rel_l2(const float *a, const float *ref, size_t n) {
        double d = 0, r = 0;
        for (size_t i = 0; i < n; i++) {
                double x = (double)a[i] - ref[i];
                d += x * x, r += (double)ref[i] * ref[i];
        }
        return sqrt(d / r);
}

/* A prefix of whole blocks (shared) and one that ends inside a block
 * (its last block copied): the same logits as computing it, bit for bit. */
static void cached_logits_are_computed_ones(mx_kv_type t) {
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine(t, NULL, MX_ACTIVATIONS_AUTO);
        static const size_t lengths[] = {48, 53, 16, 7};
        for (size_t i = 0; e && i < MX_ELEMENTSOF(lengths); i++) {
                mx_ids p = {0}, q = {0};
                made_up(40 + i, lengths[i], &p);
                made_up(80 + i, 12, &q);
                uint32_t r0, r1;
                _cleanup_free_ float *computed = logits_after(e, &p, &q, false, &r0);
                _cleanup_free_ float *cached = logits_after(e, &p, &q, true, &r1);
                CHECK(r1 == p.n, "%s: %zu-token prefix: %u tokens from the cache", mx_kv_type_name(t), p.n, r1);
                CHECK(memcmp(computed, cached, q.n * vocab * sizeof(float)) == 0,
                      "%s: %zu-token prefix: cached logits differ from computed ones", mx_kv_type_name(t), p.n);
                mx_ids_free(&p), mx_ids_free(&q);
        }
        CHECK(e && all_blocks_back(e, true), "%s: blocks still held", mx_kv_type_name(t));
}

/* bf16 K and V: logits within 1e-2 (relative L2) of f32 ones. */
static void bf16_close_to_f32(void) {
        _cleanup_(mx_engine_freep) mx_engine *eb = open_engine(MX_KV_BF16, NULL, MX_ACTIVATIONS_F32);
        _cleanup_(mx_engine_freep) mx_engine *ef = open_engine(MX_KV_F32, NULL, MX_ACTIVATIONS_F32);
        mx_ids p = {0}, q = {0};
        made_up(7, 1, &p);
        made_up(8, 120, &q);
        uint32_t r;
        _cleanup_free_ float *lb = logits_after(eb, &p, &q, false, &r);
        _cleanup_free_ float *lf = logits_after(ef, &p, &q, false, &r);
        double err = rel_l2(lb, lf, q.n * vocab);
        printf("bf16 against f32 KV, %zu positions: relative L2 %.2e\n", q.n, err);
        CHECK(err < 1e-2, "bf16 KV logits are %.3g (relative L2) from f32 KV ones", err);
        mx_ids_free(&p), mx_ids_free(&q);
}

/* ---- chats ---------------------------------------------------------------------------- */

typedef struct turn_result {
        mx_ids ids;
        mx_buf text;
        size_t cached;
        mx_finish finish;
} turn_result;

static mx_gen_opts greedy(bool cache, uint64_t ns) {
        return (mx_gen_opts){.sampling = {.temperature = 0, .top_p = 1, .repeat_penalty = 1}, .max_tokens = 10,
                             .prefill_chunk = 7, .no_prefix_cache = !cache, .cache_namespace = ns};
}

/* Several requests to the end in the same steps. */
static void run_together(mx_engine *e, const mx_ids *prompts, const mx_gen_opts *o, size_t n, turn_result *out) {
        mx_gen *g[4] = {0};
        mx_buf text[4] = {0};
        mx_error err = {0};
        for (size_t i = 0; i < n; i++) {
                out[i] = (turn_result){0};
                mx_buf_append(&text[i], "", 0);
                CHECK(mx_gen_new(e, tok, prompts[i].v, prompts[i].n, &o[i], &g[i], &err) == 0, "%s", err.msg);
        }
        int k;
        while ((k = gen_step_all(e, g, n, text, &err)) > 0)
                ;
        CHECK(k == 0, "%s", err.msg);
        for (size_t i = 0; i < n; i++)
                out[i].text = text[i];
        for (size_t i = 0; i < n; i++) {
                size_t m;
                const int32_t *ids = mx_gen_tokens(g[i], &m);
                mx_ids_append(&out[i].ids, ids, m);
                out[i].cached = mx_gen_cached_tokens(g[i]);
                out[i].finish = mx_gen_finished(g[i]);
                mx_gen_free(g[i]);
        }
}

static void turn_free(turn_result *t) {
        mx_ids_free(&t->ids);
        mx_buf_free(&t->text);
}

#define TURNS 4
#define CHATS 2

static const char *const says[CHATS][TURNS] = {
        {"Hello there, how are you today?", "Tell me more about it.", "Why is that?", "Thanks, that is all."},
        {"Write a short poem about the sea.", "Now one about the hills.", "Which do you prefer?", "Goodbye."},
};

/* What the cache holds after a request: its prompt and every generated
 * token it fed (all but the last, unless EOS came after it). */
static void fed_tokens(const mx_ids *prompt, const turn_result *r, mx_ids *out) {
        out->n = 0;
        mx_ids_append(out, prompt->v, prompt->n);
        mx_ids_append(out, r->ids.v, r->ids.n - (r->finish == MX_FINISH_EOS ? 0 : 1));
}

static size_t common_prefix(const mx_ids *a, const mx_ids *b) {
        size_t k = 0;
        while (k < a->n && k < b->n && a->v[k] == b->v[k])
                k++;
        return k;
}

/* Two chats of TURNS turns, each turn's prompt the whole conversation so
 * far (as `mixtral chat` sends it), each in its own namespace: with the
 * cache, alone and batched, the answers are those without the cache, and
 * every turn after the first is served from the cache up to where it
 * differs from what the last turn fed (at least its prompt: a random
 * model's answer often tokenizes to other ids than were generated), all
 * but its last token at most. */
static void chats(mx_kv_type t, bool batched) {
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine(t, NULL, MX_ACTIVATIONS_AUTO);
        mx_conversation conv[CHATS] = {0};
        mx_ids before[CHATS] = {0};
        size_t asked[CHATS] = {0};
        for (int turn = 0; e && turn < TURNS; turn++) {
                mx_ids prompts[CHATS] = {0};
                turn_result with[CHATS], without[CHATS];
                mx_gen_opts on[CHATS], off[CHATS];
                mx_error err = {0};
                for (int c = 0; c < CHATS; c++) {
                        mx_conversation_add(&conv[c], MX_ROLE_USER, says[c][turn], strlen(says[c][turn]));
                        CHECK(mx_chat_encode(tok, NULL, conv[c].msgs, conv[c].n, &prompts[c], &err) == 0, "%s", err.msg);
                        on[c] = greedy(true, 1 + (uint64_t)c), off[c] = greedy(false, 0);
                }
                for (int c = 0; c < CHATS; c++) {
                        size_t k = batched ? CHATS : 1;
                        if (!batched || c == 0) {
                                run_together(e, prompts + c, off + c, k, without + c);
                                run_together(e, prompts + c, on + c, k, with + c);
                        }
                }
                for (int c = 0; c < CHATS; c++) {
                        CHECK(ids_eq(with[c].ids.v, with[c].ids.n, without[c].ids.v, without[c].ids.n),
                              "%s%s, chat %d turn %d: other tokens with the cache", mx_kv_type_name(t),
                              batched ? " batched" : "", c, turn + 1);
                        CHECK(without[c].cached == 0, "the cache served a request that asked for none");
                        size_t want = common_prefix(&prompts[c], &before[c]);
                        want = want < prompts[c].n - 1 ? want : prompts[c].n - 1;
                        CHECK(with[c].cached == want && want >= asked[c],
                              "%s chat %d turn %d: %zu of %zu prompt tokens cached, not %zu", mx_kv_type_name(t), c,
                              turn + 1, with[c].cached, prompts[c].n, want);
                        fed_tokens(&prompts[c], &with[c], &before[c]);
                        asked[c] = prompts[c].n;
                        mx_conversation_add(&conv[c], MX_ROLE_ASSISTANT, with[c].text.p, with[c].text.n);
                        turn_free(&with[c]), turn_free(&without[c]);
                        mx_ids_free(&prompts[c]);
                }
        }
        for (int c = 0; c < CHATS; c++)
                mx_conversation_free(&conv[c]), mx_ids_free(&before[c]);
        CHECK(e && all_blocks_back(e, true), "chats: blocks still held");
}

/* ---- what the cache reports, and whom it serves ------------------------------------ */

static size_t cached_for(mx_engine *e, const mx_ids *p, bool cache, uint64_t ns) {
        mx_gen_opts o = greedy(cache, ns);
        o.max_tokens = 2;
        turn_result r;
        run_together(e, p, &o, 1, &r);
        turn_free(&r);
        return r.cached;
}

static void reports_and_evictions(void) {
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine(MX_KV_BF16, NULL, MX_ACTIVATIONS_AUTO);
        mx_ids a = {0}, b = {0}, other = {0};
        made_up(1, 120, &a);
        made_up(1, 120, &b);
        b.v[101] ^= 1; /* shares 101 tokens: six whole blocks and five of the seventh */
        CHECK(cached_for(e, &a, true, 0) == 0, "a fresh cache served tokens");
        CHECK(cached_for(e, &b, true, 0) == 101, "a shared prefix of 101 tokens: %zu served",
              cached_for(e, &b, true, 0));
        CHECK(cached_for(e, &a, true, 7) == 0, "another namespace was served the prefix");
        CHECK(cached_for(e, &a, false, 0) == 0, "a request without the cache was served");
        /* Fill the pool with other sequences: the prefix is evicted. */
        mx_kv_stats s;
        mx_engine_kv_stats(e, &s);
        for (uint64_t i = 0; i < 2 * s.blocks * s.block_tokens / 200 + 2; i++) {
                made_up(100 + i, 200, &other);
                other.v[0] = 3; /* (not even a's first token in common) */
                cached_for(e, &other, true, 0);
        }
        mx_engine_kv_stats(e, &s);
        CHECK(s.evictions > 0, "no evictions");
        CHECK(cached_for(e, &a, true, 0) == 0, "served after eviction");
        CHECK(all_blocks_back(e, true), "blocks still held");
        mx_ids_free(&a), mx_ids_free(&b), mx_ids_free(&other);
}

/* ---- a pool too small --------------------------------------------------------------- */

/* 70-token requests in a pool of 16 blocks (256 tokens): started as a
 * scheduler starts them, grown step by step, the newest suspended when one
 * cannot grow; every one finishes with the tokens it has alone. */
static void small_pool(bool cache) {
        uint64_t block = 0;
        {
                _cleanup_(mx_engine_freep) mx_engine *probe = open_engine(MX_KV_BF16, NULL, MX_ACTIVATIONS_AUTO);
                mx_kv_stats s;
                mx_engine_kv_stats(probe, &s);
                block = s.block_bytes;
        }
        char mem[32];
        snprintf(mem, sizeof(mem), "%llu", (unsigned long long)block * 16);
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine(MX_KV_BF16, mem, MX_ACTIVATIONS_AUTO);
        if (!e)
                return;
        CHECK(mx_engine_kv_tokens(e) == 256, "a pool of %u tokens", mx_engine_kv_tokens(e));
        enum { N = 4 };
        mx_ids p[N] = {0};
        mx_gen *g[N] = {0};
        turn_result want[N];
        mx_error err = {0};
        for (int i = 0; i < N; i++) {
                made_up(200 + i, 70, &p[i]);
                mx_gen_opts o = greedy(cache, 0);
                o.max_tokens = 24;
                run_together(e, &p[i], &o, 1, &want[i]);
                CHECK(mx_gen_new(e, tok, p[i].v, p[i].n, &o, &g[i], &err) == 0, "%s", err.msg);
        }
        /* Three start (5 blocks each) with no block spare for growing:
         * they will have to take turns. */
        int started = 0;
        for (int i = 0; i < N; i++)
                if (mx_gen_start(g[i], 0, &err) == 0)
                        started++;
        CHECK(started == 3, "%d of %d 70-token requests started in 16 blocks", started, N);
        CHECK(strstr(err.msg, "KV cache"), "'%s'", err.msg);
        mx_buf text[N] = {0};
        bool live[N] = {0};
        int active = started, suspended = 0;
        for (int i = 0; i < started; i++)
                live[i] = true;
        for (int steps = 0; steps < 1000; steps++) {
                /* Grow oldest first; suspend the newest when one cannot. */
                for (int i = 0; i < N; i++)
                        while (live[i] && mx_gen_grow(g[i]) == -ENOBUFS) {
                                int victim = N - 1;
                                while (!live[victim])
                                        victim--;
                                mx_gen_suspend(g[victim]);
                                live[victim] = false, active--, suspended++;
                        }
                for (int i = 0; i < N; i++)
                        if (!live[i] && mx_gen_finished(g[i]) == MX_FINISH_NONE &&
                            mx_gen_start(g[i], (uint32_t)active, &err) == 0)
                                live[i] = true, active++;
                mx_batch_item items[N];
                int who[N], k = 0;
                for (int i = 0; i < N; i++)
                        if (live[i])
                                mx_gen_prepare(g[i], &items[k]), who[k++] = i;
                if (k == 0)
                        break;
                CHECK(mx_forward(e, items, (size_t)k, &err) == 0, "%s", err.msg);
                for (int j = 0; j < k; j++) {
                        int32_t t;
                        mx_gen_advance(g[who[j]], &text[who[j]], &t);
                        if (mx_gen_finished(g[who[j]]) != MX_FINISH_NONE) {
                                mx_gen_suspend(g[who[j]]);
                                live[who[j]] = false, active--;
                        }
                }
        }
        CHECK(suspended > 0, "nothing was ever suspended");
        for (int i = 0; i < N; i++) {
                size_t m;
                const int32_t *ids = mx_gen_tokens(g[i], &m);
                CHECK(mx_gen_finished(g[i]) == MX_FINISH_LENGTH && ids_eq(ids, m, want[i].ids.v, want[i].ids.n),
                      "request %d: not the tokens it has alone", i);
                mx_gen_free(g[i]);
                turn_free(&want[i]);
                mx_buf_free(&text[i]);
                mx_ids_free(&p[i]);
        }
        CHECK(all_blocks_back(e, cache), "blocks lost: the pool is not whole again");
        /* More than the pool holds: refused at once, saying why. */
        mx_ids big = {0};
        made_up(9, 300, &big);
        mx_gen *huge = NULL;
        mx_gen_opts o = greedy(cache, 0);
        CHECK(mx_gen_new(e, tok, big.v, big.n, &o, &huge, &err) == -E2BIG && strstr(err.msg, "KV cache"), "'%s'",
              err.msg);
        mx_gen_free(huge);
        mx_ids_free(&big);
}

static void parse(void) {
        uint64_t b;
        uint32_t pct;
        mx_error err = {0};
        CHECK(mx_kv_memory_parse("auto", &b, &pct, &err) == 0 && b == 0 && pct == 0, "auto");
        CHECK(mx_kv_memory_parse("2G", &b, &pct, &err) == 0 && b == 2ull << 30 && pct == 0, "2G");
        CHECK(mx_kv_memory_parse("25%", &b, &pct, &err) == 0 && b == 0 && pct == 25, "25%%");
        static const char *const bad[] = {"", "0", "-1G", "101%", "2.5%", "0.5%", "1X", "nan", "G"};
        for (size_t i = 0; i < MX_ELEMENTSOF(bad); i++)
                CHECK(mx_kv_memory_parse(bad[i], &b, &pct, &err) == -EINVAL && strstr(err.msg, "KV memory"),
                      "\"%s\" taken", bad[i]);
        mx_kv_type t;
        CHECK(mx_kv_type_from_string("f32", &t) == 0 && t == MX_KV_F32 && mx_kv_type_from_string("f16", &t) < 0,
              "kv types");
        mx_engine *e = NULL;
        mx_engine_opts o = {.kv_memory = 4096};
        CHECK(mx_engine_open(&e, model, &o, &err) == -EINVAL && strstr(err.msg, "kv_memory"), "'%s'", err.msg);
        mx_engine_free(e);
}

int main(int argc, char **argv) {
        if (argc != 2) {
                fprintf(stderr, "usage: %s CHECKPOINT_DIR\n", argv[0]);
                return 2;
        }
        char path[4096];
        mx_error err = {0};
        snprintf(path, sizeof(path), "%s/tokenizer.model", argv[1]);
        if (mx_model_open(&model, argv[1], &err) < 0 || mx_tokenizer_load(&tok, path, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
        }
        vocab = model->cfg.vocab_size;
        parse();
        cached_logits_are_computed_ones(MX_KV_BF16);
        cached_logits_are_computed_ones(MX_KV_F32);
        bf16_close_to_f32();
        for (int batched = 0; batched < 2; batched++) {
                chats(MX_KV_BF16, batched);
                chats(MX_KV_F32, batched);
        }
        reports_and_evictions();
        small_pool(true);
        small_pool(false);
        mx_tokenizer_free(tok);
        mx_model_free(model);
        return test_result();
}
