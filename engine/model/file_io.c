/* Files are opened with O_NONBLOCK so that a FIFO in a model directory is
 * reported instead of hanging start-up, and mapped instead of read: a 90 GB
 * checkpoint costs nothing until its pages are used. Files are written
 * under a temporary name, synced and renamed, so that a model file appears
 * whole or not at all.
 *
 * A mapped file that shrinks under us (truncated, or rewritten in place)
 * turns every read past its new end into a SIGBUS, on whichever thread
 * reads. Every mapping made here is registered with a SIGBUS handler that,
 * for an address inside one, maps zero pages from the faulting page to the
 * mapping's end (the pages after a missing one are missing too) and marks
 * the mapping faulted: the read goes on with zeros, and whoever drove it
 * asks mx_map_check after its work and throws that work away. A file put
 * back (the same size and fingerprint at the same path, e.g. a good copy
 * renamed over it) is mapped again at the same address, so every pointer
 * into it stays valid. Addresses outside our mappings go to the handler
 * that was there before (or the default: the process dies as it would). */
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <pthread.h>

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

/* ---- the guard ------------------------------------------------------------ */

#define MAX_GUARDED 1024
#define FINGERPRINT_BYTES (1u << 20)

typedef struct guarded {
        _Atomic(uintptr_t) start;  /* 0: free slot */
        uintptr_t end;
        atomic_bool faulted;
        char *path;                /* for putting the file back, and messages */
        uint64_t size, fingerprint;
} guarded;

static guarded guards[MAX_GUARDED];
static atomic_uint n_faulted;      /* mappings faulted and not yet put back */
static uintptr_t page_size;
static struct sigaction previous;
static pthread_once_t installed = PTHREAD_ONCE_INIT;
static pthread_mutex_t guards_lock = PTHREAD_MUTEX_INITIALIZER; /* slot allocation only */

static void pass_on(int sig, siginfo_t *si, void *uc) {
        if (previous.sa_flags & SA_SIGINFO && previous.sa_sigaction) {
                previous.sa_sigaction(sig, si, uc);
                return;
        }
        if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
                previous.sa_handler(sig);
                return;
        }
        /* Returning re-runs the read, which now kills the process. */
        signal(sig, SIG_DFL);
}

/* Only async-signal-safe work: atomics, and mmap (a plain system call). */
static void on_sigbus(int sig, siginfo_t *si, void *uc) {
        uintptr_t a = (uintptr_t)si->si_addr;
        for (size_t i = 0; i < MAX_GUARDED; i++) {
                guarded *g = &guards[i];
                uintptr_t start = atomic_load(&g->start);
                if (!start || a < start || a >= g->end)
                        continue;
                uintptr_t from = a & ~(page_size - 1);
                if (mmap((void *)from, g->end - from, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
                    MAP_FAILED)
                        break;
                if (!atomic_exchange(&g->faulted, true))
                        atomic_fetch_add(&n_faulted, 1);
                return;
        }
        pass_on(sig, si, uc);
}

static void install(void) {
        page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
        struct sigaction sa = {.sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_NODEFER};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGBUS, &sa, &previous);
}

/* FNV-1a of a file's size and first bytes. */
static uint64_t fingerprint(const uint8_t *p, uint64_t n, uint64_t size) {
        uint64_t h = 0xcbf29ce484222325ull ^ size;
        for (uint64_t i = 0; i < n; i++)
                h = (h ^ p[i]) * 0x100000001b3ull;
        return h;
}

int mx_file_fingerprint(const char *path, uint64_t *out) {
        uint64_t size;
        _cleanup_close_ int fd = mx_open_regular(path, &size, NULL);
        if (fd < 0)
                return fd;
        uint64_t n = size < FINGERPRINT_BYTES ? size : FINGERPRINT_BYTES;
        _cleanup_free_ uint8_t *buf = malloc(n ? n : 1);
        if (!buf)
                return -ENOMEM;
        for (uint64_t got = 0; got < n;) {
                ssize_t k = pread(fd, buf + got, n - got, (off_t)got);
                if (k <= 0)
                        return k < 0 ? -errno : -EIO;
                got += (uint64_t)k;
        }
        *out = fingerprint(buf, n, size);
        return 0;
}

static guarded *guard_of(const uint8_t *map) {
        for (size_t i = 0; map && i < MAX_GUARDED; i++)
                if (atomic_load(&guards[i].start) == (uintptr_t)map)
                        return &guards[i];
        return NULL;
}

static int guard(const char *path, const uint8_t *map, uint64_t size) {
        pthread_once(&installed, install);
        uint64_t n = size < FINGERPRINT_BYTES ? size : FINGERPRINT_BYTES;
        uint64_t fp = fingerprint(map, n, size); /* (reads the file's first MiB, once) */
        char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        pthread_mutex_lock(&guards_lock);
        for (size_t i = 0; i < MAX_GUARDED; i++) {
                guarded *g = &guards[i];
                if (atomic_load(&g->start))
                        continue;
                g->end = (uintptr_t)map + size, g->path = p, g->size = size, g->fingerprint = fp;
                atomic_store(&g->faulted, false);
                atomic_store(&g->start, (uintptr_t)map); /* published last */
                pthread_mutex_unlock(&guards_lock);
                return 0;
        }
        pthread_mutex_unlock(&guards_lock);
        free(p);
        return -EMFILE;
}

bool mx_map_faulted(const uint8_t *map) {
        guarded *g = atomic_load(&n_faulted) ? guard_of(map) : NULL;
        return g && atomic_load(&g->faulted);
}

int mx_map_check(const uint8_t *map, mx_error *err) {
        if (!atomic_load(&n_faulted))
                return 0;
        guarded *g = guard_of(map);
        if (!g || !atomic_load(&g->faulted))
                return 0;
        uint64_t size, fp;
        _cleanup_close_ int fd = mx_open_regular(g->path, &size, NULL);
        if (fd < 0 || size != g->size || mx_file_fingerprint(g->path, &fp) < 0 || fp != g->fingerprint)
                return mx_error_set(err, -EIO, "%s shrank or changed while in use (%s): what needs it fails until "
                                    "the file is put back as it was", g->path,
                                    fd < 0 ? "it is gone" : size != g->size ? "its size changed" : "its start changed");
        if (mmap((void *)g->start, (size_t)size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)
                return mx_error_set(err, -errno, "%s: cannot map it again: %s", g->path, strerror(errno));
        atomic_store(&g->faulted, false);
        atomic_fetch_sub(&n_faulted, 1);
        return 0;
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
        int r = guard(path, p, *size);
        if (r < 0) {
                munmap(p, (size_t)*size);
                return mx_error_set(err, r, "%s: cannot watch its mapping: %s", path,
                                    r == -EMFILE ? "too many mapped files" : strerror(-r));
        }
        *map = p;
        return 0;
}

void mx_unmap_file(const uint8_t *map, uint64_t size) {
        if (!map || !size)
                return;
        guarded *g = guard_of(map);
        if (g) {
                pthread_mutex_lock(&guards_lock);
                atomic_store(&g->start, 0); /* no longer ours before it goes */
                if (atomic_exchange(&g->faulted, false))
                        atomic_fetch_sub(&n_faulted, 1);
                free(g->path);
                g->path = NULL;
                pthread_mutex_unlock(&guards_lock);
        }
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
