#!/usr/bin/env bash
# Prefix caching on the GPU: tests/bench/prefix_bench.py on Llama-3-8B's shape (random bf16
# weights), each benchmark with the cache off, then on: a repeated 4,000-token prompt's time to
# first token against its cold one, 64 requests sharing a 4,000-token prefix, the same with
# nothing shared, and 16 conversations of 5 turns resending their history.
# Needs: bin/ built with nvcc and a Llama 3 tokenizer (TOKENIZER, default .models/llama3_1).
# Extra arguments go to prefix_bench.py (e.g. --only shared,repeat, or --worker-arg=--deterministic).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/cuda_trio.sh
bench_env
export PYTHONUNBUFFERED=1
python3 tests/bench/prefix_bench.py --bin "$bin" --device cuda --model-path "$cfg" --load-format dummy \
  --tokenizer "$tok" --vocab-size 128000 --json "$out/prefix_bench.json" "$@"
