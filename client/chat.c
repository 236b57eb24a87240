/* mixtral chat: a conversation kept here and sent whole each turn, read
 * with libedit (line editing, history) from a terminal, or line by line
 * from anything else. */
#include <errno.h>
#include <fcntl.h>
#include <histedit.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wchar.h>

#include "client.h"
#include "mx_common.h"

#define HISTORY_SIZE 1000

static const char chat_help[] =
        "/reset          forget the conversation\n"
        "/system TEXT    set the system prompt (/system alone clears it)\n"
        "/quit           leave (so do /exit and Ctrl-D)\n"
        "/help           this list\n"
        "//TEXT          send a message that starts with \"/\"\n"
        "Ctrl-C cancels an answer and forgets its question; at the prompt it clears the line.\n";

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

/* --- input ------------------------------------------------------------ */

typedef struct input {
        bool tty;
        EditLine *el;
        History *hist;
        FILE *echo; /* where libedit draws: the terminal */
        char *history_path;
        bool history_warned;
        bool interrupted; /* the last read ended with Ctrl-C */
        char *line;       /* the plain reader's buffer */
        size_t line_cap;
} input;

/* mkdir -p, new directories private: history is what the user typed. */
static int make_dirs(char *path) {
        for (char *p = path + 1;; p++) {
                if (*p != '/' && *p != '\0')
                        continue;
                char saved = *p;
                *p = '\0';
                int r = mkdir(path, 0700) < 0 && errno != EEXIST ? -errno : 0;
                *p = saved;
                if (r < 0)
                        return r;
                if (saved == '\0')
                        return 0;
        }
}

/* $XDG_STATE_HOME/mixtral/history, else ~/.local/state/mixtral/history;
 * NULL when there is no home to keep it in. */
static char *history_path(void) {
        const char *state = getenv("XDG_STATE_HOME");
        _cleanup_free_ char *dir = NULL;
        int k;
        /* The XDG spec says to ignore relative paths. */
        if (state && state[0] == '/') {
                k = asprintf(&dir, "%s/mixtral", state);
        } else {
                const char *home = getenv("HOME");
                if (!home || home[0] != '/') {
                        struct passwd *pw = getpwuid(getuid());
                        home = pw ? pw->pw_dir : NULL;
                }
                if (!home || home[0] != '/')
                        return NULL;
                k = asprintf(&dir, "%s/.local/state/mixtral", home);
        }
        if (k < 0) {
                dir = NULL;
                return NULL;
        }
        if (make_dirs(dir) < 0)
                return NULL;
        char *path;
        return asprintf(&path, "%s/history", dir) < 0 ? NULL : path;
}

static void history_save(input *in) {
        if (!in->history_path)
                return;
        int fd = open(in->history_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
        HistEvent ev;
        int r = f ? history(in->hist, &ev, H_SAVE_FP, f) : -1;
        int saved = errno;
        if (f) {
                if (fclose(f) != 0)
                        r = -1;
        } else if (fd >= 0) {
                close(fd);
        }
        /* Losing history is a pity, not a reason to stop: say it once. */
        if (r < 0 && !in->history_warned) {
                fprintf(stderr, "mixtral: cannot save the history to %s: %s\n", in->history_path,
                        strerror(saved ? saved : EIO));
                in->history_warned = true;
        }
}

static char *prompt_text(EditLine *el) {
        return (char *)">>> ";
}

/* libedit's read function, polling the terminal and the Ctrl-C pipe, so
 * that Ctrl-C ends el_gets() (which then returns NULL) instead of being
 * lost in a restarted read(). */
static int read_char(EditLine *el, wchar_t *wc) {
        input *in;
        el_get(el, EL_CLIENTDATA, &in);
        mbstate_t st;
        memset(&st, 0, sizeof(st));
        for (;;) {
                struct pollfd p[2] = {{.fd = STDIN_FILENO, .events = POLLIN}, {.fd = mxc_intr_fd(), .events = POLLIN}};
                int k = poll(p, 2, -1);
                if (k < 0 && errno != EINTR)
                        return -1;
                if ((k < 0 || p[1].revents) && mxc_intr_take()) {
                        in->interrupted = true;
                        errno = EINTR;
                        return -1;
                }
                if (k <= 0 || !p[0].revents)
                        continue;
                char ch;
                ssize_t got = read(STDIN_FILENO, &ch, 1);
                if (got < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (got <= 0)
                        return (int)got;
                size_t r = mbrtowc(wc, &ch, 1, &st);
                if (r == (size_t)-2)
                        continue;
                if (r == (size_t)-1) {
                        /* Not in the locale's encoding: take the byte as is. */
                        memset(&st, 0, sizeof(st));
                        *wc = (unsigned char)ch;
                }
                return 1;
        }
}

static int input_open(input *in) {
        in->tty = isatty(STDIN_FILENO);
        if (!in->tty)
                return 0;
        /* With stdout redirected, editing still belongs on the terminal. */
        in->echo = isatty(STDOUT_FILENO) ? stdout : stderr;
        in->el = el_init("mixtral", stdin, in->echo, stderr);
        in->hist = history_init();
        if (!in->el || !in->hist)
                return -ENOMEM;
        HistEvent ev;
        history(in->hist, &ev, H_SETSIZE, HISTORY_SIZE);
        history(in->hist, &ev, H_SETUNIQUE, 1);
        el_set(in->el, EL_CLIENTDATA, in);
        el_set(in->el, EL_EDITOR, "emacs");
        el_set(in->el, EL_PROMPT, prompt_text);
        el_set(in->el, EL_HIST, history, in->hist);
        el_set(in->el, EL_GETCFN, read_char);
        el_source(in->el, NULL); /* ~/.editrc, when there is one */
        in->history_path = history_path();
        if (in->history_path)
                history(in->hist, &ev, H_LOAD, in->history_path); /* none yet is fine */
        return 0;
}

static void input_close(input *in) {
        if (in->el)
                el_end(in->el);
        if (in->hist)
                history_end(in->hist);
        free(in->history_path);
        free(in->line);
}

/* The next line without its newline, NULL at the end of input or (with
 * in->interrupted) after Ctrl-C. */
static const char *input_line(input *in) {
        in->interrupted = false;
        if (in->tty) {
                int n;
                const char *s = el_gets(in->el, &n);
                if (!s || n <= 0)
                        return NULL;
                free(in->line);
                in->line = strdup(s);
                if (!in->line)
                        return NULL;
        } else {
                errno = 0;
                ssize_t n = getline(&in->line, &in->line_cap, stdin);
                if (n < 0) {
                        in->interrupted = errno == EINTR && mxc_intr_take();
                        return NULL;
                }
        }
        in->line[strcspn(in->line, "\r\n")] = '\0';
        return in->line;
}

static void input_remember(input *in, const char *line) {
        if (!in->tty)
                return;
        HistEvent ev;
        history(in->hist, &ev, H_ENTER, line);
        history_save(in);
}

/* --- the conversation ------------------------------------------------- */

static bool blank(const char *s) {
        return s[strspn(s, " \t")] == '\0';
}

/* A slash command: 1 to go on, 0 to leave, -errno. */
static int command(conversation *conv, const char *line, bool talk) {
        const char *arg = line + strcspn(line, " \t");
        size_t len = (size_t)(arg - line);
        arg += strspn(arg, " \t");
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

/* One question and its answer: the exit status of the generation. */
static int turn(mxc_conn *c, const mxc_opts *opts, conversation *conv, const char *text, bool talk) {
        int r = conv_push(conv, "user", text);
        if (r < 0)
                return mxc_conn_failure(r);
        mxc_opts o = *opts;
        o.gen.system = conv->system;
        mxc_out out = {.json = opts->json, .ids = opts->ids, .collect = true};
        int status = mxc_generate(c, &o, NULL, conv->msgs, conv->n, &out);
        if (status == MXC_EXIT_OK) {
                r = conv_push(conv, "assistant", out.text ? out.text : "");
                if (r < 0)
                        status = mxc_conn_failure(r);
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

int mxc_cmd_chat(const mxc_opts *opts) {
        _cleanup_(mxc_disconnect) mxc_conn c = MXC_CONN_INIT;
        int r = mxc_connect(&c, opts->socket);
        if (r < 0)
                return r == -EINTR ? MXC_EXIT_INTERRUPTED : MXC_EXIT_UNREACHABLE;
        _cleanup_(conv_free) conversation conv = {0};
        _cleanup_(input_close) input in = {0};
        if (set_system(&conv, opts->gen.system) < 0 || input_open(&in) < 0)
                return mxc_conn_failure(-ENOMEM);
        /* Confirmations are for a person at a terminal, not for a pipe. */
        bool talk = in.tty && !opts->json;
        if (talk)
                fprintf(in.echo, "Chatting with mixtrald; /help lists the commands, Ctrl-D leaves.\n");
        for (;;) {
                const char *line = input_line(&in);
                if (!line && in.interrupted) {
                        mxc_intr_rearm();
                        if (!in.tty)
                                return MXC_EXIT_INTERRUPTED;
                        fputs("^C\n", in.echo);
                        continue;
                }
                if (!line) {
                        if (in.tty)
                                fputc('\n', in.echo);
                        return MXC_EXIT_OK;
                }
                if (blank(line))
                        continue;
                input_remember(&in, line);
                if (line[0] == '/' && line[1] != '/') {
                        r = command(&conv, line, talk);
                        if (r < 0)
                                return mxc_conn_failure(r);
                        if (r == 0)
                                return MXC_EXIT_OK;
                        continue;
                }
                int status = turn(&c, opts, &conv, line[0] == '/' ? line + 1 : line, talk);
                switch (status) {
                case MXC_EXIT_OK:
                        break;
                case MXC_EXIT_INTERRUPTED:
                        /* That answer only: back to the prompt. */
                        mxc_intr_rearm();
                        break;
                case MXC_EXIT_CONNECTION:
                case MXC_EXIT_INTERNAL:
                        return status;
                default:
                        /* Reported already; a person may rephrase, a script
                         * gets the status. */
                        if (!in.tty)
                                return status;
                        break;
                }
        }
}
