/* Ctrl-C. The handler only counts and writes a byte to a pipe, so the
 * main loop sees an interrupt as one more readable descriptor in its
 * poll() and does the work (a cancel request) itself.
 *
 * Also the terminal's bracketed paste mode, on while a chat reads from a
 * terminal: the terminal belongs to the shell again whenever this process
 * stops (Ctrl-Z) or ends, so the mode is switched off then, from the
 * signal handlers too, and on again when the process continues. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "client.h"

#define PASTE_ON "\033[?2004h"
#define PASTE_OFF "\033[?2004l"

static int pipe_fds[2] = {-1, -1};
static volatile sig_atomic_t pending;  /* Ctrl-Cs not yet re-armed */
static volatile sig_atomic_t mid_line;
static volatile sig_atomic_t paste_fd = -1; /* the terminal while bracketed paste is on */

static void paste_write(int fd, bool on) {
        if (on)
                (void)!write(fd, PASTE_ON, sizeof(PASTE_ON) - 1);
        else
                (void)!write(fd, PASTE_OFF, sizeof(PASTE_OFF) - 1);
}

static void on_sigint(int sig) {
        int saved = errno;
        /* The user asked twice: leave now rather than wait for the daemon.
         * _exit() and write() are async-signal-safe. */
        if (pending) {
                if (mid_line)
                        (void)!write(STDOUT_FILENO, "\n", 1);
                if (paste_fd >= 0)
                        paste_write(paste_fd, false);
                _exit(MXC_EXIT_INTERRUPTED);
        }
        pending = 1;
        (void)!write(pipe_fds[1], "", 1);
        errno = saved;
}

int mxc_intr_setup(void) {
        if (pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) < 0)
                return -errno;
        struct sigaction sa = {.sa_handler = on_sigint};
        sigemptyset(&sa.sa_mask);
        /* No SA_RESTART: a blocking call returns EINTR and the caller
         * looks at the pipe. */
        if (sigaction(SIGINT, &sa, NULL) < 0)
                return -errno;
        /* A daemon that goes away mid-write is an EPIPE to report, and so
         * is a reader of our output that goes away. */
        struct sigaction ign = {.sa_handler = SIG_IGN};
        sigemptyset(&ign.sa_mask);
        if (sigaction(SIGPIPE, &ign, NULL) < 0)
                return -errno;
        return 0;
}

/* Ctrl-Z, and the signals that end the process: the mode off, then
 * what the signal does unhandled (raised again with the default action
 * and the signal unblocked); only a stop comes back here, to switch the
 * mode on again once continued. */
static void on_leave(int sig) {
        int saved = errno;
        int fd = paste_fd;
        if (fd >= 0)
                paste_write(fd, false);
        struct sigaction dfl = {.sa_handler = SIG_DFL}, ours = {.sa_handler = on_leave, .sa_flags = SA_RESTART};
        sigemptyset(&dfl.sa_mask);
        sigemptyset(&ours.sa_mask);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, sig);
        sigaction(sig, &dfl, NULL);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
        raise(sig);
        sigaction(sig, &ours, NULL);
        if (fd >= 0)
                paste_write(fd, true);
        errno = saved;
}

/* Only signals left at their default: a shell without job control has
 * Ctrl-Z ignored, nohup SIGHUP. Unlike Ctrl-C they ask nothing of the
 * main loop, so reads and writes under way are restarted. */
static void handle_leaving(void) {
        static bool done;
        static const int sigs[] = {SIGTSTP, SIGTERM, SIGHUP};
        if (done)
                return;
        done = true;
        for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
                struct sigaction old, sa = {.sa_handler = on_leave, .sa_flags = SA_RESTART};
                sigemptyset(&sa.sa_mask);
                if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_DFL)
                        (void)sigaction(sigs[i], &sa, NULL);
        }
}

void mxc_intr_paste(int tty_fd, bool on) {
        handle_leaving();
        /* Off in the handlers' eyes before the terminal hears it, so that
         * a signal in between cannot switch it on again. */
        if (!on)
                paste_fd = -1;
        paste_write(tty_fd, on);
        if (on)
                paste_fd = tty_fd;
}

int mxc_intr_sleep(int ms) {
        struct pollfd p = {.fd = pipe_fds[0], .events = POLLIN};
        int k = poll(&p, 1, ms);
        if (k != 0 && mxc_intr_take())
                return -EINTR;
        return 0;
}

int mxc_intr_fd(void) {
        return pipe_fds[0];
}

bool mxc_intr_take(void) {
        char buf[64];
        bool got = false;
        for (;;) {
                ssize_t k = read(pipe_fds[0], buf, sizeof(buf));
                if (k > 0) {
                        got = true;
                        continue;
                }
                if (k < 0 && errno == EINTR)
                        continue;
                return got;
        }
}

void mxc_intr_rearm(void) {
        (void)mxc_intr_take();
        pending = 0;
}

void mxc_intr_mid_line(bool mid) {
        mid_line = mid;
}
