/* Experts streamed from the model's files within a memory budget: each
 * layer has the same number of fixed-size slots, filled on demand and
 * ahead of demand, least recently used first out. Private to the engine;
 * used by the backend's MoE step on its one thread. */
#pragma once

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
