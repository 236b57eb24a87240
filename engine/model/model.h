/* The model module (checkpoint files, configuration, binding, synthetic and
 * demo models): shared between its parts, private to the engine. */
#pragma once

#include "mixtral.h"

typedef struct mx_gguf mx_gguf;

typedef struct model_priv {
        mx_tensor **by_name;  /* all tensors, sorted by name */
        bool *used;           /* parallel to mx_model.tensors */
        const mx_tensor **experts; /* backing store of every layer's w1/w2/w3 */
        void *synth_data;          /* host weights of a synthetic model */
        void *dense_copy;          /* mx_model_copy_dense's private weights */
        mx_gguf *gguf;             /* GGUF layout: each file's header, parallel to mx_model.files */
        bool borrowed_maps;        /* the files' bytes belong to the caller (never unmapped) */
        void *quant_data;          /* mx_model_quantize's weights, each tensor 64-byte aligned */
        mx_ftype quantized;        /* what mx_model_quantize made of the model */
} model_priv;

char *mx_path_join(const char *dir, const char *name);
bool mx_dir_has(const char *dir, const char *name);
/* Reads dir/name (at most max bytes); *path is set for messages and freeing. */
int mx_read_in_dir(const char *dir, const char *name, size_t max, char **path, char **data,
                   size_t *len, mx_error *err);

/* Maps the checkpoint's files and parses their headers into m->tensors. */
int mx_model_files_open(mx_model *m, mx_error *err);
void mx_model_files_close(mx_model *m);

/* Sorts the tensors by name for lookup; a name in two files is an error. */
int mx_model_index_tensors(mx_model *m, mx_error *err);
mx_tensor *mx_model_find(const mx_model *m, const char *name);

/* A synthetic matrix's values (mx_synth_bf16) into v, hashed on every
 * thread of pool; mx_synth_pool makes one of every online core. */
typedef struct mx_pool mx_pool;
int mx_synth_pool(mx_pool **out);
/* A pool of `threads` threads, 0: one per online core. */
int mx_model_pool(uint32_t threads, mx_pool **out);
void mx_synth_fill(mx_pool *pool, const mx_tensor *t, uint16_t *v);

/* Binds every tensor the architecture needs by name and shape. */
int mx_model_bind(mx_model *m, mx_error *err);
/* Adds a file name to m->files (once). */
int mx_model_add_file(mx_model *m, const char *name);
/* Appends n tensors of file (names move into m) to m->tensors. */
int mx_model_add_tensors(mx_model *m, mx_tensor *t, size_t n, const char *file);

/* Writing checkpoints (demo_model.c): config.json in the Hugging Face
 * layout, and a JSON file (takes j) into dir. */
typedef struct json_t json_t;
int mx_hf_config_write(const char *dir, const mx_config *c, mx_error *err);
int mx_json_write(const char *dir, const char *name, json_t *j, mx_error *err);

/* ---- opening files safely ------------------------------------------------- */

/* Opens path read-only without blocking on a FIFO, and refuses anything but
 * a regular file. Returns the fd (>= 0) and its size. */
int mx_open_regular(const char *path, uint64_t *size, mx_error *err);

/* Maps a whole regular file read-only (an empty file maps to NULL), under
 * the SIGBUS guard (file_io.c): a read past the end of a file that shrank
 * gives zeros instead of killing the process, and mx_map_check says so. */
int mx_map_file(const char *path, const uint8_t **map, uint64_t *size, mx_error *err);
void mx_unmap_file(const uint8_t *map, uint64_t size);
/* After reading the mapping: 0 when every read was real, else -EIO naming
 * the file, until the file is back as it was (then it is mapped again at
 * the same address and this returns 0). Call it where no other thread
 * reads the mapping. */
int mx_map_check(const uint8_t *map, mx_error *err);
/* Whether a read of the mapping has faulted since it was last mapped. */
bool mx_map_faulted(const uint8_t *map);
/* A file's identity for "put back as it was": its size and first MiB. */
int mx_file_fingerprint(const char *path, uint64_t *out);

/* Writes path through path.tmp, which body fills (returning 0 or -errno):
 * synced and renamed into place when body succeeds, removed otherwise. */
int mx_write_atomic(const char *path, int (*body)(int fd, void *arg), void *arg, mx_error *err);
int mx_write_all(int fd, const void *data, uint64_t n);


/* ---- configuration ---------------------------------------------------------- */

/* One value as a file states it, whatever the format: integers as sign and
 * magnitude (GGUF's u64 and JSON's int64 both fit). */
typedef struct mx_cfg_value {
        enum { MX_CFG_ABSENT, MX_CFG_INT, MX_CFG_REAL, MX_CFG_OTHER } kind;
        bool neg;
        uint64_t mag;
        double real;
} mx_cfg_value;

/* Where one mx_config member comes from, and what it may be. */
typedef struct mx_cfg_field {
        const char *section; /* a JSON sub-object ("moe"), or NULL */
        const char *key;
        enum { MX_CFG_UINT, MX_CFG_POSITIVE_REAL, MX_CFG_TOKEN_ID } kind;
        bool required;
        double max;    /* UINT, REAL: the largest value; TOKEN_ID: ids are below it */
        size_t offset; /* of the member in mx_config */
} mx_cfg_field;

typedef mx_cfg_value (*mx_cfg_reader)(void *src, const mx_cfg_field *f);

/* Reads each field through get and checks it: absent optional fields leave
 * their member alone (token ids become -1). Errors name label and key. */
int mx_config_fill(const mx_cfg_field *fields, size_t n, mx_cfg_reader get, void *src,
                   const char *label, mx_config *cfg, mx_error *err);
/* The checks across values; head_dim is hidden / heads when not given. */
int mx_config_check(mx_config *cfg, bool head_dim_given, const char *label, mx_error *err);
/* A GGUF file's llama.* metadata (general.architecture checked by the caller). */
int mx_config_parse_gguf(const mx_gguf *g, mx_config *cfg, mx_error *err);

/* ---- GGUF ----------------------------------------------------------------------- */

/* Metadata value types, as numbered in the file. */
enum {
        MX_GGUF_U8, MX_GGUF_I8, MX_GGUF_U16, MX_GGUF_I16, MX_GGUF_U32, MX_GGUF_I32, MX_GGUF_F32,
        MX_GGUF_BOOL, MX_GGUF_STRING, MX_GGUF_ARRAY, MX_GGUF_U64, MX_GGUF_I64, MX_GGUF_F64,
        MX_GGUF_TYPE_COUNT
};

#define MX_GGUF_DEFAULT_ALIGNMENT 32u
/* The longest tensor name ggml takes (64 with its NUL). */
#define MX_GGUF_MAX_NAME 63u

/* One metadata entry; key and value point into the mapped file. */
typedef struct mx_gguf_kv {
        const char *key;       /* key_len bytes of printable ASCII, not NUL-terminated */
        uint32_t key_len;
        uint32_t type;         /* MX_GGUF_* */
        uint32_t elem_type;    /* an array's element type */
        uint64_t n;            /* an array's elements; 1 otherwise */
        const uint8_t *value;  /* the value, or an array's first element: [bytes] */
        uint64_t bytes;
} mx_gguf_kv;

/* A parsed GGUF header (mx_gguf_parse): every length, count, type, size
 * and offset already checked against the file. */
struct mx_gguf {
        const char *label;     /* the file, for messages (borrowed) */
        uint32_t version;      /* 2 or 3 */
        uint32_t alignment;    /* of tensor data */
        uint64_t data_offset;  /* where tensor data starts */
        mx_gguf_kv *kv;        /* [n_kv], file order */
        size_t n_kv;
        const mx_gguf_kv **sorted; /* [n_kv], by key */
        mx_tensor *tensors;    /* [n_tensors], file order; shapes row-major (ggml's ne
                                  reversed); offsets from the start of the file */
        size_t n_tensors;
};

/* Parses the header of a GGUF file held in file[0..size); label prefixes
 * every error. Tensor data is left where it is. */
int mx_gguf_parse(const uint8_t *file, uint64_t size, const char *label, mx_gguf *g,
                  mx_error *err);
/* Frees what parse allocated (the tensors too, unless moved out). */
void mx_gguf_clear(mx_gguf *g);

const mx_gguf_kv *mx_gguf_find(const mx_gguf *g, const char *key);
/* A scalar number as the configuration checks see it (absent: ABSENT). */
mx_cfg_value mx_gguf_value(const mx_gguf *g, const char *key);
/* A string value, checked to be UTF-8: -ENOENT (err untouched) when absent. */
int mx_gguf_string(const mx_gguf *g, const char *key, const char **s, size_t *len,
                   mx_error *err);
/* A boolean value; *out is left alone when absent. */
int mx_gguf_bool(const mx_gguf *g, const char *key, bool *out, mx_error *err);
/* An array whose elements are strings (want_type MX_GGUF_STRING), numbers
 * of any integer type (MX_GGUF_I64) or floats (MX_GGUF_F32, f32 or f64):
 * -ENOENT (err untouched) when absent, -EINVAL naming the key otherwise. */
int mx_gguf_array(const mx_gguf *g, const char *key, uint32_t want_type, const mx_gguf_kv **out,
                  mx_error *err);
/* Element i of a number array accepted by mx_gguf_array. */
int64_t mx_gguf_int_at(const mx_gguf_kv *kv, uint64_t i);
double mx_gguf_real_at(const mx_gguf_kv *kv, uint64_t i);
/* Walks a string array: *at starts at kv->value; each call gives the next
 * string and moves *at past it (the parser checked every length). */
void mx_gguf_next_string(const uint8_t **at, const char **s, uint64_t *len);

/* ggml's type number for an mx_dtype, and the name of any ggml type. */
uint32_t mx_gguf_ggml_type(mx_dtype t);
const char *mx_gguf_type_name(uint32_t type);

/* ---- GGUF as a model (gguf_model.c) ------------------------------------------ */

/* Opens path (a file, a split set's part, or a directory of one GGUF):
 * parses every file, reads the configuration, lists the tensors with each
 * merged expert tensor replaced by a view per expert. m->dir is set. */
int mx_gguf_model_files(mx_model *m, const char *path, mx_error *err);
/* The same for a file held in memory. */
int mx_gguf_model_buffer(mx_model *m, const uint8_t *data, uint64_t size, mx_error *err);
/* mx_model_open of a GGUF file held in data[0..size) (the fuzzer): data
 * must outlive the model. */
int mx_model_open_gguf_buffer(mx_model **out, const uint8_t *data, uint64_t size, mx_error *err);
/* Frees the headers (model_priv.gguf) and their labels. */
void mx_gguf_model_free(mx_model *m);
/* The vocabulary of tokenizer.ggml.* as a tokenizer, checked against g. */
int mx_gguf_tokenizer(const mx_gguf *g, uint32_t vocab_size, mx_tokenizer **out, mx_error *err);
