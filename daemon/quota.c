/* Admission against a user's limits: concurrency, queue, context, and the
 * hourly and daily token budgets. A request reserves its prompt plus the
 * completion tokens it is granted, so that concurrent requests together
 * never overrun a budget; what it does not use returns when it ends. */
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

#include "mx_common.h"
#include "mixtrald.h"

static uint64_t min_u64(uint64_t a, uint64_t b) {
        return a < b ? a : b;
}

/* Tokens still available under one window's limit (UINT64_MAX: none). */
static uint64_t left(uint64_t limit, uint64_t used, uint64_t reserved) {
        if (limit == 0)
                return UINT64_MAX;
        uint64_t held = used + reserved;
        return held >= limit ? 0 : limit - held;
}

uint64_t md_quota_retry_at(const md_limits *l, const md_usage_entry *e, uint64_t need) {
        bool day_blocks = l->tokens_per_day && e->day_used + need > l->tokens_per_day;
        if (day_blocks || (l->tokens_per_hour && need > l->tokens_per_hour))
                return e->day_start + 86400;
        return e->hour_start + 3600;
}

static void refuse(md_admission *a, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void refuse(md_admission *a, int code, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        a->code = code;
        vsnprintf(a->msg, sizeof(a->msg), fmt, ap);
        va_end(ap);
}

void md_quota_admit(const md_limits *l, bool exempt, const md_usage_entry *e, const md_inflight *f,
                    uint32_t prompt_tokens, uint32_t max_tokens, uint32_t context, uint64_t now,
                    md_admission *a) {
        *a = (md_admission){0};
        if (l->max_context && !exempt && l->max_context < context)
                context = l->max_context;
        if (prompt_tokens >= context)
                return refuse(a, MIXTRALD__V1__ERROR_CODE__TOO_LONG,
                              "the prompt has %u tokens; the context holds %u (with room for one more)",
                              prompt_tokens, context);
        uint32_t grant = context - prompt_tokens;
        if (max_tokens && max_tokens < grant)
                grant = max_tokens;
        if (exempt) {
                a->max_tokens = grant;
                return;
        }
        if (l->max_tokens && grant > l->max_tokens)
                grant = l->max_tokens, a->cut = MD_CUT_MAX_TOKENS;
        uint64_t need = (uint64_t)prompt_tokens + 1;
        if ((l->tokens_per_hour && need > l->tokens_per_hour) || (l->tokens_per_day && need > l->tokens_per_day))
                return refuse(a, MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED,
                              "this request needs %" PRIu64 " tokens, more than your limit of %" PRIu64
                              " per %s: it can never run",
                              need, l->tokens_per_hour && need > l->tokens_per_hour ? l->tokens_per_hour : l->tokens_per_day,
                              l->tokens_per_hour && need > l->tokens_per_hour ? "hour" : "day");
        uint64_t slots = (uint64_t)(l->max_concurrent ? l->max_concurrent : UINT32_MAX) +
                         (l->max_concurrent ? l->max_queued : 0);
        if ((uint64_t)f->running + f->queued >= slots)
                return refuse(a, MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED,
                              "you have %u requests running and %u queued; your limit is %u running "
                              "and %u queued",
                              f->running, f->queued, l->max_concurrent, l->max_queued);
        uint64_t avail = min_u64(left(l->tokens_per_hour, e->hour_used, f->reserved),
                                 left(l->tokens_per_day, e->day_used, f->reserved));
        if (avail < need) {
                /* Reservations come back when running requests end; used tokens
                 * only when their window turns. */
                bool windows_block = min_u64(left(l->tokens_per_hour, e->hour_used, 0),
                                             left(l->tokens_per_day, e->day_used, 0)) < need;
                a->retry_at = windows_block ? md_quota_retry_at(l, e, need) : now + 1;
                char hour[64] = "", day[64] = "";
                if (l->tokens_per_hour)
                        snprintf(hour, sizeof(hour), "%" PRIu64 " of %" PRIu64 " this hour, ", e->hour_used,
                                 l->tokens_per_hour);
                if (l->tokens_per_day)
                        snprintf(day, sizeof(day), "%" PRIu64 " of %" PRIu64 " today, ", e->day_used,
                                 l->tokens_per_day);
                return refuse(a, MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED,
                              "this request needs %" PRIu64 " tokens of budget and %" PRIu64
                              " are left (used %s%s%" PRIu64 " held by running requests)",
                              need, avail, hour, day, f->reserved);
        }
        if (avail != UINT64_MAX && avail - prompt_tokens < grant)
                grant = (uint32_t)(avail - prompt_tokens), a->cut = MD_CUT_BUDGET;
        a->max_tokens = grant;
        a->reserve = avail == UINT64_MAX ? 0 : (uint64_t)prompt_tokens + grant;
}
