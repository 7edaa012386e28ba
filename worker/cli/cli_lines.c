#include "worker/cli/cli_lines.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

void cli_print_error(const char *msg)
{
    json_t *o = json_pack("{s:s}", "error", msg);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    printf("%s\n", s ? s : "{\"error\":\"out of memory\"}");
    free(s);
    json_decref(o);
}

void cli_print_string(const char *text, size_t len)
{
    json_t *s = json_stringn(text, len);
    char *out = s ? json_dumps(s, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    if (out) printf("%s\n", out);
    else cli_print_error("the output is not valid UTF-8");
    free(out);
    json_decref(s);
}

void cli_for_each_line(void (*fn)(const char *line, size_t len, void *arg), void *arg)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        size_t len = (size_t)n;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
        fn(line, len, arg);
        fflush(stdout);
    }
    free(line);
}
