/* Finding a model's chat template: tokenizer_config.json, chat_template.jinja or GGUF. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "worker/model/gguf/gguf.h"
#include "worker/template/chat_template_source.h"

void chat_template_source_free(struct chat_template_source *s)
{
    if (!s) return;
    free(s->source);
    free(s->bos_token);
    free(s->eos_token);
    memset(s, 0, sizeof(*s));
}

char *chat_template_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *p = realloc(buf, cap);
            if (!p) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = p;
        }
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0) break;
    }
    fclose(f);
    buf[n] = 0;
    return buf;
}

/* bos_token/eos_token in tokenizer_config.json: a string or {"content": "..."}. */
static char *special_token(const json_t *cfg, const char *key)
{
    const json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}

static int load_hf(struct chat_template_source *s, const char *cfg_path, const char *dir, char *err, size_t errlen)
{
    json_error_t je;
    json_t *cfg = json_load_file(cfg_path, JSON_DECODE_INT_AS_REAL, &je);
    if (!cfg) {
        snprintf(err, errlen, "%s: %s (line %d)", cfg_path, je.text, je.line);
        return -1;
    }
    const json_t *t = json_object_get(cfg, "chat_template");
    if (json_is_string(t)) {
        s->source = strdup(json_string_value(t));
    } else if (json_is_array(t)) {
        size_t i;
        const json_t *e;
        json_array_foreach(t, i, e) {
            const json_t *name = json_object_get(e, "name"), *tmpl = json_object_get(e, "template");
            if (json_is_string(name) && json_is_string(tmpl) && !strcmp(json_string_value(name), "default"))
                s->source = strdup(json_string_value(tmpl));
        }
    }
    if (!s->source && dir) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/chat_template.jinja", dir);
        s->source = chat_template_read_file(path);
    }
    s->bos_token = special_token(cfg, "bos_token");
    s->eos_token = special_token(cfg, "eos_token");
    json_decref(cfg);
    if (!s->source) {
        snprintf(err, errlen, "%s has no chat_template", cfg_path);
        return -1;
    }
    return 0;
}

static char *gguf_token(const struct gguf_file *f, const char *id_key)
{
    int64_t id;
    const char *p;
    size_t n;
    if (gguf_get_int(f, id_key, &id) != 0 || id < 0) return NULL;
    if (gguf_array_get_string(f, "tokenizer.ggml.tokens", (uint64_t)id, &p, &n) != 0) return NULL;
    return strndup(p, n);
}

static int load_gguf(struct chat_template_source *s, const char *path, char *err, size_t errlen)
{
    struct gguf_file *f = NULL;
    if (gguf_open(&f, path, err, errlen) != 0) return -1;
    const char *p;
    size_t n;
    int rc = -1;
    if (gguf_get_string(f, "tokenizer.chat_template", &p, &n) != 0) {
        snprintf(err, errlen, "%s has no tokenizer.chat_template", path);
        goto done;
    }
    s->source = strndup(p, n);
    s->bos_token = gguf_token(f, "tokenizer.ggml.bos_token_id");
    s->eos_token = gguf_token(f, "tokenizer.ggml.eos_token_id");
    rc = s->source ? 0 : -1;
done:
    gguf_close(f);
    return rc;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

int chat_template_source_load(struct chat_template_source *s, const char *path, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: not found", path);
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        char cfg[4096];
        snprintf(cfg, sizeof(cfg), "%s/tokenizer_config.json", path);
        return load_hf(s, cfg, path, err, errlen);
    }
    if (ends_with(path, ".gguf")) return load_gguf(s, path, err, errlen);
    return load_hf(s, path, NULL, err, errlen);
}

