/* Expert reads through io_uring. Files are opened with O_DIRECT where the
 * file system allows (page cache bypassed: a streamed model must not push
 * everything else out of memory), else buffered; both are registered with
 * the ring, and so is the arena the reads land in, so the kernel pins it
 * once instead of on every read. Where io_uring cannot be set up (kernel
 * too old, disabled by sysctl, refused by seccomp) every read is a pread,
 * and the info line says so.
 *
 * After a failed read the file is suspect: before its next read, if the
 * path now names another file (the admin restored it by renaming a good
 * copy over it), that file is opened in its place when its size and first
 * MiB are the same, and refused (-ESTALE) when they are not.
 *
 * MX_IO_URING=0 makes every read a pread and MX_IO_DIRECT=0 every file
 * buffered (to test those paths where the kernel offers more), and
 * MX_IO_FAULT=eio:N[:M] or short:N[:M] in the environment makes M
 * completions (default 1) from the N-th on fail or come back half read:
 * the fault-injection tests' hook. */
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "model.h"
#include "mx_common.h"
#include "stream.h"

#define RING_ENTRIES 64
#define FIFO 256

struct mx_io {
        size_t n;
        int *fds;
        char **paths;
        uint64_t *header_hash;  /* per file: its identity (size and first MiB), 0 when unknown */
        bool *suspect;          /* per file: a read failed since it was last looked at */
        bool any_direct;
        bool uring, registered_buffers;
        struct io_uring ring;
        uint8_t *arena;
        size_t chunk;    /* the arena is registered as buffers of this many bytes (io_uring takes up to 1 GiB each) */
        unsigned in_flight;
        char how[160];
        /* pread: results wait here for mx_io_wait */
        struct {
                uint64_t tag;
                int64_t res;
        } done[FIFO];
        unsigned head, tail;
        /* fault injection */
        int fault_kind; /* 0 none, 1 eio, 2 short */
        uint64_t fault_at, fault_n, completions;
};

static void read_fault(mx_io *io) {
        const char *f = getenv("MX_IO_FAULT");
        unsigned long long at = 0, n = 1;
        if (!f)
                return;
        if (sscanf(f, "eio:%llu:%llu", &at, &n) >= 1 && strncmp(f, "eio:", 4) == 0)
                io->fault_kind = 1;
        else if (sscanf(f, "short:%llu:%llu", &at, &n) >= 1 && strncmp(f, "short:", 6) == 0)
                io->fault_kind = 2;
        io->fault_at = at, io->fault_n = n;
}

/* O_DIRECT where the file system takes it; -errno. */
static int open_reading(const char *path, bool *direct) {
        const char *want = getenv("MX_IO_DIRECT");
        int fd;
        if (!want || strcmp(want, "0")) {
                fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
                *direct = fd >= 0;
                if (fd >= 0 || errno != EINVAL)
                        return fd < 0 ? -errno : fd;
        }
        /* tmpfs before Linux 6.6, and others: no O_DIRECT */
        *direct = false;
        fd = open(path, O_RDONLY | O_CLOEXEC);
        return fd < 0 ? -errno : fd;
}

/* A file's identity (size and first MiB, model/file_io.c); 0 when unreadable. */
static uint64_t identity(const char *path) {
        uint64_t h = 0;
        return mx_file_fingerprint(path, &h) < 0 ? 0 : h;
}

static int open_files(mx_io *io, const char *const *paths, mx_error *err) {
        for (size_t i = 0; i < io->n; i++) {
                io->fds[i] = -1;
                if (!(io->paths[i] = strdup(paths[i])))
                        return mx_error_set(err, -ENOMEM, "out of memory");
                bool direct;
                int fd = open_reading(paths[i], &direct);
                if (fd < 0)
                        return mx_error_set(err, fd, "%s: %s", paths[i], strerror(-fd));
                io->any_direct |= direct;
                io->fds[i] = fd;
                io->header_hash[i] = identity(paths[i]);
        }
        return 0;
}

/* Before reading a suspect file: 0 to go on (with the file the path names
 * now, if it was replaced by one with the same header), -ESTALE when the
 * path names a different file. */
static int recheck(mx_io *io, uint32_t file) {
        struct stat now, have;
        if (stat(io->paths[file], &now) < 0 || fstat(io->fds[file], &have) < 0 ||
            (now.st_dev == have.st_dev && now.st_ino == have.st_ino)) {
                io->suspect[file] = false; /* gone, or the same file (restored in place, or not) */
                return 0;
        }
        uint64_t h = identity(io->paths[file]);
        if (!h || h != io->header_hash[file])
                return -ESTALE;
        bool direct;
        int fd = open_reading(io->paths[file], &direct);
        if (fd < 0)
                return 0;
        if (io->uring && io_uring_register_files_update(&io->ring, file, &fd, 1) < 0) {
                close(fd);
                return 0;
        }
        close(io->fds[file]); /* reads in flight keep their own reference */
        io->fds[file] = fd;
        io->suspect[file] = false;
        return 0;
}

void mx_io_suspect(mx_io *io, uint32_t file) {
        if (file < io->n)
                io->suspect[file] = true;
}

/* The arena as fixed buffers of whole units (slots), each at most 1 GiB, so
 * no read crosses from one into the next. Registering pins the arena:
 * RLIMIT_MEMLOCK may say no. */
static int register_arena(mx_io *io, size_t arena_bytes, size_t unit) {
        const size_t most = (size_t)1 << 30;
        if (!arena_bytes || !unit || unit > most)
                return -E2BIG;
        io->chunk = most / unit * unit;
        size_t n = (arena_bytes + io->chunk - 1) / io->chunk;
        if (n > (1u << 14))
                return -E2BIG;
        _cleanup_free_ struct iovec *iov = calloc(n, sizeof(*iov));
        if (!iov)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                size_t at = i * io->chunk;
                iov[i] = (struct iovec){io->arena + at, arena_bytes - at < io->chunk ? arena_bytes - at : io->chunk};
        }
        return io_uring_register_buffers(&io->ring, iov, (unsigned)n);
}

static void setup_ring(mx_io *io, size_t arena_bytes, size_t unit) {
        const char *want = getenv("MX_IO_URING");
        if (want && strcmp(want, "0") == 0) {
                snprintf(io->how, sizeof(io->how), "pread (io_uring turned off by MX_IO_URING=0)");
                return;
        }
        int r = io_uring_queue_init(RING_ENTRIES, &io->ring, 0);
        if (r < 0) {
                snprintf(io->how, sizeof(io->how), "pread (io_uring unavailable: %s)", strerror(-r));
                return;
        }
        io->uring = true;
        if ((r = io_uring_register_files(&io->ring, io->fds, (unsigned)io->n)) < 0) {
                io_uring_queue_exit(&io->ring);
                io->uring = false;
                snprintf(io->how, sizeof(io->how), "pread (io_uring cannot register files: %s)", strerror(-r));
                return;
        }
        r = register_arena(io, arena_bytes, unit);
        io->registered_buffers = r == 0;
        const char *why = r == -ENOMEM ? "RLIMIT_MEMLOCK" : r == -E2BIG ? "slots too large" : strerror(-r);
        snprintf(io->how, sizeof(io->how), "io_uring%s%s%s%s", io->any_direct ? ", O_DIRECT" : ", buffered",
                 r == 0 ? ", registered buffers" : " (buffers not registered: ", r == 0 ? "" : why, r == 0 ? "" : ")");
}

int mx_io_open(mx_io **out, const char *const *paths, size_t n_paths, void *arena, size_t arena_bytes,
               size_t unit, mx_error *err) {
        mx_io *io = calloc(1, sizeof(*io));
        if (!io || !(io->fds = calloc(n_paths, sizeof(int))) || !(io->paths = calloc(n_paths, sizeof(char *))) ||
            !(io->header_hash = calloc(n_paths, sizeof(uint64_t))) || !(io->suspect = calloc(n_paths, sizeof(bool)))) {
                mx_io_close(io);
                return mx_error_set(err, -ENOMEM, "out of memory");
        }
        io->n = n_paths;
        io->arena = arena;
        read_fault(io);
        int r = open_files(io, paths, err);
        if (r < 0) {
                mx_io_close(io);
                return r;
        }
        setup_ring(io, arena_bytes, unit);
        *out = io;
        return 0;
}

void mx_io_close(mx_io *io) {
        if (!io)
                return;
        if (io->uring) {
                while (io->in_flight) { /* let reads finish before their buffers go */
                        struct io_uring_cqe *cqe;
                        if (io_uring_wait_cqe(&io->ring, &cqe) < 0)
                                break;
                        io_uring_cqe_seen(&io->ring, cqe);
                        io->in_flight--;
                }
                io_uring_queue_exit(&io->ring);
        }
        for (size_t i = 0; io->fds && i < io->n; i++)
                if (io->fds[i] >= 0)
                        close(io->fds[i]);
        for (size_t i = 0; io->paths && i < io->n; i++)
                free(io->paths[i]);
        free(io->fds);
        free(io->paths);
        free(io->header_hash);
        free(io->suspect);
        free(io);
}

/* pread the whole range (EINTR and partial reads retried); bytes or -errno. */
static int64_t read_all(int fd, uint8_t *buf, size_t len, uint64_t off) {
        size_t got = 0;
        while (got < len) {
                ssize_t k = pread(fd, buf + got, len - got, (off_t)(off + got));
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                if (k == 0)
                        break;
                got += (size_t)k;
        }
        return (int64_t)got;
}

int mx_io_submit(mx_io *io, uint32_t file, uint64_t off, size_t len, void *buf, uint64_t tag) {
        if (file >= io->n)
                return -EINVAL;
        int r = io->suspect[file] ? recheck(io, file) : 0;
        if (r < 0)
                return r;
        if (!io->uring) {
                if (io->tail - io->head == FIFO)
                        return -EBUSY;
                io->done[io->tail % FIFO].tag = tag;
                io->done[io->tail % FIFO].res = read_all(io->fds[file], buf, len, off);
                io->tail++;
                return 0;
        }
        struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
        if (!sqe) { /* full: push what is queued, then there is room */
                io_uring_submit(&io->ring);
                if (!(sqe = io_uring_get_sqe(&io->ring)))
                        return -EBUSY;
        }
        if (io->registered_buffers)
                io_uring_prep_read_fixed(sqe, (int)file, buf, (unsigned)len, off,
                                         (int)((size_t)((uint8_t *)buf - io->arena) / io->chunk));
        else
                io_uring_prep_read(sqe, (int)file, buf, (unsigned)len, off);
        sqe->flags |= IOSQE_FIXED_FILE;
        io_uring_sqe_set_data64(sqe, tag);
        io->in_flight++;
        r = io_uring_submit(&io->ring);
        return r < 0 ? r : 0;
}

static void inject(mx_io *io, int64_t *res) {
        ++io->completions;
        if (!io->fault_kind || io->completions < io->fault_at || io->completions >= io->fault_at + io->fault_n)
                return;
        *res = io->fault_kind == 1 ? -EIO : *res / 2;
}

int mx_io_wait(mx_io *io, uint64_t *tag, int64_t *res) {
        if (!io->uring) {
                if (io->head == io->tail)
                        return -EAGAIN;
                *tag = io->done[io->head % FIFO].tag;
                *res = io->done[io->head % FIFO].res;
                io->head++;
                inject(io, res);
                return 0;
        }
        if (!io->in_flight)
                return -EAGAIN;
        struct io_uring_cqe *cqe;
        int r;
        while ((r = io_uring_wait_cqe(&io->ring, &cqe)) == -EINTR)
                ;
        if (r < 0)
                return r;
        *tag = io_uring_cqe_get_data64(cqe);
        *res = cqe->res;
        io_uring_cqe_seen(&io->ring, cqe);
        io->in_flight--;
        inject(io, res);
        return 0;
}

const char *mx_io_path(const mx_io *io, uint32_t file) {
        return file < io->n ? io->paths[file] : "?";
}

void mx_io_get_info(const mx_io *io, mx_io_info *info) {
        *info = (mx_io_info){io->uring, io->registered_buffers, io->any_direct};
        snprintf(info->how, sizeof(info->how), "%s", io->how);
}
