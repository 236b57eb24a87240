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
#include "mixtrald.h"

#define SYSTEM_CONFIG "/etc/mixtrald/mixtrald.conf"

static const char usage_text[] =
        "Usage: mixtrald [--model DIR] [OPTIONS]\n"
        "\n"
        "The Mixtral inference daemon: keeps the model in memory and serves every\n"
        "local user over a Unix socket (protobuf, DESIGN.md section 5), with\n"
        "per-user quotas. Runs under systemd (socket activation, Type=notify,\n"
        "watchdog) or by hand as any user.\n"
        "\n"
        "Options (each overrides the [daemon] key of the same name in the file):\n"
        "  -m, --model DIR            the checkpoint directory (Hugging Face or\n"
        "                             mistral-inference layout)\n"
        "      --device DEV           cpu (default) or cuda\n"
        "  -s, --socket PATH          the socket to create, when systemd passes none\n"
        "                             (default: " MXP_SYSTEM_SOCKET " for root,\n"
        "                             else $XDG_RUNTIME_DIR/mixtrald.sock)\n"
        "  -c, --config PATH          the configuration file (default " SYSTEM_CONFIG
        " for\n"
        "                             root, else ~/.config/mixtrald/mixtrald.conf; a\n"
        "                             missing default file means built-in defaults)\n"
        "      --state-directory DIR  where usage is kept (default $STATE_DIRECTORY, or\n"
        "                             /var/lib/mixtrald for root, else\n"
        "                             ~/.local/state/mixtrald)\n"
        "      --threads N            CPU threads for the engine (default: every core)\n"
        "      --max-frame-bytes N    largest request accepted (default 1M)\n"
        "      --socket-mode MODE     octal mode of a socket made here (default 0666)\n"
        "      --bus BUS              D-Bus: system, session, none, or auto (default: the\n"
        "                             system bus for root, the session bus with --user;\n"
        "                             auto goes on without one when it is not there)\n"
        "      --user                 a per-user instance: session bus, and the socket,\n"
        "                             configuration and state under the user's own\n"
        "                             directories even when run as root\n"
        "      --check-config         read the configuration, report, and exit\n"
        "  -h, --help                 this text\n"
        "      --version              the version\n"
        "\n"
        "Configuration (INI; see mixtrald(8) and docs/daemon.md):\n"
        "  [daemon]  model device socket socket_mode state_directory max_frame_bytes bus\n"
        "            threads admin_group max_batch max_queue max_connections_per_uid\n"
        "            max_output_bytes prefill_chunk drain_seconds expert_memory\n"
        "            memory_pressure host_cache\n"
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
        "\n"
        "Signals: SIGHUP reloads the configuration (limits, quotas, expert_memory;\n"
        "model, device, host_cache, socket and state directory change only at\n"
        "restart). SIGTERM stops: new requests are refused, queued ones end with\n"
        "UNAVAILABLE, running ones may finish for drain_seconds (default 30), then the\n"
        "rest are aborted; a second SIGTERM aborts at once. Exit status 0 after a\n"
        "stop, 1 on a start-up error, 2 for a usage error.\n";

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
               OPT_USER };
        static const struct option opts[] = {
                {"model", required_argument, NULL, 'm'},     {"device", required_argument, NULL, OPT_DEVICE},
                {"socket", required_argument, NULL, 's'},    {"config", required_argument, NULL, 'c'},
                {"state-directory", required_argument, NULL, OPT_STATE},
                {"threads", required_argument, NULL, OPT_THREADS},
                {"max-frame-bytes", required_argument, NULL, OPT_FRAME},
                {"socket-mode", required_argument, NULL, OPT_MODE},
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

typedef struct load_progress {
        time_t last;
        const char *what; /* "Loading the model", "Loading the model onto the GPU" */
} load_progress;

/* Every second while pages come in: progress for systemctl status, and
 * more start-up time, so that a 90 GB model is not killed half-read. */
static void on_progress(uint64_t done, uint64_t total, void *arg) {
        load_progress *p = arg;
        time_t now = time(NULL);
        if (now == p->last && done != total)
                return;
        p->last = now;
        /* WATCHDOG=1 too: the event loop that otherwise sends it is not
         * running yet. */
        sd_notifyf(false, "STATUS=%s: %.1f of %.1f GiB (%d%%)\nEXTEND_TIMEOUT_USEC=%llu\nWATCHDOG=1", p->what,
                   (double)done / (1u << 30), (double)total / (1u << 30), total ? (int)(done * 100 / total) : 100,
                   30000000ull);
}


static int load(md_server *srv, mx_error *err) {
        if (!srv->cfg.model)
                return mx_error_set(err, -EINVAL, "no model: give --model DIR or model= in [daemon]");
        /* Status and D-Bus show where the model is, whatever the cwd was. */
        if (!(srv->model_dir = realpath(srv->cfg.model, NULL)))
                return mx_error_set(err, -errno, "%s: %s", srv->cfg.model, strerror(errno));
        sd_notifyf(false, "STATUS=Opening %s\nEXTEND_TIMEOUT_USEC=%llu", srv->model_dir, 30000000ull);
        int r = mx_model_open(&srv->model, srv->model_dir, err);
        if (r < 0 || (r = mx_model_load_tokenizer(srv->model, &srv->tok, err)) < 0)
                return r;
        const char *budget = srv->cfg.expert_memory ? srv->cfg.expert_memory : "auto";
        if ((r = mx_expert_budget_parse(budget, srv->model, &srv->expert_budget, err)) < 0)
                return r;
        srv->expert_now = srv->expert_budget;
        uint64_t host_cache = 0;
        if (srv->cfg.host_cache && (r = mx_host_cache_parse(srv->cfg.host_cache, srv->model, &host_cache, err)) < 0)
                return r;
        int gpu = -1;
        mx_device_parse(srv->cfg.device, &gpu);
        if (srv->cfg.host_cache && gpu < 0)
                md_log(LOG_NOTICE, "host_cache is for device=cuda: on the CPU, expert_memory is the cache");
        /* Streaming reads the files for experts only, and survives a file
         * changed under it (a request fails, not the daemon). A GPU reads
         * the mapping once, as it uploads. */
        if (srv->expert_budget && gpu < 0 && (r = mx_model_copy_dense(srv->model, err)) < 0)
                return r;
        /* Streaming reads the experts itself: paging the files in would
         * defeat it. */
        if (!srv->expert_budget && gpu < 0 && mx_model_fits_in_memory(srv->model))
                mx_model_prefault(srv->model, on_progress, &(load_progress){0, "Loading the model"});
        /* A GPU engine uploads the weights as it opens: the same progress. */
        mx_engine_opts eo = {.device = srv->cfg.device, .threads = srv->cfg.threads,
                             .expert_memory = srv->expert_budget, .host_cache = host_cache,
                             .progress = on_progress,
                             .progress_arg = &(load_progress){0, "Loading the model onto the GPU"}};
        if ((r = mx_engine_open(&srv->engine, srv->model, &eo, err)) < 0)
                return r;
        mx_expert_stats xs;
        mx_engine_expert_stats(srv->engine, &xs);
        srv->host_cache_budget = srv->host_cache_now = xs.host_budget;
        mx_footprint fp;
        mx_model_footprint(srv->model, &fp);
        srv->kv_bytes_per_token = fp.kv_bytes_per_token;
        srv->context_length = srv->model->cfg.max_position_embeddings;
        md_log(LOG_INFO, "model %s: %.2f GiB of weights on %s, context %u", srv->model_dir,
               (double)fp.bytes / (1u << 30), mx_engine_describe(srv->engine), srv->context_length);
        return 0;
}

/* ---- running ---------------------------------------------------------------- */

static int serve(md_server *srv, mx_error *err) {
        int r = md_usage_open(&srv->usage, srv->cfg.state_directory, err);
        if (r < 0)
                return r;
        if ((r = sd_event_default(&srv->event)) < 0 || (r = md_service_signals(srv)) < 0)
                return mx_error_set(err, r, "event loop: %s", strerror(-r));
        if ((r = load(srv, err)) < 0)
                return r;
        if ((srv->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
                return mx_error_set(err, -errno, "eventfd: %s", strerror(errno));
        md_sched_opts so = md_server_sched_opts(srv);
        if ((r = md_sched_start(&srv->sched, srv->engine, srv->tok, &so, srv->notify_fd, err)) < 0 ||
            (r = md_pressure_start(srv, err)) < 0)
                return r;
        if ((r = sd_event_add_io(srv->event, &srv->notify_src, srv->notify_fd, EPOLLIN, md_service_after_engine,
                                 srv)) < 0)
                return mx_error_set(err, r, "event loop: %s", strerror(-r));
        if ((r = md_service_listen(srv, srv->cfg.socket, err)) < 0 || (r = md_dbus_start(srv, err)) < 0)
                return r;
        srv->t_start = md_now();
        sd_notifyf(false, "READY=1\nSTATUS=Serving %s on %s", srv->model_dir, mx_engine_describe(srv->engine));
        md_log(LOG_INFO, "ready");
        if ((r = sd_event_loop(srv->event)) < 0)
                return mx_error_set(err, r, "event loop: %s", strerror(-r));
        return 0;
}

static void teardown(md_server *srv) {
        if (srv->sched) {
                md_sched_stop(srv->sched, MIXTRALD__V1__ERROR_CODE__UNAVAILABLE, "the daemon stopped");
                /* Requests the thread ended on its way out: charged and freed. */
                if (srv->notify_fd >= 0)
                        md_server_on_engine(NULL, srv->notify_fd, 0, srv);
        }
        md_dbus_stop(srv);
        while (srv->conns)
                md_conn_free(srv->conns);
        md_sched_free(srv->sched);
        sd_event_source_disable_unref(srv->listen_src);
        sd_event_source_disable_unref(srv->notify_src);
        sd_event_source_disable_unref(srv->drain_timer);
        if (srv->created_socket)
                unlink(srv->created_socket);
        free(srv->created_socket);
        if (srv->listen_fd >= 0)
                close(srv->listen_fd);
        if (srv->notify_fd >= 0)
                close(srv->notify_fd);
        free(srv->live);
        free(srv->ship);
        mx_engine_free(srv->engine);
        mx_tokenizer_free(srv->tok);
        mx_model_free(srv->model);
        free((char *)srv->model_dir);
        md_usage_free(&srv->usage);
        md_config_free(&srv->cfg);
        sd_event_unref(srv->event);
}

int main(int argc, char **argv) {
        md_log_init();
        md_server srv = {.listen_fd = -1, .notify_fd = -1};
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
                printf("%s: OK (model %s, socket %s, state %s, %zu user/group sections)\n", srv.config_path,
                       srv.cfg.model ? srv.cfg.model : "(unset)", srv.cfg.socket, srv.cfg.state_directory,
                       srv.cfg.n_sections);
                md_config_free(&srv.cfg);
                return 0;
        }
        r = serve(&srv, &err);
        if (r < 0) {
                md_log(LOG_ERR, "%s", err.msg);
                sd_notifyf(false, "STATUS=Failed: %s\nERRNO=%d", err.msg, -r);
        } else
                md_log(LOG_INFO, "stopped");
        teardown(&srv);
        return r < 0 ? 1 : 0;
}
