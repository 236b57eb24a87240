/* Experts streamed from the model's files within a memory budget: each
 * layer has the same number of fixed-size slots, filled on demand and
 * ahead of demand, least recently used first out. Private to the engine;
 * used by the backend's MoE step on its one thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mixtral.h"

typedef struct mx_expert_cache mx_expert_cache;

/* One expert's weights in a slot, as tensors (data inside the slot). */
typedef struct mx_expert_view {
        mx_tensor w1, w2, w3;
} mx_expert_view;

/* Page-locks the arena for device copies (the GPU's host cache), or not. */
typedef struct mx_expert_pin {
        int (*lock)(void *p, size_t bytes);
        void (*unlock)(void *p);
} mx_expert_pin;

/* budget: bytes of expert weights to hold at most (rounded down to whole
 * slots; at least top-k slots per layer whatever it says); pin: NULL on
 * the CPU. */
int mx_expert_cache_new(const mx_model *m, uint64_t budget, const mx_expert_pin *pin, mx_expert_cache **out,
                        mx_error *err);
void mx_expert_cache_free(mx_expert_cache *c);
static inline void mx_expert_cache_freep(mx_expert_cache **c) {
        mx_expert_cache_free(*c);
}
/* A new layer's MoE step begins: what it asks for from now on is kept
 * over what earlier steps asked for. */
void mx_expert_cache_next_layer(mx_expert_cache *c);

/* The current layer's router chose expert e: a hit when it is resident
 * or on its way, else a miss, and its reads start if a slot can take it.
 * Never waits. */
void mx_expert_cache_want(mx_expert_cache *c, uint32_t L, uint32_t e);
/* The next layer will likely want expert e of layer L: its reads start if
 * a slot not wanted now can take it (counted for the accuracy figure). */
void mx_expert_cache_prefetch(mx_expert_cache *c, uint32_t L, uint32_t e);
/* Makes expert e of layer L resident (waiting for its reads), pins it and
 * fills v; -EIO and a message naming the file on a failed, short or
 * changed read. */
int mx_expert_cache_acquire(mx_expert_cache *c, uint32_t L, uint32_t e, mx_expert_view *v, mx_error *err);
void mx_expert_cache_release(mx_expert_cache *c, uint32_t L, uint32_t e);
/* Whether expert e of layer L is in memory now (acquire would not wait). */
bool mx_expert_cache_ready(mx_expert_cache *c, uint32_t L, uint32_t e);

/* Slots each layer has. */
uint32_t mx_expert_cache_slots(const mx_expert_cache *c);
/* Whether the arena is page-locked (pin->lock succeeded). */
bool mx_expert_cache_locked(const mx_expert_cache *c);

/* The eviction order every expert cache uses: MX_EXPERT_POLICY=lru picks
 * least recently used; otherwise least often chosen (freq), ties to least
 * recently used, measured better on b1 (bench/README.md). */
bool mx_expert_policy_lfu(void);
static inline bool mx_expert_evict_first(bool lfu, uint32_t freq_a, uint64_t used_a, uint32_t freq_b,
                                         uint64_t used_b) {
        return lfu && freq_a != freq_b ? freq_a < freq_b : used_a < used_b;
}

/* Counters for --bench, the daemon's status and the tests. */
void mx_expert_cache_stats(const mx_expert_cache *c, mx_expert_stats *s);
/* Carries counters over from a cache this one replaces (a new budget). */
void mx_expert_cache_carry(mx_expert_cache *c, const mx_expert_stats *before);

/* ---- reading expert weights from the files ------------------------------------ */

/* io_uring (registered files and buffers, O_DIRECT where the file system
 * takes it, many reads in flight), or pread where io_uring is unavailable;
 * one thread uses an mx_io at a time. */
typedef struct mx_io mx_io;

/* Opens the files for reading into arena[0, arena_bytes), made of units
 * (slots) no read crosses, which it registers with io_uring when it can. */
int mx_io_open(mx_io **out, const char *const *paths, size_t n_paths, void *arena, size_t arena_bytes,
               size_t unit, mx_error *err);
void mx_io_close(mx_io *io);
/* Reads are aligned to this (O_DIRECT's block; 1 when buffered). */
#define MX_IO_ALIGN 4096

/* Starts reading len bytes at off of file `file` into buf (inside the
 * arena, MX_IO_ALIGN-aligned, as are off and len). tag comes back with
 * its completion. */
int mx_io_submit(mx_io *io, uint32_t file, uint64_t off, size_t len, void *buf, uint64_t tag);
/* A read of `file` failed: before its next read, check whether its path
 * names another file now (restored by renaming a good copy over it); that
 * one is used if its header is the same, else reads fail with -ESTALE. */
void mx_io_suspect(mx_io *io, uint32_t file);
/* Waits for one completion: its tag and result (bytes read, or -errno). */
int mx_io_wait(mx_io *io, uint64_t *tag, int64_t *res);
/* The file's path, for messages. */
const char *mx_io_path(const mx_io *io, uint32_t file);

typedef struct mx_io_info {
        bool uring, registered_buffers, direct;
        char how[160]; /* "io_uring, O_DIRECT, registered buffers" or why pread */
} mx_io_info;
void mx_io_get_info(const mx_io *io, mx_io_info *info);
