/* Logging and the clock. Structured journal entries when stderr is the
 * journal (systemd sets JOURNAL_STREAM to that stream's device:inode);
 * otherwise readable lines on stderr, each with the local time (the
 * journal has its own). md_now is the daemon's one monotonic clock. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <systemd/sd-journal.h>

#include "mixtrald.h"

static bool to_journal;

void md_log_init(void) {
        const char *e = getenv("JOURNAL_STREAM");
        struct stat st;
        unsigned long long dev, ino;
        to_journal = e && sscanf(e, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
                     st.st_dev == dev && st.st_ino == ino;
}

bool md_log_to_journal(void) {
        return to_journal;
}

double md_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

uint64_t md_wall_now(void) {
        return (uint64_t)time(NULL);
}

static void to_stderr(int priority, const char *msg) {
        static const char *const level[] = {"emergency", "alert", "critical", "error", "warning",
                                            "notice",    "info",  "debug"};
        struct timespec ts;
        struct tm tm;
        char when[32];
        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        size_t n = strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
        snprintf(when + n, sizeof(when) - n, ".%03ld", ts.tv_nsec / 1000000);
        if (priority <= LOG_WARNING)
                fprintf(stderr, "%s mixtrald: %s: %s\n", when, level[priority & 7], msg);
        else
                fprintf(stderr, "%s mixtrald: %s\n", when, msg);
}

void md_log(int priority, const char *fmt, ...) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (to_journal)
                sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", priority, "SYSLOG_IDENTIFIER=mixtrald", NULL);
        else
                to_stderr(priority, msg);
}

void md_log_request(int priority, const md_log_fields *f, const char *fmt, ...) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (!to_journal) {
                char line[1200];
                snprintf(line, sizeof(line), "request %" PRIu64 " (uid %u): %s", f->request_id, f->uid, msg);
                to_stderr(priority, line);
                return;
        }
        sd_journal_send("MESSAGE=request %" PRIu64 " (uid %u): %s", f->request_id, f->uid, msg,
                        "PRIORITY=%d", priority, "SYSLOG_IDENTIFIER=mixtrald",
                        "MIXTRALD_REQUEST_ID=%" PRIu64, f->request_id, "MIXTRALD_UID=%u", f->uid,
                        "MIXTRALD_PROMPT_TOKENS=%u", f->prompt_tokens,
                        "MIXTRALD_COMPLETION_TOKENS=%u", f->completion_tokens,
                        "MIXTRALD_TTFT_S=%.4f", f->ttft_s, "MIXTRALD_TOKENS_PER_S=%.2f", f->tokens_per_s,
                        "MIXTRALD_TOTAL_S=%.4f", f->total_s, NULL);
}
