/* mixtral status and mixtral quota: one query, one reply, shown as an
 * aligned table or as one JSON object (mxc_show, which key.c uses too). */
#include <errno.h>
#include <math.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>

#include "client.h"
#include "mx_common.h"

static void free_response(Mixtrald__V1__Response **r) {
        if (*r)
                mixtrald__v1__response__free_unpacked(*r, NULL);
}

/* Sends req and returns the reply of the expected kind in *out, or the
 * exit status of whatever went wrong (already reported). */
static int query(const mxc_opts *opts, Mixtrald__V1__Request *req, Mixtrald__V1__Response__KindCase want,
                 Mixtrald__V1__Response **out) {
        _cleanup_(mxc_disconnect) mxc_conn c = MXC_CONN_INIT;
        int r = mxc_connect(&c, opts);
        if (r < 0)
                return r == -EINTR ? MXC_EXIT_INTERRUPTED : MXC_EXIT_UNREACHABLE;
        Mixtrald__V1__Response *resp;
        r = mxc_call(&c, req, &resp);
        if (r < 0)
                return mxc_conn_failure(&c, r);
        if (resp->kind_case == want) {
                *out = resp;
                return 0;
        }
        int status;
        if (resp->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR) {
                mxc_out o = {.json = opts->json};
                status = mxc_out_error(&o, resp->error);
        } else {
                status = mxc_fail(opts->json, MXC_EXIT_INTERNAL, "INTERNAL", NULL,
                                  "unexpected reply from mixtrald (kind %d)", (int)resp->kind_case);
        }
        mixtrald__v1__response__free_unpacked(resp, NULL);
        return status;
}

static int print_json(const ProtobufCMessage *m) {
        int r = mxc_json_print(mxc_json_message(m));
        if (r == -ENOMEM)
                fprintf(stderr, "mixtral: out of memory\n");
        else if (r < 0 && r != -EPIPE)
                fprintf(stderr, "mixtral: cannot write the output: %s\n", strerror(-r));
        return r < 0 ? MXC_EXIT_INTERNAL : MXC_EXIT_OK;
}

static int finish_text(void) {
        if (fflush(stdout) != 0) {
                if (errno != EPIPE)
                        fprintf(stderr, "mixtral: cannot write the output: %s\n", strerror(errno));
                return MXC_EXIT_INTERNAL;
        }
        return MXC_EXIT_OK;
}

int mxc_show(const mxc_opts *opts, Mixtrald__V1__Request *req, Mixtrald__V1__Response__KindCase want,
             void (*print)(const ProtobufCMessage *)) {
        _cleanup_(free_response) Mixtrald__V1__Response *resp = NULL;
        int status = query(opts, req, want, &resp);
        if (status)
                return status;
        /* The oneof's member of that kind (its field number). */
        const ProtobufCFieldDescriptor *f =
                protobuf_c_message_descriptor_get_field(&mixtrald__v1__response__descriptor, (unsigned)want);
        const ProtobufCMessage *part = *(const ProtobufCMessage *const *)((const char *)resp + f->offset);
        if (opts->json)
                return print_json(part);
        print(part);
        return finish_text();
}

static const char *duration_text(double s, char *buf, size_t size) {
        if (!(s >= 0))
                s = 0;
        if (s < 60) {
                snprintf(buf, size, "%.1fs", s);
                return buf;
        }
        unsigned long long t = (unsigned long long)s;
        unsigned long long d = t / 86400, h = t / 3600 % 24, m = t / 60 % 60, sec = t % 60;
        if (d)
                snprintf(buf, size, "%llud %02lluh %02llum", d, h, m);
        else if (h)
                snprintf(buf, size, "%lluh %02llum %02llus", h, m, sec);
        else
                snprintf(buf, size, "%llum %02llus", m, sec);
        return buf;
}

static const char *or_unknown(const char *s) {
        return s && *s ? s : "unknown";
}

static void print_requests(const Mixtrald__V1__Status *s) {
        if (s->n_requests == 0) {
                printf("requests:    none\n");
                return;
        }
        printf("\n%-10s %-8s %-8s %8s %10s %9s\n", "ID", "UID", "STATE", "PROMPT", "GENERATED", "AGE");
        for (size_t i = 0; i < s->n_requests; i++) {
                const Mixtrald__V1__RequestInfo *q = s->requests[i];
                char age[32];
                printf("%-10llu %-8u %-8s %8u %10u %9s\n", (unsigned long long)q->id, q->uid, or_unknown(q->state),
                       q->prompt_tokens, q->completion_tokens, duration_text(q->age_s, age, sizeof(age)));
        }
}

static void print_status(const ProtobufCMessage *m) {
        const Mixtrald__V1__Status *s = (const Mixtrald__V1__Status *)m;
        char a[32], b[32], c[32], d[32];
        printf("model:       %s\n", or_unknown(s->model));
        printf("device:      %s\n", or_unknown(s->device));
        printf("version:     %s\n", or_unknown(s->version));
        /* Requests sent while the model loads wait in the queue: the
         * progress says for how long. */
        if (s->state && !strcmp(s->state, "loading") && s->has_load_progress)
                printf("state:       loading (%d%%)\n", (int)(fmin(fmax(s->load_progress, 0), 1) * 100));
        else
                printf("state:       %s\n", or_unknown(s->state));
        printf("queue:       %u running (%u reading prompts, %u generating), %u queued (max batch %u, queue %u)\n",
               s->running, s->prefilling, s->decoding, s->queued, s->max_batch, s->max_queue);
        if (s->has_context_length)
                printf("context:     %u tokens\n", s->context_length);
        printf("memory:      weights %s, KV cache %s, resident %s\n", mxc_format_bytes(s->weight_bytes, a, sizeof(a)),
               mxc_format_bytes(s->kv_bytes, b, sizeof(b)), mxc_format_bytes(s->rss_bytes, c, sizeof(c)));
        if (s->kv_cache) {
                const Mixtrald__V1__KvCache *k = s->kv_cache;
                printf("KV cache:    %s, %u blocks of %u tokens (%s each): %u used, %u cached, %u free; %llu of "
                       "%llu lookups hit, %llu prompt tokens served\n", or_unknown(k->type), k->blocks, k->block_tokens,
                       mxc_format_bytes(k->block_bytes, a, sizeof(a)), k->used, k->cached, k->free,
                       (unsigned long long)k->hits, (unsigned long long)k->lookups, (unsigned long long)k->hit_tokens);
        }
        if (s->experts) {
                const Mixtrald__V1__ExpertStreaming *x = s->experts;
                uint64_t asked = x->hits + x->misses;
                printf("experts:     streamed, %s of %s held (budget %s, %u per layer); hit rate %.1f%%, "
                       "%s read at %.2f GB/s, next-layer guesses %.0f%% right; %s\n",
                       mxc_format_bytes(x->resident_bytes, a, sizeof(a)),
                       mxc_format_bytes(x->budget_bytes, b, sizeof(b)),
                       mxc_format_bytes(x->configured_bytes, c, sizeof(c)), x->slots_per_layer,
                       asked ? 100.0 * (double)x->hits / (double)asked : 0.0,
                       mxc_format_bytes(x->bytes_read, d, sizeof(d)), x->read_gbps,
                       x->predicted ? 100.0 * (double)x->predicted_used / (double)x->predicted : 0.0, or_unknown(x->how));
                if (x->has_host_cache_bytes) {
                        uint64_t h = x->host_hits + x->host_misses;
                        printf("host cache:  %s page-locked, hit rate %.1f%%, %s copied to the GPU\n",
                               mxc_format_bytes(x->host_cache_bytes, a, sizeof(a)),
                               h ? 100.0 * (double)x->host_hits / (double)h : 0.0,
                               mxc_format_bytes(x->bytes_uploaded, b, sizeof(b)));
                }
        }
        printf("connections: %u\n", s->connections);
        printf("served:      %llu requests, %llu tokens\n", (unsigned long long)s->requests_total,
               (unsigned long long)s->tokens_total);
        printf("uptime:      %s\n", duration_text(s->uptime_s, a, sizeof(a)));
        print_requests(s);
}

int mxc_cmd_status(const mxc_opts *opts) {
        Mixtrald__V1__StatusQuery q = MIXTRALD__V1__STATUS_QUERY__INIT;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_STATUS;
        req.status = &q;
        return mxc_show(opts, &req, MIXTRALD__V1__RESPONSE__KIND_STATUS, print_status);
}

/* A limit of 0 is no limit. */
static const char *limit_text(uint64_t v, char *buf, size_t size) {
        if (v == 0)
                return "unlimited";
        snprintf(buf, size, "%llu", (unsigned long long)v);
        return buf;
}

static void print_used(const char *label, uint64_t limit, uint64_t used, bool has_reset, uint64_t reset) {
        char l[32], when[64];
        printf("%-17s%s (used %llu", label, limit_text(limit, l, sizeof(l)), (unsigned long long)used);
        if (has_reset && reset) {
                mxc_format_time(reset, when, sizeof(when));
                printf(", resets at %s", when);
        }
        printf(")\n");
}

static void print_quota(const ProtobufCMessage *m) {
        const Mixtrald__V1__Quota *q = (const Mixtrald__V1__Quota *)m;
        static const Mixtrald__V1__Limits none = MIXTRALD__V1__LIMITS__INIT;
        const Mixtrald__V1__Limits *l = q->limits ? q->limits : &none;
        char buf[32];
        struct passwd *pw = q->has_uid ? getpwuid(q->uid) : NULL;
        printf("%-17s", "user:");
        if (pw)
                printf("%s (uid %u)", pw->pw_name, q->uid);
        else
                printf("uid %u", q->uid);
        printf("%s\n", q->exempt ? ", exempt (root or admin group)" : "");
        print_used("tokens per hour:", l->tokens_per_hour, q->used_hour, q->has_hour_resets_unix, q->hour_resets_unix);
        print_used("tokens per day:", l->tokens_per_day, q->used_day, q->has_day_resets_unix, q->day_resets_unix);
        printf("%-17s%s (running %u)\n", "concurrent:", limit_text(l->max_concurrent, buf, sizeof(buf)), q->running);
        printf("%-17s%s (queued %u)\n", "queued:", limit_text(l->max_queued, buf, sizeof(buf)), q->queued);
        printf("%-17s%s tokens\n", "max context:", limit_text(l->max_context, buf, sizeof(buf)));
        printf("%-17s%s per request\n", "max tokens:", limit_text(l->max_tokens, buf, sizeof(buf)));
}

int mxc_cmd_quota(const mxc_opts *opts) {
        Mixtrald__V1__QuotaQuery q = MIXTRALD__V1__QUOTA_QUERY__INIT;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_QUOTA;
        req.quota = &q;
        return mxc_show(opts, &req, MIXTRALD__V1__RESPONSE__KIND_QUOTA, print_quota);
}
