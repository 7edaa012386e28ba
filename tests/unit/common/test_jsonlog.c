/* The JSON log lines (access lines, spans): every line arrives whole and in order, and a
 * destination that stops taking lines never blocks the caller, whose thread is a server's
 * event loop. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/jsonlog.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Checks that text holds whole lines, each a JSON object from jsonlog with "i" counting up
 * from 0 without a gap when gapless; returns how many. */
static size_t check_lines(const char *text, bool gapless)
{
    size_t n = 0;
    json_int_t last = -1;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        cr_assert(nl, "a line without its end");
        json_t *line = json_loadb(p, (size_t)(nl - p), 0, NULL);
        cr_assert(json_is_object(line), "not a JSON line: %.80s", p);
        cr_assert_str_eq(json_string_value(json_object_get(line, "service")), "test");
        cr_assert(json_string_value(json_object_get(line, "ts")));
        json_int_t i = json_integer_value(json_object_get(line, "i"));
        cr_assert(gapless ? i == last + 1 : i > last, "line %lld after %lld", (long long)i, (long long)last);
        last = i;
        json_decref(line);
        n++;
        p = nl + 1;
    }
    return n;
}

Test(jsonlog, lines_arrive_whole_and_in_order)
{
    char path[] = "/tmp/sluice-jsonlog-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(jsonlog_open(path, "test"), 0);
    cr_assert(jsonlog_enabled());
    for (int i = 0; i < 2000; i++) jsonlog_write(json_pack("{s:s, s:i}", "type", "t", "i", i));
    jsonlog_close(); /* writes what is pending first */

    FILE *f = fopen(path, "r");
    cr_assert(f);
    static char text[1 << 20];
    size_t len = fread(text, 1, sizeof text - 1, f);
    text[len] = '\0';
    fclose(f);
    unlink(path);
    cr_assert_eq(check_lines(text, true), 2000);
}

Test(jsonlog, off_writes_nothing)
{
    cr_assert_eq(jsonlog_open("off", "test"), 0);
    cr_assert_not(jsonlog_enabled());
    jsonlog_write(json_pack("{s:i}", "i", 0)); /* stolen and dropped */
    jsonlog_close();
}

struct drain_pipe {
    int fd;
    char *text;
    size_t len, cap;
};

static void *read_all(void *arg)
{
    struct drain_pipe *d = arg;
    for (;;) {
        if (d->len + 65536 + 1 > d->cap) {
            d->cap = d->cap ? d->cap * 2 : 1 << 20;
            d->text = realloc(d->text, d->cap);
        }
        ssize_t n = read(d->fd, d->text + d->len, 65536);
        if (n <= 0) break;
        d->len += (size_t)n;
    }
    d->text[d->len] = '\0';
    return NULL;
}

/* A log collector that stops reading standard output fills its pipe: the lines must wait (or
 * be dropped past the bound), not the server. */
Test(jsonlog, a_destination_that_takes_nothing_never_blocks_the_caller, .timeout = 30)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    char dest[64];
    snprintf(dest, sizeof dest, "/proc/self/fd/%d", p[1]);
    cr_assert_eq(jsonlog_open(dest, "test"), 0);
    close(p[1]); /* jsonlog holds its own descriptor of the pipe */

    static char pad[1024];
    memset(pad, 'x', sizeof pad - 1);
    enum { LINES = 40000 }; /* about 40 MiB: past the pipe and past the bound */
    double t0 = now_s();
    for (int i = 0; i < LINES; i++) jsonlog_write(json_pack("{s:i, s:s}", "i", i, "pad", pad));
    double took = now_s() - t0;
    cr_assert_lt(took, 10.0, "writing took %.1f s: it waited for the destination", took);

    /* The reader comes back: what was kept arrives whole and in order, and closing waits for it. */
    struct drain_pipe d = {.fd = p[0]};
    pthread_t reader;
    cr_assert_eq(pthread_create(&reader, NULL, read_all, &d), 0);
    jsonlog_close();
    pthread_join(reader, NULL);
    close(p[0]);
    size_t n = check_lines(d.text, false);
    cr_assert_gt(n, 1000);
    cr_assert_lt(n, LINES, "nothing was dropped: the bound did not hold");
    free(d.text);
}
