/* Memory pressure and the experts' budget. Linux's pressure stall
 * information says how much of the last 10 s tasks waited for memory; when
 * that passes 10% the daemon gives memory back by halving its streamed
 * experts' budget (never below top-k per layer; requests go on, slower),
 * and after 10 calm seconds it doubles back toward what is configured.
 * Sampling once a second keeps this simple and testable: memory_pressure
 * can name any file in the same format. */
#include <stdio.h>
#include <systemd/sd-event.h>
#include <time.h>
#include <string.h>
#include <syslog.h>

#include "mixtrald.h"
#include "mx_common.h"

/* "some avg10=1.23 avg60=... total=..." on the first line. */
static int read_some_avg10(const char *path, double *out) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char line[256];
        if (!f || !fgets(line, sizeof(line), f))
                return -errno ? -errno : -EIO;
        return sscanf(line, "some avg10=%lf", out) == 1 ? 0 : -EINVAL;
}

void md_server_set_expert_budget(md_server *srv, uint64_t budget) {
        srv->expert_now = budget;
        md_sched_set_opts(srv->sched, &(md_sched_opts){srv->cfg.max_batch, srv->cfg.prefill_chunk, budget});
}

static const char *pressure_path(const md_server *srv) {
        return srv->cfg.memory_pressure ? srv->cfg.memory_pressure : "/proc/pressure/memory";
}

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        md_server *srv = userdata;
        sd_event_source_set_time(s, usec + 1000000);
        double avg10 = 0;
        bool off = srv->cfg.memory_pressure && strcmp(srv->cfg.memory_pressure, "off") == 0;
        if (!srv->expert_budget || off)
                return 0;
        if (read_some_avg10(pressure_path(srv), &avg10) < 0)
                return 0; /* no PSI here (old kernel, container): nothing to go by */
        uint64_t next = md_pressure_next(srv->expert_now, srv->expert_budget, avg10, &srv->calm_seconds);
        if (next != srv->expert_now) {
                md_log(next < srv->expert_now ? LOG_WARNING : LOG_INFO,
                       "memory pressure %.1f%%: expert memory %llu -> %llu bytes", avg10,
                       (unsigned long long)srv->expert_now, (unsigned long long)next);
                md_server_set_expert_budget(srv, next);
        }
        return 0;
}

int md_pressure_start(md_server *srv, mx_error *err) {
        uint64_t now = 0;
        sd_event_now(srv->event, CLOCK_MONOTONIC, &now);
        int r = sd_event_add_time(srv->event, &srv->pressure_timer, CLOCK_MONOTONIC, now + 1000000, 100000, on_tick,
                                  srv);
        if (r < 0)
                return mx_error_set(err, r, "memory pressure timer: %s", strerror(-r));
        return sd_event_source_set_enabled(srv->pressure_timer, SD_EVENT_ON) < 0 ? -EIO : 0;
}
