/* The HTTP API's generation requests: OpenAI's JSON bodies of POST
 * /v1/chat/completions and /v1/completions decoded into md_gen_params,
 * then checked as every transport's are (params.c). Any local user (and
 * any holder of a key) reaches this with up to max_frame_bytes of their
 * choosing, so it is strict where it acts: the body is one JSON object
 * (jansson refuses invalid UTF-8, \u0000 and duplicate keys), each field
 * the daemon uses must have its type, null means absent, and a feature it
 * lacks is refused by name rather than silently ignored (n other than 1,
 * logprobs, echo, suffix, best_of, prompts as token ids). Fields it does
 * not know are ignored, as OpenAI's clients send many. Pure: no daemon
 * state, so the fuzz target and the unit tests call it as http_api.c does.
 *
 * Beyond OpenAI's fields it takes the daemon's own: top_k, min_p,
 * repeat_penalty and ignore_eos (the names llama.cpp's server uses). */
#include <jansson.h>
#include <string.h>

#include "mx_common.h"
#include "mixtrald.h"

/* A member, or NULL when absent or null. */
static json_t *member(json_t *o, const char *name) {
        json_t *v = json_object_get(o, name);
        return json_is_null(v) ? NULL : v;
}

static int wrong_type(mx_error *err, const char *name, const char *what) {
        return mx_error_set(err, -EINVAL, "'%s' must be %s", name, what);
}

static int get_bool(json_t *o, const char *name, bool *out, mx_error *err) {
        json_t *v = member(o, name);
        if (v && !json_is_boolean(v))
                return wrong_type(err, name, "true or false");
        if (v)
                *out = json_is_true(v);
        return 0;
}

/* An integer in [min, max]; *given says whether it was there. */
static int get_int(json_t *o, const char *name, json_int_t min, json_int_t max, json_int_t *out, bool *given,
                   mx_error *err) {
        json_t *v = member(o, name);
        *given = v != NULL;
        if (!v)
                return 0;
        if (!json_is_integer(v))
                return wrong_type(err, name, "an integer");
        *out = json_integer_value(v);
        if (*out < min || *out > max)
                return mx_error_set(err, -EINVAL, "'%s' must be from %lld to %lld", name, (long long)min,
                                    (long long)max);
        return 0;
}

static int get_knob(json_t *o, const char *name, md_knob *k, mx_error *err) {
        json_t *v = member(o, name);
        if (v && !json_is_number(v))
                return wrong_type(err, name, "a number");
        if (v)
                *k = (md_knob){true, json_number_value(v)};
        return 0;
}

static int oom(mx_error *err) {
        return mx_error_set(err, -ENOMEM, "out of memory");
}

/* ---- features the daemon lacks ----------------------------------------------------- */

/* Refused when present with anything but the value that asks for nothing. */
static int refuse_unless(json_t *o, const char *name, bool ok, const char *why, mx_error *err) {
        return member(o, name) && !ok ? mx_error_set(err, -EINVAL, "'%s': %s", name, why) : 0;
}

static bool is_int(json_t *v, json_int_t want) {
        return json_is_integer(v) && json_integer_value(v) == want;
}

static int unsupported(md_http_kind kind, json_t *o, mx_error *err) {
        json_t *lp = member(o, "logprobs"), *suffix = member(o, "suffix");
        int r;
        if ((r = refuse_unless(o, "n", is_int(member(o, "n"), 1), "only one choice (n = 1) is generated", err)) < 0 ||
            (r = refuse_unless(o, "best_of", is_int(member(o, "best_of"), 1), "only best_of = 1 is supported",
                               err)) < 0 ||
            (r = refuse_unless(o, "echo", json_is_false(member(o, "echo")), "echo is not supported", err)) < 0 ||
            (r = refuse_unless(o, "logprobs", json_is_false(lp) || is_int(lp, 0), "log probabilities are not "
                               "supported", err)) < 0 ||
            (r = refuse_unless(o, "top_logprobs", is_int(member(o, "top_logprobs"), 0), "log probabilities are not "
                               "supported", err)) < 0)
                return r;
        if (kind == MD_HTTP_COMPLETION)
                return refuse_unless(o, "suffix", json_is_string(suffix) && !json_string_length(suffix),
                                     "suffix is not supported", err);
        return 0;
}

/* ---- text ------------------------------------------------------------------------- */

typedef int (*item_fn)(json_t *item, size_t i, md_gen_params *p, mx_error *err);

/* fn on each item of an array, up to the first error. */
static int each(json_t *array, item_fn fn, md_gen_params *p, mx_error *err) {
        json_t *item;
        size_t i;
        json_array_foreach(array, i, item) {
                int r = fn(item, i, p, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int add_stop(json_t *v, size_t i, md_gen_params *p, mx_error *err) {
        if (!json_is_string(v))
                return wrong_type(err, "stop", "a string or an array of strings");
        int r = md_gen_params_add_stop(p, json_string_value(v), json_string_length(v));
        if (r == -E2BIG)
                return mx_error_set(err, -EINVAL, "'stop': more than %zu strings", p->n_stop);
        return r < 0 ? oom(err) : 0;
}

static int stops(json_t *o, md_gen_params *p, mx_error *err) {
        json_t *v = member(o, "stop");
        if (!v || !json_is_array(v))
                return v ? add_stop(v, 0, p, err) : 0;
        return each(v, add_stop, p, err);
}

/* A message's content: a string, or text parts ({"type": "text", "text"}),
 * joined. */
static int content_text(json_t *c, size_t i, mx_buf *out, mx_error *err) {
        if (json_is_string(c))
                return mx_buf_append(out, json_string_value(c), json_string_length(c)) < 0 ? oom(err) : 0;
        if (!json_is_array(c))
                return mx_error_set(err, -EINVAL, "'messages[%zu].content' must be a string or an array of text parts",
                                    i);
        json_t *part;
        size_t k;
        json_array_foreach(c, k, part) {
                json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
                if (!json_is_string(type) || strcmp(json_string_value(type), "text") || !json_is_string(text))
                        return mx_error_set(err, -EINVAL, "'messages[%zu].content[%zu]': only parts of type \"text\" "
                                            "with a string \"text\" are supported", i, k);
                if (mx_buf_append(out, json_string_value(text), json_string_length(text)) < 0)
                        return oom(err);
        }
        return 0;
}

static int role_of(json_t *m, size_t i, mx_role *role, mx_error *err) {
        json_t *v = json_object_get(m, "role");
        const char *name = json_string_value(v);
        if (!name)
                return mx_error_set(err, -EINVAL, "'messages[%zu].role' must be a string", i);
        /* OpenAI's newer name for the system prompt. */
        if (!strcmp(name, "developer"))
                name = "system";
        if (mx_role_from_string(name, role) < 0)
                return mx_error_set(err, -EINVAL, "'messages[%zu].role' must be system, user or assistant (tools are "
                                    "not supported)", i);
        return 0;
}

static int message(json_t *m, size_t i, md_gen_params *p, mx_error *err) {
        if (!json_is_object(m))
                return mx_error_set(err, -EINVAL, "'messages[%zu]' must be an object", i);
        mx_role role;
        int r = role_of(m, i, &role, err);
        if (r < 0)
                return r;
        json_t *c = member(m, "content");
        /* An assistant's turn that only called tools has no content. */
        if (!c && role != MX_ROLE_ASSISTANT)
                return mx_error_set(err, -EINVAL, "'messages[%zu].content' is missing", i);
        _cleanup_(mx_buf_free) mx_buf text = {0};
        if (c && (r = content_text(c, i, &text, err)) < 0)
                return r;
        r = md_gen_params_add_message(p, role, text.p ? text.p : "", text.n);
        if (r == -E2BIG)
                return mx_error_set(err, -EINVAL, "'messages': more than %zu", p->n_messages);
        return r < 0 ? oom(err) : 0;
}

static int messages(json_t *o, md_gen_params *p, mx_error *err) {
        json_t *v = member(o, "messages");
        if (!json_is_array(v) || !json_array_size(v))
                return mx_error_set(err, -EINVAL, "'messages' must be a non-empty array");
        return each(v, message, p, err);
}

/* A string, or an array of one string; never token ids. */
static int prompt(json_t *o, md_gen_params *p, mx_error *err) {
        json_t *v = member(o, "prompt");
        if (json_is_array(v) && json_array_size(v) == 1)
                v = json_array_get(v, 0);
        if (!json_is_string(v))
                return mx_error_set(err, -EINVAL, "'prompt' must be a string (or an array of one string; token ids "
                                    "are not supported)");
        p->raw = true;
        return md_text_set(&p->prompt, json_string_value(v), json_string_length(v)) < 0 ? oom(err) : 0;
}

/* ---- numbers and flags --------------------------------------------------------------- */

static int max_tokens(md_http_kind kind, json_t *o, md_gen_params *p, mx_error *err) {
        json_int_t v = 0, w = 0;
        bool given, newer = false;
        int r = get_int(o, "max_tokens", 1, UINT32_MAX, &v, &given, err);
        /* Chat's newer name wins when both are there. */
        if (r == 0 && kind == MD_HTTP_CHAT)
                r = get_int(o, "max_completion_tokens", 1, UINT32_MAX, &w, &newer, err);
        p->max_tokens = (uint32_t)(newer ? w : given ? v : 0);
        return r;
}

static int sampling(json_t *o, md_gen_params *p, mx_error *err) {
        json_int_t top_k = 0, seed = 0;
        int r;
        if ((r = get_knob(o, "temperature", &p->temperature, err)) < 0 || (r = get_knob(o, "top_p", &p->top_p, err)) < 0 ||
            (r = get_knob(o, "min_p", &p->min_p, err)) < 0 ||
            (r = get_knob(o, "repeat_penalty", &p->repeat_penalty, err)) < 0 ||
            (r = get_int(o, "top_k", 0, UINT32_MAX, &top_k, &p->has_top_k, err)) < 0 ||
            (r = get_int(o, "seed", 0, INT64_MAX, &seed, &p->has_seed, err)) < 0)
                return r;
        p->top_k = (uint32_t)top_k, p->seed = (uint64_t)seed;
        return 0;
}

static int streaming(json_t *o, md_http_gen_req *out, mx_error *err) {
        int r = get_bool(o, "stream", &out->stream, err);
        json_t *so = member(o, "stream_options");
        if (r == 0 && so && !json_is_object(so))
                return wrong_type(err, "stream_options", "an object");
        if (r == 0 && so)
                r = get_bool(so, "include_usage", &out->include_usage, err);
        return r;
}

int md_http_gen_parse(md_http_kind kind, const char *body, size_t len, md_http_gen_req *out, mx_error *err) {
        *out = (md_http_gen_req){0};
        json_error_t je;
        json_auto_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
        /* jansson's words for \u0000 name its own flag. */
        if (!o && strstr(je.text, "JSON_ALLOW_NUL"))
                return mx_error_set(err, -EINVAL, "a string holds \\u0000 (a NUL byte), which text may not");
        /* The message goes back in JSON, which must be UTF-8 (jansson's is). */
        if (!o && !mx_utf8_valid(je.text, strlen(je.text)))
                return mx_error_set(err, -EINVAL, "the body is not valid JSON (at byte %d)", je.position);
        if (!o) /* (mx_error_set makes jansson's quote of the input one line) */
                return mx_error_set(err, -EINVAL, "the body is not valid JSON: %s (at byte %d)", je.text, je.position);
        if (!json_is_object(o))
                return mx_error_set(err, -EINVAL, "the body must be a JSON object");
        md_gen_params *p = &out->params;
        json_t *model = member(o, "model");
        int r;
        if (model && !json_is_string(model))
                return wrong_type(err, "model", "a string");
        if ((r = unsupported(kind, o, err)) < 0 ||
            (r = kind == MD_HTTP_CHAT ? messages(o, p, err) : prompt(o, p, err)) < 0 ||
            (r = max_tokens(kind, o, p, err)) < 0 || (r = sampling(o, p, err)) < 0 || (r = stops(o, p, err)) < 0 ||
            (r = get_bool(o, "ignore_eos", &p->ignore_eos, err)) < 0 || (r = streaming(o, out, err)) < 0)
                return r;
        return md_gen_params_check(p, err);
}

void md_http_gen_req_free(md_http_gen_req *r) {
        md_gen_params_free(&r->params);
}
