/* Turning chat messages into a prompt.
 *
 * The model's own Jinja chat template (tokenizer_config.json or GGUF) is used when it has one,
 * rendered as transformers' apply_chat_template does (worker/template/). --chat-template FILE
 * overrides it with a Jinja file (any name; *.jinja whatever it holds), or with a simple
 * format given as a JSON object (*.json, or any file that parses as one). A model without any
 * template gets a built-in simple format chosen from its vocabulary (ChatML when it has
 * <|im_start|>, Llama 3 when it has <|start_header_id|>, a plain "User: ..." transcript
 * otherwise).
 *
 * A simple format is a prefix and suffix per role plus a generation prompt; as JSON:
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

struct chat_template;

struct chat_format {
    struct chat_template *jinja;     /* when set, the fields below except name are unused */
    char *bos_token, *eos_token;     /* what a Jinja template sees as bos_token/eos_token */
    char *name;
    char *bos;                       /* written before the first message, may be "" */
    char *prefix[CHAT_ROLE_COUNT];
    char *suffix[CHAT_ROLE_COUNT];
    char *generation_prompt;
    bool add_special_tokens;         /* tokenize the rendered prompt with BOS etc. added */
};

/* tokenizer_path: where the model's own template is looked for (a model directory,
 * tokenizer_config.json or .gguf; NULL for none); file: --chat-template, or NULL. */
int chat_format_init(struct chat_format *f, const struct tokenizer *tok, const char *tokenizer_path,
                     const char *file, char *err, size_t errlen);
void chat_format_free(struct chat_format *f);
/* Renders OpenAI chat messages (content a string or a list of {"type":"text"} parts), with
 * optional tools and extra template variables (vLLM's chat_template_kwargs, such as
 * enable_thinking). Returns 0 and a malloc'd prompt; 400 with err naming the field when the
 * messages are wrong (or the template rejected them with raise_exception); 500 when the
 * template itself cannot be rendered. */
int chat_format_render(const struct chat_format *f, const json_t *messages, const json_t *tools,
                       const json_t *template_kwargs, bool add_generation_prompt, char **out,
                       struct json_field_error *err);

/* The format as FastChat's Conversation (fastchat/conversation.py), for FastChat's
 * openai_api_server, which builds prompts itself from /worker_get_conv_template: a new JSON
 * object with every field of the dataclass (sep_style as its int value). tok (may be NULL)
 * decides whether the template's BOS text stays and which tokens end a turn. Defined in
 * worker/template/chat_format_fastchat.c, which says how close the result comes. */
json_t *chat_format_fastchat_conv(const struct chat_format *f, const struct tokenizer *tok);

#endif
