#include "common/jsonlog.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

static int jl_fd = STDOUT_FILENO; /* -1: off */
static char *jl_path;             /* NULL: standard output or off */
static char jl_service[32] = "sluice";

static int open_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) log_error("cannot open the access log %s: %m", path);
    return fd;
}

int jsonlog_open(const char *dest, const char *service)
{
    jsonlog_close();
    snprintf(jl_service, sizeof jl_service, "%s", service ? service : "sluice");
    if (!dest || !strcmp(dest, "-")) {
        jl_fd = STDOUT_FILENO;
        return 0;
    }
    if (!strcmp(dest, "off")) {
        jl_fd = -1;
        return 0;
    }
    int fd = open_file(dest);
    if (fd < 0) return -1;
    jl_fd = fd;
    jl_path = strdup(dest);
    return 0;
}

int jsonlog_reopen(void)
{
    if (!jl_path) return 0;
    int fd = open_file(jl_path);
    if (fd < 0) return -1;
    if (jl_fd > STDERR_FILENO) close(jl_fd);
    jl_fd = fd;
    return 0;
}

void jsonlog_close(void)
{
    if (jl_fd > STDERR_FILENO) close(jl_fd);
    jl_fd = STDOUT_FILENO;
    free(jl_path);
    jl_path = NULL;
}

bool jsonlog_enabled(void)
{
    return jl_fd >= 0;
}

void jsonlog_write(json_t *obj)
{
    if (jl_fd < 0 || !obj) {
        json_decref(obj);
        return;
    }
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000));
    json_t *line = json_pack("{s:s, s:s}", "ts", ts, "service", jl_service);
    if (line) json_object_update(line, obj);
    json_decref(obj);
    /* Durations in milliseconds need no 17 digits. */
    char *text = line ? json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(line);
    if (!text) return;
    size_t n = strlen(text);
    text[n] = '\n'; /* replaces the NUL: one write for the whole line */
    ssize_t w = write(jl_fd, text, n + 1);
    (void)w;
    free(text);
}
