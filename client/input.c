/* What a person types to mixtral chat, as whole messages. From a
 * terminal, lines come from libedit (editing, history, bracketed paste);
 * from anything else, plainly. Lines make messages by three rules, which
 * mixtral(1) and /help state for users:
 *
 *   - a typed line that starts with """ opens a block, and a typed line
 *     that ends with """ closes it: the lines between, as they are, are
 *     one message;
 *   - a typed line that ends with \ goes on on the next line (the \ is
 *     dropped);
 *   - a paste (on a terminal that brackets it) is taken as it is, never
 *     as commands or rules, and its newlines do not send: the message
 *     goes on until Enter is typed.
 *
 * End of input sends a message begun; Ctrl-C drops it. The paste is read
 * whole when its start mark comes, so that no part of it arrives while
 * libedit has the terminal in cooked mode, and is then handed to libedit
 * as if typed, its newlines ending lines that continue the message.
 * chat.c is the one caller. */
#include <errno.h>
#include <fcntl.h>
#include <histedit.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wchar.h>

#include "client.h"
#include "mx_common.h"

#define HISTORY_SIZE 1000
#define QUOTES "\"\"\""
#define PASTE_START "\033[200~"
#define PASTE_END "\033[201~"
#define MARK_LEN (sizeof(PASTE_START) - 1)

struct mxc_input {
        bool tty;
        EditLine *el;
        History *hist;
        FILE *echo;   /* where libedit draws: the terminal */
        int paste_fd; /* the terminal's output when it can bracket pastes, else -1 */
        char *history_path;
        bool history_warned;
        bool interrupted; /* the last read ended with Ctrl-C */
        bool failed;      /* ... or out of memory */
        bool more;        /* the message goes on: the prompt says so */
        /* Terminal bytes read while matching a paste mark that did not
         * match, given to libedit first: [n_ahead] from ahead_pos. */
        unsigned char ahead[2 * MARK_LEN];
        size_t n_ahead, ahead_pos;
        /* The paste being handed to libedit: [paste_cap] bytes, the
         * first paste_len of it, newlines as '\n', from paste_pos. */
        char *paste;
        size_t paste_len, paste_pos, paste_cap;
        bool paste_break; /* the line just read ended at a newline of a paste */
        char *line;       /* [line_cap]: the last line read, NUL-terminated */
        size_t line_cap;
        char *msg; /* [msg_cap]: the message being assembled, msg_len bytes and a NUL */
        size_t msg_len, msg_cap, msg_lines;
};

/* --- history ------------------------------------------------------------ */

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

static void history_save(mxc_input *in) {
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

static void remember(mxc_input *in, const char *line) {
        if (line[strspn(line, " \t")] == '\0')
                return;
        HistEvent ev;
        history(in->hist, &ev, H_ENTER, line);
        history_save(in);
}

/* --- the terminal's bytes ----------------------------------------------- */

/* One byte from the terminal, Ctrl-C watched: 1, 0 at its end, -1 with
 * errno (EINTR and in->interrupted after Ctrl-C). */
static int tty_byte(mxc_input *in, unsigned char *b) {
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
                ssize_t got = read(STDIN_FILENO, b, 1);
                if (got < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                return (int)got;
        }
}

/* The next byte typed: those read ahead first. */
static int typed_byte(mxc_input *in, unsigned char *b) {
        if (in->ahead_pos < in->n_ahead) {
                *b = in->ahead[in->ahead_pos++];
                return 1;
        }
        in->n_ahead = in->ahead_pos = 0;
        return tty_byte(in, b);
}

/* Puts b[0..n) back before the bytes still ahead. */
static void give_back(mxc_input *in, const unsigned char *b, size_t n) {
        size_t rest = in->n_ahead - in->ahead_pos;
        memmove(in->ahead + n, in->ahead + in->ahead_pos, rest);
        memcpy(in->ahead, b, n);
        in->ahead_pos = 0;
        in->n_ahead = n + rest;
}

/* After an ESC: 1 when the bytes that follow complete the paste's start
 * mark (they are consumed), 0 when not (they are given back). A lone ESC
 * waits for the next key, as libedit itself would. */
static int paste_starts(mxc_input *in) {
        unsigned char got[MARK_LEN];
        for (size_t n = 0; n + 1 < MARK_LEN; n++) {
                int r = typed_byte(in, &got[n]);
                if (r <= 0 || got[n] != (unsigned char)PASTE_START[n + 1]) {
                        give_back(in, got, r <= 0 ? n : n + 1);
                        return r < 0 ? -1 : 0;
                }
        }
        return 1;
}

/* Terminals send a pasted newline as CR, some as CR LF; other control
 * characters would be editing commands to libedit, so they go. */
static size_t paste_clean(char *s, size_t n) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = (unsigned char)s[i];
                if (ch == '\r' && i + 1 < n && s[i + 1] == '\n')
                        continue;
                if (ch == '\r')
                        ch = '\n';
                if ((ch < 0x20 && ch != '\n' && ch != '\t') || ch == 0x7f)
                        continue;
                s[k++] = (char)ch;
        }
        return k;
}

/* The paste after its start mark, whole, up to its end mark (or the end
 * of input). */
static int read_paste(mxc_input *in) {
        size_t n = 0;
        for (;;) {
                unsigned char b;
                int r = typed_byte(in, &b);
                if (r < 0)
                        return -1;
                if (r == 0)
                        break;
                if (mx_grow((void **)&in->paste, &in->paste_cap, n + 1, 1) < 0) {
                        in->failed = true;
                        errno = ENOMEM;
                        return -1;
                }
                in->paste[n++] = (char)b;
                if (n >= MARK_LEN && !memcmp(in->paste + n - MARK_LEN, PASTE_END, MARK_LEN)) {
                        n -= MARK_LEN;
                        break;
                }
        }
        in->paste_len = paste_clean(in->paste, n);
        in->paste_pos = 0;
        return 0;
}

/* The next byte for libedit: the paste being handed over, else what is
 * typed, with a paste read whole when its start mark comes. */
static int next_byte(mxc_input *in, unsigned char *b) {
        for (;;) {
                if (in->paste_pos < in->paste_len) {
                        *b = (unsigned char)in->paste[in->paste_pos++];
                        if (*b == '\n')
                                in->paste_break = true;
                        return 1;
                }
                int r = typed_byte(in, b);
                if (r <= 0 || *b != '\033')
                        return r;
                if ((r = paste_starts(in)) <= 0)
                        return r < 0 ? -1 : 1;
                if (read_paste(in) < 0)
                        return -1;
        }
}

/* libedit's read function: a character from next_byte(), so that Ctrl-C
 * ends el_gets() (which then returns NULL) instead of being lost in a
 * restarted read(). */
static int read_char(EditLine *el, wchar_t *wc) {
        mxc_input *in;
        el_get(el, EL_CLIENTDATA, &in);
        mbstate_t st;
        memset(&st, 0, sizeof(st));
        for (;;) {
                unsigned char b;
                int r = next_byte(in, &b);
                if (r <= 0)
                        return r;
                char ch = (char)b;
                size_t k = mbrtowc(wc, &ch, 1, &st);
                if (k == (size_t)-2)
                        continue;
                if (k == (size_t)-1) {
                        /* Not in the locale's encoding: take the byte as is. */
                        memset(&st, 0, sizeof(st));
                        *wc = b;
                }
                return 1;
        }
}

static char *prompt_text(EditLine *el) {
        mxc_input *in;
        el_get(el, EL_CLIENTDATA, &in);
        return (char *)(in->more ? "... " : ">>> ");
}

/* --- lines ---------------------------------------------------------------- */

int mxc_input_open(mxc_input **out) {
        mxc_input *in = calloc(1, sizeof(*in));
        if (!in)
                return -ENOMEM;
        *out = in;
        in->paste_fd = -1;
        in->tty = isatty(STDIN_FILENO);
        if (!in->tty)
                return 0;
        /* With stdout redirected, editing still belongs on the terminal. */
        in->echo = isatty(STDOUT_FILENO) ? stdout : stderr;
        if (isatty(fileno(in->echo)))
                in->paste_fd = fileno(in->echo);
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
        /* There is nothing to complete: a tab, typed or pasted, is text. */
        el_set(in->el, EL_BIND, "^I", "ed-insert", NULL);
        el_source(in->el, NULL); /* ~/.editrc, when there is one */
        in->history_path = history_path();
        if (in->history_path)
                history(in->hist, &ev, H_LOAD, in->history_path); /* none yet is fine */
        /* On for the whole chat, not only while a line is read: a paste
         * made while an answer streams is bracketed too. */
        if (in->paste_fd >= 0)
                mxc_intr_paste(in->paste_fd, true);
        return 0;
}

void mxc_input_free(mxc_input **p) {
        mxc_input *in = *p;
        if (!in)
                return;
        if (in->paste_fd >= 0) {
                fflush(in->echo);
                mxc_intr_paste(in->paste_fd, false);
        }
        if (in->el)
                el_end(in->el);
        if (in->hist)
                history_end(in->hist);
        free(in->history_path);
        free(in->paste);
        free(in->line);
        free(in->msg);
        free(in);
        *p = NULL;
}

FILE *mxc_input_terminal(const mxc_input *in) {
        return in->tty ? in->echo : NULL;
}

static const char *edited_line(mxc_input *in) {
        int n;
        const char *s = el_gets(in->el, &n);
        if (!s || n <= 0)
                return NULL;
        size_t len = strlen(s);
        if (mx_grow((void **)&in->line, &in->line_cap, len + 1, 1) < 0) {
                in->failed = true;
                return NULL;
        }
        memcpy(in->line, s, len + 1);
        return in->line;
}

/* The next line without its newline; NULL at the end of input, after
 * Ctrl-C (in->interrupted) or when out of memory (in->failed). */
static const char *input_line(mxc_input *in) {
        in->interrupted = in->failed = in->paste_break = false;
        if (in->tty) {
                if (!edited_line(in))
                        return NULL;
        } else {
                errno = 0;
                ssize_t n = getline(&in->line, &in->line_cap, stdin);
                if (n < 0) {
                        in->interrupted = errno == EINTR && mxc_intr_take();
                        in->failed = errno == ENOMEM;
                        return NULL;
                }
        }
        in->line[strcspn(in->line, "\r\n")] = '\0';
        if (in->tty && !in->paste_break)
                remember(in, in->line);
        return in->line;
}

/* --- messages ------------------------------------------------------------- */

static bool starts_with_quotes(const char *s, size_t n) {
        return n >= 3 && !memcmp(s, QUOTES, 3);
}

static bool ends_with_quotes(const char *s, size_t n) {
        return n >= 3 && !memcmp(s + n - 3, QUOTES, 3);
}

/* Appends s[0..n) as the message's next line. */
static int add_line(mxc_input *in, const char *s, size_t n) {
        size_t sep = in->msg_lines ? 1 : 0;
        if (mx_grow((void **)&in->msg, &in->msg_cap, in->msg_len + sep + n + 1, 1) < 0)
                return -ENOMEM;
        if (sep)
                in->msg[in->msg_len++] = '\n';
        memcpy(in->msg + in->msg_len, s, n);
        in->msg_len += n;
        in->msg[in->msg_len] = '\0';
        in->msg_lines++;
        return 0;
}

/* What the line means to the message: 1 when it ends it, 0 when the
 * message goes on, -ENOMEM. *block and *verbatim carry the message's
 * state from line to line. */
static int take_line(mxc_input *in, const char *line, bool *block, bool *verbatim) {
        size_t n = strlen(line);
        bool typed = !in->paste_break, first = !in->more;
        in->more = true;
        if (!typed)
                *verbatim = true;
        if (first && typed && starts_with_quotes(line, n)) {
                *block = *verbatim = true;
                line += 3;
                n -= 3;
                /* """ alone opens; """text""" is a block of one line. */
                if (n == 0)
                        return 0;
        }
        if (*block) {
                bool closes = typed && ends_with_quotes(line, n);
                size_t keep = closes ? n - 3 : n;
                if ((keep || !closes) && add_line(in, line, keep) < 0)
                        return -ENOMEM;
                return closes;
        }
        if (!typed)
                return add_line(in, line, n);
        if (n && line[n - 1] == '\\')
                return add_line(in, line, n - 1);
        /* The Enter after a paste or a \ ends the message, not a line. */
        if ((n || !in->msg_lines) && add_line(in, line, n) < 0)
                return -ENOMEM;
        return 1;
}

int mxc_input_message(mxc_input *in, const char **text, bool *plain) {
        in->msg_len = in->msg_lines = 0;
        in->more = false;
        bool block = false, verbatim = false;
        for (;;) {
                const char *line = input_line(in);
                if (!line) {
                        bool begun = in->more;
                        in->more = false;
                        in->paste_len = in->paste_pos = in->n_ahead = in->ahead_pos = 0;
                        if (in->interrupted)
                                return -EINTR;
                        if (in->failed)
                                return -ENOMEM;
                        if (!begun)
                                return 0;
                        break;
                }
                int r = take_line(in, line, &block, &verbatim);
                if (r < 0)
                        return r;
                if (r > 0)
                        break;
        }
        in->more = false;
        *text = in->msg ? in->msg : "";
        *plain = !verbatim;
        return 1;
}
