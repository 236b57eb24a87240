/* mixtral: ask mixtrald, the local Mixtral daemon. The command line and
 * what each command is; the work is in the other files of client/. */
#include <getopt.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "client.h"
#include "mx_common.h"

static const char usage_text[] =
        "Usage:\n"
        "  mixtral [OPTIONS] PROMPT...\n"
        "  COMMAND | mixtral [OPTIONS] [PROMPT...]\n"
        "  mixtral chat [OPTIONS]\n"
        "  mixtral status [--json] [--socket PATH]\n"
        "  mixtral quota [--json] [--socket PATH]\n"
        "  mixtral key new [NAME] | list | revoke ID  [--json] [--socket PATH]\n"
        "\n"
        "Asks mixtrald, the local Mixtral daemon, and streams its answer to standard\n"
        "output. It never loads a model itself (mixtral-run does that).\n"
        "\n"
        "The prompt is the PROMPT words joined by single spaces. When standard input\n"
        "is not a terminal it is read to its end and appended after a blank line:\n"
        "the prompt is then PROMPT, \"\\n\\n\", and the input exactly as read, so\n"
        "'git diff | mixtral review this' works. Without PROMPT words the input alone\n"
        "is the prompt; empty input adds nothing (scripts with nothing to pipe should\n"
        "say </dev/null). A prompt whose first word is chat, status, quota or key\n"
        "goes after --.\n"
        "\n"
        "How much input the daemon takes is its max_frame_bytes (1 MiB unless its\n"
        "administrator set more); a larger request is refused with exit status 10\n"
        "and a message saying both sizes. mixtral itself reads at most 64 MiB.\n"
        "\n"
        "Commands:\n"
        "  chat                   a conversation: each line is a message (\"\"\" blocks,\n"
        "                         a trailing \\ and pastes make longer ones), the\n"
        "                         answers are remembered; line editing and history on\n"
        "                         a terminal. /help in the chat lists its commands\n"
        "  status                 the daemon's state (loading and how far, serving,\n"
        "                         draining), model, device, queue, memory and the\n"
        "                         requests you may see\n"
        "  quota                  your limits and how much of them you have used\n"
        "  key new [NAME]         an API key for the daemon's HTTP API on TCP, printed\n"
        "                         once (the daemon keeps only its hash); key list\n"
        "                         shows yours, key revoke ID withdraws one\n"
        "\n"
        "Prompt:\n"
        "  -s, --system TEXT      a system prompt (default: none)\n"
        "      --raw              send the prompt as plain text; by default it is one\n"
        "                         user message in the chat template ([INST] ... [/INST]);\n"
        "                         not with --system\n"
        "\n"
        "Generation (not given: the daemon's default, shown here as shipped):\n"
        "  -n, --max-tokens N     stop after N tokens (default: your quota's limit, and\n"
        "                         the end of the answer or of the context)\n"
        "      --temperature T    0 is greedy (always the likeliest token); default 0.8\n"
        "      --top-k K          sample among the K likeliest tokens; 0 = all;\n"
        "                         default 40\n"
        "      --top-p P          ... among the fewest holding probability P, (0, 1];\n"
        "                         default 0.95\n"
        "      --min-p P          ... drop tokens under P times the likeliest, [0, 1];\n"
        "                         default 0.05\n"
        "      --repeat-penalty R divide the logits of recent tokens by R; default 1 (off)\n"
        "      --seed N           the sampling seed: the same seed, the same text\n"
        "                         (default: a random one)\n"
        "      --stop STR         stop when STR appears (not printed); may be repeated\n"
        "      --ignore-eos       go on past the end of the answer, until --max-tokens\n"
        "                         or the context (for benchmarks)\n"
        "\n"
        "Output and connection:\n"
        "      --json             one JSON object per line: the events accepted, chunk,\n"
        "                         finished (with usage and note) and error (also for\n"
        "                         UNREACHABLE, CONNECTION_LOST, TOO_LARGE); status,\n"
        "                         quota and key print one object with all their fields\n"
        "      --ids              with --json, the token ids of each chunk (token_ids)\n"
        "      --socket PATH      the daemon's socket (default: $MIXTRALD_SOCKET, else\n"
        "                         " MXP_SYSTEM_SOCKET " when it exists, else\n"
        "                         $XDG_RUNTIME_DIR/mixtrald.sock)\n"
        "      --reconnect S      chat: when the daemon goes away, wait up to S seconds\n"
        "                         for it to come back and ask again (default 60; 0:\n"
        "                         leave at once, with exit status 9)\n"
        "  -h, --help             show this help\n"
        "      --version          show the version\n"
        "\n"
        "Ctrl-C cancels the request in the daemon and exits with 130; a second\n"
        "Ctrl-C does not wait for the daemon's confirmation.\n"
        "\n"
        "In a chat: /reset forgets the conversation, /system TEXT sets the system\n"
        "prompt (/system alone clears it), /quit or Ctrl-D leaves, /help lists these.\n"
        "A line that starts with \"\"\" opens a block of lines, sent as one message when\n"
        "a line ends with \"\"\"; a line that ends with \\ goes on on the next one. On a\n"
        "terminal a paste of several lines is one message, sent by the Enter typed\n"
        "after it. Ctrl-C cancels the answer being written, or drops the message at\n"
        "the prompt.\n"
        "\n"
        "When the answer is cut short by your quota rather than by what you asked,\n"
        "a note says so on standard error.\n"
        "\n"
        "Environment:\n"
        "  MIXTRALD_SOCKET        the socket when --socket is not given\n"
        "  XDG_RUNTIME_DIR        where a per-user daemon's socket is\n"
        "  XDG_STATE_HOME         the chat history is $XDG_STATE_HOME/mixtral/history\n"
        "                         (default ~/.local/state/mixtral/history)\n"
        "\n"
        "Exit status:\n"
        "    0  success\n"
        "    1  internal error (INTERNAL, ERROR_UNSPECIFIED, an unexpected reply,\n"
        "       out of memory, output not writable)\n"
        "    2  usage error\n"
        "    3  the daemon cannot be reached\n"
        "    4  INVALID_ARGUMENT or NOT_FOUND\n"
        "    5  QUOTA_EXCEEDED\n"
        "    6  BUSY (the daemon's queue is full)\n"
        "    7  TOO_LONG (the prompt does not fit the context)\n"
        "    8  CANCELLED or UNAVAILABLE (the daemon cancelled, or is stopping)\n"
        "    9  the connection was lost or broke mid-request, or BAD_FRAME; in a\n"
        "       chat, the daemon went away and did not come back in time\n"
        "   10  the input is larger than the daemon accepts (max_frame_bytes) or\n"
        "       than mixtral reads\n"
        "  130  interrupted by Ctrl-C\n"
        "\n"
        "Examples:\n"
        "  mixtral 'What is a mixture of experts?'\n"
        "  git diff | mixtral --system 'You are a careful reviewer.' review this\n"
        "  mixtral --raw --temperature 0 -n 32 'Once upon a time'\n"
        "  mixtral --json --seed 1 'Hello' | jq -r 'select(.event == \"chunk\") | .text'\n"
        "  mixtral chat --temperature 0.3\n"
        "  mixtral -- status of the project: summarise it\n"
        "\n"
        "See mixtral(1) and mixtrald(8).\n";

enum {
        OPT_TEMPERATURE = 0x100,
        OPT_TOP_K,
        OPT_TOP_P,
        OPT_MIN_P,
        OPT_REPEAT_PENALTY,
        OPT_SEED,
        OPT_STOP,
        OPT_RAW,
        OPT_IGNORE_EOS,
        OPT_JSON,
        OPT_IDS,
        OPT_SOCKET,
        OPT_RECONNECT,
        OPT_VERSION,
};

int mxc_usage_error(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "mixtral: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\nTry 'mixtral --help' for more information.\n");
        va_end(ap);
        return MXC_EXIT_USAGE;
}

typedef enum command { CMD_PROMPT, CMD_CHAT, CMD_STATUS, CMD_QUOTA, CMD_KEY } command;

typedef struct args {
        mxc_opts opts;
        command cmd;
        const char *cmd_name;
        const char *socket_option;
        bool reconnect_given;
        char gen_option[64];     /* the first generation option given */
        char **words;            /* the PROMPT words */
        size_t n_words;
        bool exit_now;           /* --help, --version */
} args;

static int parse_u64(const char *opt, const char *arg, uint64_t *out) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(arg, &end, 0);
        /* strtoull takes "-1" for ULLONG_MAX: a digit must come first. */
        if (errno || *end || !(*arg >= '0' && *arg <= '9')) {
                mxc_usage_error("%s: '%s' is not a non-negative integer", opt, arg);
                return -EINVAL;
        }
        *out = v;
        return 0;
}

static int parse_u32(const char *opt, const char *arg, uint32_t *out) {
        uint64_t v;
        int r = parse_u64(opt, arg, &v);
        if (r < 0)
                return r;
        if (v > UINT32_MAX) {
                mxc_usage_error("%s: '%s' is out of range", opt, arg);
                return -ERANGE;
        }
        *out = (uint32_t)v;
        return 0;
}

/* Ranges are the daemon's to check (it says INVALID_ARGUMENT); here only
 * whether it is a number at all. */
static int parse_double(const char *opt, const char *arg, double *out) {
        char *end;
        errno = 0;
        double v = strtod(arg, &end);
        if (errno || *end || !*arg || !isfinite(v)) {
                mxc_usage_error("%s: '%s' is not a number", opt, arg);
                return -EINVAL;
        }
        *out = v;
        return 0;
}

static int add_stop(Mixtrald__V1__Generate *g, char *s) {
        char **v = realloc(g->stop, (g->n_stop + 1) * sizeof(*v));
        if (!v)
                return -ENOMEM;
        g->stop = v;
        g->stop[g->n_stop++] = s;
        return 0;
}

static int parse_option(args *a, int c, const char *name, char *arg) {
        Mixtrald__V1__Generate *g = &a->opts.gen;
        int r = 0;
        switch (c) {
        case 's':
                g->system = arg;
                break;
        case 'n':
                r = parse_u32(name, arg, &g->max_tokens);
                g->has_max_tokens = true;
                break;
        case OPT_TEMPERATURE:
                r = parse_double(name, arg, &g->temperature);
                g->has_temperature = true;
                break;
        case OPT_TOP_K:
                r = parse_u32(name, arg, &g->top_k);
                g->has_top_k = true;
                break;
        case OPT_TOP_P:
                r = parse_double(name, arg, &g->top_p);
                g->has_top_p = true;
                break;
        case OPT_MIN_P:
                r = parse_double(name, arg, &g->min_p);
                g->has_min_p = true;
                break;
        case OPT_REPEAT_PENALTY:
                r = parse_double(name, arg, &g->repeat_penalty);
                g->has_repeat_penalty = true;
                break;
        case OPT_SEED:
                r = parse_u64(name, arg, &g->seed);
                g->has_seed = true;
                break;
        case OPT_STOP:
                if ((r = add_stop(g, arg)) < 0)
                        fprintf(stderr, "mixtral: out of memory\n");
                break;
        case OPT_RAW:
                g->has_raw = true;
                g->raw = true;
                break;
        case OPT_IGNORE_EOS:
                g->has_ignore_eos = true;
                g->ignore_eos = true;
                break;
        case OPT_IDS:
                a->opts.ids = true;
                g->has_want_token_ids = true;
                g->want_token_ids = true;
                break;
        default:
                return 0; /* not a generation option */
        }
        if (!a->gen_option[0])
                snprintf(a->gen_option, sizeof(a->gen_option), "%s", name);
        return r;
}

static int parse_args(int argc, char **argv, args *a) {
        static const struct option longopts[] = {
                {"system", required_argument, NULL, 's'},
                {"max-tokens", required_argument, NULL, 'n'},
                {"temperature", required_argument, NULL, OPT_TEMPERATURE},
                {"top-k", required_argument, NULL, OPT_TOP_K},
                {"top-p", required_argument, NULL, OPT_TOP_P},
                {"min-p", required_argument, NULL, OPT_MIN_P},
                {"repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY},
                {"seed", required_argument, NULL, OPT_SEED},
                {"stop", required_argument, NULL, OPT_STOP},
                {"raw", no_argument, NULL, OPT_RAW},
                {"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
                {"json", no_argument, NULL, OPT_JSON},
                {"ids", no_argument, NULL, OPT_IDS},
                {"socket", required_argument, NULL, OPT_SOCKET},
                {"reconnect", required_argument, NULL, OPT_RECONNECT},
                {"help", no_argument, NULL, 'h'},
                {"version", no_argument, NULL, OPT_VERSION},
                {},
        };
        a->words = calloc((size_t)argc + 1, sizeof(*a->words));
        if (!a->words) {
                fprintf(stderr, "mixtral: out of memory\n");
                return -ENOMEM;
        }
        a->cmd = CMD_PROMPT;
        /* "-": words come back in order as 1, so the first one can be a
         * command while one after "--" (left in argv) never is. ":": our
         * own messages for a missing argument. */
        int c, idx;
        opterr = 0;
        for (;;) {
                idx = -1;
                if ((c = getopt_long(argc, argv, "-:hs:n:", longopts, &idx)) == -1)
                        break;
                const char *typed = argv[optind - 1];
                /* The option as the user will recognise it in a message. */
                char name[64];
                if (idx >= 0)
                        snprintf(name, sizeof(name), "--%s", longopts[idx].name);
                else
                        snprintf(name, sizeof(name), "-%c", c);
                switch (c) {
                case 1:
                        if (a->n_words == 0 && a->cmd == CMD_PROMPT &&
                            (!strcmp(optarg, "chat") || !strcmp(optarg, "status") || !strcmp(optarg, "quota") ||
                             !strcmp(optarg, "key"))) {
                                a->cmd = optarg[0] == 'c'   ? CMD_CHAT
                                         : optarg[0] == 's' ? CMD_STATUS
                                         : optarg[0] == 'q' ? CMD_QUOTA
                                                            : CMD_KEY;
                                a->cmd_name = optarg;
                        } else {
                                a->words[a->n_words++] = optarg;
                        }
                        break;
                case 'h':
                        fputs(usage_text, stdout);
                        a->exit_now = true;
                        return 0;
                case OPT_VERSION:
                        printf("mixtral %s\n", MIXTRAL_VERSION);
                        a->exit_now = true;
                        return 0;
                case OPT_JSON:
                        a->opts.json = true;
                        break;
                case OPT_SOCKET:
                        a->socket_option = optarg;
                        break;
                case OPT_RECONNECT:
                        if (parse_u32(name, optarg, &a->opts.reconnect_s) < 0)
                                return -EINVAL;
                        a->reconnect_given = true;
                        break;
                case ':':
                        mxc_usage_error("option '%s' needs an argument", typed);
                        return -EINVAL;
                case '?':
                        if (optopt && optopt < 0x100 && strncmp(typed, "--", 2) != 0)
                                mxc_usage_error("unknown option '-%c'", optopt);
                        else
                                mxc_usage_error("unknown option '%s'", typed);
                        return -EINVAL;
                default: {
                        int r = parse_option(a, c, name, optarg);
                        if (r < 0)
                                return r;
                        break;
                }
                }
        }
        for (int i = optind; i < argc; i++)
                a->words[a->n_words++] = argv[i];

        if (a->cmd != CMD_PROMPT && a->cmd != CMD_KEY && a->n_words) {
                mxc_usage_error("unexpected argument '%s' (%s takes none; a prompt starting with '%s' goes "
                                "after --)",
                                a->words[0], a->cmd_name, a->cmd_name);
                return -EINVAL;
        }
        if ((a->cmd == CMD_STATUS || a->cmd == CMD_QUOTA || a->cmd == CMD_KEY) && a->gen_option[0]) {
                mxc_usage_error("%s does not apply to %s", a->gen_option, a->cmd_name);
                return -EINVAL;
        }
        if (a->cmd != CMD_CHAT && a->reconnect_given) {
                mxc_usage_error("%s", "--reconnect applies to chat only");
                return -EINVAL;
        }
        if (a->opts.gen.raw && a->opts.gen.system) {
                mxc_usage_error("%s", "--system needs the chat template; it does not go with --raw");
                return -EINVAL;
        }
        if (a->cmd == CMD_CHAT && a->opts.gen.raw) {
                mxc_usage_error("%s", "--raw does not apply to chat (a conversation always uses the chat template)");
                return -EINVAL;
        }
        return 0;
}

static void args_free(args *a) {
        free(a->words);
        free(a->opts.gen.stop);
}

int main(int argc, char **argv) {
        /* Only the character type: numbers on the command line keep their
         * '.' whatever LC_NUMERIC says; libedit needs the encoding. */
        setlocale(LC_CTYPE, "");
        _cleanup_(args_free) args a = {.opts.gen = MIXTRALD__V1__GENERATE__INIT, .opts.reconnect_s = MXC_RECONNECT_S};
        int r = parse_args(argc, argv, &a);
        if (r == -ENOMEM)
                return MXC_EXIT_INTERNAL;
        if (r < 0)
                return MXC_EXIT_USAGE;
        if (a.exit_now)
                return fflush(stdout) == 0 ? MXC_EXIT_OK : MXC_EXIT_INTERNAL;
        char buf[PATH_MAX];
        a.opts.socket = mxp_default_socket(a.socket_option, buf, sizeof(buf));
        r = mxc_intr_setup();
        if (r < 0) {
                fprintf(stderr, "mixtral: cannot set up Ctrl-C handling: %s\n", strerror(-r));
                return MXC_EXIT_INTERNAL;
        }
        switch (a.cmd) {
        case CMD_CHAT:
                return mxc_cmd_chat(&a.opts);
        case CMD_STATUS:
                return mxc_cmd_status(&a.opts);
        case CMD_QUOTA:
                return mxc_cmd_quota(&a.opts);
        case CMD_KEY:
                return mxc_cmd_key(&a.opts, a.words, a.n_words);
        case CMD_PROMPT:
        default:
                return mxc_cmd_prompt(&a.opts, a.words, a.n_words);
        }
}
