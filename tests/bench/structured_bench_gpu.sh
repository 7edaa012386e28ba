#!/usr/bin/env bash
# Structured output on the GPU: tests/bench/structured_bench.py on Llama-3-8B's shape (random
# bf16 weights, Llama 3's 128k vocabulary): 64 json_schema-constrained requests at once against
# 64 free ones (of --output-len, and of the constrained answers' lengths: the ratio the issue
# asks for is against these), then half and half, in output tokens per second, with the share of
# overlapped steps and the host's mask time per constrained sequence per step; then the mask
# time alone on the CPU (grammar_bench walk over the JSON fixtures, cold and warm) at the same
# vocabulary. --worker-arg=--cuda-options=late_masks=0 gives the same without overlapping
# constrained steps, to compare against.
# Needs: bin/ and build/bench/grammar_bench built with nvcc, and a Llama 3 tokenizer (TOKENIZER,
# default .models/llama3_1). Extra arguments go to structured_bench.py (e.g. --num-requests 32,
# or --worker-arg=--deterministic).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/cuda_trio.sh
bench_env
export PYTHONUNBUFFERED=1
python3 tests/bench/structured_bench.py --bin "$bin" --device cuda --model-path "$cfg" --load-format dummy \
  --tokenizer "$tok" --out "$out" --json "$out/structured_bench.json" "$@"
gb="${GRAMMAR_BENCH:-build/bench/grammar_bench}"
if [ -x "$gb" ]; then
  for d in order tree; do
    "$gb" walk "$tok" json_schema "tests/fixtures/grammar/${d}_schema.json" "tests/fixtures/grammar/${d}_doc.json" \
      --passes 20
  done
else
  echo "structured_bench_gpu.sh: $gb not built; skipping the CPU mask-time walk (make build/bench/grammar_bench)" >&2
fi
