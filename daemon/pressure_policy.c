/* How the experts' budget follows memory pressure (pressure.c watches
 * it): halve at 10% of stalls over the last 10 s, double back toward the
 * configured budget after 10 calm seconds (under 1%). Pure, for tests. */
#include "mixtrald.h"

#define STALL_PERCENT 10.0
#define CALM_PERCENT 1.0
#define CALM_SECONDS 10

uint64_t md_pressure_next(uint64_t now, uint64_t configured, double some_avg10, uint32_t *calm_seconds) {
        if (some_avg10 >= STALL_PERCENT) {
                *calm_seconds = 0;
                return now > 1 ? now / 2 : 1; /* the engine keeps top-k per layer at the least */
        }
        if (some_avg10 >= CALM_PERCENT || now >= configured) {
                *calm_seconds = 0;
                return now;
        }
        if (++*calm_seconds < CALM_SECONDS)
                return now;
        *calm_seconds = 0;
        return now > configured / 2 ? configured : now * 2;
}

