/* Structured log lines: one JSON object per line, for machines (access lines, request lines,
 * trace spans), apart from the human log on stderr (common/log.h).
 *
 * Each program has one destination, chosen by its --access-log flag: "-" is standard output
 * (the default, where systemd and Kubernetes collect it), "off" writes nothing, anything else
 * is a file opened for appending, which jsonlog_reopen opens again (SIGHUP, after logrotate
 * moved it). Every line is one write(2), so lines from two threads never interleave, and each
 * starts with "ts" (UTC, milliseconds) and "service" (the program). */
#ifndef SLUICE_COMMON_JSONLOG_H
#define SLUICE_COMMON_JSONLOG_H

#include <jansson.h>
#include <stdbool.h>

/* Returns 0, or -1 (logged) when the file cannot be opened. */
int jsonlog_open(const char *dest, const char *service);
/* Opens the file again; 0, or -1 (logged) when it cannot be opened (the old one stays). */
int jsonlog_reopen(void);
void jsonlog_close(void);
bool jsonlog_enabled(void);
/* Writes obj (stolen) as one line after "ts" and "service"; nothing when disabled. */
void jsonlog_write(json_t *obj);

#endif
