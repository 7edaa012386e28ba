/* Tool-call families: their names, their markers, and which one a chat template writes. */
#include <stddef.h>
#include <string.h>

#include "worker/tools/tools.h"

static const char *const family_names[TOOL_FAMILY_COUNT] = {"json", "llama3_json", "hermes", "mistral",
                                                            "deepseek_v3"};

const char *tool_family_name(enum tool_family f)
{
    return f >= 0 && f < TOOL_FAMILY_COUNT ? family_names[f] : "?";
}

int tool_family_from_name(const char *name, enum tool_family *out)
{
    if (!name) return -1;
    for (int f = 0; f < TOOL_FAMILY_COUNT; f++) {
        if (!strcmp(name, family_names[f])) {
            *out = (enum tool_family)f;
            return 0;
        }
    }
    if (!strcmp(name, "qwen") || !strcmp(name, "qwen3")) {
        *out = TOOL_FAMILY_HERMES;
        return 0;
    }
    return -1;
}

const char *const *tool_family_markers(enum tool_family f)
{
    static const char *const none[] = {NULL};
    static const char *const llama[] = {"<|python_tag|>", NULL};
    static const char *const hermes[] = {"<tool_call>", "</tool_call>", NULL};
    static const char *const mistral[] = {"[TOOL_CALLS]", "[ARGS]", NULL};
    static const char *const deepseek[] = {"<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
                                           "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", NULL};
    switch (f) {
    case TOOL_FAMILY_LLAMA3_JSON: return llama;
    case TOOL_FAMILY_HERMES: return hermes;
    case TOOL_FAMILY_MISTRAL: return mistral;
    case TOOL_FAMILY_DEEPSEEK_V3: return deepseek;
    default: return none;
    }
}

bool tool_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

json_t *tool_family_probe_tools(void)
{
    return json_pack("[{s:s, s:{s:s, s:s, s:{s:s, s:{s:{s:s}}, s:[s]}}}]", "type", "function", "function", "name",
                     TOOL_FAMILY_PROBE_NAME, "description", "probe", "parameters", "type", "object", "properties",
                     "x", "type", "integer", "required", "x");
}

json_t *tool_family_probe_messages(bool content_null)
{
    /* Mistral's templates insist on ids of nine letters and digits. */
    return json_pack("[{s:s, s:s}, {s:s, s:o, s:[{s:s, s:s, s:{s:s, s:s}}]}]", "role", "user", "content", "hi", "role",
                     "assistant", "content", content_null ? json_null() : json_string(""), "tool_calls", "id",
                     "call00001", "type", "function", "function", "name", TOOL_FAMILY_PROBE_NAME, "arguments",
                     "{\"x\": 1}");
}

int tool_family_detect(const char *rendered, const char *name, enum tool_family *out)
{
    if (!rendered || !name || !*name) return -1;
    /* The call is the conversation's last mention of the name (the tools' list, which a
     * template may write into a system turn, comes before it). */
    const char *at = NULL;
    for (const char *p = strstr(rendered, name); p; p = strstr(p + 1, name)) at = p;
    if (!at) return -1;
    /* A family's markers come just before the call's name: look in a window there. */
    enum { WINDOW = 160 };
    const char *from = at - rendered > WINDOW ? at - WINDOW : rendered;
    struct {
        const char *marker;
        enum tool_family f;
    } const marked[] = {
        {"tool▁call▁begin", TOOL_FAMILY_DEEPSEEK_V3},
        {"[TOOL_CALLS]", TOOL_FAMILY_MISTRAL},
        {"<tool_call>", TOOL_FAMILY_HERMES},
        {"<|python_tag|>", TOOL_FAMILY_LLAMA3_JSON},
    };
    for (size_t i = 0; i < sizeof marked / sizeof marked[0]; i++) {
        const char *m = strstr(from, marked[i].marker);
        if (m && m < at) {
            *out = marked[i].f;
            return 0;
        }
    }
    /* Llama 3.1-3.3 write a call as {"name": "f", "parameters": {...}} with no marker. */
    const char *params = strstr(at, "\"parameters\"");
    if (params && params - at < (ptrdiff_t)strlen(name) + 8) {
        *out = TOOL_FAMILY_LLAMA3_JSON;
        return 0;
    }
    if (at - rendered >= 9 && !strncmp(at - 9, "\"name\": \"", 9)) {
        *out = TOOL_FAMILY_JSON;
        return 0;
    }
    return -1;
}
