/* Structured log lines: one JSON object per line, for machines (access lines, request lines,
 * trace spans), apart from the human log on stderr (common/log.h).
 *
 * Each program has one destination, chosen by its --access-log flag: "-" is standard output
 * (the default, where systemd and Kubernetes collect it), "off" writes nothing, anything else
 * is a file opened for appending, which jsonlog_reopen opens again (SIGHUP, after logrotate
 * moved it). Each line starts with "ts" (UTC, milliseconds) and "service" (the program).
 *
 * A line is formatted by the caller and written by a thread of its own, in the order lines
 * came: the loop never waits for a disk or for a log collector that reads standard output
 * slowly (a full pipe would stop every request). Lines waiting for that thread are bounded
 * (16 MiB); past the bound they are dropped, and the writer says how many on the human log.
 * Each line is one write(2) where the destination takes it whole, so it never interleaves with
 * another writer's. What is pending when the program ends (jsonlog_close, or main's return) is
 * written first, waiting at most a few seconds for a destination that takes nothing. */
#ifndef SLUICE_COMMON_JSONLOG_H
#define SLUICE_COMMON_JSONLOG_H

#include <jansson.h>
#include <stdbool.h>

/* Returns 0, or -1 (logged) when the file cannot be opened. */
int jsonlog_open(const char *dest, const char *service);
/* Opens the file again; 0, or -1 (logged) when it cannot be opened (the old one stays). */
int jsonlog_reopen(void);
/* Writes what is pending and closes the file; the destination is standard output again. */
void jsonlog_close(void);
bool jsonlog_enabled(void);
/* Writes obj (stolen) as one line after "ts" and "service"; nothing when disabled. */
void jsonlog_write(json_t *obj);

#endif
