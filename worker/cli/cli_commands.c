/* sluice-worker's subcommands in one table, so that dispatch (worker/main.c) and the list in
 * --help (worker/cli/serve.c) cannot disagree. */
#include <stdio.h>
#include <string.h>

#include "worker/cli/cli.h"

struct cli_command {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *about; /* one line for --help */
};

static const struct cli_command commands[] = {
    {"tokenize", cli_tokenize_main, "text to token ids: one JSON string per stdin line, one array of ids out"},
    {"detokenize", cli_detokenize_main, "token ids to text: one JSON array of ids per stdin line, one string out"},
    {"chat-template", cli_chat_template_main, "renders chat requests with the model's template: one JSON request per line, the prompt out"},
    {"bench", cli_bench_main, "times the engine alone: batch x input x output, no HTTP"},
};

int cli_main(int argc, char **argv)
{
    for (size_t i = 0; argc > 1 && i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].main(argc - 1, argv + 1);
    return worker_serve_main(argc, argv);
}

const char *cli_serve_summary(void)
{
    static char text[1024];
    if (text[0]) return text;
    size_t n = (size_t)snprintf(text, sizeof text, "Serves one model on one device.\n\n"
                                "subcommands (sluice-worker COMMAND --help for each one's flags):");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0] && n < sizeof text; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "\n  %-15s%s", commands[i].name, commands[i].about);
    return text;
}
