/* The model module (checkpoint files, configuration, binding, synthetic and
 * demo models): shared between its parts, private to the engine. */
#pragma once

#include "mixtral.h"

typedef struct model_priv {
        mx_tensor **by_name;  /* all tensors, sorted by name */
        bool *used;           /* parallel to mx_model.tensors */
        const mx_tensor **experts; /* backing store of every layer's w1/w2/w3 */
        void *synth_data;          /* host weights of a synthetic model */
        void *dense_copy;          /* mx_model_copy_dense's private weights */
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

/* Writing checkpoints (demo_model.c): config.json in the Hugging Face
 * layout, and a JSON file (takes j) into dir. */
typedef struct json_t json_t;
int mx_hf_config_write(const char *dir, const mx_config *c, mx_error *err);
int mx_json_write(const char *dir, const char *name, json_t *j, mx_error *err);

/* ---- opening files safely ------------------------------------------------- */

/* Opens path read-only without blocking on a FIFO, and refuses anything but
 * a regular file. Returns the fd (>= 0) and its size. */
int mx_open_regular(const char *path, uint64_t *size, mx_error *err);

/* Maps a whole regular file read-only (an empty file maps to NULL). */
int mx_map_file(const char *path, const uint8_t **map, uint64_t *size, mx_error *err);
void mx_unmap_file(const uint8_t *map, uint64_t size);
