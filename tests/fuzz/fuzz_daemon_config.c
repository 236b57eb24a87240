/* Fuzzes the daemon's configuration file (/etc/mixtrald/mixtrald.conf, read
 * with inih, line by line through our reader): whatever it accepts, the
 * rest of the daemon can use. The budgets must be ones the engine takes
 * for the real Mixtral's shape (the daemon parses them again only when the
 * model is loaded, or on SIGHUP), paths absolute, quota sections named. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "mixtrald.h"

/* The real model's shape without its weights: the engine's budget parser
 * needs only the tensors' sizes. */
static const mx_model *mixtral(void) {
        static mx_model *m;
        mx_error err;
        if (!m && mx_model_synthetic(&m, "mixtral-8x7b", 0, false, &err) < 0)
                abort();
        return m;
}

static void check_budget(const char *s) {
        uint64_t v;
        mx_error err;
        if (s && mx_expert_budget_parse(s, mixtral(), &v, &err) < 0)
                abort();
}

static void check(const md_config *c) {
        check_budget(c->expert_memory);
        check_budget(c->host_cache);
        if ((c->socket && c->socket[0] != '/') || c->socket_mode > 0777 || c->max_batch == 0 ||
            (c->memory_pressure && strcmp(c->memory_pressure, "off") && c->memory_pressure[0] != '/'))
                abort();
        for (size_t i = 0; i < c->n_sections; i++)
                if (!c->sections[i].name || !c->sections[i].name[0] || c->sections[i].set >> MD_LIMIT_FIELDS)
                        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        /* The real entry point reads a path: a memfd is a regular file. */
        int fd = memfd_create("mixtrald.conf", MFD_CLOEXEC);
        if (fd < 0)
                return 0;
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        if (write(fd, data, size) == (ssize_t)size) {
                md_config c;
                mx_error err;
                md_config_defaults(&c);
                if (md_config_load(&c, path, true, &err) == 0)
                        check(&c);
                md_config_free(&c);
        }
        close(fd);
        return 0;
}
