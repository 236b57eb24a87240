/* Expert streaming (mx_engine_opts.expert_memory) on the CPU backend, with
 * a checkpoint rewritten so that one shard holds the dense weights and the
 * other every expert:
 *   - greedy tokens with budgets of 100%, 50%, 25% and the minimum (top-k
 *     per layer) equal the fully mapped engine's, token for token;
 *   - the counters: never more resident than the budget, misses below
 *     100%, and the reads went through io_uring where it could be set up;
 *   - budgets changed between the steps of a request, down and up;
 *   - the same through pread (MX_IO_URING=0), as where io_uring is refused;
 *   - O_DIRECT where the file system takes it, else buffered reads (also
 *     forced with MX_IO_DIRECT=0): the same tokens either way;
 *   - a file holding dense weights and experts, truncated: with the dense
 *     weights copied out the process survives and the request fails;
 *   - faults: a read error and a short read (MX_IO_FAULT), and the experts'
 *     shard truncated under the engine, each fail that request with a
 *     message naming the file; the engine then serves the next request
 *     (after the file is put back) with the same tokens as before;
 *   - the same with every weight mapped (no streaming): a read past the
 *     end of a file that shrank under the engine is a SIGBUS, which the
 *     engine's guard turns into a failed request naming the file; put back
 *     in place or renamed over, the file serves the same tokens again. */
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mixtral.h"
#include "mx_common.h"
#include "test_util.h"

#define STEPS 16

static char dir[] = "/tmp/mx-stream-XXXXXX";
static char experts_path[sizeof(dir) + 32];

static bool is_expert(const char *name) {
        return strstr(name, ".experts.") != NULL;
}

static int write_file(const char *path, const void *data, size_t n) {
        FILE *f = fopen(path, "wb");
        if (!f)
                return -errno;
        size_t w = fwrite(data, 1, n, f);
        return fclose(f) == 0 && w == n ? 0 : -EIO;
}

static int copy_file(const char *from, const char *to) {
        _cleanup_free_ char *buf = NULL;
        FILE *f = fopen(from, "rb");
        if (!f)
                return -errno;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        buf = malloc((size_t)n + 1);
        size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
        fclose(f);
        return got == (size_t)n ? write_file(to, buf, (size_t)n) : -EIO;
}

/* The source checkpoint as two shards: dense.safetensors, experts.safetensors. */
static int split_checkpoint(const char *src) {
        mx_error err = {0};
        _cleanup_(mx_model_freep) mx_model *m = NULL;
        if (mx_model_open(&m, src, &err) < 0)
                return fprintf(stderr, "%s\n", err.msg), -1;
        mx_tensor_data *t[2];
        size_t n[2] = {0, 0};
        t[0] = calloc(m->n_tensors, sizeof(mx_tensor_data));
        t[1] = calloc(m->n_tensors, sizeof(mx_tensor_data));
        json_auto_t *map = json_object();
        for (size_t i = 0; i < m->n_tensors; i++) {
                const mx_tensor *x = &m->tensors[i];
                int k = is_expert(x->name);
                t[k][n[k]++] = (mx_tensor_data){x->name, x->dtype, x->ndim, {x->shape[0], x->shape[1]}, x->data};
                json_object_set_new(map, x->name, json_string(k ? "experts.safetensors" : "dense.safetensors"));
        }
        char path[256];
        int r = 0;
        snprintf(path, sizeof(path), "%s/dense.safetensors", dir);
        r |= mx_safetensors_write(path, t[0], n[0], &err);
        r |= mx_safetensors_write(experts_path, t[1], n[1], &err);
        json_auto_t *index = json_pack("{s:{},s:O}", "metadata", "weight_map", map);
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
        r |= json_dump_file(index, path, 0);
        char from[512];
        snprintf(from, sizeof(from), "%s/config.json", src);
        snprintf(path, sizeof(path), "%s/config.json", dir);
        r |= copy_file(from, path);
        free(t[0]), free(t[1]);
        return r;
}

static uint64_t all_expert_bytes(const mx_model *m) {
        uint64_t all = 0;
        for (uint32_t L = 0; L < m->cfg.n_layers; L++)
                for (uint32_t e = 0; e < m->cfg.n_experts; e++)
                        all += m->layers[L].w1[e]->nbytes + m->layers[L].w2[e]->nbytes + m->layers[L].w3[e]->nbytes;
        return all;
}

/* Budgets to switch to before given steps (mid-request), or none. */
typedef struct change {
        int at;
        uint64_t budget;
} change;

/* STEPS greedy tokens after a fixed prompt; 0 or the forward's error. */
static int generate_changing(mx_engine *e, int32_t *out, const change *ch, size_t n_ch, mx_error *err) {
        uint32_t vocab = mx_engine_model(e)->cfg.vocab_size;
        int32_t prompt[12];
        for (int i = 0; i < 12; i++)
                prompt[i] = (int32_t)(1 + (i * 37 + 5) % (vocab - 1));
        _cleanup_(mx_seq_freep) mx_seq *s = NULL;
        _cleanup_free_ float *logits = malloc(vocab * sizeof(float));
        int r = mx_seq_new(e, 64, &s, err);
        mx_batch_item it = {.seq = s, .tokens = prompt, .n_tokens = 12, .logits = logits};
        for (int k = 0; r == 0 && k < STEPS; k++) {
                for (size_t c = 0; c < n_ch; c++)
                        if (ch[c].at == k && (r = mx_engine_set_expert_memory(e, ch[c].budget, err)) < 0)
                                return r;
                if ((r = mx_forward(e, &it, 1, err)) < 0)
                        break;
                out[k] = 0;
                for (uint32_t i = 1; i < vocab; i++)
                        if (logits[i] > logits[out[k]])
                                out[k] = (int32_t)i;
                it = (mx_batch_item){.seq = s, .tokens = &out[k], .n_tokens = 1, .logits = logits};
        }
        return r;
}

static int generate(mx_engine *e, int32_t *out, mx_error *err) {
        return generate_changing(e, out, NULL, 0, err);
}

static mx_engine *open_engine_with(const mx_model *m, uint64_t budget, bool bf16_plain) {
        mx_error err = {0};
        mx_engine *e = NULL;
        mx_engine_opts o = {.threads = 1, .expert_memory = budget, .bf16_plain = bf16_plain};
        CHECK(mx_engine_open(&e, m, &o, &err) == 0, "engine with budget %llu: %s", (unsigned long long)budget, err.msg);
        return e;
}

static mx_engine *open_engine(const mx_model *m, uint64_t budget) {
        return open_engine_with(m, budget, false);
}

static void check_budgets(const mx_model *m, const int32_t *want) {
        uint64_t all = all_expert_bytes(m);
        const struct {
                const char *name;
                uint64_t budget;
        } cases[] = {{"100%", all}, {"50%", all / 2}, {"25%", all / 4}, {"minimum", 1}};
        for (size_t c = 0; c < MX_ELEMENTSOF(cases); c++) {
                _cleanup_(mx_engine_freep) mx_engine *e = open_engine(m, cases[c].budget);
                if (!e)
                        continue;
                int32_t got[STEPS];
                mx_error err = {0};
                CHECK(generate(e, got, &err) == 0, "%s: %s", cases[c].name, err.msg);
                CHECK(ids_eq(got, STEPS, want, STEPS), "%s: other tokens than with every expert mapped", cases[c].name);
                mx_expert_stats st;
                mx_engine_expert_stats(e, &st);
                uint64_t per = all / m->cfg.n_layers / m->cfg.n_experts;
                uint64_t floor = (uint64_t)m->cfg.n_experts_per_tok * m->cfg.n_layers * per;
                uint64_t allowed = cases[c].budget > floor ? cases[c].budget : floor;
                CHECK(st.streaming && st.resident_max <= allowed && st.budget <= allowed,
                      "%s: %llu bytes resident at most, budget %llu", cases[c].name,
                      (unsigned long long)st.resident_max, (unsigned long long)allowed);
                CHECK(st.misses > 0 && st.reads >= 3 * st.misses && st.bytes_read >= st.misses * per &&
                          st.hits + st.misses >= (uint64_t)STEPS * m->cfg.n_layers,
                      "%s: %llu misses, %llu reads, %llu bytes", cases[c].name, (unsigned long long)st.misses,
                      (unsigned long long)st.reads, (unsigned long long)st.bytes_read);
                if (cases[c].budget < all)
                        CHECK(st.misses > (uint64_t)m->cfg.n_layers * m->cfg.n_experts_per_tok,
                              "%s: only %llu misses", cases[c].name, (unsigned long long)st.misses);
                if (strncmp(st.how, "io_uring", 8) == 0)
                        CHECK(st.uring_reads == st.reads, "%s: %llu of %llu reads through io_uring", cases[c].name,
                              (unsigned long long)st.uring_reads, (unsigned long long)st.reads);
                else
                        fprintf(stderr, "note: reads were not made with io_uring here: %s\n", st.how);
                if (c == 0)
                        fprintf(stderr, "reads: %s\n", st.how);
        }
}

/* Streams at the minimum budget: the same tokens, read the way `how` says. */
static void check_reads(const mx_model *m, const char *how, const int32_t *want) {
        mx_error err = {0};
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine(m, 1);
        int32_t got[STEPS];
        CHECK(e && generate(e, got, &err) == 0 && ids_eq(got, STEPS, want, STEPS), "%s: %s", how, err.msg);
        if (!e)
                return;
        mx_expert_stats st;
        mx_engine_expert_stats(e, &st);
        CHECK(strstr(st.how, how) && st.reads > 0, "reads were \"%s\", not %s", st.how, how);
}

/* O_DIRECT where this file system takes it (tmpfs did not before Linux
 * 6.6), and buffered reads where it does not (MX_IO_DIRECT=0 stands in
 * for such a file system when this one has it). */
static void check_direct(const mx_model *m, const int32_t *want) {
        int fd = open(experts_path, O_RDONLY | O_DIRECT);
        if (fd >= 0)
                close(fd);
        check_reads(m, fd >= 0 ? "O_DIRECT" : "buffered", want);
        setenv("MX_IO_DIRECT", "0", 1);
        check_reads(m, "buffered", want);
        unsetenv("MX_IO_DIRECT");
}

/* The budget shrinks and grows while a request runs (and goes to 0, all
 * mapped, and back): the same tokens, and what is held follows it. */
static void check_changes(const mx_model *m, const int32_t *want) {
        uint64_t all = all_expert_bytes(m);
        const change ch[] = {{3, 1}, {6, all / 2}, {9, 0}, {11, all / 4}, {13, all}};
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine(m, all);
        if (!e)
                return;
        int32_t got[STEPS];
        mx_error err = {0};
        CHECK(generate_changing(e, got, ch, MX_ELEMENTSOF(ch), &err) == 0, "changing budgets: %s", err.msg);
        CHECK(ids_eq(got, STEPS, want, STEPS), "changing budgets: other tokens");
        mx_expert_stats st;
        mx_engine_expert_stats(e, &st);
        CHECK(st.streaming && st.budget <= all && st.resident <= st.budget && st.misses > 0,
              "after the changes: budget %llu, resident %llu, %llu misses", (unsigned long long)st.budget,
              (unsigned long long)st.resident, (unsigned long long)st.misses);
        CHECK(mx_engine_set_expert_memory(e, 1, &err) == 0, "shrink: %s", err.msg);
        mx_engine_expert_stats(e, &st);
        CHECK(st.slots_per_layer == m->cfg.n_experts_per_tok && st.resident == 0, "shrunk to the minimum: %u slots",
              st.slots_per_layer);
}

/* A fault fails one request, with a message naming the experts' file;
 * the engine goes on serving. */
static void check_fault(const mx_model *m, const int32_t *want, const char *fault, const char *says) {
        setenv("MX_IO_FAULT", fault, 1);
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine(m, 1);
        unsetenv("MX_IO_FAULT");
        if (!e)
                return;
        int32_t got[STEPS];
        mx_error err = {0};
        CHECK(generate(e, got, &err) == -EIO, "%s: the request did not fail", fault);
        CHECK(strstr(err.msg, "experts.safetensors") && strstr(err.msg, says), "%s: '%s' does not say '%s'", fault,
              err.msg, says);
        /* The faults last 40 reads: requests fail until they are past,
         * then the same tokens as ever. */
        mx_error err2 = {0};
        int tries = 0, r = -EIO;
        while (r < 0 && tries++ < 20)
                r = generate(e, got, &err2);
        CHECK(r == 0 && ids_eq(got, STEPS, want, STEPS), "%s: after the faults: %s", fault, err2.msg);
}

/* Writes data to a new file and renames it over experts_path, as an
 * administrator restoring a copy would. */
static int replace_file(const char *data, size_t n) {
        char tmp[600];
        snprintf(tmp, sizeof(tmp), "%s.new", experts_path);
        return write_file(tmp, data, n) == 0 && rename(tmp, experts_path) == 0 ? 0 : -EIO;
}

/* Truncated again, then replaced by renaming: a copy whose header differs
 * is refused with a clear message; the right copy is taken up. */
static void check_replaced(mx_engine *e, const char *good, size_t n, const int32_t *want) {
        int32_t got[STEPS];
        mx_error err = {0};
        CHECK(truncate(experts_path, (off_t)(n / 3)) == 0 && generate(e, got, &err) == -EIO, "truncated again");
        _cleanup_free_ char *other = malloc(n);
        if (!other)
                return;
        memcpy(other, good, n);
        char *name = memmem(other, n < 4096 ? n : 4096, "experts", 7);
        CHECK(name != NULL, "no tensor name in the experts file's header");
        if (name)
                name[0] = 'E'; /* same size, another header */
        err = (mx_error){0};
        CHECK(replace_file(other, n) == 0 && generate(e, got, &err) == -EIO && strstr(err.msg, "replaced by a different"),
              "replaced by another file: '%s'", err.msg);
        err = (mx_error){0};
        CHECK(replace_file(good, n) == 0 && generate(e, got, &err) == 0 && ids_eq(got, STEPS, want, STEPS),
              "replaced by a good copy: %s", err.msg);
}

static void check_truncated(const mx_model *m, const int32_t *want) {
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine(m, 1);
        struct stat st;
        if (!e || stat(experts_path, &st) < 0)
                return;
        _cleanup_free_ char *saved = malloc((size_t)st.st_size);
        FILE *f = fopen(experts_path, "rb");
        CHECK(f && saved && fread(saved, 1, (size_t)st.st_size, f) == (size_t)st.st_size, "read %s", experts_path);
        if (f)
                fclose(f);
        CHECK(truncate(experts_path, st.st_size / 3) == 0, "truncate: %s", strerror(errno));
        int32_t got[STEPS];
        mx_error err = {0};
        CHECK(generate(e, got, &err) == -EIO, "truncated: the request did not fail");
        CHECK(strstr(err.msg, experts_path) && strstr(err.msg, "truncated"), "truncated: '%s'", err.msg);
        /* Put back in place (the same inode): the next request reads it
         * again. */
        CHECK(saved && write_file(experts_path, saved, (size_t)st.st_size) == 0, "restore %s", experts_path);
        mx_error err2 = {0};
        CHECK(generate(e, got, &err2) == 0 && ids_eq(got, STEPS, want, STEPS), "after the restore: %s", err2.msg);
        if (saved)
                check_replaced(e, saved, (size_t)st.st_size, want);
}

/* A checkpoint whose one file holds dense weights and experts alike,
 * truncated under an engine that streams: with the dense weights copied
 * out (mx_model_copy_dense) the requests fail, the process lives, and a
 * restored file serves again. */
static void check_mixed_file_truncated(const char *src) {
        char path[512], from[512];
        mx_error err = {0};
        snprintf(from, sizeof(from), "%s/model.safetensors", src);
        snprintf(path, sizeof(path), "%s/mixed", dir);
        mkdir(path, 0700);
        snprintf(path, sizeof(path), "%s/mixed/model.safetensors", dir);
        char cfg_from[512], cfg_to[512];
        snprintf(cfg_from, sizeof(cfg_from), "%s/config.json", src);
        snprintf(cfg_to, sizeof(cfg_to), "%s/mixed/config.json", dir);
        if (copy_file(from, path) != 0 || copy_file(cfg_from, cfg_to) != 0)
                return; /* a sharded checkpoint: the split one covers it */
        char mdir[256];
        snprintf(mdir, sizeof(mdir), "%s/mixed", dir);
        _cleanup_(mx_model_freep) mx_model *m = NULL;
        CHECK(mx_model_open(&m, mdir, &err) == 0 && mx_model_copy_dense(m, &err) == 0, "mixed: %s", err.msg);
        if (!m)
                return;
        int32_t want[STEPS], got[STEPS];
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine(m, 1);
        CHECK(e && generate(e, want, &err) == 0, "mixed, streaming: %s", err.msg);
        struct stat st;
        _cleanup_free_ char *saved = NULL;
        if (!e || stat(path, &st) < 0 || !(saved = malloc((size_t)st.st_size)))
                return;
        FILE *f = fopen(path, "rb");
        CHECK(f && fread(saved, 1, (size_t)st.st_size, f) == (size_t)st.st_size, "read %s", path);
        if (f)
                fclose(f);
        CHECK(truncate(path, 4096) == 0, "truncate: %s", strerror(errno));
        err = (mx_error){0};
        CHECK(generate(e, got, &err) == -EIO && strstr(err.msg, "truncated"), "mixed, truncated: '%s'", err.msg);
        CHECK(write_file(path, saved, (size_t)st.st_size) == 0, "restore");
        err = (mx_error){0};
        CHECK(generate(e, got, &err) == 0 && ids_eq(got, STEPS, want, STEPS), "mixed, restored: %s", err.msg);
}

static char *slurp(const char *path, size_t *n) {
        struct stat st;
        char *buf = stat(path, &st) == 0 ? malloc((size_t)st.st_size + 1) : NULL;
        FILE *f = buf ? fopen(path, "rb") : NULL;
        *n = f ? fread(buf, 1, (size_t)st.st_size, f) : 0;
        if (f)
                fclose(f);
        return buf;
}

/* Mapped, not streamed, and not packed: nothing copied, so a shrunk file
 * is a SIGBUS inside the matrix kernels, on the pool's threads. */
static void check_mapped_truncated(const mx_model *m, const int32_t *want) {
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine_with(m, 0, true);
        int32_t got[STEPS];
        size_t n;
        _cleanup_free_ char *saved = slurp(experts_path, &n);
        mx_error err = {0};
        if (!e || !saved)
                return;
        CHECK(truncate(experts_path, (off_t)(n / 3)) == 0, "truncate: %s", strerror(errno));
        CHECK(generate(e, got, &err) == -EIO && strstr(err.msg, experts_path) && strstr(err.msg, "shrank"),
              "mapped, truncated: '%s'", err.msg);
        err = (mx_error){0};
        CHECK(generate(e, got, &err) == -EIO, "mapped, still truncated: the request did not fail");
        CHECK(write_file(experts_path, saved, n) == 0, "restore %s in place", experts_path);
        err = (mx_error){0};
        CHECK(generate(e, got, &err) == 0 && ids_eq(got, STEPS, want, STEPS), "mapped, restored in place: %s",
              err.msg);
        char fresh[sizeof(experts_path) + 8];
        snprintf(fresh, sizeof(fresh), "%s.fresh", experts_path);
        CHECK(write_file(fresh, saved, n) == 0 && truncate(experts_path, 4096) == 0, "truncate again");
        CHECK(generate(e, got, &err) == -EIO, "mapped, truncated again: the request did not fail");
        CHECK(rename(fresh, experts_path) == 0, "rename the copy over it");
        err = (mx_error){0};
        CHECK(generate(e, got, &err) == 0 && ids_eq(got, STEPS, want, STEPS), "mapped, copy renamed over: %s",
              err.msg);
}

/* Packed (where the CPU packs bf16 weights: AVX2, AVX-512), the experts no
 * longer read their file after start-up: a shrunk file changes nothing;
 * and an engine started on a shrunk file refuses to start, rather than
 * pack zeros. */
static void check_packed_truncated(const mx_model *m, const int32_t *want) {
        _cleanup_(mx_engine_freep) mx_engine *e = open_engine(m, 0);
        int32_t got[STEPS];
        size_t n;
        _cleanup_free_ char *saved = slurp(experts_path, &n);
        mx_error err = {0};
        if (!e || !saved || !strstr(mx_engine_describe(e), "packed")) {
                printf("packed: skipped (%s)\n", e ? mx_engine_describe(e) : "no engine");
                return;
        }
        CHECK(truncate(experts_path, (off_t)(n / 3)) == 0, "truncate: %s", strerror(errno));
        CHECK(generate(e, got, &err) == 0 && ids_eq(got, STEPS, want, STEPS), "packed, truncated: %s", err.msg);
        mx_engine *late = NULL;
        mx_engine_opts o = {.threads = 1};
        err = (mx_error){0};
        CHECK(mx_engine_open(&late, m, &o, &err) == -EIO && strstr(err.msg, experts_path),
              "packing a shrunk file: '%s'", err.msg);
        mx_engine_free(late);
        CHECK(write_file(experts_path, saved, n) == 0, "restore %s in place", experts_path);
        err = (mx_error){0};
        CHECK(mx_model_check_files(m, &err) == 0, "restored: %s", err.msg);
}

/* The budget's syntax, good and bad. */
static void check_parse(const mx_model *m) {
        uint64_t all = all_expert_bytes(m), v = 7;
        mx_error err = {0};
        const struct {
                const char *s;
                uint64_t want;
        } good[] = {{"auto", 0}, {"all", 0}, {"min", 1}, {"50%", all / 2}, {"2K", 2048}, {"100%", all},
                    {"200G", all}, {"0.5%", all / 200}};
        for (size_t i = 0; i < MX_ELEMENTSOF(good); i++) {
                int r = mx_expert_budget_parse(good[i].s, m, &v, &err);
                CHECK(r == 0 && (v == good[i].want || v + 1 == good[i].want || v == good[i].want + 1),
                      "'%s' gave %llu (%d), not %llu", good[i].s, (unsigned long long)v, r,
                      (unsigned long long)good[i].want);
        }
        const char *bad[] = {"", "abc", "-5", "10X", "0", "1e30", "50%%", "5 G", "nan", "inf%", "%",
                             "101%", "+5G", " 5G", "99999999T", "5GB"};
        for (size_t i = 0; i < MX_ELEMENTSOF(bad); i++) {
                err = (mx_error){0};
                CHECK(mx_expert_budget_parse(bad[i], m, &v, &err) == -EINVAL && strstr(err.msg, "expected"),
                      "'%s' was taken (%s)", bad[i], err.msg);
                CHECK(mx_host_cache_parse(bad[i], m, &v, &err) == -EINVAL, "host cache '%s' was taken", bad[i]);
        }
        /* Without a model only the text is checked (the daemon's
         * configuration): out is left alone, and the same texts fail. */
        v = 12345;
        CHECK(mx_expert_budget_parse("50%", NULL, &v, &err) == 0 && v == 12345, "50%% without a model");
        CHECK(mx_expert_budget_parse("1e-3K", NULL, NULL, NULL) == 0, "1e-3K without a model");
        for (size_t i = 0; i < MX_ELEMENTSOF(bad); i++) {
                err = (mx_error){0};
                CHECK(mx_expert_budget_parse(bad[i], NULL, NULL, &err) == -EINVAL && strstr(err.msg, "expected"),
                      "'%s' was taken without a model (%s)", bad[i], err.msg);
        }
        /* The GPU's host cache: auto is 0, all is everything (clamped later). */
        CHECK(mx_host_cache_parse("auto", m, &v, &err) == 0 && v == 0, "host cache auto: %llu", (unsigned long long)v);
        CHECK(mx_host_cache_parse("all", m, &v, &err) == 0 && v >= all, "host cache all: %llu", (unsigned long long)v);
        CHECK(mx_host_cache_parse("50%", m, &v, &err) == 0 && v + 1 >= all / 2 && v <= all / 2 + 1, "host cache 50%%");
}

static int rm_one(const char *p, const struct stat *s, int flag, struct FTW *f) {
        return remove(p);
}

int main(int argc, char **argv) {
        if (argc != 2) {
                fprintf(stderr, "usage: test-expert-stream CHECKPOINT\n");
                return 2;
        }
        CHECK(mkdtemp(dir) != NULL, "mkdtemp");
        snprintf(experts_path, sizeof(experts_path), "%s/experts.safetensors", dir);
        if (split_checkpoint(argv[1]) != 0) {
                CHECK(false, "cannot rewrite %s into %s", argv[1], dir);
                return test_result();
        }
        mx_error err = {0};
        _cleanup_(mx_model_freep) mx_model *m = NULL;
        CHECK(mx_model_open(&m, dir, &err) == 0, "open %s: %s", dir, err.msg);
        if (m) {
                int32_t want[STEPS];
                _cleanup_(mx_engine_freep) mx_engine *e = open_engine(m, 0);
                CHECK(e && generate(e, want, &err) == 0, "mapped: %s", err.msg);
                mx_expert_stats st;
                if (e) {
                        mx_engine_expert_stats(e, &st);
                        CHECK(!st.streaming && st.reads == 0, "no streaming without a budget");
                }
                check_parse(m);
                check_budgets(m, want);
                check_direct(m, want);
                check_changes(m, want);
                /* The first request's first reads all fail: some of them are
                 * experts it must have (others are evicted unread). */
                check_fault(m, want, "eio:1:40", "Input/output error");
                check_fault(m, want, "short:1:40", "short read");
                check_truncated(m, want);
                check_mapped_truncated(m, want);
                check_packed_truncated(m, want);
                check_mixed_file_truncated(argv[1]);
                /* Where io_uring cannot be had: the same tokens through pread. */
                setenv("MX_IO_URING", "0", 1);
                _cleanup_(mx_engine_freep) mx_engine *p = open_engine(m, 1);
                unsetenv("MX_IO_URING");
                int32_t got[STEPS];
                CHECK(p && generate(p, got, &err) == 0 && ids_eq(got, STEPS, want, STEPS), "pread: %s", err.msg);
                if (p) {
                        mx_engine_expert_stats(p, &st);
                        CHECK(strncmp(st.how, "pread", 5) == 0 && st.uring_reads == 0 && st.reads > 0, "pread: %s, %llu reads",
                              st.how, (unsigned long long)st.reads);
                }
        }
        nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
        return test_result();
}
