/* Turning chat messages into a prompt, until the Jinja template engine lands.
 *
 * A format is a prefix and suffix per role plus a generation prompt. Built-in formats are
 * chosen from the vocabulary (ChatML when it has <|im_start|>, Llama 3 when it has
 * <|start_header_id|>, a plain "User: ..." transcript otherwise); --chat-template FILE gives
 * one as JSON:
 *   {"name": "mine", "bos": "<s>", "add_special_tokens": false,
 *    "system": {"prefix": "...", "suffix": "..."}, "user": {...}, "assistant": {...},
 *    "tool": {...}, "generation_prompt": "..."}  */
#ifndef SLUICE_WORKER_CHAT_FORMAT_H
#define SLUICE_WORKER_CHAT_FORMAT_H

#include <jansson.h>
#include <stdbool.h>

#include "common/json_util.h"
#include "worker/tokenizer/tokenizer.h"

enum chat_role { CHAT_ROLE_SYSTEM = 0, CHAT_ROLE_USER, CHAT_ROLE_ASSISTANT, CHAT_ROLE_TOOL, CHAT_ROLE_COUNT };

struct chat_format {
    char *name;
    char *bos;                       /* written before the first message, may be "" */
    char *prefix[CHAT_ROLE_COUNT];
    char *suffix[CHAT_ROLE_COUNT];
    char *generation_prompt;
    bool add_special_tokens;         /* tokenize the rendered prompt with BOS etc. added */
};

int chat_format_init(struct chat_format *f, const struct tokenizer *tok, const char *file,
                     char *err, size_t errlen);
void chat_format_free(struct chat_format *f);
/* Renders OpenAI chat messages (content a string or a list of {"type":"text"} parts).
 * Returns 0 and a malloc'd prompt, or JSON_FIELD_INVALID with err naming the field. */
int chat_format_render(const struct chat_format *f, const json_t *messages,
                       bool add_generation_prompt, char **out, struct json_field_error *err);

#endif
