/* Reading expert weights from the model's files: io_uring (registered
 * files and buffers, O_DIRECT where the file system takes it, many reads
 * in flight), or pread where io_uring is unavailable. Private to the
 * engine; one thread uses an mx_io at a time. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mixtral.h"

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
