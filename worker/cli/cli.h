/* Entry points of sluice-worker's subcommands; cli_main picks one by argv[1]. */
#ifndef SLUICE_WORKER_CLI_H
#define SLUICE_WORKER_CLI_H

/* `sluice-worker [COMMAND] ...`: runs the subcommand argv[1] names, or serves a model
 * (worker/cli/cli_commands.c). */
int cli_main(int argc, char **argv);
/* The summary serve's --help prints: what it does and every subcommand, one line each. */
const char *cli_serve_summary(void);

/* `sluice-worker [flags]`: serve a model (worker/cli/serve.c). */
int worker_serve_main(int argc, char **argv);
/* `sluice-worker tokenize|detokenize --tokenizer PATH`: one JSON value per stdin line in,
 * one per stdout line out (worker/cli/cli_tokenize.c). argv[0] is the subcommand. */
int cli_tokenize_main(int argc, char **argv);
int cli_detokenize_main(int argc, char **argv);
/* `sluice-worker bench`: the engine alone, batch x input x output (worker/cli/cli_bench.c). */
int cli_bench_main(int argc, char **argv);
/* `sluice-worker chat-template --tokenizer PATH`: one JSON request per stdin line in, the
 * rendered prompt as one JSON string per stdout line out (worker/cli/cli_chat_template.c). */
int cli_chat_template_main(int argc, char **argv);

#endif
