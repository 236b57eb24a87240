/* Fuzzes the safetensors header parser with whole files. Whatever it
 * accepts must describe bytes inside the input: they are all read, so
 * AddressSanitizer sees any pointer past the end. */
#include <stdlib.h>

#include "fuzz.h"
#include "mixtral.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        mx_tensor *t = NULL;
        size_t n = 0;
        mx_error err;
        if (mx_safetensors_parse(data, size, "fuzz.safetensors", &t, &n, &err) < 0)
                return 0;
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < n; i++) {
                const uint8_t *p = t[i].data;
                if (p < data || t[i].offset + t[i].nbytes > size)
                        abort();
                for (uint64_t k = 0; k < t[i].nbytes; k += 4096)
                        sink ^= p[k];
                if (t[i].nbytes)
                        sink ^= p[t[i].nbytes - 1];
        }
        (void)sink;
        mx_tensors_free(t, n);
        return 0;
}
