/* One generation over the connection: the request, its streamed replies,
 * and Ctrl-C turned into a cancel request. Also the one-shot command,
 * whose prompt comes from the command line and standard input. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "mx_common.h"

static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

int mxc_generate(mxc_conn *c, const mxc_opts *opts, const char *prompt, Mixtrald__V1__ChatMessage **msgs,
                 size_t n, mxc_out *out) {
        Mixtrald__V1__Generate gen = opts->gen;
        gen.prompt = (char *)prompt;
        gen.messages = msgs;
        gen.n_messages = n;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.has_tag = true;
        req.tag = c->next_tag++;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_GENERATE;
        req.generate = &gen;

        bool have_id = false, interrupted = false;
        uint64_t id = 0;
        int64_t cancel_deadline = 0;
        int status = -1;
        /* When the send fails the daemon may still have said why (an
         * oversize frame) before it closed: read that first. */
        int send_err = mxc_send(c, &req);
        while (status < 0) {
                int timeout = send_err < 0 ? 1000 : -1;
                if (interrupted) {
                        int64_t left = cancel_deadline - now_ms();
                        timeout = left > 0 ? (int)left : 0;
                }
                Mixtrald__V1__Response *resp;
                int r = mxc_recv(c, timeout, &resp);
                if (r == -EINTR) {
                        interrupted = true;
                        cancel_deadline = now_ms() + MXC_CANCEL_WAIT_MS;
                        /* Without an id yet, the cancel goes out when it comes. */
                        if (have_id)
                                send_cancel(c, id);
                        continue;
                }
                if (r < 0) {
                        /* After Ctrl-C, silence or a closed connection is as
                         * good as a confirmation. */
                        status = interrupted ? MXC_EXIT_INTERRUPTED : mxc_conn_failure(send_err < 0 ? send_err : r);
                        break;
                }
                /* Replies to our cancel request and other strays; an error
                 * with tag 0 (never one of ours) concerns the whole
                 * connection. */
                if (resp->tag != req.tag &&
                    (resp->tag != 0 || resp->kind_case != MIXTRALD__V1__RESPONSE__KIND_ERROR)) {
                        mixtrald__v1__response__free_unpacked(resp, NULL);
                        continue;
                }
                if (resp->has_request_id && !have_id) {
                        have_id = true;
                        id = resp->request_id;
                        if (interrupted)
                                send_cancel(c, id);
                }
                r = 0;
                switch (resp->kind_case) {
                case MIXTRALD__V1__RESPONSE__KIND_ACCEPTED:
                        r = mxc_out_accepted(out, id, resp->accepted);
                        break;
                case MIXTRALD__V1__RESPONSE__KIND_CHUNK:
                        r = mxc_out_chunk(out, resp->chunk);
                        break;
                case MIXTRALD__V1__RESPONSE__KIND_FINISHED:
                        r = mxc_out_finished(out, resp->finished);
                        status = interrupted ? MXC_EXIT_INTERRUPTED : MXC_EXIT_OK;
                        break;
                case MIXTRALD__V1__RESPONSE__KIND_ERROR:
                        if (interrupted && resp->error->code == MIXTRALD__V1__ERROR_CODE__CANCELLED) {
                                /* What the user asked for: an event for
                                 * --json, no complaint on stderr. */
                                if (out->json)
                                        (void)mxc_out_error_event(out, resp->error);
                                status = MXC_EXIT_INTERRUPTED;
                        } else {
                                status = mxc_out_error(out, resp->error);
                        }
                        break;
                default:
                        fprintf(stderr, "mixtral: unexpected reply from mixtrald (kind %d)\n", (int)resp->kind_case);
                        status = MXC_EXIT_INTERNAL;
                        break;
                }
                mixtrald__v1__response__free_unpacked(resp, NULL);
                if (r < 0) {
                        /* Nobody reads the answer any more: stop the work. */
                        if (have_id)
                                send_cancel(c, id);
                        status = output_failure(r);
                }
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
static int build_prompt(char **words, size_t n, char **out) {
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
                        return mxc_usage_error("standard input is larger than %u MiB", MXC_MAX_STDIN >> 20);
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
        int status = build_prompt(words, n, &prompt);
        if (status)
                return status;
        _cleanup_(mxc_disconnect) mxc_conn c = MXC_CONN_INIT;
        int r = mxc_connect(&c, opts->socket);
        if (r < 0)
                return r == -EINTR ? MXC_EXIT_INTERRUPTED : MXC_EXIT_UNREACHABLE;
        mxc_out out = {.json = opts->json, .ids = opts->ids};
        status = mxc_generate(&c, opts, prompt, NULL, 0, &out);
        mxc_out_free(&out);
        return status;
}
