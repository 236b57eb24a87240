/* One generation over the connection: the request, its streamed replies,
 * and Ctrl-C turned into a cancel request. Also the one-shot command,
 * whose prompt comes from the command line and standard input. */
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "mx_common.h"

/* Best effort: when it fails the daemon is gone, and with it the request. */
static void send_cancel(mxc_conn *c, uint64_t request_id) {
        Mixtrald__V1__Cancel cancel = MIXTRALD__V1__CANCEL__INIT;
        cancel.has_request_id = true;
        cancel.request_id = request_id;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.has_tag = true;
        req.tag = c->next_tag++;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_CANCEL;
        req.cancel = &cancel;
        (void)mxc_send(c, &req);
}

static int output_failure(int r) {
        if (r == -ENOMEM)
                fprintf(stderr, "mixtral: out of memory\n");
        else if (r != -EPIPE) /* the reader left: nothing to tell */
                fprintf(stderr, "mixtral: cannot write the output: %s\n", strerror(-r));
        return MXC_EXIT_INTERNAL;
}

/* One generation under way. */
typedef struct gen {
        mxc_conn *c;
        mxc_out *out;
        uint64_t tag;
        bool chat;            /* messages rather than a prompt: the words of a too-large refusal */
        size_t request_bytes; /* the request's message, as the daemon's frame limit counts */
        bool have_id, interrupted;
        uint64_t id;
        int64_t cancel_deadline;
} gen;

/* The daemon's frame limit from its refusal, "... larger than
 * max_frame_bytes (N bytes)": true for that refusal, *max = 0 when it
 * gives no number. */
static bool frame_limit(const Mixtrald__V1__Error *e, uint64_t *max) {
        static const char key[] = "max_frame_bytes";
        const char *p = e->code == MIXTRALD__V1__ERROR_CODE__BAD_FRAME && e->message ? strstr(e->message, key) : NULL;
        if (!p)
                return false;
        *max = p[sizeof(key) - 1] == ' ' && p[sizeof(key)] == '(' ? strtoull(p + sizeof(key) + 1, NULL, 10) : 0;
        return true;
}

/* The one refusal a user can act on without reading the protocol. */
static int too_large(const gen *g, uint64_t max) {
        char have[32], limit[32] = "";
        mxc_format_bytes(g->request_bytes, have, sizeof(have));
        if (max)
                mxc_format_bytes(max, limit, sizeof(limit));
        /* "1.0 MiB; ... up to 1.0 MiB" would say nothing. */
        if (!strcmp(have, limit)) {
                snprintf(have, sizeof(have), "%zu bytes", g->request_bytes);
                snprintf(limit, sizeof(limit), "%llu bytes", (unsigned long long)max);
        }
        json_t *fields = json_pack("{s:o,s:o}", "request_bytes", mxc_json_u64(g->request_bytes), "max_frame_bytes",
                                   max ? mxc_json_u64(max) : json_null());
        return mxc_fail(g->out->json, MXC_EXIT_TOO_LARGE, "TOO_LARGE", fields,
                        "%s is %s; this daemon accepts requests up to %s (max_frame_bytes in its configuration): %s, "
                        "or ask its administrator to raise max_frame_bytes",
                        g->chat ? "the conversation" : "the input", have, max ? limit : "a smaller size",
                        g->chat ? "/reset starts a new conversation" : "send less");
}

static int on_error(gen *g, const Mixtrald__V1__Error *e) {
        uint64_t max;
        if (g->interrupted && e->code == MIXTRALD__V1__ERROR_CODE__CANCELLED) {
                /* What the user asked for: an event for --json, no
                 * complaint on stderr. */
                if (g->out->json)
                        (void)mxc_out_error_event(g->out, e);
                return MXC_EXIT_INTERRUPTED;
        }
        /* The daemon closes the connection after a bad frame: a chat's
         * next turn connects again rather than find it broken. */
        if (e->code == MIXTRALD__V1__ERROR_CODE__BAD_FRAME)
                mxc_disconnect(g->c);
        (void)mxc_out_end_line(g->out);
        return frame_limit(e, &max) ? too_large(g, max) : mxc_out_error(g->out, e);
}

/* The request's end: its exit status, or -1 while it goes on. */
static int on_reply(gen *g, const Mixtrald__V1__Response *resp) {
        if (resp->has_request_id && !g->have_id) {
                g->have_id = true;
                g->id = resp->request_id;
                if (g->interrupted)
                        send_cancel(g->c, g->id);
        }
        int r = 0, status = -1;
        switch (resp->kind_case) {
        case MIXTRALD__V1__RESPONSE__KIND_ACCEPTED:
                r = mxc_out_accepted(g->out, g->id, resp->accepted);
                break;
        case MIXTRALD__V1__RESPONSE__KIND_CHUNK:
                r = mxc_out_chunk(g->out, resp->chunk);
                break;
        case MIXTRALD__V1__RESPONSE__KIND_FINISHED:
                r = mxc_out_finished(g->out, resp->finished);
                status = g->interrupted ? MXC_EXIT_INTERRUPTED : MXC_EXIT_OK;
                break;
        case MIXTRALD__V1__RESPONSE__KIND_ERROR:
                return on_error(g, resp->error);
        default:
                (void)mxc_out_end_line(g->out);
                return mxc_fail(g->out->json, MXC_EXIT_INTERNAL, "INTERNAL", NULL,
                                "unexpected reply from mixtrald (kind %d)", (int)resp->kind_case);
        }
        if (r < 0) {
                /* Nobody reads the answer any more: stop the work. */
                if (g->have_id)
                        send_cancel(g->c, g->id);
                return output_failure(r);
        }
        return status;
}

/* The connection failed with why: reported, or left to a chat that
 * reconnects when the daemon went away. */
static int broken(gen *g, int why) {
        (void)mxc_out_end_line(g->out);
        if (g->out->may_reconnect && mxc_conn_lost(why)) {
                g->out->lost = why;
                return MXC_EXIT_CONNECTION;
        }
        return mxc_conn_failure(g->c, why);
}

/* Replies to our cancel request and other strays; an error with tag 0
 * (never one of ours) concerns the whole connection. */
static bool ours(const gen *g, const Mixtrald__V1__Response *resp) {
        return resp->tag == g->tag || (resp->tag == 0 && resp->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR);
}

int mxc_generate(mxc_conn *c, const mxc_opts *opts, const char *prompt, Mixtrald__V1__ChatMessage **msgs,
                 size_t n, mxc_out *out) {
        Mixtrald__V1__Generate gen_req = opts->gen;
        gen_req.prompt = (char *)prompt;
        gen_req.messages = msgs;
        gen_req.n_messages = n;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.has_tag = true;
        req.tag = c->next_tag++;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_GENERATE;
        req.generate = &gen_req;
        gen g = {.c = c, .out = out, .tag = req.tag, .chat = !prompt,
                 .request_bytes = protobuf_c_message_get_packed_size(&req.base)};
        out->lost = 0;

        int status = -1;
        /* When the send fails the daemon may still have said why (an
         * oversize frame) before it closed: read that first. */
        int send_err = mxc_send(c, &req);
        while (status < 0) {
                int timeout = send_err < 0 ? 1000 : -1;
                if (g.interrupted) {
                        int64_t left = g.cancel_deadline - mxc_now_ms();
                        timeout = left > 0 ? (int)left : 0;
                }
                Mixtrald__V1__Response *resp;
                int r = mxc_recv(c, timeout, &resp);
                if (r == -EINTR) {
                        g.interrupted = true;
                        g.cancel_deadline = mxc_now_ms() + MXC_CANCEL_WAIT_MS;
                        /* Without an id yet, the cancel goes out when it comes. */
                        if (g.have_id)
                                send_cancel(c, g.id);
                        continue;
                }
                /* After Ctrl-C, silence or a closed connection is as good
                 * as a confirmation. */
                if (r < 0) {
                        status = g.interrupted ? MXC_EXIT_INTERRUPTED : broken(&g, send_err < 0 ? send_err : r);
                        break;
                }
                if (ours(&g, resp))
                        status = on_reply(&g, resp);
                mixtrald__v1__response__free_unpacked(resp, NULL);
        }
        if (status == MXC_EXIT_INTERRUPTED)
                (void)mxc_out_end_line(out);
        mxc_intr_mid_line(false);
        return status;
}

/* All of standard input, up to MXC_MAX_STDIN bytes. */
static int read_stdin(char **out, size_t *len) {
        _cleanup_free_ char *buf = NULL;
        size_t n = 0, cap = 0;
        for (;;) {
                int r = mx_grow((void **)&buf, &cap, n + 65536 + 1, 1);
                if (r < 0)
                        return r;
                /* One byte past the limit tells "too large" from "exactly". */
                size_t want = cap - n - 1;
                if (want > MXC_MAX_STDIN + 1 - n)
                        want = MXC_MAX_STDIN + 1 - n;
                ssize_t k = read(STDIN_FILENO, buf + n, want);
                if (k < 0 && errno == EINTR) {
                        if (mxc_intr_take())
                                return -EINTR;
                        continue;
                }
                if (k < 0 && errno == EBADF) /* stdin closed: no input */
                        break;
                if (k < 0)
                        return -errno;
                if (k == 0)
                        break;
                n += (size_t)k;
                if (n > MXC_MAX_STDIN)
                        return -EFBIG;
        }
        buf[n] = '\0';
        *out = MX_TAKE_PTR(buf);
        *len = n;
        return 0;
}

/* The words joined by spaces; then, when standard input is not a
 * terminal, a blank line and the input exactly as read (no blank line
 * when either part is empty). */
static int build_prompt(char **words, size_t n, bool json, char **out) {
        size_t wlen = 0;
        for (size_t i = 0; i < n; i++)
                wlen += strlen(words[i]) + 1;
        _cleanup_free_ char *in = NULL;
        size_t inlen = 0;
        if (!isatty(STDIN_FILENO)) {
                int r = read_stdin(&in, &inlen);
                if (r == -EINTR)
                        return MXC_EXIT_INTERRUPTED;
                if (r == -EFBIG)
                        return mxc_fail(json, MXC_EXIT_TOO_LARGE, "TOO_LARGE", NULL,
                                        "standard input is larger than %u MiB, the most mixtral sends",
                                        MXC_MAX_STDIN >> 20);
                if (r == -ENOMEM) {
                        fprintf(stderr, "mixtral: out of memory\n");
                        return MXC_EXIT_INTERNAL;
                }
                if (r < 0) {
                        fprintf(stderr, "mixtral: cannot read standard input: %s\n", strerror(-r));
                        return MXC_EXIT_INTERNAL;
                }
                /* The protocol's strings end at a NUL: say so rather than
                 * send half of it. */
                if (memchr(in, '\0', inlen))
                        return mxc_usage_error("%s", "standard input contains a NUL byte; the prompt must be text");
        }
        char *p = malloc(wlen + 2 + inlen + 1);
        if (!p) {
                fprintf(stderr, "mixtral: out of memory\n");
                return MXC_EXIT_INTERNAL;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
                size_t l = strlen(words[i]);
                if (i)
                        p[k++] = ' ';
                memcpy(p + k, words[i], l);
                k += l;
        }
        if (k && inlen) {
                memcpy(p + k, "\n\n", 2);
                k += 2;
        }
        if (inlen)
                memcpy(p + k, in, inlen);
        k += inlen;
        p[k] = '\0';
        if (k == 0) {
                free(p);
                return mxc_usage_error("%s", "no prompt: give PROMPT words, or pipe text to standard input");
        }
        *out = p;
        return 0;
}

int mxc_cmd_prompt(const mxc_opts *opts, char **words, size_t n) {
        _cleanup_free_ char *prompt = NULL;
        int status = build_prompt(words, n, opts->json, &prompt);
        if (status)
                return status;
        _cleanup_(mxc_disconnect) mxc_conn c = MXC_CONN_INIT;
        int r = mxc_connect(&c, opts);
        if (r < 0)
                return r == -EINTR ? MXC_EXIT_INTERRUPTED : MXC_EXIT_UNREACHABLE;
        mxc_out out = {.json = opts->json, .ids = opts->ids};
        status = mxc_generate(&c, opts, prompt, NULL, 0, &out);
        mxc_out_free(&out);
        return status;
}
