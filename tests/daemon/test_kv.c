/* The KV cache through mixtrald (docs/daemon.md): a request that starts as
 * an earlier one did (a conversation's next turn, the same system prompt)
 * reports the prompt tokens the cache served, and the quota is charged
 * only for those computed; with a pool too small for the queue, requests
 * wait for blocks (the newest suspended while the oldest grow) and give
 * the same answers as alone, nothing is lost
 * (the pool is whole again at the end), the context is what the pool
 * holds, and a prompt longer than that is refused saying why. (Whose
 * prefixes a user reuses: test-users.)
 *
 *   test-kv MIXTRALD DEMO_MODEL_DIR */
#include <signal.h>

#include "harness.h"
#include "test_util.h"

static const char *mixtrald, *model;

static const char system_prompt[] =
        "You are a careful assistant. Answer in one short paragraph, in plain words, without lists, and say "
        "so when you do not know. The user works on a small C daemon that serves a language model to every "
        "user of one machine, with quotas, and wants answers about it that are exact and brief.";

static Mixtrald__V1__Response *status_of(const dh_daemon *d) {
        Mixtrald__V1__Response *r = dh_status(d);
        CHECK(r && r->status, "no status");
        return r && r->status ? r : NULL;
}

static uint64_t used_hour(const dh_daemon *d) {
        Mixtrald__V1__Response *q = dh_quota(d);
        uint64_t used = q && q->quota ? q->quota->used_hour : UINT64_MAX;
        if (q)
                mixtrald__v1__response__free_unpacked(q, NULL);
        return used;
}

/* The second question of a conversation with a long system prompt: most
 * of its prompt is served from the cache, and not charged. */
static void conversation(void) {
        dh_daemon d;
        CHECK(dh_init(&d, mixtrald, model, "[daemon]\nthreads = 1\n") == 0, "init");
        if (dh_start(&d, NULL) < 0)
                return dh_cleanup(&d);
        dh_gen g = {.system = system_prompt, .prompt = "What is a KV cache?", .max_tokens = 8, .has_temperature = true};
        dh_result first = {0}, second = {0};
        CHECK(dh_run(&d, &g, &first) == 0 && first.error == 0, "first: %s", first.message);
        uint64_t before = used_hour(&d);
        g.prompt = "And why is it paged?";
        CHECK(dh_run(&d, &g, &second) == 0 && second.error == 0, "second: %s", second.message);
        uint64_t after = used_hour(&d);
        CHECK(first.cached_prompt_tokens == 0, "a fresh daemon served %u cached tokens", first.cached_prompt_tokens);
        CHECK(second.cached_prompt_tokens > second.prompt_tokens / 2 && second.cached_prompt_tokens < second.prompt_tokens,
              "the second question: %u of %u prompt tokens cached", second.cached_prompt_tokens, second.prompt_tokens);
        CHECK(after - before == second.prompt_tokens - second.cached_prompt_tokens + second.completion_tokens,
              "charged %llu tokens for %u prompt (%u cached) + %u completion", (unsigned long long)(after - before),
              second.prompt_tokens, second.cached_prompt_tokens, second.completion_tokens);
        Mixtrald__V1__Response *s = status_of(&d);
        const Mixtrald__V1__KvCache *kv = s ? s->status->kv_cache : NULL;
        CHECK(kv && !strcmp(kv->type, "bf16") && kv->block_tokens == 16 && kv->used == 0 &&
                      kv->cached + kv->free == kv->blocks && kv->hits >= 1 &&
                      kv->hit_tokens >= second.cached_prompt_tokens,
              "status: the KV cache is not as the requests left it");
        if (s)
                mixtrald__v1__response__free_unpacked(s, NULL);
        dh_result_free(&first), dh_result_free(&second);
        CHECK(dh_stop(&d) == 0, "exit status");
        if (test_failures)
                dh_show_log(&d, 20);
        dh_cleanup(&d);
}

static bool log_has(const dh_daemon *d, const char *needle) {
        FILE *f = fopen(d->log, "r");
        char line[1024];
        bool found = false;
        while (f && !found && fgets(line, sizeof(line), f))
                found = strstr(line, needle) != NULL;
        if (f)
                fclose(f);
        return found;
}

#define N 6

/* 16 blocks of 16 tokens (the demo model's block is 4 KiB) for six
 * requests of 40-75 prompt tokens (the tokenizer decides) and 120 more:
 * whatever the prompts' length, those admitted outgrow the pool, so some
 * must be suspended. */
static void small_pool(void) {
        dh_daemon d;
        CHECK(dh_init(&d, mixtrald, model,
                      "[daemon]\nthreads = 1\nmax_batch = 8\nprefill_chunk = 16\nkv_memory = 64K\n"
                      "[quota]\nmax_concurrent = 0\nmax_queued = 0\n") == 0,
              "init");
        if (dh_start(&d, NULL) < 0)
                return dh_cleanup(&d);
        Mixtrald__V1__Response *s = status_of(&d);
        CHECK(s && s->status->context_length == 256 && s->status->kv_cache && s->status->kv_cache->blocks == 16,
              "a pool of 64K: context %u, %u blocks", s ? s->status->context_length : 0,
              s && s->status->kv_cache ? s->status->kv_cache->blocks : 0);
        if (s)
                mixtrald__v1__response__free_unpacked(s, NULL);
        char prompts[N][512];
        dh_gen g[N];
        for (int i = 0; i < N; i++) {
                snprintf(prompts[i], sizeof(prompts[i]),
                         "Story %d. Once upon a time, in a town by the sea, there lived a clockmaker who "
                         "had never seen a clock stop, until one morning number %d did.", i, 7 * i + 3);
                g[i] = (dh_gen){.prompt = prompts[i], .raw = true, .max_tokens = 120, .ignore_eos = true,
                                .has_temperature = true};
        }
        /* All at once on one connection, then each alone. */
        int fd = dh_connect(&d);
        for (int i = 0; i < N; i++)
                CHECK(dh_send_generate(fd, (uint64_t)i + 1, &g[i]) == 0, "send %d", i);
        dh_result together[N] = {0}, alone[N] = {0};
        CHECK(dh_collect_many(fd, together, N, 120000) == 0, "collect");
        close(fd);
        for (int i = 0; i < N; i++) {
                CHECK(dh_run(&d, &g[i], &alone[i]) == 0, "alone %d", i);
                CHECK(together[i].error == 0 && alone[i].error == 0 && together[i].completion_tokens == 120 &&
                              together[i].text && alone[i].text && !strcmp(together[i].text, alone[i].text),
                      "request %d: '%s' together (%s), '%s' alone", i, together[i].text ? together[i].text : "",
                      together[i].message, alone[i].text ? alone[i].text : "");
                dh_result_free(&together[i]), dh_result_free(&alone[i]);
        }
        s = status_of(&d);
        const Mixtrald__V1__KvCache *kv = s ? s->status->kv_cache : NULL;
        CHECK(kv && kv->used == 0 && kv->cached + kv->free == kv->blocks && kv->evictions > 0,
              "after: %u used, %u cached, %u free of %u, %llu evictions", kv ? kv->used : 0, kv ? kv->cached : 0,
              kv ? kv->free : 0, kv ? kv->blocks : 0, kv ? (unsigned long long)kv->evictions : 0);
        if (s)
                mixtrald__v1__response__free_unpacked(s, NULL);
        CHECK(log_has(&d, "suspended: the KV cache is full"), "no request had to wait for the pool");
        /* More than the pool holds: refused at once, saying why. */
        char big[4096] = "";
        for (int i = 0; i < 200; i++)
                strcat(big, "many more words ");
        dh_gen huge = {.prompt = big, .raw = true, .max_tokens = 4};
        dh_result r = {0};
        CHECK(dh_run(&d, &huge, &r) == 0 && r.error == MIXTRALD__V1__ERROR_CODE__TOO_LONG && strstr(r.message, "KV cache"),
              "a prompt over the pool: error %d '%s'", r.error, r.message);
        dh_result_free(&r);
        CHECK(dh_stop(&d) == 0, "exit status");
        if (test_failures)
                dh_show_log(&d, 30);
        dh_cleanup(&d);
}

int main(int argc, char **argv) {
        if (argc != 3) {
                fprintf(stderr, "usage: test-kv MIXTRALD DEMO_MODEL_DIR\n");
                return 2;
        }
        mixtrald = argv[1], model = argv[2];
        signal(SIGPIPE, SIG_IGN);
        conversation();
        small_pool();
        return test_result();
}
