/* Opening model files safely: private to the engine. */
#pragma once

#include <stdint.h>

#include "mixtral.h"

/* Opens path read-only without blocking on a FIFO, and refuses anything but
 * a regular file. Returns the fd (>= 0) and its size. */
int mx_open_regular(const char *path, uint64_t *size, mx_error *err);

/* Maps a whole regular file read-only (an empty file maps to NULL). */
int mx_map_file(const char *path, const uint8_t **map, uint64_t *size, mx_error *err);
void mx_unmap_file(const uint8_t *map, uint64_t size);
