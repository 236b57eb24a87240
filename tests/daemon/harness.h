/* Running the real mixtrald for tests and benchmarks: a private directory
 * with its config, state and socket, a NOTIFY_SOCKET to watch its sd_notify
 * messages, and a blocking protocol client. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "mxproto.h"

typedef struct dh_daemon {
        char dir[256];          /* private directory, removed by dh_cleanup */
        char socket[300], config[300], state[300], log[300], notify_path[300];
        int notify_fd;          /* datagrams the daemon sends to NOTIFY_SOCKET */
        pid_t pid;
        const char *binary, *model;
        const char *const *args;/* more daemon arguments (default: --bus none) */
        int nofile;             /* RLIMIT_NOFILE for the daemon (0: as inherited) */
        const char *config_arg; /* --config's value (default: the file dh_init wrote) */
        bool own_dirs;          /* no --socket, --config, --state-directory: the daemon's defaults */
        char seen[16384];       /* every notify message so far, in order */
        size_t n_seen;
} dh_daemon;

/* Makes the directory and writes config_text as the config file. */
int dh_init(dh_daemon *d, const char *binary, const char *model, const char *config_text);
/* Starts the daemon (extra_env: NULL-terminated "K=V" list or NULL) and
 * waits for READY=1; -ETIMEDOUT after 60 s. dh_launch does not wait. */
int dh_start(dh_daemon *d, const char *const *extra_env);
int dh_launch(dh_daemon *d, const char *const *extra_env);
/* Waits for a notify message containing needle (timeout in ms). */
bool dh_notify_wait(dh_daemon *d, const char *needle, int timeout_ms);
/* SIGTERM and wait: the exit status (or 128 + signal). */
int dh_stop(dh_daemon *d);
void dh_kill9(dh_daemon *d);
void dh_cleanup(dh_daemon *d);
/* The last lines of the daemon's log, on stderr (after a failure). */
void dh_show_log(const dh_daemon *d, int lines);
/* Whether the file (a daemon's log) holds the text. */
bool dh_file_has(const char *path, const char *needle);
/* Resident memory of the daemon, in KiB. */
long dh_rss_kib(const dh_daemon *d);
bool dh_alive(const dh_daemon *d);

int dh_connect(const dh_daemon *d);

/* A private copy of a model directory, for tests that damage it: the new
 * directory in dir (a mkdtemp template), the path of its second shard in
 * shard, and of an untouched copy of that shard (to put back) in fresh. */
int dh_copy_model(const char *model, char *dir, char shard[300], char fresh[320]);

/* For tests of several users (root only): drops this process to uid:gid
 * with no supplementary groups; and runs fn(arg) so in a child, returning
 * its exit status (fn's return value; 99 when the uid could not be taken). */
int dh_drop_to(uid_t uid, gid_t gid);
int dh_as_user(uid_t uid, gid_t gid, int (*fn)(void *), void *arg);

/* A generate request: everything optional except the prompt. */
typedef struct dh_gen {
        const char *prompt;
        const char *system;
        bool raw, want_ids, ignore_eos;
        double temperature;
        bool has_temperature;
        uint64_t seed;
        uint32_t max_tokens;
        const char *stop;
} dh_gen;

int dh_send_generate(int fd, uint64_t tag, const dh_gen *g);
int dh_send_cancel(int fd, uint64_t tag, uint64_t request_id);
int dh_send_simple(int fd, uint64_t tag, int kind); /* status or quota */

/* The outcome of one generate request, as its responses came. */
typedef struct dh_result {
        uint64_t request_id;
        char *text;
        size_t text_len;
        int32_t *ids;
        size_t n_ids;
        char reason[32];        /* "eos", "length", ... when finished */
        int error;              /* error code, 0 when finished */
        char message[256];
        uint64_t retry_at;
        uint32_t prompt_tokens, completion_tokens, cached_prompt_tokens;
        double ttft_s;
        bool accepted;
} dh_result;

void dh_result_free(dh_result *r);

/* Reads one response (NULL on EOF or error; *rc says which). */
Mixtrald__V1__Response *dh_recv(int fd, int timeout_ms, int *rc);
/* Reads responses until the request with this tag finishes or fails;
 * responses for other tags go to others[tag] when given (tags < n). */
int dh_collect(int fd, uint64_t tag, dh_result *out, int timeout_ms);
/* Collects n requests multiplexed on one connection (tags 1..n). */
int dh_collect_many(int fd, dh_result *out, size_t n, int timeout_ms);
/* One request on a fresh connection, start to end. */
int dh_run(const dh_daemon *d, const dh_gen *g, dh_result *out);

/* For benchmarks: the monotonic clock in seconds; qsort's order of
 * doubles; the i-th of a set of requests that all decode exactly `tokens`
 * (different raw prompts, greedy, EOS ignored). */
double dh_now_s(void);
int dh_cmp_double(const void *a, const void *b);
dh_gen dh_bench_request(int i, uint32_t tokens);

/* Status and quota replies (free with mixtrald__v1__response__free_unpacked). */
Mixtrald__V1__Response *dh_status(const dh_daemon *d);
Mixtrald__V1__Response *dh_quota(const dh_daemon *d);
