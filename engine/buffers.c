/* Growable id vectors and byte strings. */
#include <string.h>

#include "mixtral.h"
#include "mx_common.h"

int mx_ids_push(mx_ids *ids, int32_t id) {
        return mx_ids_append(ids, &id, 1);
}

int mx_ids_append(mx_ids *ids, const int32_t *v, size_t n) {
        size_t need;
        if (__builtin_add_overflow(ids->n, n, &need))
                return -ENOMEM;
        int r = mx_grow((void **)&ids->v, &ids->cap, need, sizeof(int32_t));
        if (r < 0)
                return r;
        if (n)
                memcpy(ids->v + ids->n, v, n * sizeof(int32_t));
        ids->n = need;
        return 0;
}

void mx_ids_free(mx_ids *ids) {
        free(ids->v);
        *ids = (mx_ids){0};
}

int mx_buf_append(mx_buf *b, const void *data, size_t n) {
        size_t need;
        if (__builtin_add_overflow(b->n, n, &need) || need == SIZE_MAX)
                return -ENOMEM;
        int r = mx_grow((void **)&b->p, &b->cap, need + 1, 1);
        if (r < 0)
                return r;
        if (n)
                memcpy(b->p + b->n, data, n);
        b->n = need;
        b->p[b->n] = '\0';
        return 0;
}

void mx_buf_free(mx_buf *b) {
        free(b->p);
        *b = (mx_buf){0};
}
