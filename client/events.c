/* A generation's replies as the user sees them: streamed text, or with
 * --json one event object per line; errors as a message and an exit
 * status. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "mx_common.h"

int mxc_error_exit_status(int code) {
        switch (code) {
        case MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT:
        case MIXTRALD__V1__ERROR_CODE__NOT_FOUND:
                return MXC_EXIT_INVALID;
        case MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED:
                return MXC_EXIT_QUOTA;
        case MIXTRALD__V1__ERROR_CODE__BUSY:
                return MXC_EXIT_BUSY;
        case MIXTRALD__V1__ERROR_CODE__TOO_LONG:
                return MXC_EXIT_TOO_LONG;
        case MIXTRALD__V1__ERROR_CODE__CANCELLED:
        case MIXTRALD__V1__ERROR_CODE__UNAVAILABLE:
                return MXC_EXIT_CANCELLED;
        case MIXTRALD__V1__ERROR_CODE__BAD_FRAME:
                return MXC_EXIT_CONNECTION;
        default:
                return MXC_EXIT_INTERNAL;
        }
}

static int flush_stdout(void) {
        if (fflush(stdout) != 0 || ferror(stdout))
                return errno ? -errno : -EIO;
        return 0;
}

static int write_text(mxc_out *o, const char *s, size_t n) {
        if (n == 0)
                return 0;
        if (fwrite(s, 1, n, stdout) != n)
                return errno ? -errno : -EIO;
        o->mid_line = s[n - 1] != '\n';
        mxc_intr_mid_line(o->mid_line);
        return flush_stdout();
}

static int collect(mxc_out *o, const char *s, size_t n) {
        if (!o->collect || n == 0)
                return 0;
        int r = mx_grow((void **)&o->text, &o->cap, o->len + n + 1, 1);
        if (r < 0)
                return r;
        memcpy(o->text + o->len, s, n);
        o->len += n;
        o->text[o->len] = '\0';
        return 0;
}

int mxc_out_accepted(mxc_out *o, uint64_t request_id, const Mixtrald__V1__Accepted *a) {
        if (!o->json)
                return 0;
        return mxc_json_print(json_pack("{s:s,s:o,s:I,s:I,s:I}", "event", "accepted", "request_id",
                                        mxc_json_u64(request_id), "prompt_tokens", (json_int_t)a->prompt_tokens,
                                        "max_tokens", (json_int_t)a->max_tokens, "queue_position",
                                        (json_int_t)a->queue_position));
}

int mxc_out_chunk(mxc_out *o, const Mixtrald__V1__Chunk *ch) {
        const char *text = ch->text ? ch->text : "";
        size_t n = strlen(text);
        int r = collect(o, text, n);
        if (r < 0)
                return r;
        if (!o->json)
                return write_text(o, text, n);
        json_t *j = json_pack("{s:s,s:o}", "event", "chunk", "text", mxc_json_text(text, n));
        if (j && o->ids) {
                json_t *ids = json_array();
                for (size_t i = 0; ids && i < ch->n_token_ids; i++)
                        if (json_array_append_new(ids, json_integer(ch->token_ids[i])) < 0) {
                                json_decref(ids);
                                ids = NULL;
                        }
                if (json_object_set_new(j, "token_ids", ids) < 0) {
                        json_decref(j);
                        j = NULL;
                }
        }
        return mxc_json_print(j);
}

int mxc_out_end_line(mxc_out *o) {
        if (o->json || !o->mid_line)
                return 0;
        return write_text(o, "\n", 1);
}

/* The note says what ended the answer when the user did not ask for it
 * (the quota): text goes to stdout, so the note goes to stderr. */
int mxc_out_finished(mxc_out *o, const Mixtrald__V1__Finished *f) {
        if (!o->json) {
                int r = mxc_out_end_line(o);
                if (r == 0 && f->note && *f->note)
                        fprintf(stderr, "mixtral: %s\n", f->note);
                return r;
        }
        json_t *usage = f->usage ? mxc_json_message(&f->usage->base) : json_null();
        json_t *note = f->note ? mxc_json_text(f->note, strlen(f->note)) : json_null();
        return mxc_json_print(json_pack("{s:s,s:s?,s:o,s:o}", "event", "finished", "reason", f->reason, "usage", usage,
                                        "note", note));
}

void mxc_format_time(uint64_t t, char *buf, size_t size) {
        time_t tt = (time_t)t;
        struct tm tm;
        if (!localtime_r(&tt, &tm) || strftime(buf, size, "%Y-%m-%d %H:%M:%S %Z", &tm) == 0)
                snprintf(buf, size, "@%llu", (unsigned long long)t);
}

const char *mxc_format_bytes(uint64_t b, char *buf, size_t size) {
        if (b < 1024)
                snprintf(buf, size, "%llu B", (unsigned long long)b);
        else if (b < 1024 * 1024)
                snprintf(buf, size, "%.1f KiB", b / 1024.0);
        else if (b < 1024ull * 1024 * 1024)
                snprintf(buf, size, "%.1f MiB", b / (1024.0 * 1024));
        else
                snprintf(buf, size, "%.2f GiB", b / (1024.0 * 1024 * 1024));
        return buf;
}

int mxc_out_error_event(mxc_out *o, const Mixtrald__V1__Error *e) {
        json_t *j = json_pack("{s:s,s:s,s:s?}", "event", "error", "code", mxp_error_name(e->code), "message",
                              e->message);
        if (j && e->has_retry_at_unix && json_object_set_new(j, "retry_at_unix", mxc_json_u64(e->retry_at_unix)) < 0)
                j = (json_decref(j), NULL);
        if (j && e->has_retry_after_ms && json_object_set_new(j, "retry_after_ms", json_integer(e->retry_after_ms)) < 0)
                j = (json_decref(j), NULL);
        return mxc_json_print(j);
}

int mxc_out_error(mxc_out *o, const Mixtrald__V1__Error *e) {
        const char *name = mxp_error_name(e->code);
        char extra[96] = "";
        if (e->code == MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED && e->has_retry_at_unix) {
                char when[64];
                mxc_format_time(e->retry_at_unix, when, sizeof(when));
                snprintf(extra, sizeof(extra), "; retry after %s", when);
        } else if (e->code == MIXTRALD__V1__ERROR_CODE__BUSY && e->has_retry_after_ms) {
                snprintf(extra, sizeof(extra), "; retry in %u ms", e->retry_after_ms);
        }
        (void)mxc_out_end_line(o);
        /* Scripts read the event; whoever watches sees stderr as well. */
        if (o->json)
                (void)mxc_out_error_event(o, e);
        if (e->message && *e->message)
                fprintf(stderr, "mixtral: %s: %s%s\n", name, e->message, extra);
        else
                fprintf(stderr, "mixtral: %s%s\n", name, extra);
        return mxc_error_exit_status(e->code);
}

int mxc_fail(bool json, int status, const char *code, json_t *fields, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        _cleanup_free_ char *msg = NULL;
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        const char *text = msg ? msg : "out of memory";
        if (json) {
                json_t *j = json_pack("{s:s,s:s,s:o}", "event", "error", "code", code, "message",
                                      mxc_json_text(text, strlen(text)));
                if (j && fields && json_object_update(j, fields) < 0)
                        j = (json_decref(j), NULL);
                (void)mxc_json_print(j);
        }
        json_decref(fields);
        fprintf(stderr, "mixtral: %s\n", text);
        return status;
}

void mxc_out_free(mxc_out *o) {
        free(o->text);
        o->text = NULL;
        o->len = o->cap = 0;
}
