#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/template/chat_format.h"

static json_t *msgs(const char *s)
{
    json_error_t e;
    json_t *v = json_loads(s, 0, &e);
    cr_assert_not_null(v, "%s", e.text);
    return v;
}

Test(chat_format, plain_transcript_without_tokenizer)
{
    struct chat_format f;
    char err[256];
    cr_assert_eq(chat_format_init(&f, NULL, NULL, NULL, err, sizeof err), 0);
    json_t *m = msgs("[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                     "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"}]}]");
    char *out = NULL;
    struct json_field_error fe;
    cr_assert_eq(chat_format_render(&f, m, NULL, NULL, true, &out, &fe), 0);
    cr_assert_str_eq(out, "System: Be brief.\nUser: Hi\nAssistant:");
    cr_assert(f.add_special_tokens);
    free(out);
    json_decref(m);
    chat_format_free(&f);
}

Test(chat_format, file_format_and_errors)
{
    char path[] = "/tmp/sluice-chat-XXXXXX";
    int fd = mkstemp(path);
    const char *spec = "{\"name\":\"t\",\"bos\":\"<s>\",\"user\":{\"prefix\":\"[U]\",\"suffix\":\"|\"},"
                       "\"assistant\":{\"prefix\":\"[A]\",\"suffix\":\"</s>\"},\"generation_prompt\":\"[A]\"}";
    cr_assert_eq(write(fd, spec, strlen(spec)), (ssize_t)strlen(spec));
    close(fd);
    struct chat_format f;
    char err[256];
    cr_assert_eq(chat_format_init(&f, NULL, NULL, path, err, sizeof err), 0, "%s", err);
    json_t *m = msgs("[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\"},"
                     "{\"role\":\"user\",\"content\":\"c\"}]");
    char *out = NULL;
    struct json_field_error fe;
    cr_assert_eq(chat_format_render(&f, m, NULL, NULL, false, &out, &fe), 0);
    cr_assert_str_eq(out, "<s>[U]a|[A]b</s>[U]c|");
    free(out);
    json_decref(m);

    m = msgs("[{\"role\":\"wizard\",\"content\":\"a\"}]");
    cr_assert_eq(chat_format_render(&f, m, NULL, NULL, true, &out, &fe), 400);
    cr_assert_str_eq(fe.param, "messages");
    json_decref(m);
    m = msgs("[{\"content\":\"a\"}]");
    cr_assert_eq(chat_format_render(&f, m, NULL, NULL, true, &out, &fe), 400);
    cr_assert_not_null(strstr(fe.message, "role"));
    json_decref(m);
    m = msgs("[]");
    cr_assert_eq(chat_format_render(&f, m, NULL, NULL, true, &out, &fe), 400);
    json_decref(m);
    chat_format_free(&f);
    unlink(path);

    cr_assert_neq(chat_format_init(&f, NULL, NULL, "/nonexistent/chat.json", err, sizeof err), 0);
    cr_assert_not_null(strstr(err, "/nonexistent/chat.json"));
}

static char *write_temp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/sluice-chat-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

Test(chat_format, jinja_file_renders_and_errors)
{
    const char *path = write_temp(
        "{%- for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}\n{% endfor %}"
        "{%- if messages[0].role == 'wizard' %}{{ raise_exception('no wizards') }}{% endif %}"
        "{%- if add_generation_prompt %}<|assistant|>{% endif %}");
    struct chat_format f;
    char err[256];
    cr_assert_eq(chat_format_init(&f, NULL, NULL, path, err, sizeof err), 0, "%s", err);
    json_t *m = msgs("[{\"role\":\"user\",\"content\":\" hi \"}]");
    char *out = NULL;
    struct json_field_error fe;
    cr_assert_eq(chat_format_render(&f, m, NULL, NULL, true, &out, &fe), 0, "%s", fe.message);
    cr_assert_str_eq(out, "<|user|>hi\n<|assistant|>");
    free(out);
    json_decref(m);
    m = msgs("[{\"role\":\"wizard\",\"content\":\"x\"}]");
    cr_assert_eq(chat_format_render(&f, m, NULL, NULL, true, &out, &fe), 400);
    cr_assert_not_null(strstr(fe.message, "no wizards"));
    json_decref(m);
    chat_format_free(&f);
    unlink(path);

    path = write_temp("{% for m in messages %}{{ m | nosuchfilter }}{% endfor %}");
    cr_assert_neq(chat_format_init(&f, NULL, NULL, path, err, sizeof err), 0);
    cr_assert_not_null(strstr(err, "nosuchfilter"), "%s", err);
    unlink(path);
}

static char *render(const struct chat_format *f, const char *messages, bool gen)
{
    json_t *m = msgs(messages);
    char *out = NULL;
    struct json_field_error fe;
    cr_assert_eq(chat_format_render(f, m, NULL, NULL, gen, &out, &fe), 0, "%s", fe.message);
    json_decref(m);
    return out;
}

/* --chat-template takes a Jinja file as vLLM does: a *.jinja file is Jinja whatever it starts
 * with (here a literal '{'), and so is any other file that is not a JSON object; a byte order
 * mark is not part of the template. */
Test(chat_format, jinja_files_of_any_shape)
{
    char path[] = "/tmp/sluice-chat-XXXXXX.jinja";
    int fd = mkstemps(path, 6);
    const char *src = "{\"turns\": {{ messages | length }}}{% if add_generation_prompt %}>{% endif %}";
    cr_assert_eq(write(fd, src, strlen(src)), (ssize_t)strlen(src));
    close(fd);
    struct chat_format f;
    char err[256];
    cr_assert_eq(chat_format_init(&f, NULL, NULL, path, err, sizeof err), 0, "%s", err);
    char *out = render(&f, "[{\"role\":\"user\",\"content\":\"a\"}]", true);
    cr_assert_str_eq(out, "{\"turns\": 1}>");
    free(out);
    chat_format_free(&f);
    unlink(path);

    const char *bom = write_temp("\xEF\xBB\xBF{% for m in messages %}[{{ m.content }}]{% endfor %}");
    cr_assert_eq(chat_format_init(&f, NULL, NULL, bom, err, sizeof err), 0, "%s", err);
    out = render(&f, "[{\"role\":\"user\",\"content\":\"a\"}]", false);
    cr_assert_str_eq(out, "[a]");
    free(out);
    chat_format_free(&f);
    unlink(bom);

    /* Neither JSON nor any Jinja markup: broken JSON, said so. */
    const char *broken = write_temp("{\"name\": \"x\", ");
    cr_assert_neq(chat_format_init(&f, NULL, NULL, broken, err, sizeof err), 0);
    cr_assert_not_null(strstr(err, "JSON"), "%s", err);
    unlink(broken);
}

static const char *conv_str(const json_t *conv, const char *key)
{
    const char *s = json_string_value(json_object_get(conv, key));
    cr_assert_not_null(s, "%s", key);
    return s;
}

static const char *conv_role(const json_t *conv, size_t i)
{
    return json_string_value(json_array_get(json_object_get(conv, "roles"), i));
}

/* FastChat's conversation for a template: what FastChat's get_prompt() builds from it must be
 * our prompt. Its NO_COLON_TWO style writes system_template, then role + text + sep (user) or
 * sep2 (assistant) per turn, then the assistant's role. */
Test(chat_format, fastchat_conversation_of_a_jinja_template)
{
    const char *path = write_temp(
        "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}");
    struct chat_format f;
    char err[256];
    cr_assert_eq(chat_format_init(&f, NULL, NULL, path, err, sizeof err), 0, "%s", err);
    unlink(path);
    free(f.bos_token);
    free(f.eos_token);
    f.bos_token = strdup("<s>");
    f.eos_token = strdup("</s>");
    json_t *conv = chat_format_fastchat_conv(&f, NULL);
    cr_assert_not_null(conv);
    cr_assert_eq(json_integer_value(json_object_get(conv, "sep_style")), 5); /* NO_COLON_TWO */
    cr_assert_str_eq(conv_str(conv, "system_template"), "<s><|system|>\n{system_message}</s>\n");
    cr_assert_str_eq(conv_str(conv, "system_message"), "");
    cr_assert_str_eq(conv_role(conv, 0), "<|user|>\n");
    cr_assert_str_eq(conv_role(conv, 1), "<|assistant|>\n");
    cr_assert_str_eq(conv_str(conv, "sep"), "</s>\n");
    cr_assert_str_eq(conv_str(conv, "sep2"), "</s>\n");
    cr_assert_eq(json_integer_value(json_object_get(conv, "offset")), 0);
    cr_assert(json_is_array(json_object_get(conv, "messages")));
    cr_assert(json_is_array(json_object_get(conv, "stop_token_ids")));
    cr_assert(json_object_get(conv, "stop_str") != NULL);
    char *ours = render(&f, "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"U\"},"
                            "{\"role\":\"assistant\",\"content\":\"A\"},{\"role\":\"user\",\"content\":\"V\"}]", true);
    cr_assert_str_eq(ours, "<s><|system|>\nS</s>\n<|user|>\nU</s>\n<|assistant|>\nA</s>\n<|user|>\nV</s>\n<|assistant|>\n");
    free(ours);
    json_decref(conv);
    chat_format_free(&f);
}

/* A template with a system message of its own when none is given: that is the default. And
 * braces in the template's text are doubled for Python's str.format. */
Test(chat_format, fastchat_conversation_keeps_a_default_system_message)
{
    const char *path = write_temp(
        "{% if messages[0].role != 'system' %}[{sys}] Be kind.\n{% endif %}"
        "{% for m in messages %}{% if m.role == 'system' %}[{sys}] {{ m.content }}\n"
        "{% else %}{{ m.role }}> {{ m.content }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant> {% endif %}");
    struct chat_format f;
    char err[256];
    cr_assert_eq(chat_format_init(&f, NULL, NULL, path, err, sizeof err), 0, "%s", err);
    unlink(path);
    json_t *conv = chat_format_fastchat_conv(&f, NULL);
    cr_assert_str_eq(conv_str(conv, "system_template"), "[{{sys}}] {system_message}\n");
    cr_assert_str_eq(conv_str(conv, "system_message"), "Be kind.");
    cr_assert_str_eq(conv_role(conv, 0), "user> ");
    cr_assert_str_eq(conv_role(conv, 1), "assistant> ");
    json_decref(conv);
    chat_format_free(&f);
}

/* The built-in transcript ("User: hi\nAssistant:") is FastChat's ADD_COLON_TWO: roles without
 * the colon, which FastChat writes itself, and no space after the last one. */
Test(chat_format, fastchat_conversation_of_the_plain_transcript)
{
    struct chat_format f;
    char err[256];
    cr_assert_eq(chat_format_init(&f, NULL, NULL, NULL, err, sizeof err), 0);
    json_t *conv = chat_format_fastchat_conv(&f, NULL);
    cr_assert_eq(json_integer_value(json_object_get(conv, "sep_style")), 2); /* ADD_COLON_TWO */
    cr_assert_str_eq(conv_str(conv, "system_template"), "System: {system_message}");
    cr_assert_str_eq(conv_role(conv, 0), "User");
    cr_assert_str_eq(conv_role(conv, 1), "Assistant");
    cr_assert_str_eq(conv_str(conv, "sep"), "\n");
    cr_assert_str_eq(conv_str(conv, "sep2"), "\n");
    json_decref(conv);
    chat_format_free(&f);
}

/* An assistant turn that only called tools comes with content null (OpenAI's clients send it
 * so). A template that tests for null sees null; one that reads content as a string and fails
 * on null (Qwen3's) is given "" instead of answering 500. */
Test(chat_format, tool_calling_turns_with_null_content)
{
    const char *calls = "[{\"role\":\"user\",\"content\":\"w?\"},{\"role\":\"assistant\",\"content\":null,"
                        "\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
                        "{\"role\":\"tool\",\"content\":\"sunny\"}]";
    const char *strict = write_temp("{%- for m in messages %}{%- if '</think>' in m.content %}T{% endif %}"
                                    "[{{ m.role }}:{{ m.content }}{% for c in m.tool_calls or [] %}"
                                    "<{{ c.function.name }}>{% endfor %}]{% endfor %}");
    struct chat_format f;
    char err[256];
    cr_assert_eq(chat_format_init(&f, NULL, NULL, strict, err, sizeof err), 0, "%s", err);
    char *out = render(&f, calls, false);
    cr_assert_str_eq(out, "[user:w?][assistant:<f>][tool:sunny]");
    free(out);
    chat_format_free(&f);
    unlink(strict);

    const char *tests_none = write_temp("{%- for m in messages %}{% if m.content is none %}(none){% else %}"
                                        "{{ m.content }}{% endif %};{% endfor %}");
    cr_assert_eq(chat_format_init(&f, NULL, NULL, tests_none, err, sizeof err), 0, "%s", err);
    out = render(&f, calls, false);
    cr_assert_str_eq(out, "w?;(none);sunny;");
    free(out);
    chat_format_free(&f);
    unlink(tests_none);
}
