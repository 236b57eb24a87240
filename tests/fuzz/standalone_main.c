/* Runs a fuzz target over files (or directories of files) without
 * libFuzzer: the seed corpus becomes a regression test in every build,
 * the sanitizer build included. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int run_file(const char *path) {
        FILE *f = fopen(path, "rb");
        if (!f) {
                perror(path);
                return -1;
        }
        size_t cap = 1 << 16, n = 0, k;
        uint8_t *buf = malloc(cap);
        while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0)
                if ((n += k) == cap && !(buf = realloc(buf, cap *= 2)))
                        break;
        fclose(f);
        if (!buf)
                return -1;
        /* An exact-size copy lets AddressSanitizer catch reads past the end. */
        uint8_t *exact = malloc(n ? n : 1);
        memcpy(exact, buf, n);
        free(buf);
        LLVMFuzzerTestOneInput(exact, n);
        free(exact);
        return 1;
}

static int run_path(const char *path) {
        struct stat st;
        if (stat(path, &st) < 0) {
                perror(path);
                return -1;
        }
        if (!S_ISDIR(st.st_mode))
                return run_file(path);
        DIR *d = opendir(path);
        int count = 0;
        for (struct dirent *e; d && (e = readdir(d));) {
                if (e->d_name[0] == '.')
                        continue;
                char sub[4096];
                snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
                int r = run_path(sub);
                if (r < 0) {
                        closedir(d);
                        return r;
                }
                count += r;
        }
        if (d)
                closedir(d);
        return count;
}

int main(int argc, char **argv) {
        int total = 0;
        for (int i = 1; i < argc; i++) {
                int r = run_path(argv[i]);
                if (r < 0)
                        return 1;
                total += r;
        }
        printf("%d inputs ran without a fault\n", total);
        return total > 0 ? 0 : 1;
}
