#include "common/jsonlog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

enum {
    JSONLOG_MAX_PENDING = 16 << 20, /* bytes waiting for the writer; lines past it are dropped */
    JSONLOG_KEEP_BUFFER = 1 << 20,  /* a writer's buffer larger than this is freed once written */
    JSONLOG_CLOSE_WAIT_S = 2,       /* how long closing waits for the lines still pending */
};

static int jl_fd = STDOUT_FILENO; /* -1: off */
static char *jl_path;             /* NULL: standard output or off */
static char jl_service[32] = "sluice";

/* The writer thread and the lines waiting for it. Only the loop thread opens, reopens and
 * closes; any thread may write. */
static pthread_mutex_t jl_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t jl_wake = PTHREAD_COND_INITIALIZER;
static char *jl_buf;
static size_t jl_len, jl_cap;
static unsigned long jl_dropped; /* lines dropped since the writer last said so */
static bool jl_stop;
static bool jl_running;           /* the writer runs: lines go through it */
static bool jl_stuck;             /* a close gave up on a writer that could not write */
static pthread_t jl_thread;

/* Writes the whole of each line in one write(2) where the destination takes it, so that lines
 * never interleave with another writer's (the human log on a shared stream). */
static void write_lines(int fd, const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t line = nl ? (size_t)(nl - p) + 1 : n;
        for (size_t off = 0; off < line;) {
            ssize_t w = write(fd, p + off, line - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return; /* the destination is gone: nothing to do but drop */
            off += (size_t)w;
        }
        p += line;
        n -= line;
    }
}

static void *writer_main(void *arg)
{
    (void)arg;
    char *mine = NULL;
    size_t mine_cap = 0;
    pthread_mutex_lock(&jl_mu);
    for (;;) {
        while (jl_len == 0 && !jl_stop) pthread_cond_wait(&jl_wake, &jl_mu);
        if (jl_len == 0) break; /* stopping, and everything is written */
        char *lines = jl_buf;
        size_t n = jl_len, cap = jl_cap;
        unsigned long dropped = jl_dropped;
        jl_buf = mine;
        jl_cap = mine_cap;
        jl_len = 0;
        jl_dropped = 0;
        int fd = jl_fd;
        pthread_mutex_unlock(&jl_mu);

        write_lines(fd, lines, n);
        if (dropped)
            log_warn("access log: %lu line(s) dropped: its destination did not take them as fast as they came",
                     dropped);
        if (cap > JSONLOG_KEEP_BUFFER) {
            free(lines);
            lines = NULL;
            cap = 0;
        }
        mine = lines;
        mine_cap = cap;
        pthread_mutex_lock(&jl_mu);
    }
    pthread_mutex_unlock(&jl_mu);
    free(mine);
    return NULL;
}

static void writer_start(void)
{
    /* Signals stay with the loop thread (libuv's handlers): the writer blocks them all. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    jl_stop = false;
    jl_running = pthread_create(&jl_thread, NULL, writer_main, NULL) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!jl_running) log_warn("access log: no writer thread, lines are written as they come");
}

/* Stops the writer once it has written what is pending, waiting a bounded time: a destination
 * that takes nothing (a reader that stopped reading) must not hang the program's exit. */
static void writer_stop(void)
{
    if (!jl_running) return;
    pthread_mutex_lock(&jl_mu);
    jl_stop = true;
    pthread_cond_signal(&jl_wake);
    pthread_mutex_unlock(&jl_mu);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += JSONLOG_CLOSE_WAIT_S;
    jl_running = false;
    if (pthread_timedjoin_np(jl_thread, NULL, &deadline) != 0) {
        log_warn("access log: its destination takes nothing: giving up on the lines still pending");
        pthread_detach(jl_thread);
        jl_stuck = true; /* the writer still holds the descriptor and the buffers */
    }
}

static void close_at_exit(void)
{
    jsonlog_close();
}

static int open_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) log_error("cannot open the access log %s: %m", path);
    return fd;
}

int jsonlog_open(const char *dest, const char *service)
{
    static bool at_exit;
    jsonlog_close();
    if (jl_stuck) return -1;
    snprintf(jl_service, sizeof jl_service, "%s", service ? service : "sluice");
    if (dest && !strcmp(dest, "off")) {
        jl_fd = -1;
        return 0;
    }
    if (dest && strcmp(dest, "-")) {
        int fd = open_file(dest);
        if (fd < 0) return -1;
        jl_fd = fd;
        jl_path = strdup(dest);
    } else {
        jl_fd = STDOUT_FILENO;
    }
    /* Lines still pending when main returns are written before the process ends. */
    if (!at_exit) at_exit = atexit(close_at_exit) == 0;
    writer_start();
    return 0;
}

int jsonlog_reopen(void)
{
    if (!jl_path || jl_stuck) return 0;
    int fd = open_file(jl_path);
    if (fd < 0) return -1;
    /* The writer keeps its descriptor number: dup2 swaps the file behind it at once, so a line
     * goes wholly to the old file or wholly to the new one. */
    int rc = dup2(fd, jl_fd) < 0 ? -1 : 0;
    if (rc != 0) log_error("cannot reopen the access log %s: %m", jl_path);
    close(fd);
    return rc;
}

void jsonlog_close(void)
{
    writer_stop();
    if (jl_stuck) return;
    if (jl_fd > STDERR_FILENO) close(jl_fd);
    jl_fd = STDOUT_FILENO;
    free(jl_path);
    jl_path = NULL;
    free(jl_buf);
    jl_buf = NULL;
    jl_len = jl_cap = 0;
    jl_dropped = 0;
}

bool jsonlog_enabled(void)
{
    return jl_fd >= 0 && !jl_stuck;
}

/* Queues a line for the writer; false when it was dropped. */
static bool enqueue(const char *line, size_t n)
{
    bool queued = false;
    pthread_mutex_lock(&jl_mu);
    /* One line larger than the bound still goes, alone. */
    if (jl_len == 0 || jl_len + n <= JSONLOG_MAX_PENDING) {
        if (jl_len + n > jl_cap) {
            size_t cap = jl_cap ? jl_cap : 64 * 1024;
            while (cap < jl_len + n) cap *= 2;
            char *grown = realloc(jl_buf, cap);
            if (grown) {
                jl_buf = grown;
                jl_cap = cap;
            }
        }
        if (jl_len + n <= jl_cap) {
            memcpy(jl_buf + jl_len, line, n);
            jl_len += n;
            queued = true;
            pthread_cond_signal(&jl_wake);
        }
    }
    if (!queued) jl_dropped++;
    pthread_mutex_unlock(&jl_mu);
    return queued;
}

void jsonlog_write(json_t *obj)
{
    if (!jsonlog_enabled() || !obj) {
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
    text[n] = '\n'; /* replaces the NUL: the line and its end go together */
    if (jl_running) enqueue(text, n + 1);
    else write_lines(jl_fd, text, n + 1);
    free(text);
}
