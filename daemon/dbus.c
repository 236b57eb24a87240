/* The same service on D-Bus (sd-bus, on the daemon's own event loop):
 * org.mixtrald.Mixtral1 at /org/mixtrald/Mixtral1, a transport of the
 * request core like the socket. Requests go through the same admission,
 * quotas and engine as the socket's; their output goes as signals on
 * /org/mixtrald/Mixtral1/request/ID addressed to the caller alone, never
 * broadcast. The caller's uid comes from the bus's own record of its
 * credentials, never from /proc; a request's object exists only for its
 * owner (and root), so nobody learns of another user's requests by
 * introspecting; and a caller's leaving is believed only from the bus
 * itself (org.freedesktop.DBus), never from a NameOwnerChanged anyone can
 * send. */
#include <pwd.h>
#include <string.h>
#include <syslog.h>
#include <systemd/sd-bus.h>

#include "mx_common.h"
#include "mixtrald.h"

#define BUS_NAME "org.mixtrald.Mixtral1"
#define OBJECT_PATH "/org/mixtrald/Mixtral1"
#define REQUEST_PREFIX "/org/mixtrald/Mixtral1/request"
#define REQUEST_INTERFACE "org.mixtrald.Mixtral1.Request"
#define ERROR_PREFIX "org.mixtrald.Mixtral1.Error."

typedef struct md_bus_call md_bus_call;
struct md_bus_call {
        md_server *srv;
        md_request *r;
        char *sender;               /* the caller's unique name */
        char path[64];              /* once accepted */
        sd_bus_message *call;       /* replied to when accepted (Generate, Chat) or at the end (Complete) */
        bool complete;
        mx_buf text;                /* Complete(): the answer so far */
        md_bus_call *next;          /* in calls */
};

/* Calls the core still knows, for a caller leaving and for stopping. */
static md_bus_call *calls;

static const char *error_name(int code) {
        switch (code) {
        case MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT: return ERROR_PREFIX "InvalidArgument";
        case MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED: return ERROR_PREFIX "QuotaExceeded";
        case MIXTRALD__V1__ERROR_CODE__BUSY: return ERROR_PREFIX "Busy";
        case MIXTRALD__V1__ERROR_CODE__TOO_LONG: return ERROR_PREFIX "TooLong";
        case MIXTRALD__V1__ERROR_CODE__CANCELLED: return ERROR_PREFIX "Cancelled";
        case MIXTRALD__V1__ERROR_CODE__NOT_FOUND: return ERROR_PREFIX "NotFound";
        case MIXTRALD__V1__ERROR_CODE__UNAVAILABLE: return ERROR_PREFIX "Unavailable";
        default: return ERROR_PREFIX "Internal";
        }
}

/* "QuotaExceeded": the code as the Failed signal names it. */
static const char *error_short(int code) {
        return error_name(code) + strlen(ERROR_PREFIX);
}

static int fail(sd_bus_error *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(sd_bus_error *e, int code, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int r = sd_bus_error_setfv(e, error_name(code), fmt, ap);
        va_end(ap);
        return r;
}

static int refused(sd_bus_error *e, const md_refusal *ref) {
        if (ref->code == MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED && ref->retry_at)
                return fail(e, ref->code, "%s (retry after %llu, unix time)", ref->msg,
                            (unsigned long long)ref->retry_at);
        if (ref->code == MIXTRALD__V1__ERROR_CODE__BUSY && ref->retry_after_ms)
                return fail(e, ref->code, "%s (retry in %u ms)", ref->msg, ref->retry_after_ms);
        return fail(e, ref->code, "%s", ref->msg);
}

/* ---- who is calling ----------------------------------------------------------- */

/* The caller's effective uid as the bus daemon recorded it when it
 * connected; a value sd-bus would have to read from /proc is refused. */
static int caller(sd_bus_message *m, uint32_t *uid, sd_bus_error *e) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *c = NULL;
        uid_t u;
        int r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &c);
        if (r >= 0)
                r = sd_bus_creds_get_euid(c, &u);
        if (r < 0)
                return fail(e, MIXTRALD__V1__ERROR_CODE__INTERNAL, "the bus does not say who is calling: %s",
                            strerror(-r));
        if (sd_bus_creds_get_augmented_mask(c) & SD_BUS_CREDS_EUID)
                return fail(e, MIXTRALD__V1__ERROR_CODE__INTERNAL, "the bus does not vouch for the caller's uid");
        *uid = u;
        return 0;
}

/* ---- options ------------------------------------------------------------------- */

/* a{sv} into md_gen_params: the socket's option names, and the same
 * checks (md_gen_params_check). D-Bus text has no NUL bytes. */
static int take_text(md_text *t, const char *s) {
        return md_text_set(t, s, strlen(s));
}

static int read_stops(sd_bus_message *m, md_gen_params *p, sd_bus_error *e) {
        int r = sd_bus_message_enter_container(m, 'a', "s");
        const char *s;
        while (r >= 0 && (r = sd_bus_message_read(m, "s", &s)) > 0) {
                r = md_gen_params_add_stop(p, s, strlen(s));
                if (r == -E2BIG)
                        return fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, "more stop strings than %zu",
                                    p->n_stop);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        return r;
}

static const struct {
        const char *name, *sig;
} known_options[] = {
        {"temperature", "d"}, {"top_k", "u"}, {"top_p", "d"}, {"min_p", "d"}, {"repeat_penalty", "d"},
        {"seed", "t"}, {"max_tokens", "u"}, {"stop", "as"}, {"system", "s"}, {"raw", "b"},
        {"ignore_eos", "b"},
};

static int read_knob(sd_bus_message *m, md_knob *k) {
        k->set = true;
        return sd_bus_message_read(m, "d", &k->v);
}

static int read_flag(sd_bus_message *m, bool *out) {
        int b = 0, r = sd_bus_message_read(m, "b", &b);
        *out = b;
        return r;
}

/* One option's value, of the type its name calls for (k: its index). */
static int read_value(sd_bus_message *m, size_t k, md_gen_params *p, sd_bus_error *e) {
        const char *s;
        int r;
        switch (k) {
        case 0: return read_knob(m, &p->temperature);
        case 1: return p->has_top_k = true, sd_bus_message_read(m, "u", &p->top_k);
        case 2: return read_knob(m, &p->top_p);
        case 3: return read_knob(m, &p->min_p);
        case 4: return read_knob(m, &p->repeat_penalty);
        case 5: return p->has_seed = true, sd_bus_message_read(m, "t", &p->seed);
        case 6: return sd_bus_message_read(m, "u", &p->max_tokens);
        case 7: return read_stops(m, p, e);
        case 8:
                if ((r = sd_bus_message_read(m, "s", &s)) < 0)
                        return r;
                return take_text(&p->system, s);
        case 9: return read_flag(m, &p->raw);
        default: return read_flag(m, &p->ignore_eos);
        }
}

static int read_option(sd_bus_message *m, unsigned *seen, md_gen_params *p, sd_bus_error *e) {
        const char *key;
        int r = sd_bus_message_read(m, "s", &key);
        if (r < 0)
                return r;
        size_t k = 0;
        while (k < MX_ELEMENTSOF(known_options) && strcmp(key, known_options[k].name))
                k++;
        if (k == MX_ELEMENTSOF(known_options))
                return fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT,
                            "unknown option '%s' (temperature, top_k, top_p, min_p, repeat_penalty, seed, "
                            "max_tokens, stop, system, raw, ignore_eos)", key);
        /* A key given twice would have one of its values silently lost. */
        if (*seen & (1u << k))
                return fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, "option '%s' is given twice", key);
        *seen |= 1u << k;
        const char *sig = known_options[k].sig, *contents = NULL;
        r = sd_bus_message_peek_type(m, NULL, &contents);
        if (r < 0 || !contents || strcmp(contents, sig))
                return fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, "option '%s' must be of type '%s', not '%s'",
                            key, sig, contents ? contents : "?");
        if ((r = sd_bus_message_enter_container(m, 'v', sig)) < 0 || (r = read_value(m, k, p, e)) < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

static int read_options(sd_bus_message *m, md_gen_params *p, sd_bus_error *e) {
        unsigned seen = 0;
        int r = sd_bus_message_enter_container(m, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0)
                if ((r = read_option(m, &seen, p, e)) < 0 || (r = sd_bus_message_exit_container(m)) < 0)
                        return r;
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        return r;
}

static int read_messages(sd_bus_message *m, md_gen_params *p, sd_bus_error *e) {
        int r = sd_bus_message_enter_container(m, 'a', "(ss)");
        const char *role, *content;
        while (r >= 0 && (r = sd_bus_message_read(m, "(ss)", &role, &content)) > 0) {
                mx_role rl;
                if (mx_role_from_string(role, &rl) < 0)
                        return fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT,
                                    "message %zu: role must be user, assistant or system", p->n_messages + 1);
                r = md_gen_params_add_message(p, rl, content, strlen(content));
                if (r == -E2BIG)
                        return fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, "more messages than %zu",
                                    p->n_messages);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        if (p->n_messages == 0)
                return fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, "the conversation is empty");
        return 0;
}

/* ---- the core's answers ---------------------------------------------------------- */

static int append_entry(sd_bus_message *m, const char *key, const char *sig, ...) {
        va_list ap;
        va_start(ap, sig);
        int r = sd_bus_message_open_container(m, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", key);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'v', sig);
        if (r >= 0)
                r = sd_bus_message_appendv(m, sig, ap);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        va_end(ap);
        return r;
}


static void bus_call_free(md_bus_call *bc) {
        for (md_bus_call **p = &calls; *p; p = &(*p)->next)
                if (*p == bc) {
                        *p = bc->next;
                        break;
                }
        free(bc->sender);
        sd_bus_message_unref(bc->call);
        mx_buf_free(&bc->text);
        free(bc);
}

/* A signal on the request's object, addressed to its caller alone. */
static int signal_to_caller(md_bus_call *bc, const char *member, sd_bus_message **out) {
        int r = sd_bus_message_new_signal(bc->srv->bus, out, bc->path, REQUEST_INTERFACE, member);
        if (r >= 0)
                r = sd_bus_message_set_destination(*out, bc->sender);
        return r;
}

static void on_accepted(void *data, const md_accepted *a) {
        md_bus_call *bc = data;
        snprintf(bc->path, sizeof(bc->path), REQUEST_PREFIX "/%llu", (unsigned long long)a->id);
        if (bc->complete)
                return; /* replied to at the end */
        if (sd_bus_reply_method_return(bc->call, "o", bc->path) < 0)
                md_log(LOG_WARNING, "request %llu: cannot reply to its D-Bus caller", (unsigned long long)a->id);
        bc->call = sd_bus_message_unref(bc->call);
}

static void on_refused(void *data, const md_refusal *ref) {
        md_bus_call *bc = data;
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        refused(&e, ref);
        sd_bus_reply_method_error(bc->call, &e);
}

static void on_chunk(void *data, const char *text, size_t len, const int32_t *ids, size_t n_ids) {
        md_bus_call *bc = data;
        if (bc->complete) {
                if (mx_buf_append(&bc->text, text, len) == 0)
                        return;
                sd_bus_reply_method_errorf(bc->call, error_name(MIXTRALD__V1__ERROR_CODE__INTERNAL), "out of memory");
                md_core_detach(bc->srv->core, bc->r); /* (no forget after a detach: freed here) */
                return bus_call_free(bc);
        }
        _cleanup_free_ char *t = len ? strndup(text, len) : NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        if (!len || !t || signal_to_caller(bc, "Token", &m) < 0 || sd_bus_message_append(m, "s", t) < 0 ||
            sd_bus_send(bc->srv->bus, m, NULL) < 0)
                if (len)
                        md_log(LOG_WARNING, "%s: cannot send a Token signal", bc->path);
}

static int append_usage(sd_bus_message *m, const md_usage_report *u) {
        int r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0)
                r = append_entry(m, "prompt_tokens", "u", u->prompt_tokens);
        if (r >= 0)
                r = append_entry(m, "completion_tokens", "u", u->completion_tokens);
        if (r >= 0)
                r = append_entry(m, "cached_prompt_tokens", "u", u->cached_prompt_tokens);
        if (r >= 0 && u->has_ttft)
                r = append_entry(m, "time_to_first_token_s", "d", u->ttft_s);
        if (r >= 0 && u->has_ttft)
                r = append_entry(m, "tokens_per_second", "d", u->tokens_per_s);
        if (r >= 0)
                r = append_entry(m, "total_s", "d", u->total_s);
        if (r >= 0)
                r = append_entry(m, "queued_s", "d", u->queued_s);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

static int reply_complete(md_bus_call *bc, const md_outcome *o) {
        if (o->error_code)
                return sd_bus_reply_method_errorf(bc->call, error_name(o->error_code), "%s", o->error_msg);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int rc = mx_buf_append(&bc->text, "", 0);
        if (rc >= 0)
                rc = sd_bus_message_new_method_return(bc->call, &reply);
        if (rc >= 0)
                rc = sd_bus_message_append(reply, "s", bc->text.p);
        if (rc >= 0)
                rc = append_usage(reply, &o->usage);
        return rc < 0 ? rc : sd_bus_send(NULL, reply, NULL);
}

static void on_end(void *data, const md_outcome *o) {
        md_bus_call *bc = data;
        int rc;
        if (bc->complete)
                rc = reply_complete(bc, o);
        else {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                bool failed = o->error_code != 0;
                rc = signal_to_caller(bc, failed ? "Failed" : "Finished", &m);
                if (rc >= 0 && failed)
                        rc = sd_bus_message_append(m, "ss", error_short(o->error_code), o->error_msg);
                else if (rc >= 0)
                        rc = sd_bus_message_append(m, "s", mx_finish_name(o->finish));
                if (rc >= 0 && !failed)
                        rc = append_usage(m, &o->usage);
                if (rc >= 0)
                        rc = sd_bus_send(bc->srv->bus, m, NULL);
        }
        if (rc < 0)
                md_log(LOG_WARNING, "%s: cannot tell its D-Bus caller it ended: %s", bc->path, strerror(-rc));
}

static void on_forget(void *data) {
        bus_call_free(data);
}

static const md_sink_ops bus_sink = {on_accepted, on_refused, on_chunk, on_end, on_forget};

/* ---- starting requests ------------------------------------------------------------ */

/* Submits the request p describes; the method is replied to later
 * (accepted or refused; Complete at the end). */
static int start(sd_bus_message *m, md_server *srv, md_gen_params *p, bool complete, sd_bus_error *e) {
        uint32_t uid;
        mx_error err = {0};
        int r = caller(m, &uid, e);
        if (r < 0)
                return r;
        if (md_gen_params_check(p, &err) < 0) {
                int code = err.code == -ENOMEM ? MIXTRALD__V1__ERROR_CODE__INTERNAL
                                               : MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT;
                md_log_request(LOG_NOTICE, &(md_log_fields){.uid = uid}, "refused: %s: %s", mxp_error_name(code),
                               err.msg);
                return fail(e, code, "%s", err.msg);
        }
        md_bus_call *bc = calloc(1, sizeof(*bc));
        char *sender = strdup(sd_bus_message_get_sender(m));
        if (!bc || !sender) {
                free(bc), free(sender);
                return -ENOMEM;
        }
        *bc = (md_bus_call){.srv = srv, .sender = sender, .call = sd_bus_message_ref(m), .complete = complete};
        md_refusal ref;
        if (!(bc->r = md_core_submit(srv->core, uid, p, &bus_sink, bc, &ref))) {
                bus_call_free(bc); /* (not in calls yet) */
                return refused(e, &ref);
        }
        bc->next = calls;
        calls = bc;
        return 1; /* replied to later */
}

/* A call refused for its arguments, logged once like every refusal. */
static int bad_call(sd_bus_message *m, sd_bus_error *e, int r) {
        uint32_t uid;
        sd_bus_error ignored = SD_BUS_ERROR_NULL;
        if (sd_bus_error_is_set(e) && caller(m, &uid, &ignored) >= 0)
                md_log_request(LOG_NOTICE, &(md_log_fields){.uid = uid}, "refused: %s: %s",
                               strncmp(e->name, ERROR_PREFIX, strlen(ERROR_PREFIX)) ? e->name
                                                                                   : e->name + strlen(ERROR_PREFIX),
                               e->message ? e->message : "");
        sd_bus_error_free(&ignored);
        return r;
}

/* Generate and Complete: a prompt and options. */
static int start_prompt(sd_bus_message *m, md_server *srv, bool complete, sd_bus_error *e) {
        _cleanup_(md_gen_params_free) md_gen_params p = {0};
        const char *prompt;
        int r = sd_bus_message_read(m, "s", &prompt);
        if (r < 0 || (r = take_text(&p.prompt, prompt)) < 0)
                return r;
        if ((r = read_options(m, &p, e)) < 0)
                return bad_call(m, e, r);
        return start(m, srv, &p, complete, e);
}

static int method_generate(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        return start_prompt(m, userdata, false, e);
}

static int method_chat(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        _cleanup_(md_gen_params_free) md_gen_params p = {0};
        int r;
        if ((r = read_messages(m, &p, e)) < 0 || (r = read_options(m, &p, e)) < 0)
                return bad_call(m, e, r);
        return start(m, userdata, &p, false, e);
}

/* Replied to when the answer is complete: the bus and the daemon go on
 * meanwhile. */
static int method_complete(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        return start_prompt(m, userdata, true, e);
}

static int method_cancel(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        md_server *srv = userdata;
        const char *path;
        uint32_t uid;
        int r = sd_bus_message_read(m, "o", &path);
        if (r < 0 || (r = caller(m, &uid, e)) < 0)
                return r;
        unsigned long long id = 0;
        char end;
        if (sscanf(path, REQUEST_PREFIX "/%llu%c", &id, &end) != 1)
                return fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, "%s is not a request's path", path);
        if (md_core_cancel(srv->core, uid, id) < 0)
                return fail(e, MIXTRALD__V1__ERROR_CODE__NOT_FOUND, "no request %llu of yours is running or queued", id);
        return sd_bus_reply_method_return(m, "");
}

static int method_get_quota(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        md_server *srv = userdata;
        uint32_t uid;
        int r = caller(m, &uid, e);
        if (r < 0)
                return r;
        md_quota_report q;
        if ((r = md_core_quota(srv->core, uid, &q)) < 0)
                return r;
        const md_limits *l = &q.limits;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        if ((r = sd_bus_message_new_method_return(m, &reply)) < 0 ||
            (r = sd_bus_message_open_container(reply, 'a', "{sv}")) < 0)
                return r;
        if ((r = append_entry(reply, "uid", "u", q.uid)) < 0 || (r = append_entry(reply, "exempt", "b", (int)q.exempt)) < 0 ||
            (r = append_entry(reply, "tokens_per_hour", "t", l->tokens_per_hour)) < 0 ||
            (r = append_entry(reply, "tokens_per_day", "t", l->tokens_per_day)) < 0 ||
            (r = append_entry(reply, "max_concurrent", "u", l->max_concurrent)) < 0 ||
            (r = append_entry(reply, "max_queued", "u", l->max_queued)) < 0 ||
            (r = append_entry(reply, "max_context", "u", l->max_context)) < 0 ||
            (r = append_entry(reply, "max_tokens", "u", l->max_tokens)) < 0 ||
            (r = append_entry(reply, "used_hour", "t", q.used_hour)) < 0 ||
            (r = append_entry(reply, "used_day", "t", q.used_day)) < 0 ||
            (r = append_entry(reply, "hour_resets_unix", "t", q.hour_resets)) < 0 ||
            (r = append_entry(reply, "day_resets_unix", "t", q.day_resets)) < 0 ||
            (r = append_entry(reply, "running", "u", q.running)) < 0 ||
            (r = append_entry(reply, "queued", "u", q.queued)) < 0 ||
            (r = sd_bus_message_close_container(reply)) < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

/* When experts stream, their counters (as the socket's Status). */
static int append_experts(sd_bus_message *reply, const md_status *s) {
        const mx_expert_stats *x = &s->experts;
        const struct {
                const char *key;
                uint64_t v;
                bool gpu; /* only with a host cache */
        } counts[] = {{"expert_budget_bytes", x->budget, false},
                      {"expert_configured_bytes", s->expert_configured, false},
                      {"expert_resident_bytes", x->resident, false},
                      {"expert_hits", x->hits, false},
                      {"expert_misses", x->misses, false},
                      {"expert_bytes_read", x->bytes_read, false},
                      {"expert_predicted", x->predicted, false},
                      {"expert_predicted_used", x->predicted_used, false},
                      {"host_cache_bytes", x->host_budget, true},
                      {"host_hits", x->host_hits, true},
                      {"host_misses", x->host_misses, true},
                      {"bytes_uploaded", x->bytes_uploaded, true}};
        int r = append_entry(reply, "expert_slots_per_layer", "u", x->slots_per_layer);
        if (r >= 0)
                r = append_entry(reply, "expert_read_gbps", "d", s->expert_read_gbps);
        if (r >= 0)
                r = append_entry(reply, "expert_how", "s", x->how);
        for (size_t i = 0; r >= 0 && i < MX_ELEMENTSOF(counts); i++)
                if (!counts[i].gpu || x->host_budget)
                        r = append_entry(reply, counts[i].key, "t", counts[i].v);
        return r;
}

/* The KV pool, once loaded (as the socket's Status). */
static int append_kv(sd_bus_message *reply, const mx_kv_stats *k) {
        const struct {
                const char *key;
                uint64_t v;
        } counts[] = {{"kv_block_tokens", k->block_tokens}, {"kv_block_bytes", k->block_bytes},
                      {"kv_blocks", k->blocks},             {"kv_used", k->used},
                      {"kv_cached", k->cached},             {"kv_free", k->free},
                      {"kv_lookups", k->lookups},           {"kv_hits", k->hits},
                      {"kv_hit_tokens", k->hit_tokens},     {"kv_evictions", k->evictions}};
        int r = append_entry(reply, "kv_type", "s", mx_kv_type_name(k->type));
        for (size_t i = 0; r >= 0 && i < MX_ELEMENTSOF(counts); i++)
                r = append_entry(reply, counts[i].key, "t", counts[i].v);
        return r;
}

/* The service's load, without anyone's requests. */
static int method_get_status(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        md_server *srv = userdata;
        uint32_t uid;
        int r = caller(m, &uid, e);
        if (r < 0)
                return r;
        _cleanup_(md_status_free) md_status s = {0};
        if ((r = md_status_fill(srv, uid, &s)) < 0)
                return r;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        if ((r = sd_bus_message_new_method_return(m, &reply)) < 0 ||
            (r = sd_bus_message_open_container(reply, 'a', "{sv}")) < 0 ||
            (r = append_entry(reply, "state", "s", s.state)) < 0 ||
            (r = append_entry(reply, "load_progress", "d", s.load_fraction)) < 0 ||
            (r = append_entry(reply, "device", "s", s.device)) < 0 ||
            (r = append_entry(reply, "running", "u", s.running)) < 0 ||
            (r = append_entry(reply, "queued", "u", s.queued)) < 0 ||
            (r = append_entry(reply, "experts_streamed", "b", (int)s.streaming)) < 0 ||
            (s.streaming && (r = append_experts(reply, &s)) < 0) ||
            (s.kv.blocks && (r = append_kv(reply, &s.kv)) < 0) ||
            (r = sd_bus_message_close_container(reply)) < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int get_property(sd_bus *bus, const char *path, const char *interface, const char *property,
                        sd_bus_message *reply, void *userdata, sd_bus_error *e) {
        md_server *srv = userdata;
        mx_engine *engine = srv->loading ? NULL : md_sched_engine(srv->sched);
        const char *v = !strcmp(property, "Model")    ? srv->model_dir
                        : !strcmp(property, "Device") ? (engine ? mx_engine_describe(engine) : "loading")
                                                      : md_server_state(srv);
        return sd_bus_message_append(reply, "s", v);
}

static const sd_bus_vtable service_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Model", "s", get_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Device", "s", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("State", "s", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_NAMES("Generate", "sa{sv}", SD_BUS_PARAM(prompt) SD_BUS_PARAM(options), "o",
                                 SD_BUS_PARAM(request), method_generate, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Chat", "a(ss)a{sv}", SD_BUS_PARAM(messages) SD_BUS_PARAM(options), "o",
                                 SD_BUS_PARAM(request), method_chat, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Complete", "sa{sv}", SD_BUS_PARAM(prompt) SD_BUS_PARAM(options), "sa{sv}",
                                 SD_BUS_PARAM(text) SD_BUS_PARAM(usage), method_complete, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Cancel", "o", SD_BUS_PARAM(request), "", , method_cancel,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("GetQuota", "", , "a{sv}", SD_BUS_PARAM(quota), method_get_quota,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("GetStatus", "", , "a{sv}", SD_BUS_PARAM(status), method_get_status,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

/* Request objects exist only to carry their signals (and to introspect). */
static const sd_bus_vtable request_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_SIGNAL_WITH_NAMES("Token", "s", SD_BUS_PARAM(text), 0),
        SD_BUS_SIGNAL_WITH_NAMES("Finished", "sa{sv}", SD_BUS_PARAM(reason) SD_BUS_PARAM(usage), 0),
        SD_BUS_SIGNAL_WITH_NAMES("Failed", "ss", SD_BUS_PARAM(code) SD_BUS_PARAM(message), 0),
        SD_BUS_VTABLE_END,
};

/* A request's object exists for its owner and root only: to anyone else
 * it is as absent as one that never was. */
static int find_request(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found,
                        sd_bus_error *e) {
        md_server *srv = userdata;
        unsigned long long id;
        char end;
        sd_bus_message *m = sd_bus_get_current_message(bus);
        uint32_t uid;
        sd_bus_error ignored = SD_BUS_ERROR_NULL;
        int r = m ? caller(m, &uid, &ignored) : -ENXIO;
        sd_bus_error_free(&ignored);
        if (r < 0 || sscanf(path, REQUEST_PREFIX "/%llu%c", &id, &end) != 1 || !md_core_visible(srv->core, uid, id))
                return 0;
        *found = srv;
        return 1;
}

/* ---- the bus ----------------------------------------------------------------- */

/* A caller that leaves the bus has its requests stopped. Only the bus
 * itself may say so: anyone can send a NameOwnerChanged signal to us, and
 * believing it would let any user cancel another's requests. */
static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        md_server *srv = userdata;
        const char *name, *old_owner, *new_owner, *sender = sd_bus_message_get_sender(m);
        if (!sender || strcmp(sender, "org.freedesktop.DBus"))
                return 0;
        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || name[0] != ':' || *new_owner)
                return 0;
        for (md_bus_call *bc = calls, *next; bc; bc = next) {
                next = bc->next;
                if (strcmp(bc->sender, name))
                        continue;
                md_log(LOG_INFO, "%s: its caller %s left the bus: cancelled", bc->path[0] ? bc->path : "a request",
                       name);
                md_core_detach(srv->core, bc->r);
                bus_call_free(bc);
        }
        return 0;
}

void md_dbus_state_changed(md_server *srv) {
        if (srv->bus)
                sd_bus_emit_properties_changed(srv->bus, OBJECT_PATH, BUS_NAME, "State", "Device", NULL);
}

static int connect_bus(md_server *srv, const char *which, mx_error *err) {
        int r = !strcmp(which, "system") ? sd_bus_open_system(&srv->bus) : sd_bus_open_user(&srv->bus);
        if (r < 0)
                return mx_error_set(err, r, "cannot connect to the %s bus: %s", which, strerror(-r));
        if ((r = sd_bus_add_object_vtable(srv->bus, NULL, OBJECT_PATH, BUS_NAME, service_vtable, srv)) < 0 ||
            (r = sd_bus_add_fallback_vtable(srv->bus, NULL, REQUEST_PREFIX, REQUEST_INTERFACE, request_vtable,
                                            find_request, srv)) < 0 ||
            (r = sd_bus_match_signal(srv->bus, NULL, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                     "org.freedesktop.DBus", "NameOwnerChanged", on_name_owner_changed, srv)) < 0)
                return mx_error_set(err, r, "cannot set up D-Bus objects: %s", strerror(-r));
        if ((r = sd_bus_request_name(srv->bus, BUS_NAME, 0)) < 0)
                return mx_error_set(err, r, "cannot own %s on the %s bus: %s", BUS_NAME, which,
                                    r == -EACCES || r == -EPERM ? "the bus policy does not allow this user"
                                    : r == -EEXIST              ? "another mixtrald has it"
                                                                : strerror(-r));
        if ((r = sd_bus_attach_event(srv->bus, srv->event, 0)) < 0)
                return mx_error_set(err, r, "cannot attach the bus: %s", strerror(-r));
        md_log(LOG_INFO, "serving %s on the %s bus", BUS_NAME, which);
        return 0;
}

int md_dbus_start(md_server *srv, mx_error *err) {
        const char *which = srv->cfg.bus ? srv->cfg.bus : "auto";
        bool automatic = !strcmp(which, "auto");
        if (!strcmp(which, "none"))
                return 0;
        if (automatic)
                which = geteuid() == 0 && !srv->user_instance ? "system" : "session";
        int r = connect_bus(srv, which, err);
        if (r < 0) {
                srv->bus = sd_bus_flush_close_unref(srv->bus);
                if (!automatic)
                        return r;
                md_log(LOG_NOTICE, "no D-Bus service (bus=auto): %s", err->msg);
                *err = (mx_error){0};
        }
        return 0;
}

void md_dbus_stop(md_server *srv) {
        while (calls) {
                md_core_detach(srv->core, calls->r);
                bus_call_free(calls);
        }
        srv->bus = sd_bus_flush_close_unref(srv->bus);
}
