#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum log_level log_threshold = LOG_LEVEL_INFO;
static char log_component[32] = "sluice";

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};

void log_init(const char *component)
{
    snprintf(log_component, sizeof log_component, "%s", component);
}

void log_set_level(enum log_level level)
{
    log_threshold = level;
}

int log_level_parse(const char *name)
{
    static const struct { const char *name; enum log_level level; } table[] = {
        {"debug", LOG_LEVEL_DEBUG}, {"info", LOG_LEVEL_INFO},   {"warn", LOG_LEVEL_WARN},
        {"warning", LOG_LEVEL_WARN}, {"error", LOG_LEVEL_ERROR}, {"off", LOG_LEVEL_OFF},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcasecmp(name, table[i].name) == 0) return (int)table[i].level;
    return -1;
}

void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
{
    char buf[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (long)(tv.tv_usec / 1000), level_names[level], log_component);
    if (level == LOG_LEVEL_DEBUG && n < (int)sizeof buf) {
        const char *base = strrchr(file, '/');
        n += snprintf(buf + n, sizeof buf - (size_t)n, "(%s:%d) ", base ? base + 1 : file, line);
    }
    if (n < (int)sizeof buf) {
        va_list ap;
        va_start(ap, fmt);
        n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
        va_end(ap);
    }
    if (n >= (int)sizeof buf - 1) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    /* One write per line: concurrent threads never interleave within a line. */
    ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
    (void)w;
}
