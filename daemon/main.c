/* mixtrald: loads the model, then serves it on a Unix socket until told to
 * stop. Under systemd (Type=notify) or by hand, as any user. */
#include <getopt.h>
#include <pwd.h>
#include <stdarg.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>
#include <time.h>

#include "mx_common.h"
#include "mx_progress.h"
#include "mixtrald.h"

#define SYSTEM_CONFIG "/etc/mixtrald/mixtrald.conf"

static const char usage_text[] =
        "Usage: mixtrald [--model PATH] [OPTIONS]\n"
        "       mixtrald --user [OPTIONS]\n"
        "       mixtrald --check-config [OPTIONS]\n"
        "\n"
        "The Mixtral inference daemon: keeps the model in memory and serves every\n"
        "local user over a Unix socket (protobuf; see mixtrald(8)), on D-Bus as\n"
        "org.mixtrald.Mixtral1 and over HTTP (OpenAI's API), with per-user quotas.\n"
        "Runs under systemd (socket activation, Type=notify, watchdog) or by hand as\n"
        "any user. It answers while the model loads (status: loading, and how far;\n"
        "requests on the socket wait, HTTP says 503).\n"
        "\n"
        "Options (each overrides the [daemon] key of the same name in the file):\n"
        "  -m, --model PATH           a checkpoint directory (Hugging Face or\n"
        "                             mistral-inference layout), a GGUF file, or a\n"
        "                             directory of one\n"
        "      --device DEV           cpu (default), cuda, or cuda:N (the N-th GPU)\n"
        "  -s, --socket PATH          the socket to create, when systemd passes none\n"
        "                             (default: " MXP_SYSTEM_SOCKET " for root,\n"
        "                             else $XDG_RUNTIME_DIR/mixtrald.sock)\n"
        "  -c, --config PATH          the configuration file (default\n"
        "                             " SYSTEM_CONFIG " for root, else\n"
        "                             ~/.config/mixtrald/mixtrald.conf; a missing\n"
        "                             default file means built-in defaults)\n"
        "      --state-directory DIR  where usage is kept (default $STATE_DIRECTORY, or\n"
        "                             /var/lib/mixtrald for root, else\n"
        "                             ~/.local/state/mixtrald, made 0700 if missing);\n"
        "                             yours alone, one daemon at a time\n"
        "      --threads N            CPU threads for the engine (default: every core)\n"
        "      --http-socket PATH     the HTTP API's Unix socket, or none (default:\n"
        "                             " MD_SYSTEM_HTTP_SOCKET " for root, else\n"
        "                             $XDG_RUNTIME_DIR/mixtrald-http.sock; with\n"
        "                             --socket S, beside S: S without .sock, -http.sock)\n"
        "      --http-listen ADDR:PORT\n"
        "                             HTTP on TCP too, where requests carry API keys\n"
        "                             (mixtral key new): a loopback address only\n"
        "                             (127.0.0.1:8080, [::1]:8080); default none\n"
        "      --max-frame-bytes N    largest request accepted (default 1M)\n"
        "      --socket-mode MODE     octal mode of the sockets made here (default 0666\n"
        "                             for the system daemon, else 0600)\n"
        "      --bus BUS              D-Bus: system, session, none, or auto (default:\n"
        "                             the system bus for root without --user, else\n"
        "                             the session bus; auto goes on without D-Bus\n"
        "                             when that bus is not there)\n"
        "      --user                 a per-user instance: session bus, and the socket,\n"
        "                             configuration and state under the user's own\n"
        "                             directories even when run as root\n"
        "      --check-config         check the file, the model (headers, tokenizer,\n"
        "                             budgets) and the state directory; exit 0 if the\n"
        "                             daemon would start\n"
        "  -h, --help                 this text\n"
        "      --version              the version\n"
        "\n"
"Configuration (INI; see mixtrald(8)):\n"
        "  [daemon]  model device socket socket_mode http_socket http_listen\n"
        "            state_directory max_frame_bytes bus\n"
        "            threads admin_group max_batch max_queue max_connections_per_uid\n"
        "            max_output_bytes prefill_chunk drain_seconds expert_memory\n"
        "            memory_pressure host_cache quantize kv_type kv_memory\n"
        "            prefix_cache_share\n"
        "  [quota]   tokens_per_hour tokens_per_day max_concurrent max_queued\n"
        "            max_context max_tokens   (0: no limit)\n"
        "  [user:NAME] and [group:NAME]: the [quota] keys for that user or group\n"
        "\n"
        "expert_memory (auto, min, bytes or NN%) keeps that much of the experts in\n"
        "memory and reads the rest from the model's files as needed (io_uring); under\n"
        "memory pressure (/proc/pressure/memory) it halves until the host is calm\n"
        "(on a GPU, the host cache halves instead).\n"
        "On a GPU, a model that does not fit streams its experts by itself, and\n"
        "host_cache (auto, min, bytes or NN%) is the page-locked RAM they pass\n"
        "through (auto: all of them when they take under a quarter of the RAM).\n"
        "quantize (none, q8_0, q4_0, q4_k_m, q5_k_m, q6_k) quantizes the weights as\n"
        "the model loads, on every core, as llama.cpp's file types (q4_k_m makes\n"
        "Mixtral's 93 GB about 28 GB); its experts then stay in memory. To stream\n"
        "them, quantize once to a file (mixtral-run --quantize TYPE --save\n"
        "FILE.gguf) and serve that.\n"
        "The KV cache is one pool of kv_memory (auto, bytes or NN% of the free\n"
        "memory) holding K and V as kv_type (bf16 or f32); requests wait while it\n"
        "is full. A request reuses the cached prefix of its prompt (a conversation\n"
        "so far) and is charged only the prompt tokens computed: prefix_cache_share\n"
        "user (a user's own prefixes), all (everyone's) or off.\n"
        "\n"
        "Signals: SIGHUP reloads the configuration (limits, quotas, expert_memory,\n"
        "prefix_cache_share; model, device, quantize, host_cache, kv_type, kv_memory,\n"
        "the sockets and state directory change only at restart). SIGTERM stops: new\n"
        "requests are refused, queued ones end with UNAVAILABLE, running ones may\n"
        "finish for drain_seconds (default 30), then the rest are aborted; a second\n"
        "SIGTERM aborts at once. Exit status 0 after a stop, 1 on a start-up error, 2\n"
        "for a usage error.\n";

typedef struct args {
        const char *config;
        bool check_only;
} args;

static int usage_error(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fputs("mixtrald: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputs("\nTry 'mixtrald --help'.\n", stderr);
        va_end(ap);
        return 2;
}

static int override(md_server *srv, const char *key, const char *value) {
        if (srv->n_overrides == MX_ELEMENTSOF(srv->overrides))
                return usage_error("too many options");
        srv->overrides[srv->n_overrides][0] = key;
        srv->overrides[srv->n_overrides++][1] = value;
        return 0;
}

static int parse_args(int argc, char **argv, md_server *srv, args *a) {
        enum { OPT_DEVICE = 256, OPT_STATE, OPT_THREADS, OPT_FRAME, OPT_MODE, OPT_CHECK, OPT_VERSION, OPT_BUS,
               OPT_USER, OPT_HTTP_SOCKET, OPT_HTTP_LISTEN };
        static const struct option opts[] = {
                {"model", required_argument, NULL, 'm'},     {"device", required_argument, NULL, OPT_DEVICE},
                {"socket", required_argument, NULL, 's'},    {"config", required_argument, NULL, 'c'},
                {"state-directory", required_argument, NULL, OPT_STATE},
                {"threads", required_argument, NULL, OPT_THREADS},
                {"max-frame-bytes", required_argument, NULL, OPT_FRAME},
                {"socket-mode", required_argument, NULL, OPT_MODE},
                {"http-socket", required_argument, NULL, OPT_HTTP_SOCKET},
                {"http-listen", required_argument, NULL, OPT_HTTP_LISTEN},
                {"check-config", no_argument, NULL, OPT_CHECK},
                {"bus", required_argument, NULL, OPT_BUS},
                {"user", no_argument, NULL, OPT_USER},
                {"help", no_argument, NULL, 'h'},            {"version", no_argument, NULL, OPT_VERSION},
                {0},
        };
        int c, r = 0;
        opterr = 0;
        while (r == 0 && (c = getopt_long(argc, argv, ":m:s:c:h", opts, NULL)) != -1) {
                switch (c) {
                case 'm': r = override(srv, "model", optarg); break;
                case OPT_DEVICE: r = override(srv, "device", optarg); break;
                case 's': r = override(srv, "socket", optarg); break;
                case OPT_STATE: r = override(srv, "state_directory", optarg); break;
                case OPT_THREADS: r = override(srv, "threads", optarg); break;
                case OPT_FRAME: r = override(srv, "max_frame_bytes", optarg); break;
                case OPT_MODE: r = override(srv, "socket_mode", optarg); break;
                case OPT_HTTP_SOCKET: r = override(srv, "http_socket", optarg); break;
                case OPT_HTTP_LISTEN: r = override(srv, "http_listen", optarg); break;
                case OPT_BUS: r = override(srv, "bus", optarg); break;
                case OPT_USER: srv->user_instance = true; break;
                case 'c': a->config = optarg; break;
                case OPT_CHECK: a->check_only = true; break;
                case 'h': fputs(usage_text, stdout); exit(0);
                case OPT_VERSION: puts("mixtrald " MX_VERSION_STRING); exit(0);
                case ':': return usage_error("%s needs an argument", argv[optind - 1]);
                default: return usage_error("unknown option '%s'", argv[optind - 1]);
                }
        }
        if (r)
                return r;
        if (optind < argc)
                return usage_error("unexpected argument '%s'", argv[optind]);
        return 0;
}

/* Per-user defaults when not root: everything under the user's own dirs. */
static char *user_path(const char *xdg_var, const char *fallback, const char *leaf) {
        const char *base = getenv(xdg_var);
        char *p = NULL;
        if (base && *base == '/')
                return asprintf(&p, "%s/%s", base, leaf) < 0 ? NULL : p;
        const char *home = getenv("HOME");
        struct passwd *pw = home ? NULL : getpwuid(getuid());
        if (!home && pw)
                home = pw->pw_dir;
        if (!home)
                return NULL;
        return asprintf(&p, "%s/%s/%s", home, fallback, leaf) < 0 ? NULL : p;
}

/* The HTTP API's socket beside the protobuf one: the defaults' neighbours,
 * or, for a socket given as S, S without ".sock" and "-http.sock". */
static char *http_socket_default(const char *socket, bool system) {
        if (!socket)
                return system ? strdup(MD_SYSTEM_HTTP_SOCKET) : user_path("XDG_RUNTIME_DIR", ".", "mixtrald-http.sock");
        size_t n = strlen(socket);
        if (n > 5 && !strcmp(socket + n - 5, ".sock"))
                n -= 5;
        char *p = NULL;
        return asprintf(&p, "%.*s-http.sock", (int)n, socket) < 0 ? NULL : p;
}

int md_service_load_config(md_server *srv, md_config *out, mx_error *err) {
        bool system = geteuid() == 0 && !srv->user_instance;
        md_config c;
        md_config_defaults(&c);
        int r = md_config_load(&c, srv->config_path, srv->config_required, err);
        for (size_t i = 0; r == 0 && i < srv->n_overrides; i++)
                r = md_config_set_daemon(&c, srv->overrides[i][0], srv->overrides[i][1], err);
        const char *state = getenv("STATE_DIRECTORY"); /* systemd's StateDirectory= */
        if (r == 0 && !c.state_directory) {
                if (state && *state == '/')
                        c.state_directory = strndup(state, strcspn(state, ":"));
                else
                        c.state_directory = system ? strdup("/var/lib/mixtrald")
                                                           : user_path("XDG_STATE_HOME", ".local/state", "mixtrald");
                if (!c.state_directory)
                        r = mx_error_set(err, -ENOMEM, "no state directory: set state_directory");
        }
        /* Every user's socket for the system daemon (quotas, not the mode,
         * limit them); a user's own daemon is that user's alone. */
        if (!c.socket_mode_set)
                c.socket_mode = system ? 0666 : 0600;
        if (r == 0 && !c.http_socket && !(c.http_socket = http_socket_default(c.socket, system)))
                r = mx_error_set(err, -ENOMEM, "out of memory");
        if (r == 0 && !c.socket) {
                c.socket = system ? strdup(MXP_SYSTEM_SOCKET) : user_path("XDG_RUNTIME_DIR", ".", "mixtrald.sock");
                if (!c.socket || (!system && !getenv("XDG_RUNTIME_DIR")))
                        r = mx_error_set(err, -EINVAL, "no socket path: give --socket PATH (XDG_RUNTIME_DIR is unset)");
        }
        if (r < 0) {
                md_config_free(&c);
                return r;
        }
        *out = c;
        return 0;
}

/* ---- loading ---------------------------------------------------------------- */

/* Every second while the engine thread loads: progress for systemctl
 * status, more start-up time (READY=1 comes when loading is done, so that
 * a 90 GB model is not killed half-read), and a bar on a terminal. */
typedef struct load_progress {
        time_t last;
        mx_progress_bar bar;
} load_progress;

static void on_progress(const char *what, uint64_t done, uint64_t total, void *arg) {
        load_progress *p = arg;
        mx_progress_bar_show(&p->bar, what, done, total);
        time_t now = time(NULL);
        if (now == p->last && done != total)
                return;
        p->last = now;
        sd_notifyf(false, "STATUS=%s: %.1f of %.1f GiB (%d%%)\nEXTEND_TIMEOUT_USEC=%llu", what,
                   (double)done / (1u << 30), (double)total / (1u << 30), total ? (int)(done * 100 / total) : 100,
                   30000000ull);
}

static load_progress progress;

/* What the engine's loader is given: the configuration's keys, the
 * model's path made absolute (status and D-Bus show where the model is,
 * whatever the cwd was). */
static int loader_opts(md_server *srv, mx_error *err) {
        if (!srv->cfg.model)
                return mx_error_set(err, -EINVAL, "no model: give --model DIR or model= in [daemon]");
        if (!(srv->model_dir = realpath(srv->cfg.model, NULL)))
                return mx_error_set(err, -errno, "the model %s: %s", srv->cfg.model, strerror(errno));
        int gpu = -1;
        mx_device_parse(srv->cfg.device, &gpu);
        srv->load_opts = (mx_load_opts){.model = srv->model_dir, .device = srv->cfg.device,
                                        .threads = srv->cfg.threads, .expert_memory = srv->cfg.expert_memory,
                                        .host_cache = gpu >= 0 ? srv->cfg.host_cache : NULL,
                                        .kv_type = srv->cfg.kv_type, .kv_memory = srv->cfg.kv_memory,
                                        .quantize = srv->cfg.quantize,
                                        .progress = on_progress, .progress_arg = &progress};
        return 0;
}

/* The fast half of loading, before anything is served: every mistake in
 * the model, its tokenizer or the budgets is found here. */
static int open_model(md_server *srv, mx_error *err) {
        int r = loader_opts(srv, err);
        if (r < 0)
                return r;
        if (srv->cfg.host_cache && !srv->load_opts.host_cache)
                md_log(LOG_NOTICE, "host_cache is for device=cuda: on the CPU, expert_memory is the cache");
        progress.bar = mx_progress_bar_new(isatty(STDERR_FILENO) == 1 && !md_log_to_journal());
        r = mx_load_open(&srv->load, &srv->load_opts, err);
        if (r < 0)
                return r;
        srv->expert_budget = srv->expert_now = srv->load.expert_memory;
        mx_footprint fp;
        mx_model_footprint(srv->load.model, &fp);
        srv->context_length = srv->load.model->cfg.max_position_embeddings;
        md_log(LOG_INFO, "model %s: %.2f GiB of weights, context %u; loading it on %s%s%s", srv->model_dir,
               (double)fp.bytes / (1u << 30), srv->context_length, srv->cfg.device ? srv->cfg.device : "cpu",
               srv->cfg.quantize ? ", quantized to " : "", srv->cfg.quantize ? mx_ftype_name(srv->cfg.quantize) : "");
        return 0;
}

void md_service_loaded(md_server *srv) {
        srv->loading = false;
        if (srv->sched_load.rc < 0) {
                md_log(LOG_ERR, "%s", srv->sched_load.err.msg);
                sd_notifyf(false, "STATUS=Failed: %s\nERRNO=%d", srv->sched_load.err.msg, -srv->sched_load.rc);
                sd_event_exit(srv->event, 1);
                return;
        }
        mx_expert_stats xs;
        md_sched_expert_stats(srv->sched, &xs);
        srv->host_cache_budget = srv->host_cache_now = xs.host_budget;
        /* No request is longer than the KV pool holds. (The scheduler's
         * copy: the engine is the engine thread's.) */
        mx_kv_stats kv;
        md_sched_kv_stats(srv->sched, &kv);
        uint32_t pool = kv.blocks * kv.block_tokens;
        if (pool < srv->context_length || !srv->context_length)
                srv->context_length = pool, srv->context_is_kv = true;
        const char *dev = mx_engine_describe(srv->load.engine);
        sd_notifyf(false, "READY=1\nSTATUS=Serving %s on %s", srv->model_dir, dev);
        if (mx_model_quantized(srv->load.model)) {
                mx_footprint fp;
                mx_model_footprint(srv->load.model, &fp);
                md_log(LOG_INFO, "ready: serving %s (quantized to %s: %.2f GiB of weights) on %s", srv->model_dir,
                       mx_ftype_name(mx_model_quantized(srv->load.model)), (double)fp.bytes / (1u << 30), dev);
        } else
                md_log(LOG_INFO, "ready: serving %s on %s", srv->model_dir, dev);
        md_log(LOG_INFO, "KV cache: %.1f GiB of %s, %u tokens (context %u)",
               (double)kv.blocks * (double)kv.block_bytes / (1u << 30), mx_kv_type_name(kv.type), pool,
               srv->context_length);
        md_dbus_state_changed(srv);
}

/* --check-config: what start-up would refuse, found without starting:
 * the file (read above), the model (its headers, tokenizer and budgets),
 * the state directory. */
static int check_config(md_server *srv) {
        mx_error err = {0};
        _cleanup_(mx_load_free) mx_load l = {.gpu = -1};
        int r = loader_opts(srv, &err);
        if (r == 0)
                r = mx_load_open(&l, &srv->load_opts, &err);
        if (r == 0)
                r = md_state_dir_check(srv->cfg.state_directory, &err);
        _cleanup_(md_keys_free) md_keys keys = {0};
        if (r == 0)
                r = md_keys_open(&keys, srv->cfg.state_directory, &err);
        if (r < 0) {
                fprintf(stderr, "mixtrald: %s: %s\n", srv->config_path, err.msg);
                return 1;
        }
        bool file = access(srv->config_path, F_OK) == 0;
        printf("%s%s: OK (model %s: %u layers, context %u; socket %s, HTTP %s%s%s, state %s, %zu API keys, "
               "%zu user/group sections)\n",
               srv->config_path, file ? "" : " (absent: built-in defaults)", srv->model_dir,
               l.model->cfg.n_layers, l.model->cfg.max_position_embeddings, srv->cfg.socket, srv->cfg.http_socket,
               srv->cfg.http_listen ? " and " : "", srv->cfg.http_listen ? srv->cfg.http_listen : "",
               srv->cfg.state_directory, keys.n, srv->cfg.n_sections);
        return 0;
}

/* ---- running ---------------------------------------------------------------- */

static int on_engine(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        md_server *srv = userdata;
        uint64_t count;
        if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
                md_log(LOG_WARNING, "engine eventfd: %m");
        if (srv->loading && md_sched_loaded(srv->sched, NULL))
                md_service_loaded(srv);
        md_core_on_engine(srv->core);
        md_service_maybe_exit(srv);
        return 0;
}

/* The engine thread (loading first), its eventfd, and what admits work
 * for it. */
static int start_engine(md_server *srv, mx_error *err) {
        int r;
        if ((srv->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
                return mx_error_set(err, -errno, "eventfd: %s", strerror(errno));
        if ((r = md_users_new(&srv->users)) < 0 || (r = md_core_new(srv, &srv->core, err)) < 0)
                return mx_error_set(err, r, "out of memory");
        srv->sched_load = (md_sched_load){.load = &srv->load, .opts = &srv->load_opts};
        srv->loading = true;
        md_sched_opts so = md_server_sched_opts(srv);
        if ((r = md_sched_start(&srv->sched, &srv->sched_load, srv->load.tok, &so, srv->notify_fd, err)) < 0 ||
            (r = md_core_start(srv->core, err)) < 0 || (r = md_pressure_start(srv, err)) < 0)
                return r;
        if ((r = sd_event_add_io(srv->event, &srv->notify_src, srv->notify_fd, EPOLLIN, on_engine, srv)) < 0)
                return mx_error_set(err, r, "event loop: %s", strerror(-r));
        return 0;
}

/* The socket is bound before the model is opened (a second daemon on it
 * is refused at once, and clients reach this one while it loads), and the
 * state directory locked before either. */
static int serve(md_server *srv, mx_error *err) {
        int r = md_usage_open(&srv->usage, srv->cfg.state_directory, err);
        if (r < 0 || (r = md_keys_open(&srv->keys, srv->cfg.state_directory, err)) < 0)
                return r;
        if ((r = sd_event_default(&srv->event)) < 0 || (r = md_service_signals(srv)) < 0)
                return mx_error_set(err, r, "event loop: %s", strerror(-r));
        srv->t_start = md_now();
        if ((r = md_service_listen(srv, err)) < 0 || (r = open_model(srv, err)) < 0 ||
            (r = start_engine(srv, err)) < 0 || (r = md_dbus_start(srv, err)) < 0 || (r = md_http_start(srv, err)) < 0)
                return r;
        sd_notifyf(false, "STATUS=Loading %s\nEXTEND_TIMEOUT_USEC=%llu", srv->model_dir, 30000000ull);
        if ((r = sd_event_loop(srv->event)) < 0)
                return mx_error_set(err, r, "event loop: %s", strerror(-r));
        if (r > 0) /* (md_service_loaded said why) */
                return -EIO;
        return 0;
}

static void teardown(md_server *srv) {
        /* A model still loading cannot be interrupted: the process goes
         * without waiting for it (and without freeing what it uses). */
        if (srv->loading && srv->sched) {
                md_log(LOG_NOTICE, "stopped while loading the model");
                md_service_unlisten(srv);
                return;
        }
        if (srv->sched) {
                md_sched_stop(srv->sched, MIXTRALD__V1__ERROR_CODE__UNAVAILABLE, "the daemon stopped");
                /* Requests the thread ended on its way out: told and freed. */
                md_core_on_engine(srv->core);
        }
        md_dbus_stop(srv);
        md_http_stop(srv);
        while (srv->conns)
                md_conn_free(srv->conns);
        md_core_free(srv->core);
        md_sched_free(srv->sched);
        md_users_free(srv->users);
        md_service_unlisten(srv);
        sd_event_source_disable_unref(srv->accept_retry);
        sd_event_source_disable_unref(srv->dispatch);
        sd_event_source_disable_unref(srv->notify_src);
        sd_event_source_disable_unref(srv->drain_timer);
        sd_event_source_disable_unref(srv->pressure_timer);
        if (srv->reserve_fd >= 0)
                close(srv->reserve_fd);
        if (srv->notify_fd >= 0)
                close(srv->notify_fd);
        mx_load_free(&srv->load);
        free((char *)srv->model_dir);
        md_usage_free(&srv->usage);
        md_keys_free(&srv->keys);
        md_config_free(&srv->cfg);
        sd_event_unref(srv->event);
}

int main(int argc, char **argv) {
        md_log_init();
        md_server srv = {.listen = {{.fd = -1}, {.fd = -1}, {.fd = -1}}, .notify_fd = -1, .reserve_fd = -1,
                         .usage = {.lock_fd = -1}, .load = {.gpu = -1}};
        args a = {0};
        int r = parse_args(argc, argv, &srv, &a);
        if (r)
                return r;
        _cleanup_free_ char *user_config = NULL;
        srv.config_required = a.config != NULL;
        if (a.config)
                srv.config_path = a.config;
        else if (geteuid() == 0 && !srv.user_instance)
                srv.config_path = SYSTEM_CONFIG;
        else
                srv.config_path = user_config = user_path("XDG_CONFIG_HOME", ".config", "mixtrald/mixtrald.conf");
        mx_error err = {0};
        if (!srv.config_path)
                srv.config_path = SYSTEM_CONFIG;
        if (md_service_load_config(&srv, &srv.cfg, &err) < 0) {
                md_log(LOG_ERR, "%s", err.msg);
                sd_notifyf(false, "STATUS=Configuration error: %s", err.msg);
                return 1;
        }
        if (a.check_only) {
                r = check_config(&srv);
                md_config_free(&srv.cfg);
                free((char *)srv.model_dir);
                return r;
        }
        r = serve(&srv, &err);
        if (r < 0 && r != -EIO) {
                md_log(LOG_ERR, "%s", err.msg);
                sd_notifyf(false, "STATUS=Failed: %s\nERRNO=%d", err.msg, -r);
        } else if (r == 0)
                md_log(LOG_INFO, "stopped");
        teardown(&srv);
        return r < 0 ? 1 : 0;
}
