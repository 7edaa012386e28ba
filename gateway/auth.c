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
    /* Keys were configured (--api-keys or --api-key-file): then a key list that is empty, a key
     * file emptied and reloaded say, refuses every request instead of opening the gateway. */
    bool required;
};

static int key_add(gw_auth *a, const char *s, size_t len)
{
    while (len && isspace((unsigned char)*s)) s++, len--;
    while (len && isspace((unsigned char)s[len - 1])) len--;
    if (!len) return 0;
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 4;
        char **keys = realloc(a->keys, cap * sizeof *keys);
        if (!keys) return -1;
        a->keys = keys;
        size_t *lens = realloc(a->lens, cap * sizeof *lens);
        if (!lens) return -1;
        a->lens = lens;
        a->cap = cap;
    }
    if (!(a->keys[a->n] = strndup(s, len))) return -1;
    a->lens[a->n] = len;
    a->n++;
    return 0;
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
    int rc = 0;
    while (rc == 0 && (n = getline(&line, &cap, f)) >= 0) {
        if (n > 0 && line[0] == '#') continue;
        rc = key_add(a, line, (size_t)n);
    }
    free(line);
    fclose(f);
    if (rc < 0) log_error("out of memory reading --api-key-file %s", path);
    return rc;
}

int gw_auth_init(gw_auth **out, const char *keys_csv, const char *key_file)
{
    gw_auth *a = calloc(1, sizeof *a);
    int rc = -1;
    if (!a) goto fail;
    a->required = (keys_csv && *keys_csv) || (key_file && *key_file);
    for (const char *p = keys_csv; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (key_add(a, p, len) < 0) goto fail;
        p = comma ? comma + 1 : p + len;
    }
    if (key_file && *key_file && keys_from_file(a, key_file) < 0) goto fail;
    if (a->required && a->n == 0)
        log_warn("API keys are configured but none was read: every request is refused (401) until there is one");
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
    if (!a || !a->required) return true;
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
    return a && a->required ? auth_bearer_credential(authorization, len) : NULL;
}
