/* What the daemon says about itself, in its own terms: the protobuf
 * socket and D-Bus each turn an md_status into their wire format. A
 * caller sees its own requests; root and the admin group see everyone's. */
#include <stdio.h>

#include "mx_common.h"
#include "mixtrald.h"

const char *md_server_state(const md_server *srv) {
        return srv->draining ? "draining" : srv->loading ? "loading" : "serving";
}

static uint64_t rss_bytes(void) {
        _cleanup_fclose_ FILE *f = fopen("/proc/self/statm", "re");
        unsigned long long size, rss;
        if (!f || fscanf(f, "%llu %llu", &size, &rss) != 2)
                return 0;
        return rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

void md_status_free(md_status *st) {
        free(st->requests);
        *st = (md_status){0};
}

int md_status_fill(md_server *srv, uint32_t uid, md_status *st) {
        md_limits l;
        bool admin;
        md_users_limits(srv->users, &srv->cfg, uid, &l, &admin);
        mx_footprint fp;
        mx_model_footprint(srv->load.model, &fp);
        mx_engine *e = srv->loading ? NULL : md_sched_engine(srv->sched);
        *st = (md_status){.version = MX_VERSION_STRING, .model = srv->model_dir,
                          .device = e ? mx_engine_describe(e) : srv->cfg.device ? srv->cfg.device : "cpu",
                          .state = md_server_state(srv), .weight_bytes = fp.bytes, .rss_bytes = rss_bytes(),
                          .max_batch = srv->cfg.max_batch, .max_queue = srv->cfg.max_queue,
                          .connections = srv->n_conns + md_http_connections(srv),
                          .context_length = srv->context_length,
                          .uptime_s = md_now() - srv->t_start};
        md_sched_loaded(srv->sched, &st->load_fraction);
        md_core_totals(srv->core, &st->requests_total, &st->tokens_total);
        md_request_counts counts;
        if (md_core_requests(srv->core, uid, admin, &st->requests, &st->n_requests, &counts) < 0)
                return -ENOMEM;
        st->queued = counts.queued, st->running = counts.running;
        st->prefilling = counts.prefilling, st->decoding = counts.decoding;
        md_sched_kv_stats(srv->sched, &st->kv);
        st->kv_bytes = st->kv.used * st->kv.block_bytes;
        md_sched_expert_stats(srv->sched, &st->experts);
        const mx_expert_stats *xs = &st->experts;
        st->streaming = xs->streaming;
        /* "min" is configured as 1 byte, a GPU's own choice as 0: the
         * engine's budget says what those came to. */
        st->expert_configured = srv->expert_budget > xs->budget ? srv->expert_budget : xs->budget;
        st->expert_read_gbps = xs->read_wait_s > 0 ? (double)xs->bytes_read / xs->read_wait_s / 1e9 : 0;
        return 0;
}
