/* The protobuf socket's requests decoded into the daemon's own terms: a
 * frame into a mixtrald.v1.Request, a Generate into md_gen_params (then
 * checked like any transport's, params.c). */
#include <string.h>

#include "mx_common.h"
#include "mixtrald.h"

Mixtrald__V1__Request *md_request_unpack(const uint8_t *body, size_t len) {
        return mixtrald__v1__request__unpack(NULL, len, body);
}

void md_request_free(Mixtrald__V1__Request *r) {
        if (r)
                mixtrald__v1__request__free_unpacked(r, NULL);
}

const char *md_request_nul_field(const uint8_t *body, size_t len) {
        return mxp_text_with_nul(&mixtrald__v1__request__descriptor, body, len);
}

static int text_from(md_text *t, const char *s) {
        return s ? md_text_set(t, s, strlen(s)) : 0;
}

static int messages_from(const Mixtrald__V1__Generate *g, md_gen_params *p, mx_error *err) {
        for (size_t i = 0; i < g->n_messages; i++) {
                const Mixtrald__V1__ChatMessage *m = g->messages[i];
                mx_role role;
                if (!m->role || mx_role_from_string(m->role, &role) < 0)
                        return mx_error_set(err, -EINVAL, "message %zu: role must be user, assistant or system",
                                            i + 1);
                if (!m->content)
                        return mx_error_set(err, -EINVAL, "message %zu has no content", i + 1);
                int r = md_gen_params_add_message(p, role, m->content, strlen(m->content));
                if (r == -E2BIG)
                        return mx_error_set(err, -EINVAL, "%zu messages; at most %zu", g->n_messages, p->n_messages);
                if (r < 0)
                        return mx_error_set(err, r, "out of memory");
        }
        return 0;
}

static int stops_from(const Mixtrald__V1__Generate *g, md_gen_params *p, mx_error *err) {
        for (size_t i = 0; i < g->n_stop; i++) {
                int r = md_gen_params_add_stop(p, g->stop[i], strlen(g->stop[i]));
                if (r == -E2BIG)
                        return mx_error_set(err, -EINVAL, "%zu stop strings; at most %zu", g->n_stop, p->n_stop);
                if (r < 0)
                        return mx_error_set(err, r, "out of memory");
        }
        return 0;
}

int md_gen_params_from(const Mixtrald__V1__Generate *g, md_gen_params *p, mx_error *err) {
        *p = (md_gen_params){
                .raw = g->has_raw && g->raw,
                .want_ids = g->has_want_token_ids && g->want_token_ids,
                .ignore_eos = g->has_ignore_eos && g->ignore_eos,
                .max_tokens = g->has_max_tokens ? g->max_tokens : 0,
                .temperature = {g->has_temperature, g->temperature},
                .top_p = {g->has_top_p, g->top_p},
                .min_p = {g->has_min_p, g->min_p},
                .repeat_penalty = {g->has_repeat_penalty, g->repeat_penalty},
                .has_top_k = g->has_top_k, .top_k = g->top_k,
                .has_seed = g->has_seed, .seed = g->seed,
        };
        int r;
        if ((r = text_from(&p->prompt, g->prompt)) < 0 || (r = text_from(&p->system, g->system)) < 0)
                return mx_error_set(err, r, "out of memory");
        if ((r = messages_from(g, p, err)) < 0 || (r = stops_from(g, p, err)) < 0)
                return r;
        return md_gen_params_check(p, err);
}
