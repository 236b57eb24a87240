/* Files are opened with O_NONBLOCK so that a FIFO in a model directory is
 * reported instead of hanging start-up, and mapped instead of read: a 90 GB
 * checkpoint costs nothing until its pages are used. Files are written
 * under a temporary name, synced and renamed, so that a model file appears
 * whole or not at all. */
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "model.h"
#include "mx_common.h"

int mx_open_regular(const char *path, uint64_t *size, mx_error *err) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd < 0)
                return mx_error_set(err, -errno, "%s: %s", path, strerror(errno));
        struct stat st;
        if (fstat(fd, &st) < 0)
                return mx_error_set(err, -errno, "%s: %s", path, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return mx_error_set(err, -EINVAL, "%s: not a regular file (%s)", path,
                                    S_ISDIR(st.st_mode)    ? "a directory"
                                    : S_ISFIFO(st.st_mode) ? "a FIFO"
                                    : S_ISCHR(st.st_mode)  ? "a character device"
                                    : S_ISBLK(st.st_mode)  ? "a block device"
                                    : S_ISSOCK(st.st_mode) ? "a socket"
                                                           : "not a file");
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
                return mx_error_set(err, -errno, "%s: %s", path, strerror(errno));
        *size = (uint64_t)st.st_size;
        return MX_TAKE_FD(fd);
}

int mx_map_file(const char *path, const uint8_t **map, uint64_t *size, mx_error *err) {
        _cleanup_close_ int fd = mx_open_regular(path, size, err);
        if (fd < 0)
                return fd;
        *map = NULL;
        if (*size == 0)
                return 0;
        if (*size > SIZE_MAX)
                return mx_error_set(err, -EFBIG, "%s: too large to map", path);
        void *p = mmap(NULL, (size_t)*size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
                return mx_error_set(err, -errno, "%s: cannot map: %s", path, strerror(errno));
        *map = p;
        return 0;
}

void mx_unmap_file(const uint8_t *map, uint64_t size) {
        if (map && size)
                munmap((void *)map, (size_t)size);
}

int mx_read_file(const char *path, size_t max, char **data, size_t *len, mx_error *err) {
        uint64_t size;
        _cleanup_close_ int fd = mx_open_regular(path, &size, err);
        if (fd < 0)
                return fd;
        if (size > max)
                return mx_error_set(err, -EFBIG, "%s: %llu bytes, more than the %zu allowed",
                                    path, (unsigned long long)size, max);
        _cleanup_free_ char *buf = malloc((size_t)size + 1);
        if (!buf)
                return mx_error_set(err, -ENOMEM, "%s: out of memory", path);
        size_t got = 0;
        while (got < size) {
                ssize_t k = read(fd, buf + got, (size_t)size - got);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return mx_error_set(err, -errno, "%s: %s", path, strerror(errno));
                if (k == 0)
                        return mx_error_set(err, -EIO, "%s: file shrank while being read", path);
                got += (size_t)k;
        }
        buf[got] = '\0';
        *data = MX_TAKE_PTR(buf);
        *len = got;
        return 0;
}

int mx_write_all(int fd, const void *data, uint64_t n) {
        const uint8_t *p = data;
        while (n > 0) {
                ssize_t k = write(fd, p, n > (1u << 30) ? (1u << 30) : (size_t)n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                p += k, n -= (uint64_t)k;
        }
        return 0;
}

int mx_write_atomic(const char *path, int (*body)(int fd, void *arg), void *arg, mx_error *err) {
        _cleanup_free_ char *tmp = NULL;
        if (asprintf(&tmp, "%s.tmp", path) < 0)
                return mx_error_set(err, -ENOMEM, "%s: out of memory", path);
        _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return mx_error_set(err, -errno, "%s: %s", tmp, strerror(errno));
        int r = body(fd, arg);
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                unlink(tmp);
                return mx_error_set(err, r, "%s: cannot write: %s", path, strerror(-r));
        }
        return 0;
}
