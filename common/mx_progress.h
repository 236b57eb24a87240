/* A progress bar on stderr, for the tools and the daemon started by hand
 * on a terminal: "WHAT [#####     ]  40%  1.2 / 3.0 GiB", redrawn in place
 * whenever the percentage changes, ended with a newline at 100%. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct mx_progress_bar {
        bool on;          /* stderr is a terminal (and nothing else writes to it) */
        int last;         /* the percentage drawn last, -1 for none */
        const char *what; /* what it drew last */
} mx_progress_bar;

static inline mx_progress_bar mx_progress_bar_new(bool on) {
        return (mx_progress_bar){on, -1, NULL};
}

static inline void mx_progress_bar_show(mx_progress_bar *b, const char *what, uint64_t done, uint64_t total) {
        int pct = total ? (int)(done * 100 / total) : 100;
        if (!b->on || (pct == b->last && b->what && !strcmp(b->what, what)))
                return;
        b->last = pct, b->what = what;
        char fill[41];
        int k = pct * 40 / 100;
        for (int i = 0; i < 40; i++)
                fill[i] = i < k ? '#' : ' ';
        fill[40] = '\0';
        fprintf(stderr, "\r%s [%s] %3d%%  %.1f / %.1f GiB", what, fill, pct, (double)done / (1u << 30),
                (double)total / (1u << 30));
        if (done == total)
                fputc('\n', stderr);
        fflush(stderr);
}
