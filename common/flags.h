/* Command-line flags with environment overrides and --help.
 *
 * Each program describes its flags in one table; the table drives parsing, the environment
 * lookup and the --help text, so the three can never disagree. Precedence: a flag on the
 * command line beats its environment variable, which beats the default already stored in
 * the destination. Both "--name value" and "--name=value" are accepted. */
#ifndef SLUICE_COMMON_FLAGS_H
#define SLUICE_COMMON_FLAGS_H

#include <stdbool.h>

enum flag_type {
    FLAG_STRING, /* dest: const char ** (points into argv or environ; not copied) */
    FLAG_INT,    /* dest: long *        */
    FLAG_DOUBLE, /* dest: double *      */
    FLAG_BOOL,   /* dest: bool *; takes no value ("--no-register") */
};

struct flag_spec {
    const char *name;    /* without the leading dashes: "port" */
    enum flag_type type;
    void *dest;
    const char *env;     /* environment variable that overrides the default, or NULL */
    const char *metavar; /* shown in --help: "PORT" */
    const char *help;    /* --help appends "(default: X)" from dest unless help says "(default" */
    double min, max;     /* bounds for FLAG_INT and FLAG_DOUBLE; ignored when min == max */
};

enum { FLAGS_OK = 0, FLAGS_HELP = 1, FLAGS_ERROR = -1 };

/* Parses argv[first..argc) against specs (terminated by an entry with name == NULL).
 * Prints --help to stdout and returns FLAGS_HELP; prints an error naming the flag (and the
 * environment variable, when that is where the bad value came from) to stderr and returns
 * FLAGS_ERROR. Positional arguments are an error unless positional is non-NULL, in which case
 * they are collected there (pointers into argv) up to max_positional. */
int flags_parse(const char *prog, const char *summary, const struct flag_spec *specs, int argc,
                char **argv, int first, const char **positional, int max_positional,
                int *n_positional);

void flags_print_help(const char *prog, const char *summary, const struct flag_spec *specs);

#endif
