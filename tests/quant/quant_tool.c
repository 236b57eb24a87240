/* The quant room's row functions on raw bytes, for check_gguf.py to hold
 * against gguf-py:
 *
 *   quant-tool dequant TYPE N    stdin: N values' blocks; stdout: N float32
 *   quant-tool quantize TYPE N   stdin: N float32; stdout: their blocks
 *
 * TYPE is a name of mx_dtype_name (Q4_K, BF16, ...). Exit 1 on bad input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

static int parse_type(const char *s, mx_dtype *t) {
        for (int i = 0; i < MX_DTYPE_COUNT; i++)
                if (strcmp(s, mx_dtype_name((mx_dtype)i)) == 0) {
                        *t = (mx_dtype)i;
                        return 0;
                }
        return -1;
}

static void *read_all(size_t want) {
        void *p = malloc(want ? want : 1);
        if (!p || fread(p, 1, want, stdin) != want) {
                fprintf(stderr, "quant-tool: expected %zu bytes on stdin\n", want);
                exit(1);
        }
        return p;
}

int main(int argc, char **argv) {
        mx_dtype t;
        uint64_t n = argc == 4 ? strtoull(argv[3], NULL, 10) : 0, bytes = 0;
        if (argc != 4 || parse_type(argv[2], &t) < 0 || mx_dtype_row_bytes(t, n, &bytes) < 0) {
                fprintf(stderr, "usage: quant-tool dequant|quantize TYPE N (N whole blocks)\n");
                return 1;
        }
        bool deq = strcmp(argv[1], "dequant") == 0;
        void *in = read_all(deq ? bytes : n * sizeof(float));
        size_t out_bytes = deq ? n * sizeof(float) : bytes;
        void *out = malloc(out_bytes ? out_bytes : 1);
        int r = deq ? mx_dequant_row(t, in, out, n) : mx_quantize_row(t, in, out, n);
        if (r < 0 || fwrite(out, 1, out_bytes, stdout) != out_bytes) {
                fprintf(stderr, "quant-tool: failed (%d)\n", r);
                return 1;
        }
        free(in);
        free(out);
        return 0;
}
