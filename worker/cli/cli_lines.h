/* The JSON-lines protocol of the worker's debugging subcommands (tokenize, detokenize,
 * chat-template): one JSON value per stdin line in, one per stdout line out, and a bad line
 * answered with {"error": "..."} while the rest carry on. */
#ifndef SLUICE_WORKER_CLI_LINES_H
#define SLUICE_WORKER_CLI_LINES_H

#include <stddef.h>

/* Prints {"error": msg} as one line. */
void cli_print_error(const char *msg);
/* Prints text as one JSON string line; text that is not valid UTF-8 prints as an error. */
void cli_print_string(const char *text, size_t len);
/* Calls fn for every stdin line, without its line ending, flushing stdout after each so a
 * caller driving us through a pipe sees every answer at once. */
void cli_for_each_line(void (*fn)(const char *line, size_t len, void *arg), void *arg);

#endif
