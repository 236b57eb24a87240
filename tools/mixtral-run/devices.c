/* --devices: what this machine can compute on. */
#include <stdio.h>
#include <unistd.h>

#include "mx_config.h"
#include "run.h"

#if MX_HAVE_CUDA
#include "mixtral_kernels.h"

static int list_cuda(void) {
        char why[256] = "";
        int n = mxk_device_count(why, sizeof(why));
        if (n == 0) {
                printf("cuda: unavailable (%s)\n", why);
                return 0;
        }
        int bad = 0;
        for (int i = 0; i < n; i++) {
                mxk_device d;
                if (mxk_device_query(i, &d, why, sizeof(why)) < 0 ||
                    mxk_device_selftest(i, why, sizeof(why)) < 0) {
                        printf("cuda:%d: error (%s)\n", i, why);
                        bad = 1;
                        continue;
                }
                printf("cuda:%d: %s, compute capability %d.%d, %d SMs, %.1f GiB (%.1f GiB free), self-test passed\n",
                       i, d.name, d.cc_major, d.cc_minor, d.multiprocessors,
                       (double)d.total_bytes / (1 << 30), (double)d.free_bytes / (1 << 30));
        }
        return bad;
}
#else
static int list_cuda(void) {
        printf("cuda: unavailable (this build has no CUDA support: rebuild with nvcc and -Dcuda=enabled)\n");
        return 0;
}
#endif

/* Non-zero only when a CUDA device is present but fails its self-test. */
int run_devices(void) {
        printf("cpu: %ld online cores\n", sysconf(_SC_NPROCESSORS_ONLN));
        return list_cuda();
}
