/* libmixtral: the public interface of the engine.
 *
 * One header for everything the daemon, the command-line tools and the tests
 * use: errors, growable buffers, the SentencePiece tokenizer, the
 * Mixtral-Instruct chat format, safetensors parsing and model loading.
 *
 * Conventions: functions return 0 or a negative errno. Those that can fail
 * for reasons a user must see take an mx_error and fill it with one line
 * that names the file (and the tensor or key) at fault; they never print. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors -------------------------------------------------------------- */

typedef struct mx_error {
        int code;       /* negative errno, 0 when unset */
        char msg[512];  /* one line, no trailing newline */
} mx_error;

/* Formats msg into err (when err is non-NULL) and returns code (< 0). */
int mx_error_set(mx_error *err, int code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* ---- growable buffers ------------------------------------------------------ */

typedef struct mx_ids {
        int32_t *v;
        size_t n, cap;
} mx_ids;

int mx_ids_push(mx_ids *ids, int32_t id);
int mx_ids_append(mx_ids *ids, const int32_t *v, size_t n);
void mx_ids_free(mx_ids *ids);

typedef struct mx_buf {
        char *p;  /* always NUL-terminated after a successful append */
        size_t n, cap;
} mx_buf;

int mx_buf_append(mx_buf *b, const void *data, size_t n);
void mx_buf_free(mx_buf *b);

/* ---- tokenizer (SentencePiece BPE, mistral-common v1 semantics) ----------- */

typedef struct mx_tokenizer mx_tokenizer;

/* Largest tokenizer file we accept: Mixtral's is 0.5 MB, the largest
 * vocabularies in use about 5 MB. */
#define MX_TOKENIZER_MAX_FILE_BYTES (32u << 20)

int mx_tokenizer_load(mx_tokenizer **out, const char *path, mx_error *err);
/* Parses a serialized sentencepiece.ModelProto; label names it in errors. */
int mx_tokenizer_load_buffer(mx_tokenizer **out, const void *data, size_t len,
                             const char *label, mx_error *err);
void mx_tokenizer_free(mx_tokenizer *tok);
static inline void mx_tokenizer_freep(mx_tokenizer **tok) {
        mx_tokenizer_free(*tok);
}

uint32_t mx_tokenizer_vocab_size(const mx_tokenizer *tok);
int32_t mx_tokenizer_bos(const mx_tokenizer *tok); /* -1 when the model has none */
int32_t mx_tokenizer_eos(const mx_tokenizer *tok);
int32_t mx_tokenizer_unk(const mx_tokenizer *tok);
/* The piece as stored (with U+2581 for spaces); NULL for an id out of range. */
const char *mx_tokenizer_piece(const mx_tokenizer *tok, int32_t id, size_t *len);

/* At least how many tokens mx_tokenize gives for text, found without
 * tokenizing (bytes other than whitespace over the widest piece); 0 when
 * nothing can be said (no byte fallback). */
uint64_t mx_tokenizer_min_tokens(const mx_tokenizer *tok, const char *text, size_t len);

/* SentencePiece's piece types (sentencepiece_model.proto; GGUF's
 * tokenizer.ggml.token_type numbers them the same). */
typedef enum mx_piece_type {
        MX_PIECE_NORMAL = 1,
        MX_PIECE_UNKNOWN = 2,
        MX_PIECE_CONTROL = 3,
        MX_PIECE_USER_DEFINED = 4,
        MX_PIECE_UNUSED = 5,
        MX_PIECE_BYTE = 6,
} mx_piece_type;

/* Everything a file must say to rebuild the same tokenizer (GGUF's writer
 * uses it): per piece its score and type, and these. */
typedef struct mx_tokenizer_info {
        int32_t bos, eos, unk, pad;  /* -1: none */
        bool add_bos, add_eos;       /* what a prompt gets at its ends */
        bool add_space_prefix;       /* SentencePiece's add_dummy_prefix */
        bool remove_extra_whitespaces, escape_whitespaces, byte_fallback;
        const char *unk_surface;     /* how decoding spells the unknown piece */
} mx_tokenizer_info;

void mx_tokenizer_get_info(const mx_tokenizer *tok, mx_tokenizer_info *info);
/* 0 and 0 for an id out of range. */
float mx_tokenizer_score(const mx_tokenizer *tok, int32_t id);
mx_piece_type mx_tokenizer_piece_type(const mx_tokenizer *tok, int32_t id);

/* Appends the ids of text (any bytes; invalid UTF-8 becomes U+FFFD as in
 * SentencePiece) to out: dummy prefix, no BOS or EOS. */
int mx_tokenize(const mx_tokenizer *tok, const char *text, size_t len, mx_ids *out);

/* Appends the text of ids to out, exactly as SentencePiece's decode. An id
 * out of range gives -EINVAL. */
int mx_detokenize(const mx_tokenizer *tok, const int32_t *ids, size_t n, mx_buf *out);

/* Incremental decoding for streaming: each push appends only complete UTF-8
 * characters; the concatenation of everything appended by push and finish
 * equals mx_detokenize of the same ids. */
typedef struct mx_decoder {
        const mx_tokenizer *tok;
        uint8_t pending[4];  /* bytes of an unfinished character */
        uint8_t n_pending;
        bool bos_ws;         /* may still strip the dummy-prefix space */
        bool bos_ws_seen;    /* the last piece had that space stripped */
        bool wrote_text;     /* any text produced so far */
} mx_decoder;

void mx_decoder_init(mx_decoder *d, const mx_tokenizer *tok);
int mx_decoder_push(mx_decoder *d, int32_t id, mx_buf *out);
/* Flushes an unfinished character (as U+FFFD per byte, as decode does). */
int mx_decoder_finish(mx_decoder *d, mx_buf *out);

/* ---- chat format (Mixtral-Instruct, mistral-common tokenizer v1) --------- */

typedef enum mx_role {
        MX_ROLE_SYSTEM,
        MX_ROLE_USER,
        MX_ROLE_ASSISTANT,
} mx_role;

typedef struct mx_message {
        mx_role role;
        const char *content;
        size_t len;
} mx_message;

/* Parses "system", "user" or "assistant"; -EINVAL otherwise. */
int mx_role_from_string(const char *s, mx_role *out);

/* Builds the prompt ids of a conversation (BOS first). system may be NULL;
 * system messages anywhere in msgs join it. */
int mx_chat_encode(const mx_tokenizer *tok, const char *system, const mx_message *msgs,
                   size_t n, mx_ids *out, mx_error *err);

/* A conversation read from a JSON array of {"role","content"} objects. */
typedef struct mx_conversation {
        mx_message *msgs;
        size_t n, cap;
        void *owner; /* keeps the strings alive */
} mx_conversation;

int mx_conversation_from_json(mx_conversation *conv, const char *data, size_t len,
                              const char *label, mx_error *err);
int mx_conversation_add(mx_conversation *conv, mx_role role, const char *content, size_t len);
void mx_conversation_free(mx_conversation *conv);

/* ---- tensors and safetensors --------------------------------------------- */

typedef enum mx_dtype {
        MX_DTYPE_F32,
        MX_DTYPE_F16,
        MX_DTYPE_BF16,
        /* ggml's block formats, byte for byte as GGUF files store them (a
         * row is a whole number of blocks): */
        MX_DTYPE_Q8_0, /* 32 weights in 34 bytes: fp16 scale, 32 x int8 */
        MX_DTYPE_Q4_0, /* 32 weights in 18 bytes: fp16 scale, 32 x 4 bits */
        MX_DTYPE_Q4_K, /* 256 weights in 144 bytes */
        MX_DTYPE_Q5_K, /* 256 weights in 176 bytes */
        MX_DTYPE_Q6_K, /* 256 weights in 210 bytes */
        MX_DTYPE_COUNT
} mx_dtype;

#define MX_MAX_DIMS 4
/* A header larger than this is refused before anything is allocated. */
#define MX_SAFETENSORS_MAX_HEADER (100u * 1000u * 1000u)

typedef struct mx_tensor {
        char *name;
        const char *file;  /* file name it lives in (owned by its mx_model) */
        mx_dtype dtype;
        uint32_t ndim;
        uint64_t shape[MX_MAX_DIMS];
        uint64_t offset;   /* from the start of the file */
        uint64_t nbytes;
        const void *data;  /* mapped, read-only */
        /* Non-zero when q/k rows are stored in the interleaved RoPE order of
         * the mistral-inference layout; see mx_tensor_row. */
        uint32_t rope_head_dim;
        /* Synthetic weights (no file): element i is mx_synth_bf16(synth_seed,
         * i, synth_scale); data is NULL unless they were made on the host. */
        uint64_t synth_seed;
        float synth_scale;
} mx_tensor;

/* Weights per block (1 for F32, F16, BF16) and bytes per block. */
uint32_t mx_dtype_block_elems(mx_dtype t);
uint32_t mx_dtype_block_bytes(mx_dtype t);
/* Bytes of a row of cols weights: -EINVAL when cols is not a whole number
 * of blocks, -EOVERFLOW past 64 bits. */
int mx_dtype_row_bytes(mx_dtype t, uint64_t cols, uint64_t *out);
/* Bytes of a tensor of that shape (row-major, the last dimension the row);
 * the same errors. */
int mx_dtype_tensor_bytes(mx_dtype t, const uint64_t *shape, uint32_t ndim, uint64_t *out);
bool mx_dtype_is_block(mx_dtype t);
const char *mx_dtype_name(mx_dtype t);
/* Elements of a tensor (the product of its shape). */
uint64_t mx_tensor_elems(const mx_tensor *t);

/* Parses the header of a safetensors file held in file[0..size) and checks
 * it against the size: tensors come out in file order, their data pointing
 * into file. label (the file name) prefixes every error. */
int mx_safetensors_parse(const uint8_t *file, uint64_t size, const char *label,
                         mx_tensor **tensors, size_t *n, mx_error *err);
void mx_tensors_free(mx_tensor *tensors, size_t n);

/* Row r (in Hugging Face's half-split order) of a 2-D tensor. */
const void *mx_tensor_row(const mx_tensor *t, uint64_t r);

/* Writes a safetensors file: used by the demo model and the tests. */
typedef struct mx_tensor_data {
        const char *name;
        mx_dtype dtype;
        uint32_t ndim;
        uint64_t shape[MX_MAX_DIMS];
        const void *data;
} mx_tensor_data;

int mx_safetensors_write(const char *path, const mx_tensor_data *t, size_t n, mx_error *err);

/* ---- model configuration and loading ------------------------------------- */

typedef struct mx_config {
        uint32_t vocab_size;
        uint32_t hidden_size;
        uint32_t intermediate_size;
        uint32_t n_layers;
        uint32_t n_heads;
        uint32_t n_kv_heads;
        uint32_t head_dim;
        uint32_t n_experts;
        uint32_t n_experts_per_tok;
        uint32_t max_position_embeddings; /* 0: the files give no limit */
        uint32_t sliding_window;          /* 0: none */
        double rope_theta;
        double rms_norm_eps;
        int32_t bos_token_id;             /* -1: not given */
        int32_t eos_token_id;
        bool tie_word_embeddings;
} mx_config;

typedef enum mx_layout {
        MX_LAYOUT_HF,           /* config.json + model*.safetensors */
        MX_LAYOUT_CONSOLIDATED, /* params.json + consolidated*.safetensors */
        MX_LAYOUT_GGUF,         /* one .gguf file, or a split set NAME-0000k-of-0000N.gguf */
} mx_layout;

/* Parse and check a Hugging Face config.json or a mistral-inference
 * params.json held in memory. */
int mx_config_parse_hf(const char *json, size_t len, const char *label, mx_config *cfg,
                       mx_error *err);
int mx_config_parse_params(const char *json, size_t len, const char *label, mx_config *cfg,
                           mx_error *err);

typedef struct mx_layer {
        const mx_tensor *attn_norm, *wq, *wk, *wv, *wo;
        const mx_tensor *ffn_norm, *router;
        const mx_tensor **w1, **w2, **w3; /* [n_experts] each */
} mx_layer;

typedef struct mx_model_file {
        char *name;
        const uint8_t *map;
        uint64_t size;
} mx_model_file;

typedef struct mx_model {
        char *dir;           /* the checkpoint's directory (a GGUF's: the one holding it) */
        mx_layout layout;
        mx_config cfg;
        mx_model_file *files;
        size_t n_files;
        mx_tensor *tensors;  /* all tensors, all files */
        size_t n_tensors;
        const mx_tensor *embed, *norm, *lm_head; /* lm_head == embed when tied */
        mx_layer *layers;
        void *priv;
} mx_model;

/* Opens a checkpoint: a directory of either safetensors layout, a GGUF
 * file (or any part of a split set), or a directory holding one GGUF (or
 * one split set). Files are mapped, headers checked, every tensor bound by
 * name and shape to the configuration; nothing else is read. */
int mx_model_open(mx_model **out, const char *path, mx_error *err);
/* Whether mx_model_open takes path as GGUF: a file that starts with the
 * GGUF magic or is named *.gguf, or a directory holding *.gguf files and
 * neither config.json nor params.json. */
bool mx_model_is_gguf(const char *path);
void mx_model_free(mx_model *m);
static inline void mx_model_freep(mx_model **m) {
        mx_model_free(*m);
}

/* The tokenizer file of a model directory (tokenizer.model, or
 * tokenizer.model.v1); newly allocated, or NULL with err set. */
char *mx_model_find_tokenizer(const char *dir, mx_error *err);
/* The model's tokenizer: a GGUF's own vocabulary (tokenizer.ggml.*), or
 * the directory's tokenizer.model / tokenizer.model.v1; its size checked
 * against the model's vocabulary. */
int mx_model_load_tokenizer(const mx_model *m, mx_tokenizer **out, mx_error *err);
/* A tokenizer from path: a SentencePiece model file, or a GGUF model's own
 * vocabulary (any path mx_model_open takes as GGUF; only headers are read). */
int mx_tokenizer_open(const char *path, mx_tokenizer **out, mx_error *err);

typedef struct mx_footprint {
        uint64_t params;            /* all parameters */
        uint64_t bytes;             /* all weight bytes */
        uint64_t bytes_by_dtype[MX_DTYPE_COUNT]; /* indexed by mx_dtype */
        uint64_t active_params;     /* touched per token: dense + top-k experts */
        uint64_t active_bytes;      /* weight bytes read per decoded token */
        uint64_t kv_bytes_per_token;/* bf16 K and V, all layers */
} mx_footprint;

void mx_model_footprint(const mx_model *m, mx_footprint *fp);

/* A model of a known shape with random weights and no file (bench/README.md): shape "mixtral-8x7b" (the real Mixtral's) or "b1" (the CPU
 * benchmark's), with `layers` of its layers (0: all). host_weights makes
 * every weight in host memory (for the CPU engine); otherwise matrices are
 * left for the device to generate (data NULL) and only the norms exist on
 * the host. Never zeros; the same values on host and device. */
int mx_model_synthetic(mx_model **out, const char *shape, uint32_t layers, bool host_weights,
                       mx_error *err);
/* Writes synthetic model m as a Hugging Face checkpoint into dir: loaded
 * back, it computes exactly what m does. The experts of each layer get a
 * shard of their own; progress(bytes written, bytes in all, arg) after
 * each shard. */
int mx_synthetic_write(const mx_model *m, const char *dir, void (*progress)(uint64_t, uint64_t, void *),
                       void *arg, mx_error *err);
/* Writes m as a GGUF file (version 3) that llama.cpp and mx_model_open
 * read: architecture llama, the tensors under llama.cpp's names in the
 * types m holds (experts merged per layer when they share one), q/k rows
 * in GGUF's RoPE order, and tok's vocabulary (tok may be NULL: no
 * vocabulary). progress(bytes written, bytes in all, arg) after each
 * tensor (may be NULL). The file appears at path only once complete. */
int mx_gguf_write_model(const mx_model *m, const mx_tokenizer *tok, const char *path,
                        void (*progress)(uint64_t, uint64_t, void *), void *arg, mx_error *err);
/* Bytes of one layer's weights and of everything else, for a shape. */
int mx_synthetic_sizes(const char *shape, uint64_t *per_layer, uint64_t *rest, uint32_t *max_layers);

/* Reads every page of the model's files once, so that the first tokens do
 * not wait on page faults; progress(done, total, arg) is called as it goes
 * (may be NULL). */
int mx_model_prefault(const mx_model *m, void (*progress)(uint64_t done, uint64_t total, void *arg),
                      void *arg);
/* For expert streaming: copies every weight but the experts into private
 * memory (reading the files once), so that the files are only ever read
 * for experts, and a file truncated or replaced under a running engine
 * fails the requests that need its experts instead of killing the process
 * (a mapped page past a file's new end is a SIGBUS). */
int mx_model_copy_dense(mx_model *m, mx_error *err);
/* Whether paging in helps: the files fit in memory with a fifth to spare
 * (otherwise the pass would only evict its own beginning). */
bool mx_model_fits_in_memory(const mx_model *m);
/* After reading the model's mapped files: -EIO naming the file when one
 * shrank under the process (its missing pages read as zeros instead of
 * killing it), until the file is put back as it was, when it is mapped
 * again in place and this returns 0. The engine checks before and after
 * every step. */
int mx_model_check_files(const mx_model *m, mx_error *err);
/* Whether a read of a model file has met a missing page since the last
 * mx_model_check_files: what read it then read zeros. */
bool mx_model_files_faulted(const mx_model *m);

/* ---- load-time quantization ------------------------------------------------- */

/* What mx_model_quantize makes of a model, as llama.cpp's file types. */
typedef enum mx_ftype {
        MX_FTYPE_NONE,   /* as stored */
        MX_FTYPE_Q8_0,   /* 8.5 bits a weight */
        MX_FTYPE_Q4_0,   /* 4.5 bits, output Q6_K */
        MX_FTYPE_Q4_K_M, /* about 4.8 bits: Q4_K, some tensors Q5_K, Q6_K, Q8_0 */
        MX_FTYPE_Q5_K_M, /* about 5.6 bits: Q5_K, some Q6_K, Q8_0 */
        MX_FTYPE_Q6_K,   /* 6.56 bits */
} mx_ftype;

/* "none", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"; -EINVAL otherwise. */
int mx_ftype_parse(const char *s, mx_ftype *out);
const char *mx_ftype_name(mx_ftype ft);
/* The type tensor t of m gets under ft (engine/model/quantize.c says why):
 * its own where it stays as it is (norms, the router, rows that are not
 * whole blocks, tensors already in a block format). */
mx_dtype mx_ftype_tensor_type(const mx_model *m, const mx_tensor *t, mx_ftype ft);
/* Rewrites m's weights into ft's types on `threads` threads (0: every
 * core), reading each once; progress(bytes read, bytes to read, arg) after
 * each tensor (may be NULL). The copies belong to m; the tensors' data,
 * dtype and nbytes change, and no longer correspond to the files (expert
 * streaming, which reads the files, refuses such a model). Once per
 * model: -EALREADY after. */
int mx_model_quantize(mx_model *m, mx_ftype ft, uint32_t threads,
                      void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg, mx_error *err);
/* What mx_model_quantize made of m (MX_FTYPE_NONE: nothing). */
mx_ftype mx_model_quantized(const mx_model *m);

/* ---- engine: forward pass and sequences ---------------------------------- */

typedef enum mx_simd {
        MX_SIMD_AUTO,   /* the best this CPU has */
        MX_SIMD_SCALAR, /* portable C; the reference the others equal */
        MX_SIMD_AVX2,   /* AVX2 + FMA + F16C */
        MX_SIMD_AVX512, /* AVX-512 F/BW/VL */
} mx_simd;

/* "auto", "scalar", "avx2", "avx512" */
int mx_simd_from_string(const char *s, mx_simd *out);

/* What the KV cache holds K and V as; attention computes in fp32 either
 * way. bf16 (the default) holds twice the tokens; f32 is for exactness
 * tests. Every backend rounds to bf16 the same way (nearest, ties to
 * even). */
typedef enum mx_kv_type {
        MX_KV_BF16,
        MX_KV_F32,
} mx_kv_type;

/* "bf16" or "f32"; -EINVAL otherwise. */
int mx_kv_type_from_string(const char *s, mx_kv_type *out);
const char *mx_kv_type_name(mx_kv_type t);
/* The KV cache's size (kv_memory): "auto" (both 0), bytes with K, M, G or
 * T, or a percentage (1 to 100) of the memory free when the engine opens
 * (the GPU's, after the weights). With err NULL it only checks the text. */
int mx_kv_memory_parse(const char *s, uint64_t *bytes, uint32_t *percent, mx_error *err);

/* How the CPU multiplies activations by weights. */
typedef enum mx_activations {
        MX_ACTIVATIONS_AUTO, /* the fast path */
        /* Each token's activations rounded per product to the weights'
         * partner: int8 blocks for Q8_0, Q4_0 and the K-quants (multiplied
         * with the CPU's int8 dot-product instructions), bf16 for BF16
         * weights (AVX512-BF16); fp32 for F16 and F32 weights. */
        MX_ACTIVATIONS_FAST,
        /* fp32 activations against weights decoded exactly: the reference. */
        MX_ACTIVATIONS_F32,
} mx_activations;

/* "auto", "fast", "f32" */
int mx_activations_from_string(const char *s, mx_activations *out);

typedef struct mx_engine_opts {
        const char *device; /* "cpu" (default), "cuda" or "cuda:N" */
        uint32_t threads;   /* 0: every online core */
        mx_simd simd;
        /* Either path gives the same results on every instruction set and
         * whatever else shares a step; they differ from each other by the
         * rounding of the activations. */
        mx_activations activations;
        /* On the fast path of AVX2 and AVX-512, BF16 matrices are packed at start-up
         * (their exponents coded: the same values in about 0.77 of the
         * bytes, the same results): true keeps them as mapped, saving the
         * copy's memory and time. */
        bool bf16_plain;
        /* Expert streaming: bytes of expert weights to keep in memory (the
         * rest is read from the files on demand); 0 keeps them all, mapped.
         * At least top-k experts per layer are kept whatever it says. */
        uint64_t expert_memory;
        /* On a GPU, experts streamed from the files pass through a host
         * cache of this many bytes of page-locked RAM (0: auto, all the
         * experts if they take under a quarter of the memory, else a
         * quarter). On a GPU a model that does not fit streams its experts
         * even with expert_memory 0, within what fits. */
        uint64_t host_cache;
        /* The KV cache: one pool of blocks for every sequence, of
         * kv_memory bytes or kv_memory_percent of the free memory (both 0:
         * auto; docs/engine.md). */
        mx_kv_type kv_type;
        uint64_t kv_memory;
        uint32_t kv_memory_percent;
        /* Optional: called as the weights go to the device, or are packed. */
        void (*progress)(uint64_t done, uint64_t total, void *arg);
        void *progress_arg;
} mx_engine_opts;

typedef struct mx_engine mx_engine;

/* "cpu" (or NULL): *cuda_index -1; "cuda" or "cuda:N" (N < 64): the GPU's
 * index. -EINVAL for anything else. */
int mx_device_parse(const char *device, int *cuda_index);

/* The engine computes with m's weights in place (m must outlive it). */
int mx_engine_open(mx_engine **out, const mx_model *m, const mx_engine_opts *o, mx_error *err);
void mx_engine_free(mx_engine *e);
static inline void mx_engine_freep(mx_engine **e) {
        mx_engine_free(*e);
}
const mx_model *mx_engine_model(const mx_engine *e);
/* Device, threads and instruction set, e.g. "cpu, 2 threads, avx512". */
const char *mx_engine_describe(const mx_engine *e);

/* Bytes the engine has read since it opened: weights (each matrix once per
 * product, however many tokens share it) and KV cache. */
typedef struct mx_engine_counters {
        uint64_t weight_bytes, kv_bytes;
        uint64_t matmul_flops; /* floating-point operations in matrix products */
} mx_engine_counters;

void mx_engine_counters_get(const mx_engine *e, mx_engine_counters *c);

/* Expert streaming (mx_engine_opts.expert_memory), since the engine opened. */
typedef struct mx_expert_stats {
        bool streaming;             /* false: every expert resident */
        uint64_t budget;            /* bytes of experts it may hold */
        uint64_t resident;          /* bytes of experts held now */
        uint64_t resident_max;      /* the most held at once */
        uint32_t slots_per_layer;
        uint64_t hits, misses;      /* experts wanted and there (or on the way) / not */
        uint64_t bytes_read, reads; /* from the files */
        uint64_t uring_reads;       /* of those, through io_uring */
        double read_wait_s;         /* time the step waited on reads */
        uint64_t predicted, predicted_used; /* next-layer guesses, and those the router then chose */
        /* On a GPU the fields above are the device's cache (bytes_read,
         * reads and uring_reads still count the files); between the files
         * and the device, a host cache: */
        uint64_t host_budget, host_hits, host_misses;
        uint64_t bytes_uploaded;    /* host to device */
        char how[192];              /* how reads are made (io_uring, O_DIRECT, ... or pread and why), the policy */
} mx_expert_stats;

/* Zeros (streaming false) when the engine holds every expert. */
void mx_engine_expert_stats(const mx_engine *e, mx_expert_stats *s);
/* A new budget for streamed experts (0: all mapped), between steps, from
 * the thread that runs them: what is cached goes, and is read again as
 * asked for. The counters carry on. */
int mx_engine_set_expert_memory(mx_engine *e, uint64_t budget, mx_error *err);
/* On a GPU that streams experts: a new size for the host cache (0: auto),
 * between steps (what it held is read again as asked for; the counters
 * carry on). -EOPNOTSUPP elsewhere. */
int mx_engine_set_host_cache(mx_engine *e, uint64_t bytes, mx_error *err);
/* "auto" or "all" (0: every expert kept), "min" (top-k per layer), bytes
 * with K, M, G, T, or a percentage (at most 100) of the model's expert
 * weights. With m NULL it only checks the text (the daemon's configuration
 * is checked before a model is loaded) and leaves out alone. */
int mx_expert_budget_parse(const char *s, const mx_model *m, uint64_t *out, mx_error *err);
/* The same for mx_engine_opts.host_cache: "auto" is 0, "all" every expert. */
int mx_host_cache_parse(const char *s, const mx_model *m, uint64_t *out, mx_error *err);

/* The machine's memory bandwidth as bench/README.md measures it: a
 * memcpy of `bytes` (each byte counted once) and a read-only pass over
 * `bytes` on `threads` threads (0: all), in GB/s: the median of three
 * rounds, each the best of three runs. */
int mx_measure_bandwidth(size_t bytes, uint32_t threads, double *memcpy_gbps, double *read_gbps);

/* The KV cache: a pool of blocks of block_tokens tokens (every layer's K
 * and V), shared by all sequences. A block is used (held by sequences),
 * cached (holding a prefix nobody holds now, kept for reuse and given up
 * least recently used first) or free. */
typedef struct mx_kv_stats {
        mx_kv_type type;
        uint32_t block_tokens;
        uint64_t block_bytes;
        uint32_t blocks, used, cached, free; /* blocks = used + cached + free */
        uint64_t lookups, hits;              /* prefix lookups, and those that found tokens */
        uint64_t hit_tokens;                 /* tokens they found */
        uint64_t evictions;                  /* cached blocks given up for new ones */
} mx_kv_stats;

void mx_engine_kv_stats(const mx_engine *e, mx_kv_stats *s);
/* Tokens the pool holds at most (blocks x block_tokens): no sequence is
 * longer. */
uint32_t mx_engine_kv_tokens(const mx_engine *e);

/* A sequence: its tokens so far live in the KV cache's blocks; at most
 * max_tokens of them (0: the model's context), and never more than the
 * pool holds. */
typedef struct mx_seq mx_seq;

int mx_seq_new(mx_engine *e, uint32_t max_tokens, mx_seq **out, mx_error *err);
void mx_seq_free(mx_seq *s);
static inline void mx_seq_freep(mx_seq **s) {
        mx_seq_free(*s);
}
uint32_t mx_seq_len(const mx_seq *s);
uint32_t mx_seq_capacity(const mx_seq *s);
/* Empties the sequence: its blocks go back to the pool, the full ones
 * (and the partial last one) staying cached for reuse. */
void mx_seq_reset(mx_seq *s);
/* Prefix reuse, on by default in namespace 0: blocks are reused only
 * between sequences of the same namespace (the daemon gives each user
 * one); off, the sequence neither reuses nor leaves blocks cached. */
void mx_seq_set_cache(mx_seq *s, bool on, uint64_t ns);
/* On an empty sequence: starts it from the longest cached prefix of
 * tokens[0..n) and returns how many tokens that is (the sequence's new
 * length; up to n). The logits that follow are those of computing them
 * (bit for bit on the same backend and KV type; docs/engine.md). */
uint32_t mx_seq_reuse(mx_seq *s, const int32_t *tokens, size_t n);
/* Holds room for `tokens` tokens in all now (mx_forward takes blocks as
 * it needs them otherwise): -ENOBUFS, with what it held still held, when
 * that would leave fewer than `spare` blocks for other sequences. */
int mx_seq_reserve(mx_seq *s, uint32_t tokens, uint32_t spare);

/* One sequence's part of a forward step: n_tokens more tokens; logits of
 * the last one (vocab floats), or of each (n_tokens x vocab) when
 * all_logits, or none when logits is NULL. */
typedef struct mx_sampler mx_sampler; /* (sampling, below) */

typedef struct mx_batch_item {
        mx_seq *seq;
        const int32_t *tokens;
        uint32_t n_tokens;
        float *logits;
        bool all_logits;
        /* Optional: the engine picks the next token itself from the last
         * position's logits, with this sampler and the sequence's tokens so
         * far (for the repetition penalty), and stores it in *sampled. On a
         * GPU only the id comes back; logits may then be NULL. */
        mx_sampler *sampler;
        const int32_t *history;
        size_t n_history;
        int32_t *sampled;
} mx_batch_item;

/* Advances every item's sequence in one step. Each token's results are the
 * same whatever else is in the batch. -ENOSPC when a sequence would pass
 * its capacity, -ENOBUFS when the KV cache has no block left for it,
 * -EINVAL for a token outside the vocabulary. */
int mx_forward(mx_engine *e, const mx_batch_item *items, size_t n, mx_error *err);

/* ---- loading: the one policy the daemon and the tools share -------------- */

typedef struct mx_load_opts {
        const char *model;         /* a checkpoint directory */
        const char *tokenizer;     /* NULL: the model's own */
        bool tokenizer_optional;   /* a model without one loads (tok NULL) */
        const char *synthetic;     /* or a synthetic shape (no file, no tokenizer) */
        uint32_t layers;           /* of the synthetic shape; 0: all */
        const char *device;        /* cpu (NULL), cuda, cuda:N */
        uint32_t threads;          /* 0: every online core */
        mx_simd simd;
        const char *expert_memory; /* NULL: auto (see mx_expert_budget_parse) */
        const char *host_cache;    /* NULL: auto; a GPU's only */
        const char *kv_type;       /* NULL: bf16 */
        const char *kv_memory;     /* NULL: auto (see mx_kv_memory_parse) */
        mx_ftype quantize;         /* the weights' types, made as they load (none: as stored) */
        mx_activations activations;
        bool bf16_plain;           /* see mx_engine_opts */
        /* Optional: what is being done ("Loading the model", ...), bytes
         * done and in all. Called from the thread that loads. */
        void (*progress)(const char *what, uint64_t done, uint64_t total, void *arg);
        void *progress_arg;
} mx_load_opts;

typedef struct mx_load {
        mx_model *model;
        mx_tokenizer *tok;          /* NULL for a synthetic model */
        mx_engine *engine;          /* after mx_load_engine */
        int gpu;                    /* the GPU's index, -1 on the CPU */
        uint64_t expert_memory;     /* streamed experts' budget (0: all resident) */
        uint64_t expert_memory_min; /* top-k experts per layer: a smaller budget means this */
        uint64_t host_cache;        /* a GPU's host cache (0: auto) */
        mx_kv_type kv_type;
        uint64_t kv_memory;         /* bytes, or */
        uint32_t kv_memory_percent; /* of the free memory (both 0: auto) */
} mx_load;

/* The fast half: the model's headers and configuration, its tokenizer
 * (its vocabulary checked against the model), the device and the budgets.
 * Every error a user can make is found here. */
int mx_load_open(mx_load *l, const mx_load_opts *o, mx_error *err);
/* The slow half: pages the model in (or copies the dense weights for
 * streaming), uploads to a GPU, starts the engine. */
int mx_load_engine(mx_load *l, const mx_load_opts *o, mx_error *err);
void mx_load_free(mx_load *l);

/* ---- sampling -------------------------------------------------------------- */

typedef struct mx_sampling {
        float temperature;       /* 0: greedy */
        uint32_t top_k;          /* 0: off */
        float top_p;             /* 1: off */
        float min_p;             /* 0: off */
        float repeat_penalty;    /* 1: off */
        uint32_t repeat_last_n;  /* tokens the penalty looks back on; 0: all */
        uint64_t seed;
} mx_sampling;

/* Defaults as llama.cpp and Ollama users expect: temperature 0.8,
 * top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.0 over 64 tokens. */
void mx_sampling_defaults(mx_sampling *p);
/* Checks ranges (NaN, negative, top-p outside (0,1], ...); names the field. */
int mx_sampling_check(const mx_sampling *p, mx_error *err);

typedef struct mx_sampler mx_sampler;

int mx_sampler_new(const mx_sampling *p, uint32_t vocab, mx_sampler **out);
void mx_sampler_free(mx_sampler *s);
/* Picks the next token from logits (vocab floats, changed in place);
 * history is the sequence so far, for the repetition penalty. */
int32_t mx_sampler_next(mx_sampler *s, float *logits, const int32_t *history, size_t n_history);
/* For samplers that run elsewhere (the GPU): the settings, and the next
 * number in [0, 1) of the sampler's own sequence, drawn as
 * mx_sampler_next draws it (once per non-greedy token). */
const mx_sampling *mx_sampler_settings(const mx_sampler *s);
double mx_sampler_uniform(mx_sampler *s);

/* ---- generation -------------------------------------------------------------- */

typedef enum mx_finish {
        MX_FINISH_NONE,    /* still running */
        MX_FINISH_EOS,     /* the model ended its answer */
        MX_FINISH_LENGTH,  /* max_tokens reached */
        MX_FINISH_STOP,    /* a stop string appeared (it is not part of the text) */
        MX_FINISH_CONTEXT, /* the context is full */
} mx_finish;

const char *mx_finish_name(mx_finish f);

typedef struct mx_gen_opts {
        mx_sampling sampling;
        uint32_t max_tokens;        /* 0: until EOS, a stop string or the context */
        const char *const *stop;    /* stop strings */
        size_t n_stop;
        uint32_t max_context;       /* 0: the model's context length */
        uint32_t prefill_chunk;     /* prompt tokens per step; 0: all at once */
        /* The first generated piece keeps its leading space: right when the
         * text continues a raw prompt; a chat answer drops it. */
        bool keep_leading_space;
        /* EOS does not end the answer (benchmarks, tests): it is generated
         * like any token, and decodes to no text. */
        bool ignore_eos;
        /* Prefix reuse (mx_seq_set_cache): the namespace the request's
         * blocks are reused in and left cached in, or none at all. */
        uint64_t cache_namespace;
        bool no_prefix_cache;
} mx_gen_opts;

/* One request: its sequence, sampler, streaming decoder and stop strings.
 * Driven in steps so that many can share each forward pass:
 *
 *   while (!mx_gen_finished(g)) {
 *           mx_gen_prepare(g, &item);       // what to feed next
 *           mx_forward(e, &item, 1, &err);  // batched with others
 *           mx_gen_advance(g, &text, &tok); // sample, decode, check stops
 *   }
 */
typedef struct mx_gen mx_gen;

int mx_gen_new(mx_engine *e, const mx_tokenizer *tok, const int32_t *prompt, size_t n_prompt,
               const mx_gen_opts *o, mx_gen **out, mx_error *err);
void mx_gen_free(mx_gen *g);
static inline void mx_gen_freep(mx_gen **g) {
        mx_gen_free(*g);
}
/* Takes the request's KV blocks: its longest cached prefix (all but the
 * last of its tokens at most: one is computed for the logits), then room
 * for the rest of its tokens and one more. -ENOBUFS, holding nothing, when
 * that would leave fewer than `spare` blocks for others (mx_gen_new has
 * refused what the pool could never hold). Without it, the first prepare
 * reuses what it finds and mx_forward takes blocks as it goes. */
int mx_gen_start(mx_gen *g, uint32_t spare, mx_error *err);
/* Room for what the next step feeds (a scheduler calls it for every
 * request before building a step): -ENOBUFS when the pool has none left. */
int mx_gen_grow(mx_gen *g);
/* Gives every block back (whole ones stay cached): the request waits,
 * keeping what it generated, until mx_gen_start resumes it; what the
 * cache kept is not computed again. */
void mx_gen_suspend(mx_gen *g);
/* Prompt tokens served from the cache when the request first started (the
 * rest were computed). */
size_t mx_gen_cached_tokens(const mx_gen *g);
void mx_gen_prepare(mx_gen *g, mx_batch_item *item);
/* After the forward step: appends new text (whole UTF-8 characters, never
 * part of a stop string) to text; *token is the sampled id or -1 while the
 * prompt is still being read. */
int mx_gen_advance(mx_gen *g, mx_buf *text, int32_t *token);
mx_finish mx_gen_finished(const mx_gen *g);
/* Generated ids so far (the prompt excluded). */
const int32_t *mx_gen_tokens(const mx_gen *g, size_t *n);
size_t mx_gen_prompt_len(const mx_gen *g);

/* ---- demo model ------------------------------------------------------------ */

/* Writes a random Mixtral in the Hugging Face layout (config.json, two
 * safetensors shards and their index, tokenizer.model copied from
 * tokenizer_path when it fits) into dir, which must exist. shape "demo"
 * (a few MB; its vocabulary is the tokenizer's) or "b1" (the CPU benchmark
 * shape, 1.6 GB, Mixtral's vocabulary of 32000: without a tokenizer of that
 * size, a made-up one). Same seed, same bytes. */
int mx_demo_model_write(const char *dir, const char *shape, const char *tokenizer_path, uint64_t seed,
                        mx_error *err);

/* Writes a made-up SentencePiece BPE model of vocab_size pieces (at least
 * 355): <unk>, <s>, </s>, the 256 byte pieces (any text encodes, through
 * byte fallback), the printable ASCII characters, then filler words; for
 * random models whose vocabulary no tokenizer at hand has. */
int mx_tokenizer_write_synthetic(const char *path, uint32_t vocab_size, mx_error *err);

/* ---- text ---------------------------------------------------------------- */

/* Well-formed UTF-8 (no overlong forms, surrogates or code points above
 * U+10FFFF), as the tokenizer judges it. */
bool mx_utf8_valid(const char *s, size_t len);

/* ---- files --------------------------------------------------------------- */

/* Reads a whole regular file of at most max bytes (FIFOs and devices are
 * refused, never opened for blocking reads). */
int mx_read_file(const char *path, size_t max, char **data, size_t *len, mx_error *err);

#ifdef __cplusplus
}
#endif
