/* The same service on D-Bus (sd-bus, on the daemon's own event loop):
 * org.mixtrald.Mixtral1 at /org/mixtrald/Mixtral1. Requests go through the
 * same admission, quotas and engine as the socket's; their output goes as
 * signals on /org/mixtrald/Mixtral1/request/ID addressed to the caller
 * alone, never broadcast. The caller's uid comes from the bus's own record
 * of its credentials, never from /proc. */
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

typedef struct md_bus_call {
        char *sender;               /* the caller's unique name */
        char path[64];
        sd_bus_message *complete;   /* Complete(): replied to at the end */
        mx_buf text;                /* Complete(): the answer so far */
        bool gone;                  /* the caller left the bus */
} md_bus_call;

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
 * connected; a value sd-bus would have to read from /proc is refused. Its
 * gid is its passwd entry's primary group. */
static int caller(sd_bus_message *m, uint32_t *uid, uint32_t *gid, sd_bus_error *e) {
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
        char buf[4096];
        struct passwd pw, *pwp = NULL;
        getpwuid_r(u, &pw, buf, sizeof(buf), &pwp);
        *uid = u;
        *gid = pwp ? pwp->pw_gid : (gid_t)u;
        return 0;
}

/* ---- options ------------------------------------------------------------------- */

/* The socket protocol's Generate, filled from a{sv}: the same names and,
 * through md_admit, the same validation. Strings point into m. */
typedef struct bus_options {
        Mixtrald__V1__Generate g;
        const char **stop;
        Mixtrald__V1__ChatMessage *msgs, **msg_ptrs;
} bus_options;

static void bus_options_free(bus_options *o) {
        free(o->stop);
        free(o->msgs);
        free(o->msg_ptrs);
}

static int read_string_array(sd_bus_message *m, bus_options *o, sd_bus_error *e) {
        int r = sd_bus_message_enter_container(m, 'a', "s");
        const char *s;
        while (r >= 0 && (r = sd_bus_message_read(m, "s", &s)) > 0) {
                const char **p = realloc(o->stop, (o->g.n_stop + 1) * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                o->stop = p;
                o->stop[o->g.n_stop++] = s;
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        o->g.stop = (char **)o->stop;
        return r < 0 ? fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, "option 'stop' is not readable") : 0;
}

static const struct {
        const char *name, *sig;
} known_options[] = {
        {"temperature", "d"}, {"top_k", "u"}, {"top_p", "d"}, {"min_p", "d"}, {"repeat_penalty", "d"},
        {"seed", "t"}, {"max_tokens", "u"}, {"stop", "as"}, {"system", "s"}, {"raw", "b"},
        {"ignore_eos", "b"},
};

/* One option's value, of the type its name calls for (k: its index). */
static int read_value(sd_bus_message *m, size_t k, bus_options *o, sd_bus_error *e) {
        Mixtrald__V1__Generate *g = &o->g;
        int b = 0, r;
        switch (k) {
        case 0: r = sd_bus_message_read(m, "d", &g->temperature), g->has_temperature = true; break;
        case 1: r = sd_bus_message_read(m, "u", &g->top_k), g->has_top_k = true; break;
        case 2: r = sd_bus_message_read(m, "d", &g->top_p), g->has_top_p = true; break;
        case 3: r = sd_bus_message_read(m, "d", &g->min_p), g->has_min_p = true; break;
        case 4: r = sd_bus_message_read(m, "d", &g->repeat_penalty), g->has_repeat_penalty = true; break;
        case 5: r = sd_bus_message_read(m, "t", &g->seed), g->has_seed = true; break;
        case 6: r = sd_bus_message_read(m, "u", &g->max_tokens), g->has_max_tokens = true; break;
        case 7: r = read_string_array(m, o, e); break;
        case 8: r = sd_bus_message_read(m, "s", &g->system); break;
        case 9: r = sd_bus_message_read(m, "b", &b), g->has_raw = true, g->raw = b; break;
        default: r = sd_bus_message_read(m, "b", &b), g->has_ignore_eos = true, g->ignore_eos = b; break;
        }
        return r;
}

static int read_option(sd_bus_message *m, unsigned *seen, bus_options *o, sd_bus_error *e) {
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
        if ((r = sd_bus_message_enter_container(m, 'v', sig)) < 0 || (r = read_value(m, k, o, e)) < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

static int read_options(sd_bus_message *m, bus_options *o, sd_bus_error *e) {
        unsigned seen = 0;
        int r = sd_bus_message_enter_container(m, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0)
                if ((r = read_option(m, &seen, o, e)) < 0 || (r = sd_bus_message_exit_container(m)) < 0)
                        return r;
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        return r;
}

static int read_messages(sd_bus_message *m, bus_options *o, sd_bus_error *e) {
        int r = sd_bus_message_enter_container(m, 'a', "(ss)");
        const char *role, *content;
        size_t n = 0;
        while (r >= 0 && (r = sd_bus_message_read(m, "(ss)", &role, &content)) > 0) {
                Mixtrald__V1__ChatMessage *p = realloc(o->msgs, (n + 1) * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                o->msgs = p;
                mixtrald__v1__chat_message__init(&o->msgs[n]);
                o->msgs[n].role = (char *)role, o->msgs[n].content = (char *)content;
                n++;
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        if (n == 0)
                return fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, "the conversation is empty");
        if (!(o->msg_ptrs = calloc(n, sizeof(*o->msg_ptrs))))
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                o->msg_ptrs[i] = &o->msgs[i];
        o->g.messages = o->msg_ptrs;
        o->g.n_messages = n;
        return 0;
}

/* ---- starting requests ------------------------------------------------------------ */

static void bus_call_free(md_bus_call *bc) {
        if (!bc)
                return;
        free(bc->sender);
        sd_bus_message_unref(bc->complete);
        mx_buf_free(&bc->text);
        free(bc);
}

void md_dbus_forget(md_request *r) {
        bus_call_free(r->bus);
        r->bus = NULL;
}

/* Admits the request the options describe; *out is its object. */
static int start(sd_bus_message *m, md_server *srv, bus_options *o, bool complete, md_request **out,
                 sd_bus_error *e) {
        uint32_t uid, gid, position;
        int r = caller(m, &uid, &gid, e);
        if (r < 0)
                return r;
        md_refusal ref;
        md_request *req = md_admit(srv, uid, gid, 0, &o->g, &position, &ref);
        if (!req)
                return refused(e, &ref);
        md_bus_call *bc = calloc(1, sizeof(*bc));
        if (!bc || !(bc->sender = strdup(sd_bus_message_get_sender(m)))) {
                free(bc);
                md_request_destroy(req);
                return -ENOMEM;
        }
        snprintf(bc->path, sizeof(bc->path), REQUEST_PREFIX "/%llu", (unsigned long long)req->id);
        if (complete)
                bc->complete = sd_bus_message_ref(m);
        req->bus = bc;
        md_submit(srv, req);
        *out = req;
        return 0;
}

/* Generate and Complete: a prompt and options. */
static int start_prompt(sd_bus_message *m, md_server *srv, bool complete, md_request **req, sd_bus_error *e) {
        _cleanup_(bus_options_free) bus_options o = {.g = MIXTRALD__V1__GENERATE__INIT};
        const char *prompt;
        int r = sd_bus_message_read(m, "s", &prompt);
        if (r < 0)
                return r;
        o.g.prompt = (char *)prompt;
        if ((r = read_options(m, &o, e)) < 0)
                return r;
        return start(m, srv, &o, complete, req, e);
}

static int method_generate(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        md_request *req;
        int r = start_prompt(m, userdata, false, &req, e);
        return r < 0 ? r : sd_bus_reply_method_return(m, "o", req->bus->path);
}

static int method_chat(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        _cleanup_(bus_options_free) bus_options o = {.g = MIXTRALD__V1__GENERATE__INIT};
        md_request *req;
        int r;
        if ((r = read_messages(m, &o, e)) < 0 || (r = read_options(m, &o, e)) < 0 ||
            (r = start(m, userdata, &o, false, &req, e)) < 0)
                return r;
        return sd_bus_reply_method_return(m, "o", req->bus->path);
}

/* Replied to when the answer is complete: the bus and the daemon go on
 * meanwhile. */
static int method_complete(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        md_request *req;
        int r = start_prompt(m, userdata, true, &req, e);
        return r < 0 ? r : 1;
}

static int method_cancel(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        md_server *srv = userdata;
        const char *path;
        uint32_t uid, gid;
        int r = sd_bus_message_read(m, "o", &path);
        if (r < 0 || (r = caller(m, &uid, &gid, e)) < 0)
                return r;
        unsigned long long id = 0;
        char end;
        if (sscanf(path, REQUEST_PREFIX "/%llu%c", &id, &end) != 1)
                return fail(e, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, "%s is not a request's path", path);
        md_request *req = md_find_request(srv, uid, id);
        if (!req)
                return fail(e, MIXTRALD__V1__ERROR_CODE__NOT_FOUND, "no request %llu of yours is running or queued", id);
        md_sched_cancel(srv->sched, req);
        return sd_bus_reply_method_return(m, "");
}

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

static int method_get_quota(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        md_server *srv = userdata;
        uint32_t uid, gid;
        int r = caller(m, &uid, &gid, e);
        if (r < 0)
                return r;
        Mixtrald__V1__Quota q;
        Mixtrald__V1__Limits l;
        if ((r = md_fill_quota(srv, uid, gid, &q, &l)) < 0)
                return r;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        if ((r = sd_bus_message_new_method_return(m, &reply)) < 0 ||
            (r = sd_bus_message_open_container(reply, 'a', "{sv}")) < 0)
                return r;
        if ((r = append_entry(reply, "uid", "u", q.uid)) < 0 || (r = append_entry(reply, "exempt", "b", (int)q.exempt)) < 0 ||
            (r = append_entry(reply, "tokens_per_hour", "t", l.tokens_per_hour)) < 0 ||
            (r = append_entry(reply, "tokens_per_day", "t", l.tokens_per_day)) < 0 ||
            (r = append_entry(reply, "max_concurrent", "u", l.max_concurrent)) < 0 ||
            (r = append_entry(reply, "max_queued", "u", l.max_queued)) < 0 ||
            (r = append_entry(reply, "max_context", "u", l.max_context)) < 0 ||
            (r = append_entry(reply, "max_tokens", "u", l.max_tokens)) < 0 ||
            (r = append_entry(reply, "used_hour", "t", q.used_hour)) < 0 ||
            (r = append_entry(reply, "used_day", "t", q.used_day)) < 0 ||
            (r = append_entry(reply, "hour_resets_unix", "t", q.hour_resets_unix)) < 0 ||
            (r = append_entry(reply, "day_resets_unix", "t", q.day_resets_unix)) < 0 ||
            (r = append_entry(reply, "running", "u", q.running)) < 0 ||
            (r = append_entry(reply, "queued", "u", q.queued)) < 0 ||
            (r = sd_bus_message_close_container(reply)) < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

/* The service's load and, when experts stream, their counters (as the
 * socket's Status, without other users' requests). */
static int append_experts(sd_bus_message *reply, const md_server *srv, const mx_expert_stats *xs) {
        Mixtrald__V1__ExpertStreaming x = MIXTRALD__V1__EXPERT_STREAMING__INIT;
        md_fill_expert_stats(xs, srv->expert_budget, &x);
        const struct {
                const char *key;
                uint64_t v;
                bool gpu; /* only with a host cache */
        } counts[] = {{"expert_budget_bytes", x.budget_bytes, false},
                      {"expert_configured_bytes", x.configured_bytes, false},
                      {"expert_resident_bytes", x.resident_bytes, false},
                      {"expert_hits", x.hits, false},
                      {"expert_misses", x.misses, false},
                      {"expert_bytes_read", x.bytes_read, false},
                      {"expert_predicted", x.predicted, false},
                      {"expert_predicted_used", x.predicted_used, false},
                      {"host_cache_bytes", x.host_cache_bytes, true},
                      {"host_hits", x.host_hits, true},
                      {"host_misses", x.host_misses, true},
                      {"bytes_uploaded", x.bytes_uploaded, true}};
        int r = append_entry(reply, "expert_slots_per_layer", "u", x.slots_per_layer);
        if (r >= 0)
                r = append_entry(reply, "expert_read_gbps", "d", x.read_gbps);
        if (r >= 0)
                r = append_entry(reply, "expert_how", "s", x.how ? x.how : "");
        for (size_t i = 0; r >= 0 && i < MX_ELEMENTSOF(counts); i++)
                if (!counts[i].gpu || x.has_host_cache_bytes)
                        r = append_entry(reply, counts[i].key, "t", counts[i].v);
        return r;
}

static int method_get_status(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        md_server *srv = userdata;
        uint32_t queued = 0, running = 0;
        mx_expert_stats xs;
        md_sched_lock(srv->sched);
        md_sched_counts_locked(srv->sched, &queued, &running);
        md_sched_expert_stats_locked(srv->sched, &xs);
        md_sched_unlock(srv->sched);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;
        if ((r = sd_bus_message_new_method_return(m, &reply)) < 0 ||
            (r = sd_bus_message_open_container(reply, 'a', "{sv}")) < 0 ||
            (r = append_entry(reply, "state", "s", srv->draining ? "draining" : "serving")) < 0 ||
            (r = append_entry(reply, "device", "s", mx_engine_describe(srv->engine))) < 0 ||
            (r = append_entry(reply, "running", "u", running)) < 0 ||
            (r = append_entry(reply, "queued", "u", queued)) < 0 ||
            (r = append_entry(reply, "experts_streamed", "b", (int)xs.streaming)) < 0 ||
            (xs.streaming && (r = append_experts(reply, srv, &xs)) < 0) ||
            (r = sd_bus_message_close_container(reply)) < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int get_property(sd_bus *bus, const char *path, const char *interface, const char *property,
                        sd_bus_message *reply, void *userdata, sd_bus_error *e) {
        md_server *srv = userdata;
        const char *v = !strcmp(property, "Model")    ? srv->model_dir
                        : !strcmp(property, "Device") ? mx_engine_describe(srv->engine)
                        : srv->draining               ? "draining"
                                                      : "serving";
        return sd_bus_message_append(reply, "s", v);
}

static const sd_bus_vtable service_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Model", "s", get_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Device", "s", get_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
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

static int find_request(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found,
                        sd_bus_error *e) {
        md_server *srv = userdata;
        unsigned long long id;
        char end;
        if (sscanf(path, REQUEST_PREFIX "/%llu%c", &id, &end) != 1 || !md_find_request(srv, 0, id))
                return 0;
        *found = srv;
        return 1;
}

/* ---- output -------------------------------------------------------------------- */

/* A signal on the request's object, addressed to its caller alone. */
static int signal_to_caller(md_server *srv, md_bus_call *bc, const char *member, sd_bus_message **out) {
        int r = sd_bus_message_new_signal(srv->bus, out, bc->path, REQUEST_INTERFACE, member);
        if (r >= 0)
                r = sd_bus_message_set_destination(*out, bc->sender);
        return r;
}

void md_dbus_chunk(md_server *srv, md_request *r) {
        md_bus_call *bc = r->bus;
        if (!srv->bus || bc->gone)
                return;
        if (bc->complete) {
                if (mx_buf_append(&bc->text, r->ship_text.p, r->ship_text.n) < 0)
                        md_sched_cancel(srv->sched, r);
                return;
        }
        if (mx_buf_append(&r->ship_text, "", 0) < 0) /* NUL-terminate */
                return;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        if (signal_to_caller(srv, bc, "Token", &m) < 0 || sd_bus_message_append(m, "s", r->ship_text.p) < 0 ||
            sd_bus_send(srv->bus, m, NULL) < 0)
                md_log(LOG_WARNING, "request %llu: cannot send a Token signal", (unsigned long long)r->id);
}

static int append_usage(sd_bus_message *m, const Mixtrald__V1__Usage *u) {
        int r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0)
                r = append_entry(m, "prompt_tokens", "u", u->prompt_tokens);
        if (r >= 0)
                r = append_entry(m, "completion_tokens", "u", u->completion_tokens);
        if (r >= 0 && u->has_time_to_first_token_s)
                r = append_entry(m, "time_to_first_token_s", "d", u->time_to_first_token_s);
        if (r >= 0 && u->has_tokens_per_second)
                r = append_entry(m, "tokens_per_second", "d", u->tokens_per_second);
        if (r >= 0)
                r = append_entry(m, "total_s", "d", u->total_s);
        if (r >= 0)
                r = append_entry(m, "queued_s", "d", u->queued_s);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

static int reply_complete(md_request *r, md_bus_call *bc, const Mixtrald__V1__Usage *u) {
        if (r->seen.error_code)
                return sd_bus_reply_method_errorf(bc->complete, error_name(r->seen.error_code), "%s", r->error_msg);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int rc = mx_buf_append(&bc->text, "", 0);
        if (rc >= 0)
                rc = sd_bus_message_new_method_return(bc->complete, &reply);
        if (rc >= 0)
                rc = sd_bus_message_append(reply, "s", bc->text.p);
        if (rc >= 0)
                rc = append_usage(reply, u);
        return rc < 0 ? rc : sd_bus_send(NULL, reply, NULL);
}

void md_dbus_end(md_server *srv, md_request *r, const Mixtrald__V1__Usage *u) {
        md_bus_call *bc = r->bus;
        if (!srv->bus || bc->gone)
                return;
        int rc;
        if (bc->complete)
                rc = reply_complete(r, bc, u);
        else {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                bool failed = r->seen.error_code != 0;
                rc = signal_to_caller(srv, bc, failed ? "Failed" : "Finished", &m);
                if (rc >= 0 && failed)
                        rc = sd_bus_message_append(m, "ss", error_short(r->seen.error_code), r->error_msg);
                else if (rc >= 0)
                        rc = sd_bus_message_append(m, "s", mx_finish_name(r->seen.finish));
                if (rc >= 0 && !failed)
                        rc = append_usage(m, u);
                if (rc >= 0)
                        rc = sd_bus_send(srv->bus, m, NULL);
        }
        if (rc < 0)
                md_log(LOG_WARNING, "request %llu: cannot tell its D-Bus caller it ended: %s",
                       (unsigned long long)r->id, strerror(-rc));
}

/* ---- the bus ----------------------------------------------------------------- */

/* A caller that leaves the bus has its requests stopped. */
static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        md_server *srv = userdata;
        const char *name, *old_owner, *new_owner;
        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || name[0] != ':' || *new_owner)
                return 0;
        for (size_t i = 0; i < srv->n_live; i++) {
                md_request *r = srv->live[i];
                if (!r->bus || r->bus->gone || strcmp(r->bus->sender, name))
                        continue;
                r->bus->gone = true;
                md_log_request(LOG_INFO, &(md_log_fields){.request_id = r->id, .uid = r->uid},
                               "its caller %s left the bus: cancelled", name);
                md_sched_cancel(srv->sched, r);
        }
        return 0;
}

void md_dbus_state_changed(md_server *srv) {
        if (srv->bus)
                sd_bus_emit_properties_changed(srv->bus, OBJECT_PATH, BUS_NAME, "State", NULL);
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
        srv->bus = sd_bus_flush_close_unref(srv->bus);
}
