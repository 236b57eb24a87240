/* The CUDA side of the engine: device discovery and the kernels. Plain C
 * interface; everything CUDA stays inside the .cu files. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mxk_device {
        int index;
        char name[256];
        int cc_major, cc_minor;
        int multiprocessors;
        size_t total_bytes, free_bytes;
} mxk_device;

/* Number of usable CUDA devices (0 with a reason in why when there are
 * none: no driver, no device, driver too old). Never fails otherwise. */
int mxk_device_count(char *why, size_t why_len);

/* Fills d for device index; 0 or a negative errno (reason in why). */
int mxk_device_query(int index, mxk_device *d, char *why, size_t why_len);

/* Runs a bf16 -> fp32 conversion kernel on the device and checks every
 * value on the host: proves the fatbinary has code for this card and that
 * launches, copies and synchronisation work. */
int mxk_device_selftest(int index, char *why, size_t why_len);

/* Device-side conversion used by the self-test (and later by loading). */
int mxk_bf16_to_f32(const uint16_t *d_in, float *d_out, size_t n, void *stream);

#ifdef __cplusplus
}
#endif
