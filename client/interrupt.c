/* Ctrl-C. The handler only counts and writes a byte to a pipe, so the
 * main loop sees an interrupt as one more readable descriptor in its
 * poll() and does the work (a cancel request) itself. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "client.h"

static int pipe_fds[2] = {-1, -1};
static volatile sig_atomic_t pending;  /* Ctrl-Cs not yet re-armed */
static volatile sig_atomic_t mid_line;

static void on_sigint(int sig) {
        int saved = errno;
        /* The user asked twice: leave now rather than wait for the daemon.
         * _exit() and write() are async-signal-safe. */
        if (pending) {
                if (mid_line)
                        (void)!write(STDOUT_FILENO, "\n", 1);
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
