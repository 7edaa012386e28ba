#include "common/flags.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int flag_set(const char *prog, const struct flag_spec *f, const char *value,
                    const char *source)
{
    char *end = NULL;
    errno = 0;
    switch (f->type) {
    case FLAG_STRING:
        *(const char **)f->dest = value;
        return 0;
    case FLAG_BOOL: {
        if (!value || !strcmp(value, "1") || !strcasecmp(value, "true") || !strcasecmp(value, "yes")) {
            *(bool *)f->dest = true;
            return 0;
        }
        if (!strcmp(value, "0") || !strcasecmp(value, "false") || !strcasecmp(value, "no")) {
            *(bool *)f->dest = false;
            return 0;
        }
        break;
    }
    case FLAG_INT: {
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end) break;
        if (f->min != f->max && (v < f->min || v > f->max)) {
            fprintf(stderr, "%s: %s --%s=%s is out of range [%.0f, %.0f]\n", prog, source, f->name,
                    value, f->min, f->max);
            return -1;
        }
        *(long *)f->dest = v;
        return 0;
    }
    case FLAG_DOUBLE: {
        double v = strtod(value, &end);
        if (errno || end == value || *end) break;
        if (f->min != f->max && (v < f->min || v > f->max)) {
            fprintf(stderr, "%s: %s --%s=%s is out of range [%g, %g]\n", prog, source, f->name,
                    value, f->min, f->max);
            return -1;
        }
        *(double *)f->dest = v;
        return 0;
    }
    }
    fprintf(stderr, "%s: %s --%s has an invalid value '%s'\n", prog, source, f->name,
            value ? value : "");
    return -1;
}

static void print_default(const struct flag_spec *f)
{
    switch (f->type) {
    case FLAG_STRING:
        if (*(const char **)f->dest) printf(" (default: %s)", *(const char **)f->dest);
        break;
    case FLAG_INT: printf(" (default: %ld)", *(long *)f->dest); break;
    case FLAG_DOUBLE: printf(" (default: %g)", *(double *)f->dest); break;
    case FLAG_BOOL: break;
    }
}

void flags_print_help(const char *prog, const char *summary, const struct flag_spec *specs)
{
    printf("usage: %s [flags]\n\n%s\n\nflags:\n", prog, summary);
    for (const struct flag_spec *f = specs; f->name; f++) {
        char left[96];
        if (f->type == FLAG_BOOL)
            snprintf(left, sizeof left, "--%s", f->name);
        else
            snprintf(left, sizeof left, "--%s %s", f->name, f->metavar ? f->metavar : "VALUE");
        printf("  %-34s %s", left, f->help ? f->help : "");
        /* A help text that names its default itself ("(default: the model's)") knows better
         * than the stored value, which is then only a sentinel such as 0. */
        if (!f->help || !strstr(f->help, "(default")) print_default(f);
        if (f->env) printf(" [env %s]", f->env);
        printf("\n");
    }
    printf("  %-34s %s\n", "--help", "show this help and exit");
}

static const struct flag_spec *flag_find(const struct flag_spec *specs, const char *name, size_t len)
{
    for (const struct flag_spec *f = specs; f->name; f++)
        if (strlen(f->name) == len && !strncmp(f->name, name, len)) return f;
    return NULL;
}

int flags_parse(const char *prog, const char *summary, const struct flag_spec *specs, int argc,
                char **argv, int first, const char **positional, int max_positional,
                int *n_positional)
{
    int npos = 0;
    /* Environment first, so the command line wins. */
    for (const struct flag_spec *f = specs; f->name; f++) {
        const char *v = f->env ? getenv(f->env) : NULL;
        if (v && *v) {
            char source[128];
            snprintf(source, sizeof source, "environment %s:", f->env);
            if (flag_set(prog, f, v, source) < 0) return FLAGS_ERROR;
        }
    }
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            flags_print_help(prog, summary, specs);
            return FLAGS_HELP;
        }
        if (strncmp(arg, "--", 2) != 0) {
            if (!positional || npos >= max_positional) {
                fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", prog, arg);
                return FLAGS_ERROR;
            }
            positional[npos++] = arg;
            continue;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct flag_spec *f = flag_find(specs, name, len);
        if (!f) {
            fprintf(stderr, "%s: unknown flag '--%.*s' (see --help)\n", prog, (int)len, name);
            return FLAGS_ERROR;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (!value && f->type != FLAG_BOOL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: flag --%s needs a value\n", prog, f->name);
                return FLAGS_ERROR;
            }
            value = argv[++i];
        }
        if (flag_set(prog, f, value, "flag") < 0) return FLAGS_ERROR;
    }
    if (n_positional) *n_positional = npos;
    return FLAGS_OK;
}
