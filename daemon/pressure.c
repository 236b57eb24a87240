/* Memory pressure and the experts' budget. Linux's pressure stall
 * information says how much of the last 10 s tasks waited for memory; when
 * that passes 10% the daemon gives memory back by halving its streamed
 * experts' budget (never below top-k per layer; requests go on, slower),
 * or on a GPU its host cache (the GPU's memory is not the host's), and
 * after 10 calm seconds it doubles back toward what is configured.
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

md_sched_opts md_server_sched_opts(const md_server *srv) {
        return (md_sched_opts){srv->cfg.max_batch, srv->cfg.prefill_chunk, srv->expert_now, srv->host_cache_now};
}

/* The engine thread takes what srv says now, between steps. */
static void push_opts(md_server *srv) {
        md_sched_opts o = md_server_sched_opts(srv);
        md_sched_set_opts(srv->sched, &o);
}

void md_server_set_expert_budget(md_server *srv, uint64_t budget) {
        srv->expert_now = budget;
        push_opts(srv);
}

/* The least the engine can hold: top-k experts per layer (and on a GPU's
 * host cache one more), so halving stops there and growing starts there. */
static uint64_t floor_bytes(const md_server *srv, bool host) {
        const mx_model *m = srv->load.model;
        const mx_layer *l = &m->layers[0];
        uint64_t per = l->w1[0]->nbytes + l->w2[0]->nbytes + l->w3[0]->nbytes;
        return per * m->cfg.n_layers * (m->cfg.n_experts_per_tok + host);
}

/* One reading against the budget it governs: the host cache on a GPU,
 * the experts' budget on the CPU. */
static void follow(md_server *srv, double avg10) {
        bool host = srv->host_cache_budget > 0;
        uint64_t *now = host ? &srv->host_cache_now : &srv->expert_now;
        uint64_t configured = host ? srv->host_cache_budget : srv->expert_budget, least = floor_bytes(srv, host);
        uint64_t next = md_pressure_next(*now, configured, avg10, &srv->calm_seconds);
        next = next < least ? (least < configured ? least : configured) : next;
        if (next == *now)
                return;
        md_log(next < *now ? LOG_WARNING : LOG_INFO, "memory pressure %.1f%%: %s %llu -> %llu bytes", avg10,
               host ? "the GPU's host cache" : "expert memory", (unsigned long long)*now, (unsigned long long)next);
        *now = next;
        push_opts(srv);
}

static const char *pressure_path(const md_server *srv) {
        return srv->cfg.memory_pressure ? srv->cfg.memory_pressure : "/proc/pressure/memory";
}

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        md_server *srv = userdata;
        sd_event_source_set_time(s, usec + 1000000);
        double avg10 = 0;
        bool off = srv->cfg.memory_pressure && strcmp(srv->cfg.memory_pressure, "off") == 0;
        if ((!srv->expert_budget && !srv->host_cache_budget) || off)
                return 0;
        if (read_some_avg10(pressure_path(srv), &avg10) < 0)
                return 0; /* no PSI here (old kernel, container): nothing to go by */
        follow(srv, avg10);
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
