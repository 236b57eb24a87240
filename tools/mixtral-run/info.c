/* --info: what the files say the model is, and what it costs in memory.
 * One "key: value" per line so that scripts can pick lines out. */
#include <stdio.h>

#include "run.h"

static const char *human(uint64_t bytes, char *buf, size_t size) {
        static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
        double v = (double)bytes;
        int u = 0;
        while (v >= 1024 && u < 4)
                v /= 1024, u++;
        snprintf(buf, size, u ? "%.2f %s" : "%.0f %s", v, unit[u]);
        return buf;
}

static const char *human_count(uint64_t n, char *buf, size_t size) {
        if (n >= 1000000000ull)
                snprintf(buf, size, "%.2f B", (double)n / 1e9);
        else if (n >= 1000000ull)
                snprintf(buf, size, "%.2f M", (double)n / 1e6);
        else
                snprintf(buf, size, "%llu", (unsigned long long)n);
        return buf;
}

int run_info(const mx_model *m) {
        const mx_config *c = &m->cfg;
        mx_footprint fp;
        char a[32], b[32];
        mx_model_footprint(m, &fp);

        printf("model: %s\n", m->dir);
        printf("layout: %s\n", m->layout == MX_LAYOUT_HF ? "hugging-face" : "mistral-inference");
        printf("files: %zu\n", m->n_files);
        printf("tensors: %zu\n", m->n_tensors);
        printf("vocab_size: %u\n", c->vocab_size);
        printf("hidden_size: %u\n", c->hidden_size);
        printf("intermediate_size: %u\n", c->intermediate_size);
        printf("layers: %u\n", c->n_layers);
        printf("attention_heads: %u\n", c->n_heads);
        printf("kv_heads: %u\n", c->n_kv_heads);
        printf("head_dim: %u\n", c->head_dim);
        printf("experts: %u\n", c->n_experts);
        printf("experts_per_token: %u\n", c->n_experts_per_tok);
        printf("rope_theta: %g\n", c->rope_theta);
        printf("rms_norm_eps: %g\n", c->rms_norm_eps);
        if (c->max_position_embeddings)
                printf("context_length: %u\n", c->max_position_embeddings);
        else
                printf("context_length: not given by the model\n");
        printf("sliding_window: %s%.0u\n", c->sliding_window ? "" : "none", c->sliding_window);
        printf("tie_word_embeddings: %s\n", c->tie_word_embeddings ? "true" : "false");
        printf("parameters: %llu (%s)\n", (unsigned long long)fp.params,
               human_count(fp.params, a, sizeof(a)));
        printf("weights_bytes: %llu (%s", (unsigned long long)fp.bytes, human(fp.bytes, b, sizeof(b)));
        for (int t = 0; t < MX_DTYPE_COUNT; t++)
                if (fp.bytes_by_dtype[t])
                        printf(", %s %s", mx_dtype_name((mx_dtype)t),
                               human(fp.bytes_by_dtype[t], a, sizeof(a)));
        printf(")\n");
        printf("active_parameters_per_token: %llu (%s)\n", (unsigned long long)fp.active_params,
               human_count(fp.active_params, a, sizeof(a)));
        printf("weight_bytes_read_per_token: %llu (%s)\n", (unsigned long long)fp.active_bytes,
               human(fp.active_bytes, a, sizeof(a)));
        printf("kv_cache_bytes_per_token: %llu (bf16)\n", (unsigned long long)fp.kv_bytes_per_token);
        if (c->max_position_embeddings)
                printf("kv_cache_bytes_full_context: %llu (%s)\n",
                       (unsigned long long)fp.kv_bytes_per_token * c->max_position_embeddings,
                       human(fp.kv_bytes_per_token * c->max_position_embeddings, a, sizeof(a)));
        return 0;
}
