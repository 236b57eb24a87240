/* mixtral-run: the engine in-process, without the daemon. */
#include <getopt.h>
#include <math.h>
#include <sys/random.h>
#include <time.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "mx_common.h"
#include "mx_config.h"
#include "mx_progress.h"
#include "run.h"

static const char usage_text[] =
        "Usage:\n"
        "  mixtral-run --model DIR [GENERATION OPTIONS] PROMPT\n"
        "  mixtral-run --model DIR --bench [PROMPT] [--max-tokens N] [--threads N]\n"
        "  mixtral-run --model DIR --info\n"
        "  mixtral-run --model DIR --save FILE.gguf [--quantize TYPE]\n"
        "  mixtral-run --model DIR --perplexity TEXTFILE [--ctx N] [--kl-base MODEL]\n"
        "  mixtral-run --synthetic SHAPE [--layers N] --device cuda --bench [--batch 1,8,32]\n"
        "  mixtral-run (--tokenizer FILE | --model DIR) --tokenize PROMPT\n"
        "  mixtral-run (--tokenizer FILE | --model DIR) --decode \"ID ID ...\"\n"
        "  mixtral-run --devices\n"
        "  mixtral-run --make-demo DIR [--shape demo|b1] [--tokenizer FILE] [--seed N]\n"
        "  mixtral-run --make-demo DIR --synthetic SHAPE [--layers N]\n"
        "\n"
        "Runs the Mixtral engine offline, in this process: no daemon, no socket.\n"
        "With a prompt and no other action it generates, streaming the answer to\n"
        "standard output as it is produced.\n"
        "\n"
        "Model:\n"
        "  -m, --model DIR        a checkpoint directory: Hugging Face (config.json and\n"
        "                         model.safetensors or model-*.safetensors with\n"
        "                         model.safetensors.index.json) or mistral-inference\n"
        "                         (params.json and consolidated*.safetensors); its\n"
        "                         tokenizer is DIR/tokenizer.model or tokenizer.model.v1\n"
        "  -t, --tokenizer FILE   a SentencePiece tokenizer.model (overrides the one in DIR)\n"
        "      --synthetic SHAPE  instead of --model: random weights of a known shape, made\n"
        "                         in memory (on the GPU with --device cuda), no file:\n"
        "                         mixtral-8x7b (the real Mixtral's) or b1 (the CPU\n"
        "                         benchmark's); for --bench and --info where the real\n"
        "                         checkpoint is not at hand\n"
        "      --layers N         with --synthetic: use its first N layers (default: all;\n"
        "                         with --device cuda, as many as fit the GPU, said on\n"
        "                         standard error)\n"
        "\n"
        "Prompt (PROMPT is one of these):\n"
        "  -p, --prompt TEXT      raw text; the model sees BOS then its tokens\n"
        "  -f, --prompt-file PATH raw bytes of a file, - for standard input\n"
        "      --messages FILE    a conversation: a JSON array of {\"role\", \"content\"}\n"
        "                         objects, roles system, user and assistant (- = stdin);\n"
        "                         formatted as Mixtral-Instruct expects ([INST] ... [/INST])\n"
        "  -c, --chat TEXT        one user message, after those of --messages\n"
        "  -s, --system TEXT      a system prompt for the conversation\n"
        "\n"
        "Generation:\n"
        "  -n, --max-tokens N     stop after N generated tokens (default: until the end of\n"
        "                         the answer or of the context)\n"
        "      --temperature T    0 is greedy (always the likeliest token); default 0.8\n"
        "      --top-k K          sample among the K likeliest tokens; 0 = all; default 40\n"
        "      --top-p P          ... among the fewest holding probability P; default 0.95\n"
        "      --min-p P          ... drop tokens under P times the likeliest; default 0.05\n"
        "      --repeat-penalty R divide the logits of recent tokens by R; default 1 (off)\n"
        "      --repeat-last-n N  how many recent tokens the penalty sees; 0 = all; default 64\n"
        "      --seed S           the sampling seed; the same seed, the same text (default:\n"
        "                         a random one)\n"
        "      --stop STR         stop when STR appears (not printed); may be repeated\n"
        "      --ctx N            context length (default: the model's)\n"
        "      --threads N        CPU threads (default: every online core)\n"
        "      --simd ISA         auto, scalar, avx2 or avx512 (default auto; all give the\n"
        "                         same numbers, bit for bit)\n"
        "      --activations A    fast (default; on the CPU, activations rounded to int8\n"
        "                         blocks for quantized weights and to bf16 for bf16\n"
        "                         weights, multiplied with the CPU's dot-product\n"
        "                         instructions) or f32 (fp32 activations, the reference)\n"
        "      --bf16-plain       keep bf16 weights as mapped; by default, on AVX2 and\n"
        "                         AVX-512 with fast activations, they are packed at\n"
        "                         start-up (their exponents coded: the same values and\n"
        "                         results in about 0.77 of the bytes, which decode reads\n"
        "                         faster), a copy that costs that much memory and a\n"
        "                         moment to make\n"
        "      --quantize TYPE    quantize the weights as they load: q8_0, q4_0, q4_k_m,\n"
        "                         q5_k_m or q6_k (llama.cpp's types; the model's files\n"
        "                         stay as they are)\n"
        "      --device DEV       cpu (default), cuda or cuda:N (the N-th GPU): weights\n"
        "                         resident on the GPU in bf16 (f16/f32 checkpoints are\n"
        "                         rounded to it); needs the NVIDIA driver and cuBLAS\n"
        "      --expert-memory M  keep at most M of expert weights in memory and read the\n"
        "                         rest from the files as the router asks for them\n"
        "                         (io_uring): bytes with K, M, G, a percentage of all\n"
        "                         experts (50%), or min (top-k per layer); default all\n"
        "                         (on a GPU: all that fit, streaming the rest)\n"
        "      --host-cache M     on a GPU, streamed experts pass through M of page-locked\n"
        "                         RAM (as --expert-memory; default: all experts when\n"
        "                         they take under a quarter of the RAM, else a quarter)\n"
        "      --kv-type T        what the KV cache holds K and V as: bf16 (default) or f32\n"
        "      --kv-memory M      the KV cache's size: bytes with K, M, G, T, a percentage of\n"
        "                         the free memory (25%), or auto (a quarter of the free\n"
        "                         memory, half on a GPU, at most 8 contexts)\n"
        "      --ignore-eos       go on past the end of the answer (until --max-tokens or\n"
        "                         the context)\n"
        "      --print-ids        print the generated token ids (space-separated, one line)\n"
        "                         instead of text\n"
        "      --logits FILE      write the prompt's last-position logits to FILE: vocab\n"
        "                         little-endian float32 (with --max-tokens 0, nothing is\n"
        "                         generated)\n"
        "      --bench            measure prefill and decode speed and print one JSON object;\n"
        "                         without a prompt it uses 512 fixed tokens, decodes\n"
        "                         --max-tokens (default 64) greedily and ignores EOS\n"
        "      --batch LIST       with --bench: decode batch sizes, comma-separated\n"
        "                         (default 1); each sequence first reads 128 tokens\n"
        "      --depth N          with --bench: tokens each sequence reads before it\n"
        "                         decodes (default 128; at most the prompt's)\n"
        "\n"
        "Actions:\n"
        "      --tokenize         print the ids the model would see, BOS first, separated\n"
        "                         by spaces on one line, and exit; reads only the tokenizer\n"
        "      --decode IDS       print the text of space-separated token ids\n"
        "      --info             print the model's configuration and memory footprint\n"
        "      --save FILE.gguf   write the model (and its tokenizer) as a GGUF file that\n"
        "                         this tool, the daemon and llama.cpp load; with\n"
        "                         --quantize TYPE, quantized (once, instead of at every\n"
        "                         start; experts of such a file can stream)\n"
        "      --perplexity FILE  the model's perplexity on the text of FILE, in chunks of\n"
        "                         --ctx tokens (default 512), each scored on its second\n"
        "                         half; one JSON object on standard output\n"
        "      --kl-base MODEL    with --perplexity: also run MODEL (e.g. the bf16 one) on\n"
        "                         the same chunks: the KL divergence of this model's token\n"
        "                         distributions from MODEL's, and top-1 agreement\n"
        "      --devices          list the CPU and CUDA devices; runs a self-test kernel on\n"
        "                         each GPU\n"
        "      --make-demo DIR    write a random Mixtral (Hugging Face layout, two shards)\n"
        "                         into DIR: --shape demo (default; a few MB, needs the\n"
        "                         --tokenizer it will use) or b1 (the 791 M-parameter CPU\n"
        "                         benchmark shape, 1.6 GB; vocabulary 32000); with\n"
        "                         --synthetic SHAPE [--layers N], that synthetic model's\n"
        "                         weights, one shard per layer's experts (to measure\n"
        "                         expert streaming, which reads files, at full size)\n"
        "      --seed N           with --make-demo: the seed of the weights (default 1)\n"
        "  -h, --help             show this help\n"
        "      --version          show the version\n"
        "\n"
        "Exit status: 0 on success, 1 when the work failed (a bad model file, an\n"
        "unreadable prompt, a malformed conversation), 2 for wrong usage.\n"
        "\n"
        "The finish reason (eos, length, stop, context) and the speed go to standard\n"
        "error when it is a terminal.\n"
        "\n"
        "Examples:\n"
        "  mixtral-run --model ~/models/Mixtral-8x7B-Instruct-v0.1 --chat 'Hello!'\n"
        "  mixtral-run --model DIR --temperature 0 --max-tokens 32 --prompt 'Once upon'\n"
        "  mixtral-run --model ~/models/Mixtral-8x7B-Instruct-v0.1 --info\n"
        "  mixtral-run --model ~/models/Mixtral-8x7B-Instruct-v0.1 --tokenize \\\n"
        "      --system 'Be brief.' --chat 'What is a mixture of experts?'\n"
        "  echo 'Hello world' | mixtral-run --tokenizer tokenizer.model --tokenize -f -\n";

enum {
        OPT_TOKENIZE = 0x100,
        OPT_INFO,
        OPT_DEVICES,
        OPT_MESSAGES,
        OPT_MAKE_DEMO,
        OPT_SEED,
        OPT_DECODE,
        OPT_VERSION,
        OPT_TEMPERATURE,
        OPT_TOP_K,
        OPT_TOP_P,
        OPT_MIN_P,
        OPT_REPEAT_PENALTY,
        OPT_REPEAT_LAST_N,
        OPT_STOP,
        OPT_THREADS,
        OPT_CTX,
        OPT_SIMD,
        OPT_DEVICE,
        OPT_PRINT_IDS,
        OPT_IGNORE_EOS,
        OPT_BENCH,
        OPT_SHAPE,
        OPT_SYNTHETIC,
        OPT_LAYERS,
        OPT_BATCH,
        OPT_DEPTH,
        OPT_EXPERT_MEMORY,
        OPT_HOST_CACHE,
        OPT_KV_TYPE,
        OPT_KV_MEMORY,
        OPT_PERPLEXITY,
        OPT_KL_BASE,
        OPT_LOGITS,
        OPT_SAVE,
        OPT_ACTIVATIONS,
        OPT_BF16_PLAIN,
        OPT_QUANTIZE,
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "mixtral-run: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\nTry 'mixtral-run --help' for more information.\n");
        va_end(ap);
        return EXIT_USAGE;
}

static int parse_u64(const char *opt, const char *arg, unsigned long long *out) {
        char *end;
        errno = 0;
        *out = strtoull(arg, &end, 0);
        if (errno || *end || !*arg || *arg == '-')
                return usage_error("%s: '%s' is not a non-negative integer", opt, arg);
        return 0;
}

static int parse_u32(const char *opt, const char *arg, uint32_t min, uint32_t *out) {
        unsigned long long v;
        int r = parse_u64(opt, arg, &v);
        if (r == 0 && (v < min || v > UINT32_MAX))
                return usage_error("%s: '%s' is out of range", opt, arg);
        *out = (uint32_t)v;
        return r;
}

/* Range checks happen in mx_sampling_check, with the rest. */
static int parse_float(const char *opt, const char *arg, float *out) {
        char *end;
        errno = 0;
        *out = strtof(arg, &end);
        if (errno || *end || !*arg || !isfinite(*out))
                return usage_error("%s: '%s' is not a number", opt, arg);
        return 0;
}

static int add_stop(run_opts *o, const char *s) {
        const char **v = realloc(o->stop, (o->n_stop + 1) * sizeof(*v));
        if (!v)
                return usage_error("%s", "out of memory");
        o->stop = v;
        o->stop[o->n_stop++] = s;
        return 0;
}

/* "1,8,32": up to 16 sizes, each 1..1024. */
static int parse_batches(const char *arg, run_opts *o) {
        char copy[256];
        if (snprintf(copy, sizeof(copy), "%s", arg) >= (int)sizeof(copy))
                return usage_error("--batch: '%s' is too long", arg);
        o->n_batch = 0;
        char *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                uint32_t b = 0;
                if (o->n_batch == MX_ELEMENTSOF(o->batch))
                        return usage_error("--batch: at most %zu sizes", MX_ELEMENTSOF(o->batch));
                if (parse_u32("--batch", t, 1, &b) != 0)
                        return EXIT_USAGE;
                if (b > 1024)
                        return usage_error("--batch: %u is more than 1024 sequences", b);
                o->batch[o->n_batch++] = b;
        }
        return o->n_batch ? 0 : usage_error("--batch: '%s' names no size", arg);
}

static uint64_t random_seed(void) {
        uint64_t s = 0;
        if (getrandom(&s, sizeof(s), 0) != sizeof(s))
                s = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 32;
        return s;
}

static int parse_args(int argc, char **argv, run_opts *o) {
        static const struct option longopts[] = {
                {"model", required_argument, NULL, 'm'},
                {"tokenizer", required_argument, NULL, 't'},
                {"prompt", required_argument, NULL, 'p'},
                {"prompt-file", required_argument, NULL, 'f'},
                {"messages", required_argument, NULL, OPT_MESSAGES},
                {"chat", required_argument, NULL, 'c'},
                {"system", required_argument, NULL, 's'},
                {"tokenize", no_argument, NULL, OPT_TOKENIZE},
                {"decode", required_argument, NULL, OPT_DECODE},
                {"info", no_argument, NULL, OPT_INFO},
                {"devices", no_argument, NULL, OPT_DEVICES},
                {"make-demo", required_argument, NULL, OPT_MAKE_DEMO},
                {"seed", required_argument, NULL, OPT_SEED},
                {"help", no_argument, NULL, 'h'},
                {"version", no_argument, NULL, OPT_VERSION},
                {"max-tokens", required_argument, NULL, 'n'},
                {"temperature", required_argument, NULL, OPT_TEMPERATURE},
                {"top-k", required_argument, NULL, OPT_TOP_K},
                {"top-p", required_argument, NULL, OPT_TOP_P},
                {"min-p", required_argument, NULL, OPT_MIN_P},
                {"repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY},
                {"repeat-last-n", required_argument, NULL, OPT_REPEAT_LAST_N},
                {"stop", required_argument, NULL, OPT_STOP},
                {"threads", required_argument, NULL, OPT_THREADS},
                {"ctx", required_argument, NULL, OPT_CTX},
                {"simd", required_argument, NULL, OPT_SIMD},
                {"device", required_argument, NULL, OPT_DEVICE},
                {"print-ids", no_argument, NULL, OPT_PRINT_IDS},
                {"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
                {"bench", no_argument, NULL, OPT_BENCH},
                {"shape", required_argument, NULL, OPT_SHAPE},
                {"synthetic", required_argument, NULL, OPT_SYNTHETIC},
                {"layers", required_argument, NULL, OPT_LAYERS},
                {"batch", required_argument, NULL, OPT_BATCH},
                {"depth", required_argument, NULL, OPT_DEPTH},
                {"expert-memory", required_argument, NULL, OPT_EXPERT_MEMORY},
                {"host-cache", required_argument, NULL, OPT_HOST_CACHE},
                {"kv-type", required_argument, NULL, OPT_KV_TYPE},
                {"kv-memory", required_argument, NULL, OPT_KV_MEMORY},
                {"perplexity", required_argument, NULL, OPT_PERPLEXITY},
                {"kl-base", required_argument, NULL, OPT_KL_BASE},
                {"logits", required_argument, NULL, OPT_LOGITS},
                {"save", required_argument, NULL, OPT_SAVE},
                {"activations", required_argument, NULL, OPT_ACTIVATIONS},
                {"bf16-plain", no_argument, NULL, OPT_BF16_PLAIN},
                {"quantize", required_argument, NULL, OPT_QUANTIZE},
                {0},
        };
        int c;
        bool seeded = false;
        mx_sampling_defaults(&o->sampling);
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":m:t:p:f:c:s:n:h", longopts, NULL)) != -1) {
                int r = 0;
                switch (c) {
                case 'm': o->model = optarg; break;
                case 't': o->tokenizer = optarg; break;
                case 'p': o->prompt = optarg; break;
                case 'f': o->prompt_file = optarg; break;
                case 'c': o->chat = optarg; break;
                case 's': o->system = optarg; break;
                case OPT_MESSAGES: o->messages = optarg; break;
                case OPT_TOKENIZE: o->tokenize = true; break;
                case OPT_DECODE: o->decode = optarg; break;
                case OPT_INFO: o->info = true; break;
                case OPT_DEVICES: o->devices = true; break;
                case OPT_MAKE_DEMO: o->make_demo = optarg; break;
                case OPT_SEED:
                        r = parse_u64("--seed", optarg, &o->seed);
                        seeded = true;
                        break;
                case 'n': r = parse_u32("--max-tokens", optarg, 0, &o->max_tokens), o->max_tokens_given = true; break;
                case OPT_PERPLEXITY: o->perplexity = optarg; break;
                case OPT_KL_BASE: o->kl_base = optarg; break;
                case OPT_LOGITS: o->logits = optarg; break;
                case OPT_SAVE: o->save = optarg; break;
                case OPT_TEMPERATURE: r = parse_float("--temperature", optarg, &o->sampling.temperature); break;
                case OPT_TOP_K: r = parse_u32("--top-k", optarg, 0, &o->sampling.top_k); break;
                case OPT_TOP_P: r = parse_float("--top-p", optarg, &o->sampling.top_p); break;
                case OPT_MIN_P: r = parse_float("--min-p", optarg, &o->sampling.min_p); break;
                case OPT_REPEAT_PENALTY: r = parse_float("--repeat-penalty", optarg, &o->sampling.repeat_penalty); break;
                case OPT_REPEAT_LAST_N: r = parse_u32("--repeat-last-n", optarg, 0, &o->sampling.repeat_last_n); break;
                case OPT_THREADS: r = parse_u32("--threads", optarg, 1, &o->threads); break;
                case OPT_CTX: r = parse_u32("--ctx", optarg, 1, &o->ctx); break;
                case OPT_STOP: r = add_stop(o, optarg); break;
                case OPT_DEVICE: o->device = optarg; break;
                case OPT_PRINT_IDS: o->print_ids = true; break;
                case OPT_IGNORE_EOS: o->ignore_eos = true; break;
                case OPT_BENCH: o->bench = true; break;
                case OPT_SHAPE: o->shape = optarg; break;
                case OPT_SYNTHETIC: o->synthetic = optarg; break;
                case OPT_LAYERS: r = parse_u32("--layers", optarg, 1, &o->layers); break;
                case OPT_BATCH: r = parse_batches(optarg, o); break;
                case OPT_DEPTH: r = parse_u32("--depth", optarg, 1, &o->depth); break;
                case OPT_EXPERT_MEMORY: o->expert_memory = optarg; break;
                case OPT_HOST_CACHE: o->host_cache = optarg; break;
                case OPT_KV_TYPE: o->kv_type = optarg; break;
                case OPT_KV_MEMORY: o->kv_memory = optarg; break;
                case OPT_BF16_PLAIN: o->bf16_plain = true; break;
                case OPT_ACTIVATIONS:
                        if (mx_activations_from_string(optarg, &o->activations) < 0)
                                r = usage_error("--activations: '%s' is not one of auto, fast, f32", optarg);
                        break;
                case OPT_QUANTIZE:
                        if (mx_ftype_parse(optarg, &o->quantize) < 0)
                                r = usage_error("--quantize: '%s' is not one of q8_0, q4_0, q4_k_m, q5_k_m, q6_k",
                                                optarg);
                        break;
                case OPT_SIMD:
                        if (mx_simd_from_string(optarg, &o->simd) < 0)
                                r = usage_error("--simd: '%s' is not one of auto, scalar, avx2, avx512", optarg);
                        break;
                case 'h': fputs(usage_text, stdout); exit(0);
                case OPT_VERSION: printf("mixtral-run %s\n", MX_VERSION); exit(0);
                case ':': return usage_error("option '%s' needs an argument", argv[optind - 1]);
                default: return usage_error("unknown option '%s'", argv[optind - 1]);
                }
                if (r != 0)
                        return r;
        }
        o->sampling.seed = seeded ? o->seed : random_seed();
        if (!seeded)
                o->seed = 1;
        if (optind < argc)
                return usage_error("unexpected argument '%s' (a prompt goes after --prompt)", argv[optind]);
        return 0;
}

static int check_args(const run_opts *o) {
        int actions = o->tokenize + o->info + o->devices + !!o->make_demo + !!o->decode + o->bench + !!o->perplexity +
                      !!o->save;
        if (actions == 0 && !run_has_prompt(o))
                return usage_error("%s", "nothing to do: give a prompt (--prompt, --chat, ...) to generate, or "
                                         "--tokenize, --decode, --bench, --perplexity, --save, --info, --devices or "
                                         "--make-demo");
        if (actions > 1)
                return usage_error("%s", "give only one of --tokenize, --decode, --bench, --perplexity, --save, --info, "
                                         "--devices, --make-demo");
        if ((o->perplexity || o->save) && !o->model)
                return usage_error("%s", "--perplexity and --save need --model");
        if (o->kl_base && !o->perplexity)
                return usage_error("%s", "--kl-base goes with --perplexity");
        if (o->logits && (actions || !run_has_prompt(o)))
                return usage_error("%s", "--logits goes with a prompt to generate from (--max-tokens 0: no generation)");
        if (o->model && o->synthetic)
                return usage_error("%s", "--model and --synthetic exclude each other");
        if (o->layers && !o->synthetic)
                return usage_error("%s", "--layers goes with --synthetic");
        if ((o->n_batch || o->depth) && !o->bench)
                return usage_error("%s", "--batch and --depth go with --bench");
        if ((actions == 0 || o->bench) && !o->model && !o->synthetic)
                return usage_error("%s", "generating needs the weights: --model DIR");
        if (o->synthetic && actions == 0 && !o->tokenizer)
                return usage_error("%s", "generating text with --synthetic needs --tokenizer FILE");
        if (o->prompt && o->prompt_file)
                return usage_error("%s", "--prompt and --prompt-file exclude each other");
        if ((o->prompt || o->prompt_file) && (o->messages || o->chat))
                return usage_error("%s", "a raw prompt (--prompt, --prompt-file) excludes a conversation (--messages, --chat)");
        if (o->system && !o->messages && !o->chat)
                return usage_error("%s", "--system needs a conversation (--chat or --messages)");
        if (o->tokenize && !run_has_prompt(o))
                return usage_error("%s", "--tokenize needs a prompt: --prompt, --prompt-file, --messages or --chat");
        if ((o->tokenize || o->decode) && !o->model && !o->tokenizer)
                return usage_error("%s", "--tokenize and --decode need --tokenizer FILE or --model DIR");
        if (o->info && !o->model && !o->synthetic)
                return usage_error("%s", "--info needs --model DIR (or --synthetic SHAPE)");
        if (o->quantize && o->expert_memory)
                return usage_error("%s", "--quantize and --expert-memory exclude each other: streaming reads the "
                                         "experts from the files");
        if (o->host_cache && !run_on_gpu(o, NULL))
                return usage_error("%s", "--host-cache is for --device cuda (on the CPU, --expert-memory is the cache)");
        if (o->make_demo && o->synthetic && o->shape)
                return usage_error("%s", "--make-demo writes either --shape or --synthetic SHAPE, not both");
        if (o->make_demo && !o->tokenizer && !o->synthetic && !(o->shape && strcmp(o->shape, "b1") == 0))
                return usage_error("%s", "--make-demo needs --tokenizer FILE");
        return 0;
}

static int print_ids(const mx_ids *ids) {
        for (size_t i = 0; i < ids->n; i++)
                printf(i ? " %d" : "%d", ids->v[i]);
        printf("\n");
        return fflush(stdout) == 0 ? 0 : 1;
}

static int do_tokenize(const run_opts *o, mx_error *err) {
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok = NULL;
        _cleanup_(mx_ids_free) mx_ids ids = {0};
        if (run_load_tokenizer(o, &tok, err) < 0 || run_prompt_ids(o, tok, &ids, err) < 0)
                return run_fail(err);
        return print_ids(&ids);
}

static int parse_ids(const char *s, mx_ids *ids, mx_error *err) {
        while (*s) {
                char *end;
                if (strchr(" \t\n,", *s)) {
                        s++;
                        continue;
                }
                errno = 0;
                long v = strtol(s, &end, 10);
                if (end == s || errno || v < 0 || v > INT32_MAX)
                        return mx_error_set(err, -EINVAL, "--decode: '%.20s' is not a token id", s);
                if (mx_ids_push(ids, (int32_t)v) < 0)
                        return mx_error_set(err, -ENOMEM, "out of memory");
                s = end;
        }
        return 0;
}

static int do_decode(const run_opts *o, mx_error *err) {
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok = NULL;
        _cleanup_(mx_ids_free) mx_ids ids = {0};
        _cleanup_(mx_buf_free) mx_buf text = {0};
        if (run_load_tokenizer(o, &tok, err) < 0 || parse_ids(o->decode, &ids, err) < 0)
                return run_fail(err);
        for (size_t i = 0; i < ids.n; i++)
                if ((uint32_t)ids.v[i] >= mx_tokenizer_vocab_size(tok)) {
                        mx_error_set(err, -EINVAL, "--decode: id %d is outside the vocabulary of %u",
                                     ids.v[i], mx_tokenizer_vocab_size(tok));
                        return run_fail(err);
                }
        int r = mx_detokenize(tok, ids.v, ids.n, &text);
        if (r < 0) {
                mx_error_set(err, r, "--decode: %s", strerror(-r));
                return run_fail(err);
        }
        fwrite(text.p, 1, text.n, stdout);
        putchar('\n');
        return fflush(stdout) == 0 ? 0 : 1;
}

static int do_info(const run_opts *o, mx_error *err) {
        _cleanup_(mx_model_freep) mx_model *m = NULL;
        /* The shape is all --info needs: no synthetic weights are made. */
        int r = o->synthetic ? mx_model_synthetic(&m, o->synthetic, o->layers, false, err)
                             : mx_model_open(&m, o->model, err);
        if (r < 0)
                return run_fail(err);
        return run_info(m);
}

static void writing(uint64_t done, uint64_t total, void *bar) {
        mx_progress_bar_show(bar, "writing model", done, total);
}

static int do_make_demo(const run_opts *o, mx_error *err) {
        if (mkdir(o->make_demo, 0755) < 0 && errno != EEXIST) {
                mx_error_set(err, -errno, "%s: %s", o->make_demo, strerror(errno));
                return run_fail(err);
        }
        if (o->synthetic) {
                _cleanup_(mx_model_freep) mx_model *m = NULL;
                mx_progress_bar b = mx_progress_bar_new(isatty(STDERR_FILENO) == 1);
                if (mx_model_synthetic(&m, o->synthetic, o->layers, false, err) < 0 ||
                    mx_synthetic_write(m, o->make_demo, writing, &b, err) < 0)
                        return run_fail(err);
        } else if (mx_demo_model_write(o->make_demo, o->shape, o->tokenizer, o->seed, err) < 0) {
                return run_fail(err);
        }
        fprintf(stderr, "mixtral-run: wrote a demo model to %s\n", o->make_demo);
        return 0;
}

static int dispatch(run_opts o) {
        mx_error err = {0};
        if (o.devices)
                return run_devices();
        if (o.make_demo)
                return do_make_demo(&o, &err);
        if (o.tokenize)
                return do_tokenize(&o, &err);
        if (o.decode)
                return do_decode(&o, &err);
        if (o.info)
                return do_info(&o, &err);
        if (o.save)
                return run_save(&o);
        if (o.perplexity)
                return run_perplexity(&o);
        mx_error check = {0};
        if (mx_sampling_check(&o.sampling, &check) < 0)
                return usage_error("%s", check.msg);
        return o.bench ? run_bench(&o) : run_generate(&o);
}

int main(int argc, char **argv) {
        run_opts o = {0};
        int r = parse_args(argc, argv, &o);
        if (r == 0)
                r = check_args(&o);
        if (r == 0)
                r = dispatch(o);
        free(o.stop);
        return r;
}
