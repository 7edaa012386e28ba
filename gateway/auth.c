#include "gateway/auth.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/auth.h"
#include "common/log.h"

struct gw_auth {
    char **keys;
    size_t *lens;
    size_t n, cap;
};

static void key_add(gw_auth *a, const char *s, size_t len)
{
    while (len && isspace((unsigned char)*s)) s++, len--;
    while (len && isspace((unsigned char)s[len - 1])) len--;
    if (!len) return;
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 4;
        a->keys = realloc(a->keys, a->cap * sizeof *a->keys);
        a->lens = realloc(a->lens, a->cap * sizeof *a->lens);
    }
    a->keys[a->n] = strndup(s, len);
    a->lens[a->n] = len;
    a->n++;
}

static int keys_from_file(gw_auth *a, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        log_error("cannot read --api-key-file %s", path);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        if (n > 0 && line[0] == '#') continue;
        key_add(a, line, (size_t)n);
    }
    free(line);
    fclose(f);
    return 0;
}

int gw_auth_init(gw_auth **out, const char *keys_csv, const char *key_file)
{
    gw_auth *a = calloc(1, sizeof *a);
    int rc = 0;
    for (const char *p = keys_csv; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        key_add(a, p, len);
        p = comma ? comma + 1 : p + len;
    }
    if (key_file && *key_file && keys_from_file(a, key_file) < 0) {
        rc = -1;
        goto fail;
    }
    *out = a;
    return 0;
fail:
    gw_auth_free(a);
    *out = NULL;
    return rc;
}

void gw_auth_free(gw_auth *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->n; i++) free(a->keys[i]);
    free(a->keys);
    free(a->lens);
    free(a);
}

size_t gw_auth_key_count(const gw_auth *a)
{
    return a ? a->n : 0;
}

bool gw_auth_check(const gw_auth *a, const char *authorization)
{
    if (!a || a->n == 0) return true;
    size_t len = 0;
    const char *key = auth_bearer_credential(authorization, &len);
    if (!key) return false;
    bool ok = false;
    /* Every key is compared, so timing does not tell which one (or whether any) matched. */
    for (size_t i = 0; i < a->n; i++) ok |= auth_equal(key, len, a->keys[i], a->lens[i]);
    return ok;
}

const char *gw_auth_key_of(const gw_auth *a, const char *authorization, size_t *len)
{
    *len = 0;
    return gw_auth_key_count(a) ? auth_bearer_credential(authorization, len) : NULL;
}
