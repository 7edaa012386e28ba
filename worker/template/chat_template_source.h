/* Where models keep their chat template, and the bos/eos tokens it is rendered with:
 * tokenizer_config.json (chat_template as a string, or a list of {name, template} of which
 * "default" is used; bos_token/eos_token as strings or {"content": ...}), chat_template.jinja
 * in the model directory, or a GGUF file's tokenizer.chat_template (bos/eos from
 * tokenizer.ggml.bos_token_id/eos_token_id). Separate from chat_template.h because it reads
 * GGUF through worker/model. */
#ifndef SLUICE_WORKER_TEMPLATE_CHAT_TEMPLATE_SOURCE_H
#define SLUICE_WORKER_TEMPLATE_CHAT_TEMPLATE_SOURCE_H

#include <stddef.h>

struct chat_template_source {
    char *source;     /* the Jinja text */
    char *bos_token;  /* NULL when the model names none */
    char *eos_token;
};

/* path: a model directory, a tokenizer_config.json, or a .gguf file. Returns 0, or -1 with err
 * saying what is missing; *s is always safe to free. */
int chat_template_source_load(struct chat_template_source *s, const char *path, char *err, size_t errlen);
void chat_template_source_free(struct chat_template_source *s);
/* A whole file as a NUL-terminated malloc'd string, or NULL. */
char *chat_template_read_file(const char *path);

#endif
