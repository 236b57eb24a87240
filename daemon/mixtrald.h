/* mixtrald's parts: the configuration, usage accounting and quotas, the
 * request decoder, connections, the engine's scheduler, and the service's
 * lifecycle. Private to the daemon (and to its tests and fuzz target). */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "mixtral.h"
#include "mxproto.h"

/* ---- configuration (config.c) ---------------------------------------------- */

/* Per-user limits. 0 means "no limit" for each of them; max_context 0 is the
 * model's context length. */
typedef struct md_limits {
        uint64_t tokens_per_hour, tokens_per_day;
        uint32_t max_concurrent, max_queued, max_context, max_tokens;
} md_limits;

/* Which md_limits fields a section sets (bit per field, in order). */
enum { MD_LIMIT_FIELDS = 6 };

typedef struct md_quota_section {
        char *name;    /* user or group name */
        bool is_group;
        md_limits limits;
        unsigned set;  /* bit i: field i given */
} md_quota_section;

typedef struct md_config {
        char *model, *device, *socket, *state_directory, *admin_group;
        char *bus;                    /* auto (NULL), system, session, none */
        char *expert_memory;          /* auto (NULL), min, bytes or NN%: see mx_expert_budget_parse */
        char *memory_pressure;        /* auto (NULL: /proc/pressure/memory), off, or a file like it */
        char *host_cache;             /* auto (NULL), min, bytes or NN%: the GPU's host cache of experts */
        unsigned socket_mode;
        uint32_t max_frame_bytes, threads;
        uint32_t max_batch;           /* sequences advanced together */
        uint32_t max_queue;           /* waiting requests, all users */
        uint32_t max_connections_per_uid;
        uint32_t max_output_bytes;    /* unsent bytes per connection */
        uint32_t prefill_chunk;       /* prompt tokens per request per step */
        double drain_seconds;         /* SIGTERM: how long running requests may finish */
        md_limits quota;              /* [quota]: everyone's defaults */
        md_quota_section *sections;
        size_t n_sections;
} md_config;

void md_config_defaults(md_config *c);
/* Reads an INI file over the defaults: errors name the file, line and key.
 * A missing file is an error only when required. */
int md_config_load(md_config *c, const char *path, bool required, mx_error *err);
void md_config_free(md_config *c);
/* Parses one [daemon] key=value (also used for command-line overrides). */
int md_config_set_daemon(md_config *c, const char *key, const char *value, mx_error *err);

/* The limits for a peer: a [user:NAME] section's keys first, then the most
 * generous of its groups' sections, then [quota]. *exempt for root and
 * members of admin_group. */
void md_config_limits(const md_config *c, uid_t uid, gid_t gid, md_limits *out, bool *exempt);

/* ---- usage and quotas (usage.c, quota.c) ---------------------------------- */

/* Tokens a uid used in the current clock hour and UTC day. */
typedef struct md_usage_entry {
        uint32_t uid;
        uint64_t hour_start, hour_used;
        uint64_t day_start, day_used;
} md_usage_entry;

typedef struct md_usage {
        md_usage_entry *v;
        size_t n, cap;
        char *path; /* STATE/usage */
} md_usage;

/* Reads STATE/usage (created on first save); a corrupt file is an error,
 * never silently reset. */
int md_usage_open(md_usage *u, const char *state_dir, mx_error *err);
void md_usage_free(md_usage *u);
/* The uid's entry with windows rolled to now (NULL: out of memory). */
md_usage_entry *md_usage_get(md_usage *u, uint32_t uid, uint64_t now);
int md_usage_charge(md_usage *u, uint32_t uid, uint64_t tokens, uint64_t now);
/* Temp file, fsync, rename, fsync of the directory. */
int md_usage_save(const md_usage *u, mx_error *err);

/* What a user has in flight, for admission. */
typedef struct md_inflight {
        uint32_t running, queued;
        uint64_t reserved; /* tokens promised to live requests */
} md_inflight;

typedef struct md_admission {
        int code;               /* MIXTRALD__V1__ERROR_CODE__*, 0 when admitted */
        uint64_t retry_at;      /* unix seconds, for QUOTA_EXCEEDED */
        uint32_t max_tokens;    /* granted completion tokens */
        uint64_t reserve;       /* tokens to hold for the request */
        char msg[256];
} md_admission;

/* Decides whether a request of prompt_tokens (asking for max_tokens, 0 =
 * as many as allowed) may start, within context tokens of context. */
void md_quota_admit(const md_limits *l, bool exempt, const md_usage_entry *e, const md_inflight *f,
                    uint32_t prompt_tokens, uint32_t max_tokens, uint32_t context, uint64_t now,
                    md_admission *out);
/* When enough budget returns for `need` tokens: the next hour or day. */
uint64_t md_quota_retry_at(const md_limits *l, const md_usage_entry *e, uint64_t need);

/* ---- requests (protocol.c) ------------------------------------------------- */

/* A validated generate request, still text: tokenizing needs the model. */
typedef struct md_gen_params {
        const char *prompt;     /* or messages */
        mx_message *messages;
        size_t n_messages;
        const char *system;
        bool raw, want_ids, ignore_eos;
        mx_sampling sampling;
        uint32_t max_tokens;    /* 0: as many as allowed */
        const char *const *stop;
        size_t n_stop;
} md_gen_params;

/* Unpacks a request frame's body; NULL when it is not a Request. */
Mixtrald__V1__Request *md_request_unpack(const uint8_t *body, size_t len);
void md_request_free(Mixtrald__V1__Request *r);
/* Checks every field of a generate request (ranges, NaN, UTF-8, roles,
 * sizes) and fills p, whose strings point into g. The seed, when absent,
 * is drawn at random. */
int md_gen_params_from(const Mixtrald__V1__Generate *g, md_gen_params *p, mx_error *err);
void md_gen_params_free(md_gen_params *p);
/* The prompt ids (BOS first) of validated parameters. */
int md_gen_params_ids(const md_gen_params *p, const mx_tokenizer *tok, mx_ids *ids, mx_error *err);

/* ---- logging (log.c) ----------------------------------------------------------- */

/* To the journal with structured fields when stderr is connected to it
 * (JOURNAL_STREAM), otherwise one readable line on stderr. */
void md_log_init(void);
void md_log(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A line about one request, with MIXTRALD_REQUEST_ID, MIXTRALD_UID and the
 * given token counts and timings as journal fields. */
typedef struct md_log_fields {
        uint64_t request_id;
        uint32_t uid;
        uint32_t prompt_tokens, completion_tokens;
        double ttft_s, tokens_per_s, total_s;
} md_log_fields;
void md_log_request(int priority, const md_log_fields *f, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* ---- the engine's scheduler (scheduler.c) -------------------------------- */

typedef enum md_state {
        MD_QUEUED,
        MD_PREFILL,
        MD_DECODE,
        MD_DONE,
} md_state;

const char *md_state_name(md_state s);

typedef struct md_conn md_conn;
typedef struct md_sched md_sched;

/* One generate request. The main thread creates it and frees it after it
 * has handled its end; the engine thread owns gen. Fields marked "locked"
 * are shared and guarded by the scheduler's mutex. */
typedef struct md_request {
        uint64_t id, tag;
        uint32_t uid;
        md_conn *conn;             /* main thread: a socket client, NULL once gone */
        struct md_bus_call *bus;   /* main thread: or a D-Bus caller (dbus.c) */
        struct md_request *conn_next;
        mx_ids prompt;
        mx_gen_opts opts;
        char **stop;
        bool want_ids;
        uint32_t max_concurrent;   /* the user's limit, for the scheduler */
        uint64_t reserved;         /* quota tokens held */
        double t_submit;
        mx_gen *gen;               /* engine thread */
        /* locked */
        md_state state;
        bool cancel, started, dirty;
        mx_buf out_text;
        mx_ids out_ids;
        mx_finish finish;
        int error_code;            /* MIXTRALD__V1__ERROR_CODE__* when it failed */
        char error_msg[256];
        uint32_t completion_tokens;
        double t_start, t_first, t_end;
        struct md_request *sched_next, *dirty_next;
        /* main thread: output taken from the engine, a snapshot of the rest */
        mx_buf ship_text;
        mx_ids ship_ids;
        struct {
                md_state state;
                bool started;
                mx_finish finish;
                int error_code;
                uint32_t completion_tokens;
                double t_start, t_first, t_end;
        } seen;
} md_request;

void md_request_destroy(md_request *r);

typedef struct md_sched_opts {
        uint32_t max_batch, prefill_chunk;
        uint64_t expert_memory; /* streamed experts' budget (0: all mapped), applied between steps */
        uint64_t host_cache;    /* a GPU's host cache of experts (0: as opened), the same way */
} md_sched_opts;

/* Starts the engine thread; `notify` is written (an eventfd) whenever a
 * request has new output or has ended. */
int md_sched_start(md_sched **out, mx_engine *e, const mx_tokenizer *tok, const md_sched_opts *o,
                   int notify_fd, mx_error *err);
/* Stops the thread: requests still there end with `code` and `msg`. */
void md_sched_stop(md_sched *s, int code, const char *msg);
void md_sched_set_opts(md_sched *s, const md_sched_opts *o);
void md_sched_submit(md_sched *s, md_request *r);
void md_sched_cancel(md_sched *s, md_request *r);
/* Lets the engine thread look at flags set under the lock. */
void md_sched_wake(md_sched *s);
/* Ends every request with code and msg (queued ones at once, running ones
 * at the next step). */
void md_sched_abort_all(md_sched *s, int code, const char *msg);
/* Requests with news since the last call (linked by dirty_next), with the
 * lock held: the caller moves their output and calls md_sched_unlock. */
md_request *md_sched_take_dirty(md_sched *s);
void md_sched_lock(md_sched *s);
void md_sched_unlock(md_sched *s);
void md_sched_free(md_sched *s);
/* Under the lock: the queue (by sched_next). */
md_request *md_sched_queue_locked(md_sched *s);
void md_sched_counts_locked(md_sched *s, uint32_t *queued, uint32_t *running);
/* Under the lock: expert streaming's counters as of the last step. */
void md_sched_expert_stats_locked(md_sched *s, mx_expert_stats *out);

/* ---- the service (server.c, conn.c, service.c) --------------------------- */

typedef struct sd_event sd_event;
typedef struct sd_event_source sd_event_source;

typedef struct md_server {
        sd_event *event;
        md_config cfg;
        const char *config_path;
        bool config_required;
        const char *model_dir;
        mx_model *model;
        mx_tokenizer *tok;
        mx_engine *engine;
        md_sched *sched;
        md_usage usage;
        uint32_t context_length;
        uint64_t kv_bytes_per_token;
        int listen_fd;
        sd_event_source *listen_src;
        int notify_fd;
        sd_event_source *notify_src;
        md_conn *conns;
        uint32_t n_conns;
        md_request **live;           /* every request not yet ended, by the main thread */
        size_t n_live, cap_live;
        struct sd_bus *bus;          /* D-Bus, when on one */
        md_request **ship;           /* scratch for md_server_on_engine */
        size_t cap_ship;
        uint64_t next_id, requests_total, tokens_total;
        double t_start;
        bool draining;
        sd_event_source *drain_timer;
        char *created_socket;        /* unlinked at exit */
        const char *overrides[16][2];/* command-line [daemon] keys, over the file's */
        size_t n_overrides;
        bool user_instance;          /* --user */
        /* Expert streaming: the configured budget, and the one in force
         * (smaller while the host is short of memory; pressure.c). On a
         * GPU the host's memory is the host cache's: its size as opened,
         * and in force. */
        uint64_t expert_budget, expert_now;
        uint64_t host_cache_budget, host_cache_now;
        sd_event_source *pressure_timer;
        uint32_t calm_seconds;
} md_server;

/* The status message's expert-streaming part (server.c). */
void md_fill_expert_stats(const mx_expert_stats *xs, uint64_t configured, Mixtrald__V1__ExpertStreaming *ex);

/* ---- memory pressure (pressure.c) ------------------------------------------ */

/* Watches memory_pressure (a /proc/pressure/memory-like file) once a second
 * while experts stream: the budget halves (down to the minimum) when the
 * last 10 s saw memory stalls above 10%, and doubles back toward the
 * configured one after 10 calm seconds. */
int md_pressure_start(md_server *srv, mx_error *err);
/* The new budget for a reading of "some avg10" (percent); pure policy. */
uint64_t md_pressure_next(uint64_t now, uint64_t configured, double some_avg10, uint32_t *calm_seconds);
/* Sets the budget in force, for the engine thread to apply. */
void md_server_set_expert_budget(md_server *srv, uint64_t budget);
/* The options the engine thread follows, from srv's. */
md_sched_opts md_server_sched_opts(const md_server *srv);

struct md_conn {
        md_server *srv;
        int fd;
        sd_event_source *src, *defer;
        uint32_t uid, gid;
        pid_t pid;
        uint8_t *in;
        size_t in_n, in_cap;
        uint8_t *out;
        size_t out_n, out_off, out_cap;
        bool closing;                /* flush what is queued, then close */
        bool dead;                   /* being freed */
        md_request *reqs;            /* by conn_next */
        md_conn *next, *prev;
};

/* conn.c */
int md_conn_new(md_server *srv, int fd);
/* Drops the connection: its requests are cancelled, and it is freed once
 * the event loop is back at the top. */
void md_conn_kill(md_conn *c, const char *why);
void md_conn_free(md_conn *c);
/* Queues one response; a connection whose unsent output passes the limit
 * is dropped (it does not read). */
void md_conn_send(md_conn *c, const Mixtrald__V1__Response *resp);
void md_conn_send_error(md_conn *c, uint64_t tag, uint64_t request_id, int code, const char *msg);

/* admission.c: shared by the socket and D-Bus */
typedef struct md_refusal {
        int code;                /* MIXTRALD__V1__ERROR_CODE__* */
        char msg[sizeof(((mx_error *)0)->msg)];
        uint64_t retry_at;       /* QUOTA_EXCEEDED: unix seconds */
        uint32_t retry_after_ms; /* BUSY */
} md_refusal;

/* A validated, tokenized request within the user's quotas, not yet
 * submitted (the caller links it to its client first), or NULL and why. */
md_request *md_admit(md_server *srv, uint32_t uid, uint32_t gid, uint64_t tag, const Mixtrald__V1__Generate *g,
                     uint32_t *position, md_refusal *ref);
void md_submit(md_server *srv, md_request *r);
/* uid's live request id (any user's for root), or NULL. */
md_request *md_find_request(md_server *srv, uint32_t uid, uint64_t id);
int md_fill_quota(md_server *srv, uint32_t uid, uint32_t gid, Mixtrald__V1__Quota *q, Mixtrald__V1__Limits *lim);
/* At a request's end: its usage charged and saved. */
void md_charge(md_server *srv, const md_request *r);
void md_live_remove(md_server *srv, md_request *r);
uint64_t md_wall_now(void);

/* server.c: the requests */
void md_server_generate(md_conn *c, uint64_t tag, const Mixtrald__V1__Generate *g);
void md_server_cancel(md_conn *c, uint64_t tag, const Mixtrald__V1__Cancel *m);
void md_server_status(md_conn *c, uint64_t tag);
void md_server_quota(md_conn *c, uint64_t tag);
/* Ships output and ends of requests the engine has news of. */
int md_server_on_engine(sd_event_source *s, int fd, uint32_t revents, void *userdata);
void md_server_detach(md_server *srv, md_conn *c);
double md_now(void);

/* service.c: socket, signals, drain */
int md_service_listen(md_server *srv, const char *path, mx_error *err);
int md_service_signals(md_server *srv);
int md_service_after_engine(sd_event_source *s, int fd, uint32_t revents, void *userdata);
int md_service_exit_now(sd_event_source *s, uint64_t usec, void *userdata);
/* main.c: defaults, then the file, then the command line */
int md_service_load_config(md_server *srv, md_config *out, mx_error *err);
/* server.c */
void md_fill_usage(const md_request *r, Mixtrald__V1__Usage *u);

/* dbus.c: org.mixtrald.Mixtral1 on the system or session bus */
/* Connects as cfg.bus says: "none", "system", "session", or "auto" (the
 * system bus for root, the session bus for a user instance; quietly none
 * when that bus is not there). */
int md_dbus_start(md_server *srv, mx_error *err);
void md_dbus_stop(md_server *srv);
/* A request's news, to its D-Bus caller only. */
void md_dbus_chunk(md_server *srv, md_request *r);
void md_dbus_end(md_server *srv, md_request *r, const Mixtrald__V1__Usage *u);
void md_dbus_forget(md_request *r);
/* The State property changed (draining). */
void md_dbus_state_changed(md_server *srv);
