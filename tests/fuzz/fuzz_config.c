/* Fuzzes both configuration parsers (config.json and params.json): any
 * accepted configuration must satisfy the invariants the loader relies on
 * when it computes sizes. */
#include <stdlib.h>

#include "fuzz.h"
#include "mixtral.h"

static void check(const mx_config *c) {
        if (c->head_dim == 0 || c->head_dim % 2 || c->n_kv_heads == 0 || c->n_heads % c->n_kv_heads ||
            c->n_experts_per_tok == 0 || c->n_experts_per_tok > c->n_experts || c->vocab_size == 0 ||
            c->hidden_size == 0 || c->intermediate_size == 0 || c->n_layers == 0 || !(c->rope_theta > 0) ||
            !(c->rms_norm_eps > 0))
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        mx_config c;
        mx_error err;
        if (mx_config_parse_hf((const char *)data, size, "config.json", &c, &err) == 0)
                check(&c);
        if (mx_config_parse_params((const char *)data, size, "params.json", &c, &err) == 0)
                check(&c);
        return 0;
}
