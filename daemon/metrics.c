/* What GET /metrics says, in Prometheus' text format (version 0.0.4):
 * counters the request core feeds as requests end or are refused, the
 * HTTP statuses http.c sent, and the live numbers status.c already
 * gathers (queue, batch, memory, expert streaming, uptime). Only totals
 * over all users: the endpoint is for root and the admin group, and even
 * they get no per-user series (a label per uid would also grow without
 * bound). Main thread only. */
#include <stdarg.h>
#include <string.h>

#include "mx_common.h"
#include "mixtrald.h"

/* Bucket bounds, in seconds, of each histogram. */
static const double ttft_bounds[MD_HIST_BUCKETS] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
static const double tpot_bounds[MD_HIST_BUCKETS] = {0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30};
static const double duration_bounds[MD_HIST_BUCKETS] = {0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};

/* The statuses http.c sends; the last slot counts any other. */
static const unsigned http_statuses[MD_HTTP_STATUSES - 1] = {200, 400, 401, 403, 404, 405, 409, 413, 429, 500, 503};

static void observe(md_histogram *h, const double *bounds, double v) {
        size_t i = 0;
        while (i < MD_HIST_BUCKETS && v > bounds[i])
                i++;
        h->counts[i]++;
        h->n++;
        h->sum += v;
}

static size_t code_slot(int code) {
        return code > 0 && code < MD_ERROR_CODES ? (size_t)code : 0;
}

void md_metrics_ended(md_metrics *m, const md_outcome *o) {
        const md_usage_report *u = &o->usage;
        if (o->error_code)
                m->failed[code_slot(o->error_code)]++;
        else if ((unsigned)o->finish < MD_FINISH_REASONS)
                m->finished[o->finish]++;
        m->prompt_tokens += u->prompt_tokens;
        m->completion_tokens += u->completion_tokens;
        if (u->has_ttft)
                observe(&m->ttft, ttft_bounds, u->ttft_s);
        if (u->completion_tokens > 1 && u->tokens_per_s > 0)
                observe(&m->tpot, tpot_bounds, 1 / u->tokens_per_s);
        observe(&m->duration, duration_bounds, u->total_s);
}

void md_metrics_refused(md_metrics *m, int code) {
        m->refused[code_slot(code)]++;
}

void md_metrics_http(md_metrics *m, unsigned status) {
        size_t i = 0;
        while (i < MD_HTTP_STATUSES - 1 && http_statuses[i] != status)
                i++;
        m->http[i]++;
}

/* ---- the text format -------------------------------------------------------------- */

typedef struct writer {
        mx_buf *out;
        int r;
} writer;

static void put(writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(writer *w, const char *fmt, ...) {
        char line[512];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (w->r == 0 && n > 0)
                w->r = mx_buf_append(w->out, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void head(writer *w, const char *name, const char *type, const char *help) {
        put(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(writer *w, const char *name, const char *type, const char *help, double v) {
        head(w, name, type, help);
        put(w, "%s %.17g\n", name, v);
}

/* A label value: backslash, double quote and newline escaped. */
static void label_value(const char *s, char *out, size_t size) {
        size_t n = 0;
        for (; *s && n + 3 < size; s++) {
                if (*s == '\\' || *s == '"' || *s == '\n')
                        out[n++] = '\\';
                out[n++] = *s == '\n' ? 'n' : *s;
        }
        out[n] = '\0';
}

/* "QUOTA_EXCEEDED" as a label: "quota_exceeded". */
static const char *code_label(int code, char *buf, size_t size) {
        const char *name = code ? mxp_error_name(code) : "other";
        size_t i = 0;
        for (; name[i] && i + 1 < size; i++)
                buf[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
        buf[i] = '\0';
        return buf;
}

static void by_code(writer *w, const char *name, const char *help, const uint64_t *v) {
        head(w, name, "counter", help);
        char label[32];
        for (int code = 0; code < MD_ERROR_CODES; code++)
                if (v[code])
                        put(w, "%s{code=\"%s\"} %llu\n", name, code_label(code, label, sizeof(label)),
                            (unsigned long long)v[code]);
}

static void histogram(writer *w, const char *name, const char *help, const md_histogram *h, const double *bounds) {
        head(w, name, "histogram", help);
        uint64_t below = 0;
        for (size_t i = 0; i < MD_HIST_BUCKETS; i++) {
                below += h->counts[i];
                put(w, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)below);
        }
        put(w, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n", name, (unsigned long long)h->n, name,
            h->sum, name, (unsigned long long)h->n);
}

static void requests(writer *w, const md_metrics *m) {
        head(w, "mixtrald_requests_finished_total", "counter", "Requests that ended with an answer, by why it ended.");
        for (int f = MX_FINISH_EOS; f < MD_FINISH_REASONS; f++)
                put(w, "mixtrald_requests_finished_total{reason=\"%s\"} %llu\n", mx_finish_name((mx_finish)f),
                    (unsigned long long)m->finished[f]);
        by_code(w, "mixtrald_requests_failed_total", "Admitted requests that ended with an error.", m->failed);
        by_code(w, "mixtrald_requests_refused_total", "Requests refused before they were admitted.", m->refused);
        one(w, "mixtrald_prompt_tokens_total", "counter", "Prompt tokens of the requests that ended.",
            (double)m->prompt_tokens);
        one(w, "mixtrald_completion_tokens_total", "counter", "Tokens generated.", (double)m->completion_tokens);
        histogram(w, "mixtrald_time_to_first_token_seconds", "From submission to the first token.", &m->ttft,
                  ttft_bounds);
        histogram(w, "mixtrald_time_per_output_token_seconds", "Decode time per token after the first.", &m->tpot,
                  tpot_bounds);
        histogram(w, "mixtrald_request_duration_seconds", "From submission to the end.", &m->duration,
                  duration_bounds);
}

static void load(writer *w, const md_status *s) {
        char model[512], device[256];
        label_value(s->model ? s->model : "", model, sizeof(model));
        label_value(s->device, device, sizeof(device));
        head(w, "mixtrald_info", "gauge", "The daemon's version, model and device.");
        put(w, "mixtrald_info{version=\"%s\",model=\"%s\",device=\"%s\"} 1\n", s->version, model, device);
        head(w, "mixtrald_state", "gauge", "1 for the state the daemon is in.");
        static const char *const states[] = {"loading", "serving", "draining"};
        for (size_t i = 0; i < MX_ELEMENTSOF(states); i++)
                put(w, "mixtrald_state{state=\"%s\"} %d\n", states[i], !strcmp(s->state, states[i]));
        one(w, "mixtrald_load_progress", "gauge", "How far loading the model got (0 to 1).", s->load_fraction);
        one(w, "mixtrald_uptime_seconds", "gauge", "Seconds since the daemon started.", s->uptime_s);
        one(w, "mixtrald_requests_queued", "gauge", "Requests waiting (being admitted included).", s->queued);
        one(w, "mixtrald_requests_running", "gauge", "Requests in the batch.", s->running);
        one(w, "mixtrald_requests_prefilling", "gauge", "Of those, still reading their prompts.", s->prefilling);
        one(w, "mixtrald_requests_decoding", "gauge", "Of those, generating.", s->decoding);
        one(w, "mixtrald_max_batch", "gauge", "Sequences advanced together (max_batch).", s->max_batch);
        one(w, "mixtrald_max_queue", "gauge", "Requests that may wait beyond the batch (max_queue).", s->max_queue);
        one(w, "mixtrald_weight_bytes", "gauge", "The model's weights.", (double)s->weight_bytes);
        one(w, "mixtrald_kv_cache_bytes", "gauge", "KV cache held by live requests.", (double)s->kv_bytes);
        one(w, "mixtrald_resident_memory_bytes", "gauge", "The daemon's resident memory.", (double)s->rss_bytes);
}

static void experts(writer *w, const md_status *s) {
        const mx_expert_stats *x = &s->experts;
        one(w, "mixtrald_experts_streamed", "gauge", "1 when experts are read from the files as needed.", s->streaming);
        if (!s->streaming)
                return;
        one(w, "mixtrald_expert_budget_bytes", "gauge", "Expert memory allowed now.", (double)x->budget);
        one(w, "mixtrald_expert_resident_bytes", "gauge", "Expert memory held.", (double)x->resident);
        one(w, "mixtrald_expert_hits_total", "counter", "Experts wanted and held.", (double)x->hits);
        one(w, "mixtrald_expert_misses_total", "counter", "Experts wanted and read.", (double)x->misses);
        one(w, "mixtrald_expert_read_bytes_total", "counter", "Bytes of experts read from the files.",
            (double)x->bytes_read);
        one(w, "mixtrald_expert_predicted_total", "counter", "Next-layer guesses.", (double)x->predicted);
        one(w, "mixtrald_expert_predicted_used_total", "counter", "Guesses the router then chose.",
            (double)x->predicted_used);
        if (!x->host_budget)
                return;
        one(w, "mixtrald_host_cache_bytes", "gauge", "The GPU's host cache of experts.", (double)x->host_budget);
        one(w, "mixtrald_host_cache_hits_total", "counter", "Experts found in the host cache.", (double)x->host_hits);
        one(w, "mixtrald_host_cache_misses_total", "counter", "Experts not in the host cache.",
            (double)x->host_misses);
        one(w, "mixtrald_uploaded_bytes_total", "counter", "Bytes of experts copied to the GPU.",
            (double)x->bytes_uploaded);
}

static void connections(writer *w, md_server *srv) {
        head(w, "mixtrald_connections", "gauge", "Open client connections, by transport.");
        put(w, "mixtrald_connections{transport=\"socket\"} %u\n", srv->n_conns);
        put(w, "mixtrald_connections{transport=\"http\"} %u\n", md_http_connections(srv));
        head(w, "mixtrald_http_responses_total", "counter", "HTTP responses, by status.");
        for (size_t i = 0; i < MD_HTTP_STATUSES; i++)
                if (srv->metrics.http[i]) {
                        if (i < MD_HTTP_STATUSES - 1)
                                put(w, "mixtrald_http_responses_total{code=\"%u\"} %llu\n", http_statuses[i],
                                    (unsigned long long)srv->metrics.http[i]);
                        else
                                put(w, "mixtrald_http_responses_total{code=\"other\"} %llu\n",
                                    (unsigned long long)srv->metrics.http[i]);
                }
}

int md_metrics_render(md_server *srv, mx_buf *out) {
        _cleanup_(md_status_free) md_status s = {0};
        if (md_status_fill(srv, 0, &s) < 0)
                return -ENOMEM;
        writer w = {out, 0};
        load(&w, &s);
        requests(&w, &srv->metrics);
        connections(&w, srv);
        experts(&w, &s);
        return w.r;
}
