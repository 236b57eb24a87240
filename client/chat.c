/* mixtral chat: a conversation kept here and sent whole each turn, the
 * messages from input.c. When the daemon goes away (a restart), the chat
 * waits for it to come back and asks the last question again: the
 * conversation lives here, so nothing of it is lost. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "client.h"
#include "mx_common.h"

static const char chat_help[] =
        "/reset          forget the conversation\n"
        "/system TEXT    set the system prompt (/system alone clears it)\n"
        "/quit           leave (so do /exit and Ctrl-D)\n"
        "/help           this list\n"
        "//TEXT          send a message that starts with \"/\"\n"
        "A message of several lines:\n"
        "  \"\"\"            a line starting with \"\"\" opens a block, one ending with \"\"\" closes it\n"
        "  TEXT\\          a line ending with \\ goes on on the next one\n"
        "  a paste        is one message, however many lines: Enter sends it\n"
        "Ctrl-C cancels an answer and forgets its question; at the prompt it clears the message.\n";

typedef struct conversation {
        Mixtrald__V1__ChatMessage **msgs;
        size_t n, cap;
        char *system;
} conversation;

static void conv_pop(conversation *c) {
        Mixtrald__V1__ChatMessage *m = c->msgs[--c->n];
        free(m->content);
        free(m);
}

static void conv_reset(conversation *c) {
        while (c->n)
                conv_pop(c);
}

static void conv_free(conversation *c) {
        conv_reset(c);
        free(c->msgs);
        free(c->system);
}

/* role is a literal; content is copied. */
static int conv_push(conversation *c, const char *role, const char *content) {
        int r = mx_grow((void **)&c->msgs, &c->cap, c->n + 1, sizeof(*c->msgs));
        if (r < 0)
                return r;
        Mixtrald__V1__ChatMessage *m = malloc(sizeof(*m));
        char *text = strdup(content);
        if (!m || !text) {
                free(m);
                free(text);
                return -ENOMEM;
        }
        *m = (Mixtrald__V1__ChatMessage)MIXTRALD__V1__CHAT_MESSAGE__INIT;
        m->role = (char *)role;
        m->content = text;
        c->msgs[c->n++] = m;
        return 0;
}

static int set_system(conversation *c, const char *text) {
        char *s = NULL;
        if (text && *text && !(s = strdup(text)))
                return -ENOMEM;
        free(c->system);
        c->system = s;
        return 0;
}

/* --- the conversation ------------------------------------------------- */

static bool blank(const char *s) {
        return s[strspn(s, " \t\n")] == '\0';
}

/* A slash command: 1 to go on, 0 to leave, -errno. */
static int command(conversation *conv, const char *line, bool talk) {
        /* A command continued with \ has its argument on the next lines. */
        const char *arg = line + strcspn(line, " \t\n");
        size_t len = (size_t)(arg - line);
        arg += strspn(arg, " \t\n");
        if ((len == 5 && !strncmp(line, "/quit", len)) || (len == 5 && !strncmp(line, "/exit", len)))
                return 0;
        if (len == 6 && !strncmp(line, "/reset", len)) {
                conv_reset(conv);
                if (talk)
                        printf("(conversation forgotten)\n");
        } else if (len == 7 && !strncmp(line, "/system", len)) {
                int r = set_system(conv, arg);
                if (r < 0)
                        return r;
                if (talk)
                        printf(*arg ? "(system prompt set)\n" : "(system prompt cleared)\n");
        } else if (len == 5 && !strncmp(line, "/help", len)) {
                fputs(chat_help, stdout);
        } else {
                fprintf(stderr, "mixtral: unknown command '%.*s' (/help lists them)\n", (int)len, line);
        }
        fflush(stdout);
        return 1;
}

/* Says once that the connection was lost and why; with --json an event
 * as well, so that a script drops the answer begun. */
static void say_lost(const mxc_opts *opts, int why) {
        char buf[128], msg[512];
        snprintf(msg, sizeof(msg),
                 "lost the connection to mixtrald (%s); waiting up to %u s for it to come back, then asking again "
                 "(Ctrl-C gives up)",
                 mxc_conn_failure_text(why, buf, sizeof(buf)), opts->reconnect_s);
        if (opts->json)
                (void)mxc_json_print(json_pack("{s:s,s:s}", "event", "reconnecting", "message", msg));
        fprintf(stderr, "mixtral: %s\n", msg);
}

/* The conversation sent and its answer streamed into out; when the
 * daemon goes away meanwhile (or went away since the last turn), the
 * same question again once it is back. An outage is said once and given
 * opts->reconnect_s in all, however many connections it breaks before an
 * answer begins again. */
static int ask(mxc_conn *c, const mxc_opts *opts, const conversation *conv, mxc_out *out) {
        mxc_opts o = *opts;
        o.gen.system = conv->system;
        int lost = 0;
        int64_t deadline = 0;
        for (;;) {
                int r = 0;
                if (lost) {
                        if (!deadline || out->len) {
                                say_lost(opts, lost);
                                deadline = mxc_now_ms() + (int64_t)opts->reconnect_s * 1000;
                        }
                        r = mxc_reconnect(c, deadline);
                        if (r < 0 && r != -EINTR)
                                return mxc_fail(opts->json, MXC_EXIT_CONNECTION, "CONNECTION_LOST", NULL,
                                                "mixtrald did not come back within %u s (%s: %s)", opts->reconnect_s,
                                                c->path, strerror(-r));
                } else if (c->fd < 0) {
                        /* Closed after a refusal: the daemon is there. */
                        r = mxc_reconnect(c, 0);
                        if (r < 0 && r != -EINTR) {
                                lost = r;
                                continue;
                        }
                }
                if (r == -EINTR)
                        return MXC_EXIT_INTERRUPTED;
                mxc_out_free(out); /* the answer starts again */
                int status = mxc_generate(c, &o, NULL, conv->msgs, conv->n, out);
                if (!out->lost)
                        return status;
                lost = out->lost;
        }
}

/* One question and its answer: the exit status of the generation. */
static int turn(mxc_conn *c, const mxc_opts *opts, conversation *conv, const char *text, bool talk) {
        int r = conv_push(conv, "user", text);
        if (r < 0)
                return mxc_conn_failure(c, r);
        mxc_out out = {.json = opts->json, .ids = opts->ids, .collect = true, .may_reconnect = opts->reconnect_s > 0};
        int status = ask(c, opts, conv, &out);
        if (status == MXC_EXIT_OK) {
                r = conv_push(conv, "assistant", out.text ? out.text : "");
                if (r < 0)
                        status = mxc_conn_failure(c, r);
                else if (talk)
                        putchar('\n'); /* a blank line before the next prompt */
                fflush(stdout);
        } else {
                /* A question without its answer would confuse the next turn. */
                conv_pop(conv);
        }
        mxc_out_free(&out);
        return status;
}

/* What a turn's status means for the chat: 0 to go on, else the exit
 * status. */
static int after_turn(int status, bool tty) {
        switch (status) {
        case MXC_EXIT_OK:
                return 0;
        case MXC_EXIT_INTERRUPTED:
                /* That answer only: back to the prompt. */
                mxc_intr_rearm();
                return 0;
        case MXC_EXIT_CONNECTION:
        case MXC_EXIT_INTERNAL:
                return status;
        default:
                /* Reported already; a person may rephrase, a script gets
                 * the status. */
                return tty ? 0 : status;
        }
}

int mxc_cmd_chat(const mxc_opts *opts) {
        _cleanup_(mxc_disconnect) mxc_conn c = MXC_CONN_INIT;
        int r = mxc_connect(&c, opts);
        if (r < 0)
                return r == -EINTR ? MXC_EXIT_INTERRUPTED : MXC_EXIT_UNREACHABLE;
        _cleanup_(conv_free) conversation conv = {0};
        _cleanup_(mxc_input_free) mxc_input *in = NULL;
        if (set_system(&conv, opts->gen.system) < 0 || mxc_input_open(&in) < 0)
                return mxc_conn_failure(&c, -ENOMEM);
        FILE *term = mxc_input_terminal(in);
        /* Confirmations are for a person at a terminal, not for a pipe. */
        bool talk = term && !opts->json;
        if (talk)
                fprintf(term, "Chatting with mixtrald; /help lists the commands, Ctrl-D leaves.\n");
        for (;;) {
                const char *text;
                bool plain;
                r = mxc_input_message(in, &text, &plain);
                if (r == -EINTR) {
                        mxc_intr_rearm();
                        if (!term)
                                return MXC_EXIT_INTERRUPTED;
                        fputs("^C\n", term);
                        continue;
                }
                if (r < 0)
                        return mxc_conn_failure(&c, r);
                if (r == 0) {
                        if (term)
                                fputc('\n', term);
                        return MXC_EXIT_OK;
                }
                if (blank(text))
                        continue;
                if (plain && text[0] == '/' && text[1] != '/') {
                        r = command(&conv, text, talk);
                        if (r < 0)
                                return mxc_conn_failure(&c, r);
                        if (r == 0)
                                return MXC_EXIT_OK;
                        continue;
                }
                int status = turn(&c, opts, &conv, plain && text[0] == '/' ? text + 1 : text, talk);
                if ((status = after_turn(status, term != NULL)) != 0)
                        return status;
        }
}
