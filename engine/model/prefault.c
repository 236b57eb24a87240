/* Paging a mapped model in before the first token: one sequential pass
 * over every file, with the kernel asked to read ahead, so that decoding
 * does not stall on page faults scattered over tens of gigabytes. */
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "mixtral.h"

int mx_model_prefault(const mx_model *m, void (*progress)(uint64_t done, uint64_t total, void *arg),
                      void *arg) {
        uint64_t total = 0, done = 0, page = (uint64_t)sysconf(_SC_PAGESIZE);
        for (size_t i = 0; i < m->n_files; i++)
                total += m->files[i].size;
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < m->n_files; i++) {
                const mx_model_file *f = &m->files[i];
                if (!f->map)
                        continue;
                madvise((void *)f->map, f->size, MADV_WILLNEED);
                for (uint64_t off = 0; off < f->size; off += page) {
                        sink ^= f->map[off];
                        done += off + page <= f->size ? page : f->size - off;
                        if (progress && (off & ((64u << 20) - 1)) == 0)
                                progress(done, total, arg);
                }
        }
        if (progress)
                progress(total, total, arg);
        (void)sink;
        return 0;
}

bool mx_model_fits_in_memory(const mx_model *m) {
        struct sysinfo si;
        uint64_t total = 0;
        for (size_t i = 0; i < m->n_files; i++)
                total += m->files[i].size;
        return sysinfo(&si) == 0 && total < (uint64_t)si.totalram * si.mem_unit / 10 * 8;
}
