#include <string.h>

#include "worker/cli.h"

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "tokenize") == 0) return cli_tokenize_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "detokenize") == 0) return cli_detokenize_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "bench") == 0) return cli_bench_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "chat-template") == 0) return cli_chat_template_main(argc - 1, argv + 1);
    return worker_serve_main(argc, argv);
}
