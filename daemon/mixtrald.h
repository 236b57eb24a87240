/* mixtrald's parts, private to the daemon (and its tests and fuzz
 * targets). How they fit:
 *
 *   transports   conn.c + proto_api.c (protobuf socket), dbus.c
 *        |  decode their wire format into md_gen_params, implement md_sink_ops
 *   core.c       admission (checks, tokenizing on tokenize.c's thread,
 *        |       quotas), the live requests, cancel, output to the sinks
 *   scheduler.c  the engine thread: continuous batching
 *
 * with config.c, users.c (who a uid is), usage.c and quota.c (accounting),
 * status.c (what status replies say), service.c (socket, signals, drain,
 * reload), pressure.c, log.c and main.c around them. Each file's top
 * comment states its contract. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
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

/* prefix_cache_share: a user's requests reuse only that user's cached
 * prefixes (a hit is visible in timing, so it would tell one user what
 * another asked), everyone's, or none. */
enum { MD_SHARE_USER, MD_SHARE_ALL, MD_SHARE_OFF };

typedef struct md_config {
        char *model, *device, *socket, *state_directory, *admin_group;
        char *bus;                    /* auto (NULL), system, session, none */
        char *expert_memory;          /* auto (NULL), min, bytes or NN%: see mx_expert_budget_parse */
        char *memory_pressure;        /* auto (NULL: /proc/pressure/memory), off, or a file like it */
        char *host_cache;             /* auto (NULL), min, bytes or NN%: the GPU's host cache of experts */
        mx_ftype quantize;            /* the weights' types, made as the model loads (none: as stored) */
        char *http_socket;            /* the HTTP API's Unix socket, or "none" (main.c sets the default) */
        char *http_listen;            /* its TCP listener, ADDRESS:PORT on loopback; NULL: none */
        char *kv_type;                /* bf16 (NULL) or f32 */
        char *kv_memory;              /* auto (NULL), bytes or NN% of the free memory: see mx_kv_memory_parse */
        int prefix_cache_share;       /* MD_SHARE_*: whose cached prompt prefixes a request may reuse */
        unsigned socket_mode;         /* as given; see socket_mode_set */
        bool socket_mode_set;         /* else 0666 for the system daemon, 0600 for a user's */
        uint32_t max_frame_bytes, threads;
        uint32_t max_batch;           /* sequences advanced together */
        uint32_t max_queue;           /* admitted requests waiting beyond the batch, all users */
        uint32_t max_connections_per_uid;
        uint32_t max_output_bytes;    /* unsent bytes per connection */
        uint32_t prefill_chunk;       /* prompt tokens per request per step */
        double drain_seconds;         /* SIGTERM: how long running requests may finish */
        md_limits quota;              /* [quota]: everyone's defaults */
        md_quota_section *sections;   /* [n_sections] */
        size_t n_sections;
} md_config;

void md_config_defaults(md_config *c);
/* Reads an INI file over the defaults: errors name the file, line and key.
 * A missing file is an error only when required; anything but a regular
 * file (a FIFO, a device) is refused without blocking on it. */
int md_config_load(md_config *c, const char *path, bool required, mx_error *err);
void md_config_free(md_config *c);
/* Parses one [daemon] key=value (also used for command-line overrides). */
int md_config_set_daemon(md_config *c, const char *key, const char *value, mx_error *err);
/* http_listen's "ADDRESS:PORT" (IPv4, [IPv6] or localhost; loopback only)
 * into a socket address (out may be NULL: only checked). */
int md_listen_addr_parse(const char *s, struct sockaddr_storage *out, socklen_t *len, mx_error *err);

/* Who a uid is, as the limits need it: its passwd name and primary group
 * and every group getgrouplist gives for them. Never the peer's effective
 * gid: a process that changed its egid (sg) is still the same user. */
typedef struct md_identity {
        uint32_t uid;
        char *name;              /* NULL: no passwd entry */
        gid_t *groups;           /* [n_groups], the primary group first */
        int n_groups;
} md_identity;

int md_identity_lookup(uint32_t uid, md_identity *out);
void md_identity_free(md_identity *id);

/* The limits for a user: a [user:NAME] section's keys first, then the most
 * generous of its groups' sections, then [quota]. *exempt for root and
 * members of admin_group. */
void md_config_limits(const md_config *c, const md_identity *who, md_limits *out, bool *exempt);

/* ---- users (users.c) ------------------------------------------------------- */

/* Limits per uid, looked up (passwd, groups) at most every 30 s per user
 * and again after a reload: a flood of requests costs no lookups. */
typedef struct md_users md_users;

int md_users_new(md_users **out);
void md_users_free(md_users *u);
/* Forgets what it knows (the configuration or the group database changed). */
void md_users_flush(md_users *u);
void md_users_limits(md_users *u, const md_config *c, uint32_t uid, md_limits *out, bool *exempt);

/* ---- usage and quotas (usage.c, quota.c) ---------------------------------- */

/* Tokens a uid used in the current clock hour and UTC day. */
typedef struct md_usage_entry {
        uint32_t uid;
        uint64_t hour_start, hour_used;
        uint64_t day_start, day_used;
} md_usage_entry;

typedef struct md_usage {
        md_usage_entry *v;  /* [n], room for cap */
        size_t n, cap;
        char *path;         /* STATE/usage */
        int lock_fd;        /* STATE/lock, held while the daemon runs */
} md_usage;

/* Opens the state directory (made 0700, with its parents, when missing):
 * it must belong to this user and be writable by nobody else; STATE/lock
 * is taken so that no second daemon shares it; STATE/usage is read
 * (created on first save). A corrupt file is an error, never silently
 * reset. */
int md_usage_open(md_usage *u, const char *state_dir, mx_error *err);
/* The checks md_usage_open makes of an existing state directory. */
int md_state_dir_check(const char *dir, mx_error *err);
void md_usage_free(md_usage *u);
/* The uid's entry with windows rolled to now (NULL: out of memory). */
md_usage_entry *md_usage_get(md_usage *u, uint32_t uid, uint64_t now);
int md_usage_charge(md_usage *u, uint32_t uid, uint64_t tokens, uint64_t now);
/* Temp file, fsync, rename, fsync of the directory. */
int md_usage_save(const md_usage *u, mx_error *err);
/* Replaces a file of the state directory whole: body writes it into a
 * fresh PATH.tmp (0600), which is synced and renamed over path, then the
 * directory is synced, so that a crash leaves the old file or the new. */
int md_state_write(const char *path, int (*body)(FILE *f, const void *arg), const void *arg, mx_error *err);
/* Reads the state file DIR/KIND (*path, allocated; up to max bytes; none
 * yet is no error, a FIFO or device is refused unopened): no NUL inside,
 * the header "mixtrald-KIND 1" first, then each line to line_fn (with its
 * newline), which returns 0, -ENOMEM, or anything else for a corrupt line,
 * reported as "path:N: corrupt line". */
int md_state_read(const char *dir, const char *kind, size_t max, char **path,
                  int (*line_fn)(const char *line, void *arg), void *arg, mx_error *err);
/* One unsigned decimal field of a state file and the separator after it;
 * nothing scanf would also take (signs, spaces, overflow). */
bool md_field_u64(const char **p, char sep, uint64_t max, uint64_t *out);

/* ---- API keys (keys.c) ------------------------------------------------------ */

/* A key is "mxk-" ID "-" SECRET: 12 and 48 hex digits. The daemon keeps
 * its id, owner, creation time, label and SHA-256, never the key. */
enum {
        MD_KEY_ID_LEN = 12,
        MD_KEY_LEN = 4 + MD_KEY_ID_LEN + 1 + 48,
        MD_KEY_NAME_MAX = 64,
        MD_KEYS_PER_UID = 32,
};

typedef struct md_key {
        char id[MD_KEY_ID_LEN + 1];
        uint32_t uid;
        uint64_t created;             /* unix seconds */
        uint8_t hash[32];             /* SHA-256 of the whole key */
        char name[MD_KEY_NAME_MAX + 1]; /* a label; may be empty */
} md_key;

typedef struct md_keys {
        md_key *v;                    /* [n], room for cap */
        size_t n, cap;
        char *path;                   /* STATE/keys */
} md_keys;

/* Reads STATE/keys (none yet: no keys). A corrupt file is an error naming
 * its line, never silently emptied. */
int md_keys_open(md_keys *k, const char *state_dir, mx_error *err);
void md_keys_free(md_keys *k);
/* A new key for uid, saved before it is handed out in secret[] (the one
 * time it exists outside its owner). -EINVAL for a bad name or too many
 * keys, in err. */
int md_keys_new(md_keys *k, uint32_t uid, const char *name, uint64_t now, md_key *out,
                char secret[MD_KEY_LEN + 1], mx_error *err);
/* Revokes key id of uid (anyone's when admin): -ENOENT when there is no
 * such key of theirs; saved before it returns. */
int md_keys_revoke(md_keys *k, uint32_t uid, bool admin, const char *id, md_key *out, mx_error *err);
/* The owner of a presented key, or -EACCES (compared in constant time). */
int md_keys_check(const md_keys *k, const char *key, size_t len, uint32_t *uid);

/* What a user has in flight, for admission. */
typedef struct md_inflight {
        uint32_t running, queued;
        uint64_t reserved; /* tokens promised to live requests */
} md_inflight;

/* What set a request's max_tokens, when it was not what the user asked
 * or the context: an answer that ends there says so. */
enum { MD_CUT_NONE, MD_CUT_BUDGET, MD_CUT_MAX_TOKENS };

typedef struct md_admission {
        int code;               /* MIXTRALD__V1__ERROR_CODE__*, 0 when admitted */
        uint64_t retry_at;      /* unix seconds, for QUOTA_EXCEEDED */
        uint32_t max_tokens;    /* granted completion tokens */
        uint64_t reserve;       /* tokens to hold for the request */
        int cut;                /* MD_CUT_* */
        char msg[256];
} md_admission;

/* Decides whether a request of prompt_tokens (asking for max_tokens, 0 =
 * as many as allowed) may start, within context tokens of context. */
void md_quota_admit(const md_limits *l, bool exempt, const md_usage_entry *e, const md_inflight *f,
                    uint32_t prompt_tokens, uint32_t max_tokens, uint32_t context, uint64_t now,
                    md_admission *out);
/* When enough budget returns for `need` tokens: the next hour or day. */
uint64_t md_quota_retry_at(const md_limits *l, const md_usage_entry *e, uint64_t need);

/* ---- generation parameters (params.c, protocol.c) --------------------------- */

/* A number a transport was given, checked for range before it becomes the
 * float the sampler takes (a huge double would be inf as a float). */
typedef struct md_knob {
        bool set;
        double v;
} md_knob;

/* Owned text; s[len] is NUL (one inside is refused by the check). */
typedef struct md_text {
        char *s;                /* NULL: not given */
        size_t len;
} md_text;

/* A generation request in the daemon's own terms, owning all its text:
 * what each transport decodes its wire format into. */
typedef struct md_gen_params {
        md_text prompt;         /* or messages */
        mx_message *messages;   /* [n_messages], each content owned */
        size_t n_messages;
        md_text system;
        bool raw, want_ids, ignore_eos;
        md_knob temperature, top_p, min_p, repeat_penalty;
        bool has_top_k, has_seed;
        uint32_t top_k;
        uint64_t seed;
        uint32_t max_tokens;    /* 0: as many as allowed */
        md_text *stop;          /* [n_stop] */
        size_t n_stop;
        mx_sampling sampling;   /* filled by md_gen_params_check */
} md_gen_params;

/* Sets t to a copy of s[0..len): -ENOMEM. */
int md_text_set(md_text *t, const char *s, size_t len);
/* Adds a message (content copied); -ENOMEM or -E2BIG past the limit. */
int md_gen_params_add_message(md_gen_params *p, mx_role role, const char *content, size_t len);
int md_gen_params_add_stop(md_gen_params *p, const char *s, size_t len);
/* Checks every field (ranges, NaN, UTF-8, NUL bytes, roles, sizes) and
 * fills p->sampling; the seed, when absent, is drawn at random. */
int md_gen_params_check(md_gen_params *p, mx_error *err);
void md_gen_params_free(md_gen_params *p);
/* The prompt ids (BOS first) of checked parameters. */
int md_gen_params_ids(const md_gen_params *p, const mx_tokenizer *tok, mx_ids *ids, mx_error *err);
/* At least how many tokens the prompt becomes (mx_tokenizer_min_tokens of
 * each text), so that a request too long for the context is refused
 * before any time goes into tokenizing it. */
uint64_t md_gen_params_min_tokens(const md_gen_params *p, const mx_tokenizer *tok);

/* The protobuf socket's decoder (protocol.c). */
/* Unpacks a request frame's body; NULL when it is not a Request. */
Mixtrald__V1__Request *md_request_unpack(const uint8_t *body, size_t len);
void md_request_free(Mixtrald__V1__Request *r);
/* A Generate into checked parameters (md_gen_params_check). */
int md_gen_params_from(const Mixtrald__V1__Generate *g, md_gen_params *p, mx_error *err);
/* The name of a text field of the frame that holds a NUL byte, or NULL
 * (protobuf-c would cut that text short without a word). */
const char *md_request_nul_field(const uint8_t *body, size_t len);

/* The HTTP API's generation requests (http_request.c): OpenAI's JSON. */
typedef enum md_http_kind {
        MD_HTTP_CHAT,        /* POST /v1/chat/completions: messages */
        MD_HTTP_COMPLETION,  /* POST /v1/completions: a raw prompt */
} md_http_kind;

typedef struct md_http_gen_req {
        md_gen_params params;
        bool stream, include_usage;
} md_http_gen_req;

/* A request body into checked parameters (md_gen_params_check): a wrong
 * type, n other than 1 or a feature the daemon lacks (logprobs, echo,
 * suffix, token ids as the prompt) is refused naming the field; fields it
 * does not know are ignored, and null is absent. -EINVAL with err's one
 * line, or -ENOMEM. */
int md_http_gen_parse(md_http_kind kind, const char *body, size_t len, md_http_gen_req *out, mx_error *err);
void md_http_gen_req_free(md_http_gen_req *r);

/* ---- logging (log.c) ----------------------------------------------------------- */

/* To the journal with structured fields when stderr is connected to it
 * (JOURNAL_STREAM), otherwise one line on stderr, with a timestamp. */
void md_log_init(void);
void md_log(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Whether lines go to the journal (else stderr). */
bool md_log_to_journal(void);
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

/* One monotonic clock, in seconds. */
double md_now(void);
/* Unix time, in seconds. */
uint64_t md_wall_now(void);

/* ---- the engine's scheduler (scheduler.c) -------------------------------- */

typedef enum md_state {
        MD_QUEUED,
        MD_PREFILL,
        MD_DECODE,
        MD_DONE,
} md_state;

const char *md_state_name(md_state s);

typedef struct md_sched md_sched;
typedef struct md_job md_job; /* the scheduler's side of one request */

typedef struct md_sched_opts {
        uint32_t max_batch, prefill_chunk;
        uint64_t expert_memory; /* streamed experts' budget (0: all mapped), applied between steps */
        uint64_t host_cache;    /* a GPU's host cache of experts (0: as opened), the same way */
} md_sched_opts;

/* What a job computes. The arrays must live until md_sched_release. */
typedef struct md_job_spec {
        uint32_t uid;
        uint32_t max_concurrent;   /* the user's limit (0: none) */
        const int32_t *prompt;     /* [n_prompt] */
        size_t n_prompt;
        mx_gen_opts opts;          /* its stop strings too */
        bool want_ids;
        void *owner;               /* handed back with its news */
} md_job_spec;

/* A job's news since the last collect. text and ids stay valid until the
 * next md_sched_collect. */
typedef struct md_news {
        md_job *job;
        void *owner;
        const char *text;          /* [text_len] new text, whole characters */
        size_t text_len;
        const int32_t *ids;        /* [n_ids] new ids, when asked for */
        size_t n_ids;
        md_state state;
        uint32_t completion_tokens;
        uint32_t cached_tokens;    /* prompt tokens the KV cache served (once it started) */
        mx_finish finish;
        int error_code;            /* MIXTRALD__V1__ERROR_CODE__* when it failed */
        const char *error_msg;
        double t_start, t_first, t_end; /* md_now(); 0 until then */
} md_news;

/* Loading on the engine thread (mx_load_engine), so that the daemon
 * answers meanwhile; after it the thread serves. */
typedef struct md_sched_load {
        mx_load *load;
        const mx_load_opts *opts;
        int rc;                     /* after it ended: 0, or why not in err */
        mx_error err;
} md_sched_load;

/* Starts the engine thread. It first runs ld (when given), then serves;
 * `notify` (an eventfd) is written whenever a job has news, and when
 * loading ended. */
int md_sched_start(md_sched **out, md_sched_load *ld, const mx_tokenizer *tok, const md_sched_opts *o,
                   int notify_fd, mx_error *err);
/* Whether loading is over (ld->rc tells how), and how far it got. */
bool md_sched_loaded(md_sched *s, double *fraction);
/* The engine, once loaded (NULL before). */
mx_engine *md_sched_engine(md_sched *s);
/* Stops the thread: jobs still there end with `code` and `msg`. */
void md_sched_stop(md_sched *s, int code, const char *msg);
void md_sched_free(md_sched *s);
void md_sched_set_opts(md_sched *s, const md_sched_opts *o);
/* NULL when out of memory. */
md_job *md_sched_submit(md_sched *s, const md_job_spec *spec);
/* The job ends as cancelled (queued at once, running between steps);
 * code and msg when given say why. */
void md_sched_cancel(md_sched *s, md_job *j, int code, const char *msg);
/* Ends every queued job that has not started with code and msg (draining);
 * one suspended for KV blocks resumes and finishes. */
void md_sched_abort_queued(md_sched *s, int code, const char *msg);
/* Ends every job (queued at once, running at the next step). */
void md_sched_abort_all(md_sched *s, int code, const char *msg);
/* The jobs with news, with their new output; *out points into the
 * scheduler, valid until the next call. Ended jobs are touched no more by
 * the engine thread: release them once their end is handled. */
size_t md_sched_collect(md_sched *s, const md_news **out);
void md_sched_release(md_sched *s, md_job *j);
/* Expert streaming's counters as of the last step. */
void md_sched_expert_stats(md_sched *s, mx_expert_stats *out);
/* The KV pool as of the last step (zeros while loading). */
void md_sched_kv_stats(md_sched *s, mx_kv_stats *out);

/* ---- tokenizing off the event loop (tokenize.c) ------------------------------ */

typedef struct md_tokenizer_thread md_tokenizer_thread;
typedef struct md_tok_job md_tok_job;

int md_tokenize_start(md_tokenizer_thread **out, const mx_tokenizer *tok, int notify_fd, mx_error *err);
void md_tokenize_stop(md_tokenizer_thread *t);
/* Tokenizes p into *ids (and a failure into *err) on the thread, round-
 * robin between uids; p, ids and err must stay put until the job comes
 * back through md_tokenize_collect. */
md_tok_job *md_tokenize_submit(md_tokenizer_thread *t, uint32_t uid, const md_gen_params *p, mx_ids *ids,
                               mx_error *err, void *owner);
/* Its result is not wanted: it is skipped if not started. */
void md_tokenize_cancel(md_tokenizer_thread *t, md_tok_job *j);
/* Hands each finished job's owner and result (0 or negative errno) to
 * fn, then forgets the job. */
void md_tokenize_collect(md_tokenizer_thread *t, void (*fn)(void *owner, int rc, void *arg), void *arg);
/* Jobs waiting or running. */
size_t md_tokenize_pending(md_tokenizer_thread *t);

/* ---- the request core (core.c) ---------------------------------------------- */

typedef struct md_server md_server;
typedef struct md_request md_request;

/* Why a request was not admitted. */
typedef struct md_refusal {
        int code;                /* MIXTRALD__V1__ERROR_CODE__* */
        char msg[sizeof(((mx_error *)0)->msg)];
        uint64_t retry_at;       /* QUOTA_EXCEEDED: unix seconds */
        uint32_t retry_after_ms; /* BUSY, UNAVAILABLE while loading */
} md_refusal;

typedef struct md_accepted {
        uint64_t id;
        uint32_t position;       /* requests ahead of it before it runs; 0: in the next step */
        uint32_t prompt_tokens;
        uint32_t max_tokens;     /* granted */
} md_accepted;

/* A request's numbers at its end. */
typedef struct md_usage_report {
        uint32_t prompt_tokens, completion_tokens;
        uint32_t cached_prompt_tokens; /* of prompt_tokens, served from the KV cache (not computed, not charged) */
        double total_s, queued_s;
        bool has_ttft;           /* a token came */
        double ttft_s, tokens_per_s;
} md_usage_report;

typedef struct md_outcome {
        int error_code;          /* 0: finished */
        const char *error_msg;
        mx_finish finish;
        const char *note;        /* NULL, or why it ended where it did (the quota) */
        md_usage_report usage;
} md_outcome;

/* How a request's transport hears of it. Exactly one of refused, or
 * accepted then any chunks then end; then forget, after which the core
 * never mentions data again. Not called at all after md_core_detach. */
typedef struct md_sink_ops {
        void (*accepted)(void *data, const md_accepted *a);
        void (*refused)(void *data, const md_refusal *ref);
        void (*chunk)(void *data, const char *text, size_t len, const int32_t *ids, size_t n_ids);
        void (*end)(void *data, const md_outcome *o);
        void (*forget)(void *data);
} md_sink_ops;

typedef struct md_core md_core;

int md_core_new(md_server *srv, md_core **out, mx_error *err);
/* Starts the threads it needs (tokenizing) and their event sources. */
int md_core_start(md_core *c, mx_error *err);
void md_core_free(md_core *c);
/* Starts admitting a request of uid (p is taken, left empty): NULL and
 * ref when refused at once; else the request, whose outcome comes
 * through ops. */
md_request *md_core_submit(md_core *c, uint32_t uid, md_gen_params *p, const md_sink_ops *ops, void *data,
                           md_refusal *ref);
/* The transport is gone: no more calls to its sink; the request stops. */
void md_core_detach(md_core *c, md_request *r);
/* Cancels uid's request id (anyone's for root): -ENOENT when there is no
 * such request of theirs. */
int md_core_cancel(md_core *c, uint32_t uid, uint64_t id);
/* Whether id is a live request that uid may see (root sees all). */
bool md_core_visible(md_core *c, uint32_t uid, uint64_t id);
/* Engine news: called on the scheduler's eventfd. */
int md_core_on_engine(md_core *c);
/* Requests admitted and not yet ended, and those still being admitted. */
size_t md_core_live(md_core *c);
/* Ends every request not started yet (draining). */
void md_core_drain(md_core *c);
/* The totals since start. */
void md_core_totals(md_core *c, uint64_t *requests, uint64_t *tokens);

/* A user's quota as the daemon sees it now. */
typedef struct md_quota_report {
        uint32_t uid;
        bool exempt;
        md_limits limits;         /* max_context: the effective one */
        uint64_t used_hour, used_day;
        uint64_t hour_resets, day_resets; /* unix seconds */
        uint32_t running, queued;
} md_quota_report;

int md_core_quota(md_core *c, uint32_t uid, md_quota_report *q);

/* One live request, as status lists it. */
typedef struct md_request_view {
        uint64_t id;
        uint32_t uid;
        md_state state;
        uint32_t prompt_tokens, completion_tokens;
        double age_s;
} md_request_view;

/* The requests uid may see (all for root and admins) into *out (freed by
 * the caller), and counts over all of them: queued counts those still
 * being admitted too, and a request runs from the step that took it. */
typedef struct md_request_counts {
        uint32_t queued, running, prefilling, decoding;
} md_request_counts;
int md_core_requests(md_core *c, uint32_t uid, bool all, md_request_view **out, size_t *n, md_request_counts *counts);

/* ---- status (status.c) --------------------------------------------------------- */

typedef struct md_status {
        const char *version, *model, *device, *state; /* state: loading, serving, draining */
        double load_fraction;          /* while loading: 0..1 */
        uint64_t weight_bytes, kv_bytes, rss_bytes; /* kv_bytes: blocks held by running requests */
        uint32_t queued, running, prefilling, decoding, max_batch, max_queue, connections, context_length;
        uint64_t requests_total, tokens_total;
        double uptime_s;
        md_request_view *requests;     /* [n_requests], the caller's own or all */
        size_t n_requests;
        bool streaming;                /* experts read from the files as needed */
        mx_expert_stats experts;
        uint64_t expert_configured;    /* expert_memory ("min", and a GPU's auto, as they came to) */
        mx_kv_stats kv;                /* the KV pool (blocks 0 while loading) */
        double expert_read_gbps;       /* bytes read over the time steps waited on reads */
} md_status;

/* What the daemon says about itself to uid (requests: its own, or all for
 * root and admins); free with md_status_free. */
int md_status_fill(md_server *srv, uint32_t uid, md_status *st);
void md_status_free(md_status *st);
/* "loading", "serving", "draining". */
const char *md_server_state(const md_server *srv);

/* ---- metrics (metrics.c) ------------------------------------------------------ */

enum { MD_HIST_BUCKETS = 12, MD_ERROR_CODES = 10, MD_FINISH_REASONS = 5, MD_HTTP_STATUSES = 12 };

typedef struct md_histogram {
        uint64_t counts[MD_HIST_BUCKETS + 1]; /* [bucket], the last above every bound */
        uint64_t n;
        double sum;
} md_histogram;

/* What /metrics counts since start, all users together (per-user numbers
 * would tell one user about another's use). */
typedef struct md_metrics {
        uint64_t finished[MD_FINISH_REASONS]; /* [mx_finish] */
        uint64_t failed[MD_ERROR_CODES];      /* [error code]: ended with an error */
        uint64_t refused[MD_ERROR_CODES];     /* [error code]: never admitted */
        uint64_t prompt_tokens, completion_tokens;
        md_histogram ttft, tpot, duration;    /* seconds: to the first token, per later token, submit to end */
        uint64_t http[MD_HTTP_STATUSES];      /* HTTP responses, by md_metrics_http's table of statuses */
} md_metrics;

void md_metrics_ended(md_metrics *m, const md_outcome *o);
void md_metrics_refused(md_metrics *m, int code);
void md_metrics_http(md_metrics *m, unsigned status);
/* Everything as Prometheus' text format, for root and admins only. */
int md_metrics_render(md_server *srv, mx_buf *out);

/* ---- the service ----------------------------------------------------------------- */

typedef struct sd_event sd_event;
typedef struct sd_event_source sd_event_source;
typedef struct md_conn md_conn;
typedef struct md_http md_http;

/* The listening sockets, each for one kind of client. */
typedef enum md_listen_kind {
        MD_LISTEN_PROTO,     /* the protobuf socket */
        MD_LISTEN_HTTP,      /* the HTTP API's Unix socket */
        MD_LISTEN_HTTP_TCP,  /* its TCP listener */
        MD_LISTEN_KINDS,
} md_listen_kind;

typedef struct md_listener {
        md_server *srv;
        md_listen_kind kind;
        int fd;                      /* -1: not listening */
        sd_event_source *src;
        char *created;               /* a socket file made here: unlinked when it closes */
} md_listener;

struct md_server {
        sd_event *event;
        md_config cfg;
        const char *config_path;
        bool config_required;
        bool user_instance;          /* --user */
        const char *overrides[16][2];/* command-line [daemon] keys, over the file's */
        size_t n_overrides;
        /* the model */
        mx_load_opts load_opts;
        mx_load load;                /* model and tokenizer at once, the engine once loaded */
        md_sched_load sched_load;
        bool loading;                /* the engine thread is still loading */
        const char *model_dir;       /* absolute */
        uint32_t context_length;
        bool context_is_kv;          /* context_length is what the KV pool holds (less than the model's) */
        /* the parts */
        md_sched *sched;
        md_core *core;
        md_users *users;
        md_usage usage;
        int notify_fd;               /* the engine thread's eventfd */
        sd_event_source *notify_src;
        /* the sockets */
        md_listener listen[MD_LISTEN_KINDS];
        sd_event_source *accept_retry;
        int reserve_fd;              /* kept open to refuse a client politely at the fd limit */
        uint64_t emfile_refused;     /* clients refused at the fd limit since the last log line */
        double emfile_logged;
        md_conn *conns;
        uint32_t n_conns;
        md_http *http;               /* the HTTP API (http.c) */
        md_keys keys;                /* its API keys (keys.c) */
        md_metrics metrics;
        sd_event_source *dispatch;   /* one frame at a time, round-robin between users (conn.c) */
        uint32_t last_uid_served;
        struct sd_bus *bus;          /* D-Bus, when on one */
        double t_start;
        bool draining;
        sd_event_source *drain_timer;
        /* Expert streaming: the configured budget, and the one in force
         * (smaller while the host is short of memory; pressure.c). On a
         * GPU the host's memory is the host cache's: its size as opened,
         * and in force. */
        uint64_t expert_budget, expert_now;
        uint64_t host_cache_budget, host_cache_now;
        sd_event_source *pressure_timer;
        uint32_t calm_seconds;
};

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

/* ---- connections (conn.c) and the protobuf requests (proto_api.c) ------------- */

/* Fairness between users, as the protobuf socket takes frames and the HTTP
 * API requests: whether a party of uid a (tie-break ka, lower first) goes
 * before one of uid b (kb) when uid last went last: the next uid after
 * last, wrapping round. */
static inline bool md_turn_before(uint32_t last, uint32_t a, uint64_t ka, uint32_t b, uint64_t kb) {
        if ((a > last) != (b > last))
                return a > last;
        return a != b ? a < b : ka < kb;
}

/* Open connections of uid over every transport: each user's are capped
 * together at max_connections_per_uid (service.c). */
uint32_t md_service_conns_of(const md_server *srv, uint32_t uid);
/* Of them, on the protobuf socket. */
uint32_t md_conn_count(const md_server *srv, uint32_t uid);

/* Takes an accepted socket: its peer identified by SO_PEERCRED. Over the
 * per-user connection limit (root too) it gets BUSY and is closed. */
int md_conn_new(md_server *srv, int fd);
/* Drops the connection: its requests are cancelled, and it is freed once
 * the event loop is back at the top. */
void md_conn_kill(md_conn *c, const char *why);
void md_conn_free(md_conn *c);
uint32_t md_conn_uid(const md_conn *c);
/* Queues one response; a connection whose unsent output passes the limit
 * is dropped (it does not read). */
void md_conn_send(md_conn *c, const Mixtrald__V1__Response *resp);
void md_conn_send_error(md_conn *c, uint64_t tag, uint64_t request_id, int code, const char *msg);
/* Connections that have sent everything they will get: close once flushed. */
void md_conn_close_idle(md_server *srv, bool *pending);

/* The protobuf side of one connection (proto_api.c). */
typedef struct md_proto_conn md_proto_conn;
md_proto_conn *md_proto_conn_new(md_server *srv, md_conn *c);
/* The connection is going: its requests are detached. */
void md_proto_conn_free(md_proto_conn *pc);
/* One complete frame's body: false when it is not a Request at all. */
bool md_proto_dispatch(md_proto_conn *pc, const uint8_t *body, size_t len);

/* ---- the service (service.c, main.c) --------------------------------------------- */

/* The sockets systemd passed (told apart by what they are: the Unix
 * socket at http_socket's path is HTTP, another Unix socket the protobuf
 * one, an inet socket the HTTP TCP listener), or, without systemd, those
 * the configuration names, made here. */
int md_service_listen(md_server *srv, mx_error *err);
/* Closes every listening socket (removing the files made here). */
void md_service_unlisten(md_server *srv);
/* A client connection closed: accepting goes on if the fd limit had paused it. */
void md_service_accept_again(md_server *srv);
int md_service_signals(md_server *srv);
/* After the engine thread's news: a drain may be over. */
void md_service_maybe_exit(md_server *srv);
int md_service_exit_now(sd_event_source *s, uint64_t usec, void *userdata);
/* main.c: defaults, then the file, then the command line */
int md_service_load_config(md_server *srv, md_config *out, mx_error *err);
/* main.c: loading ended on the engine thread (ok or not). */
void md_service_loaded(md_server *srv);

#define MD_SYSTEM_HTTP_SOCKET "/run/mixtrald/http.sock"

/* http.c: the OpenAI-compatible HTTP API (docs/http.md) on libmicrohttpd,
 * driven from the event loop. */
int md_http_start(md_server *srv, mx_error *err);
/* Before the core goes: every request detached, every connection closed. */
void md_http_stop(md_server *srv);
/* Takes an accepted socket of an HTTP listener (tcp: the TCP one). */
void md_http_add(md_server *srv, int fd, bool tcp);
/* Answers a client that cannot be served (the fd limit) and closes fd. */
void md_http_refuse(int fd, unsigned status, const char *msg);
uint32_t md_http_count(const md_server *srv, uint32_t uid);
uint32_t md_http_connections(const md_server *srv);
/* Requests still being answered (a drain waits for them). */
bool md_http_pending(const md_server *srv);

/* dbus.c: org.mixtrald.Mixtral1 on the system or session bus */
/* Connects as cfg.bus says: "none", "system", "session", or "auto" (the
 * system bus for root, the session bus for a user instance; quietly none
 * when that bus is not there). */
int md_dbus_start(md_server *srv, mx_error *err);
void md_dbus_stop(md_server *srv);
/* The State property changed (loading, serving, draining). */
void md_dbus_state_changed(md_server *srv);
