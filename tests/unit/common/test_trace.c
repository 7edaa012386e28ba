/* Request ids and W3C trace context (common/trace.h), and the span lines they log. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/jsonlog.h"
#include "common/trace.h"

Test(trace, request_ids_are_printable_and_bounded)
{
    cr_assert(trace_request_id_valid("abc-123_XYZ.:/"));
    cr_assert_not(trace_request_id_valid(""));
    cr_assert_not(trace_request_id_valid(NULL));
    cr_assert_not(trace_request_id_valid("has space"));
    cr_assert_not(trace_request_id_valid("tab\there"));
    cr_assert_not(trace_request_id_valid("caf\xc3\xa9"));
    char long_id[200];
    memset(long_id, 'a', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    long_id[TRACE_REQUEST_ID_MAX] = '\0';
    cr_assert(trace_request_id_valid(long_id));
    long_id[TRACE_REQUEST_ID_MAX] = 'a';
    long_id[TRACE_REQUEST_ID_MAX + 1] = '\0';
    cr_assert_not(trace_request_id_valid(long_id));

    char a[TRACE_REQUEST_ID_SIZE], b[TRACE_REQUEST_ID_SIZE];
    cr_assert_str_eq(trace_request_id_take("mine-1", a), "mine-1");
    trace_request_id_take("bad id", a);
    trace_request_id_take(NULL, b);
    cr_assert(!strncmp(a, "req_", 4) && strlen(a) == 36 && trace_request_id_valid(a));
    cr_assert_str_neq(a, b);
}

Test(trace, traceparent_parsing_follows_the_standard)
{
    char t[33], p[17];
    uint8_t f = 0;
    cr_assert_eq(trace_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", t, p, &f), 0);
    cr_assert_str_eq(t, "4bf92f3577b34da6a3ce929d0e0e4736");
    cr_assert_str_eq(p, "00f067aa0ba902b7");
    cr_assert_eq(f, 1);
    /* A later version may carry more after a dash; ff is never valid. */
    cr_assert_eq(trace_parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more", t, p, &f), 0);
    cr_assert_eq(f, 0);
    const char *bad[] = {
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",    /* 00 is exactly 55 */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",      /* short */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",     /* uppercase */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",     /* zero trace */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",     /* zero parent */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     /* version ff */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",    /* later version, no dash */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(trace_parse(bad[i], t, p, &f), -1, "accepted '%s'", bad[i]);
}

Test(trace, each_hop_has_its_own_span_under_the_callers)
{
    struct trace_span in, child, none;
    cr_assert(trace_span_continue(&in, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    cr_assert_str_eq(in.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    cr_assert_str_eq(in.parent_id, "00f067aa0ba902b7");
    cr_assert_eq(strlen(in.span_id), 16);
    cr_assert_str_neq(in.span_id, "00f067aa0ba902b7");
    cr_assert(trace_span_sampled(&in));

    trace_span_child(&child, &in);
    cr_assert_str_eq(child.trace_id, in.trace_id);
    cr_assert_str_eq(child.parent_id, in.span_id);
    char h[TRACE_TRACEPARENT_SIZE];
    trace_span_header(&child, h);
    char want[TRACE_TRACEPARENT_SIZE];
    snprintf(want, sizeof want, "00-%s-%s-01", in.trace_id, child.span_id);
    cr_assert_str_eq(h, want);

    cr_assert_not(trace_span_continue(&none, "garbage"));
    cr_assert_not(trace_span_active(&none));
    trace_span_child(&child, &none);
    cr_assert_not(trace_span_active(&child), "no trace, no child");

    struct trace_span root;
    trace_span_root(&root);
    cr_assert(trace_span_sampled(&root));
    cr_assert_eq(root.parent_id[0], '\0');
    cr_assert(trace_span_continue(&in, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
    cr_assert_not(trace_span_sampled(&in), "the caller did not sample it");
}

Test(trace, a_sampled_span_logs_one_line_with_its_ids_and_duration)
{
    char path[] = "/tmp/sluice-test-trace-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(jsonlog_open(path, "tester"), 0);
    struct trace_span s, quiet;
    trace_span_continue(&s, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    trace_span_continue(&quiet, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    usleep(2000);
    trace_span_log(&s, "unit.work", json_pack("{s:s}", "request_id", "r1"));
    trace_span_log(&quiet, "unit.quiet", NULL);
    jsonlog_write(json_pack("{s:s}", "type", "access"));
    jsonlog_close();

    FILE *f = fopen(path, "r");
    char line[2048];
    cr_assert(fgets(line, sizeof line, f));
    json_t *j = json_loads(line, 0, NULL);
    cr_assert(j, "not JSON: %s", line);
    cr_assert_str_eq(json_string_value(json_object_get(j, "service")), "tester");
    cr_assert_str_eq(json_string_value(json_object_get(j, "type")), "span");
    cr_assert_str_eq(json_string_value(json_object_get(j, "name")), "unit.work");
    cr_assert_str_eq(json_string_value(json_object_get(j, "trace_id")), s.trace_id);
    cr_assert_str_eq(json_string_value(json_object_get(j, "span_id")), s.span_id);
    cr_assert_str_eq(json_string_value(json_object_get(j, "parent_span_id")), "00f067aa0ba902b7");
    cr_assert_str_eq(json_string_value(json_object_get(j, "request_id")), "r1");
    cr_assert_geq(json_number_value(json_object_get(j, "duration_ms")), 2.0);
    json_decref(j);
    cr_assert(fgets(line, sizeof line, f));
    cr_assert(strstr(line, "\"type\":\"access\""), "the unsampled span wrote nothing: %s", line);
    cr_assert_null(fgets(line, sizeof line, f));
    fclose(f);
    unlink(path);
}
