/* GET /metrics in Prometheus' text format (version 0.0.4). */
#include <stdio.h>
#include <stdlib.h>

#include "controller/controller.h"

/* Label values escape backslash, double quote and newline. */
static void put_label(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\') fputs("\\\\", f);
        else if (*s == '"') fputs("\\\"", f);
        else if (*s == '\n') fputs("\\n", f);
        else fputc(*s, f);
    }
}

static void put_dispatch(FILE *f, const char *model, const struct ctl_dispatch_counts *dc)
{
    fputs("sluice_controller_dispatch_total{model=\"", f);
    put_label(f, model);
    fprintf(f, "\",result=\"ok\"} %llu\n", (unsigned long long)dc->ok);
    fputs("sluice_controller_dispatch_total{model=\"", f);
    put_label(f, model);
    fprintf(f, "\",result=\"no_worker\"} %llu\n", (unsigned long long)dc->no_worker);
}

static void put_dispatch_cb(const char *key, void *value, void *arg)
{
    put_dispatch(arg, key, value);
}

/* The autoscaling signal, per model ever registered (0 once its workers are gone, so that an
 * HPA sees the drop rather than no data). */
struct load_ctx {
    FILE *f;
    struct ctl *c;
    int which; /* 0 queue length, 1 workers, 2 queue wait */
};

static void put_load_cb(const char *model, void *value, void *arg)
{
    (void)value;
    struct load_ctx *x = arg;
    struct ctl_model_load load;
    ctl_registry_model_load(x->c->reg, model, &load);
    static const char *const names[] = {"sluice_controller_model_queue_length", "sluice_controller_model_workers",
                                        "sluice_controller_model_queue_wait_seconds"};
    fprintf(x->f, "%s{model=\"", names[x->which]);
    put_label(x->f, model);
    if (x->which == 0) fprintf(x->f, "\"} %lld\n", (long long)load.queue_length);
    else if (x->which == 1) fprintf(x->f, "\"} %zu\n", load.workers);
    else fprintf(x->f, "\"} %.3f\n", load.queue_wait_s);
}

static void put_load(FILE *f, struct ctl *c)
{
    static const char *const heads[] = {
        "# HELP sluice_controller_model_queue_length Requests queued or running on the model's live workers (the sum "
        "of their queue_length).\n# TYPE sluice_controller_model_queue_length gauge\n",
        "# HELP sluice_controller_model_workers Live workers serving the model.\n"
        "# TYPE sluice_controller_model_workers gauge\n",
        "# HELP sluice_controller_model_queue_wait_seconds The longest time a request of the model has been waiting "
        "for its first token, as the workers last reported it in heartbeats (0 when none reports it).\n"
        "# TYPE sluice_controller_model_queue_wait_seconds gauge\n",
    };
    for (int which = 0; which < 3; which++) {
        fputs(heads[which], f);
        struct load_ctx x = {f, c, which};
        strmap_each(c->dispatch_counts, put_load_cb, &x);
    }
}

char *ctl_metrics_render(struct ctl *c, size_t *len)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f) return NULL;
    fprintf(f, "# HELP sluice_controller_workers Workers registered and live.\n"
               "# TYPE sluice_controller_workers gauge\n"
               "sluice_controller_workers %zu\n",
            ctl_registry_live_count(c->reg));
    const char **names;
    long n_models = ctl_registry_live_models(c->reg, &names);
    if (n_models >= 0) free(names);
    fprintf(f, "# HELP sluice_controller_models Distinct models served by live workers.\n"
               "# TYPE sluice_controller_models gauge\n"
               "sluice_controller_models %ld\n",
            n_models < 0 ? 0 : n_models);
    fputs("# HELP sluice_controller_dispatch_total /get_worker_address answers by model and result "
          "(model \"_unknown\": names no worker ever registered).\n"
          "# TYPE sluice_controller_dispatch_total counter\n",
          f);
    strmap_each(c->dispatch_counts, put_dispatch_cb, f);
    put_dispatch(f, "_unknown", &c->dispatch_unknown);
    put_load(f, c);
    fprintf(f, "# HELP sluice_controller_registrations_total Successful worker registrations.\n"
               "# TYPE sluice_controller_registrations_total counter\n"
               "sluice_controller_registrations_total %llu\n"
               "# HELP sluice_controller_heartbeats_total Heartbeats by whether the worker was known.\n"
               "# TYPE sluice_controller_heartbeats_total counter\n"
               "sluice_controller_heartbeats_total{known=\"true\"} %llu\n"
               "sluice_controller_heartbeats_total{known=\"false\"} %llu\n"
               "# HELP sluice_controller_workers_expired_total Workers dropped for missing heartbeats.\n"
               "# TYPE sluice_controller_workers_expired_total counter\n"
               "sluice_controller_workers_expired_total %llu\n"
               "# HELP sluice_controller_workers_refresh_removed_total Workers dropped because their status request failed.\n"
               "# TYPE sluice_controller_workers_refresh_removed_total counter\n"
               "sluice_controller_workers_refresh_removed_total %llu\n"
               "# HELP sluice_controller_unauthorized_total Internal requests refused: a missing or wrong internal token (401), or a non-loopback caller without one (403).\n"
               "# TYPE sluice_controller_unauthorized_total counter\n"
               "sluice_controller_unauthorized_total %llu\n",
            (unsigned long long)c->registrations, (unsigned long long)c->heartbeats,
            (unsigned long long)c->heartbeats_unknown,
            (unsigned long long)ctl_registry_expired_total(c->reg), (unsigned long long)c->refresh_removed,
            (unsigned long long)c->unauthorized);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    *len = size;
    return buf;
}
