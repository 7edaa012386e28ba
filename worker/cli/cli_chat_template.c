/* `sluice-worker chat-template`: the chat template interpreter alone, one JSON request per
 * stdin line, one JSON string (the rendered prompt) per stdout line, for conformance tests and
 * for people checking what prompt a model sees.
 *
 * The template comes from a model directory or tokenizer_config.json (chat_template, a string
 * or a list of {name, template} of which "default" is used; chat_template.jinja beside it
 * otherwise), from a .gguf (tokenizer.chat_template), or from --template-file. A request is
 * {"messages": [...], "tools": [...], "add_generation_prompt": bool, "chat_template_kwargs": {...}};
 * any other key is a template variable too, as apply_chat_template's **kwargs are. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/flags.h"
#include "worker/cli/cli.h"
#include "worker/cli/cli_lines.h"
#include "worker/template/chat_template.h"
#include "worker/template/chat_template_source.h"

static void render_line(const struct chat_template *t, const struct chat_template_source *src, const char *line, size_t len)
{
    json_error_t je;
    char err[1024];
    char *out = NULL;
    size_t out_len = 0;
    json_t *req = json_loadb(line, len, 0, &je);
    json_t *extra = NULL;
    if (!req || !json_is_object(req)) {
        cli_print_error(req ? "expected a JSON object" : je.text);
        goto done;
    }
    const json_t *messages = json_object_get(req, "messages");
    const json_t *tools = json_object_get(req, "tools");
    const json_t *agp = json_object_get(req, "add_generation_prompt");
    if (agp && !json_is_boolean(agp)) {
        cli_print_error("add_generation_prompt must be a boolean");
        goto done;
    }
    extra = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(req, k, v) {
        if (!strcmp(k, "messages") || !strcmp(k, "tools") || !strcmp(k, "add_generation_prompt")) continue;
        if (!strcmp(k, "chat_template_kwargs") && json_is_object(v)) json_object_update(extra, v);
        else json_object_set(extra, k, v);
    }
    int rc = chat_template_render(t, messages, tools, agp && json_is_true(agp), src->bos_token, src->eos_token, extra, &out,
                                  &out_len, err, sizeof(err));
    if (rc != 0) {
        cli_print_error(err);
        goto done;
    }
    cli_print_string(out, out_len);
done:
    free(out);
    json_decref(extra);
    json_decref(req);
}

struct line_job {
    const struct chat_template *t;
    const struct chat_template_source *src;
};

static void on_line(const char *line, size_t len, void *arg)
{
    const struct line_job *job = arg;
    if (len > 0) render_line(job->t, job->src, line, len); /* blank lines are skipped */
}

int cli_chat_template_main(int argc, char **argv)
{
    const char *path = NULL, *file = NULL, *bos = NULL, *eos = NULL;
    struct flag_spec specs[] = {
        {"tokenizer", FLAG_STRING, &path, NULL, "PATH", "model directory, tokenizer_config.json or .gguf file", 0, 0},
        {"template-file", FLAG_STRING, &file, NULL, "FILE", "a Jinja template file instead (bos/eos from the flags)", 0, 0},
        {"bos-token", FLAG_STRING, &bos, NULL, "TEXT", "bos_token (overrides the tokenizer's)", 0, 0},
        {"eos-token", FLAG_STRING, &eos, NULL, "TEXT", "eos_token (overrides the tokenizer's)", 0, 0},
        {0},
    };
    const char *prog = "sluice-worker chat-template";
    int rc = flags_parse(prog, "Reads one JSON request per line ({\"messages\", \"tools\", \"add_generation_prompt\", ...}), "
                               "writes the rendered prompt as one JSON string per line.",
                         specs, argc, argv, 1, NULL, 0, NULL);
    if (rc == FLAGS_HELP) return 0;
    if (rc != FLAGS_OK) return 2;
    if (!path == !file) {
        fprintf(stderr, "%s: give one of --tokenizer PATH or --template-file FILE\n", prog);
        return 2;
    }
    struct chat_template_source src = {0};
    char err[1024];
    if (file) {
        src.source = chat_template_read_file(file);
        if (!src.source) {
            fprintf(stderr, "%s: cannot read %s\n", prog, file);
            return 1;
        }
    } else if (chat_template_source_load(&src, path, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: %s\n", prog, err);
        chat_template_source_free(&src);
        return 1;
    }
    if (bos) {
        free(src.bos_token);
        src.bos_token = strdup(bos);
    }
    if (eos) {
        free(src.eos_token);
        src.eos_token = strdup(eos);
    }
    struct chat_template *t = NULL;
    if (chat_template_compile(&t, src.source, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: template does not compile: %s\n", prog, err);
        chat_template_source_free(&src);
        return 1;
    }
    struct line_job job = {.t = t, .src = &src};
    cli_for_each_line(on_line, &job);
    chat_template_free(t);
    chat_template_source_free(&src);
    return 0;
}
