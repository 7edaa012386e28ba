#!/usr/bin/env bash
# GPU benchmarks on Llama-3-8B's shape (random bf16 weights), all in one run on one GPU:
#   1. the references: copy bandwidth, the batch-1 roofline, Hugging Face generate();
#   2. sluice's engine alone: decode tokens/s at batch 1, 8, 64, 256, prefill time of 16 x 1024
#      tokens against Hugging Face's (and, with TRACE_LIB, the kernel timeline of a batch-64 step);
#   3. the serving benchmark through the whole trio: 1024 in / 128 out, 500 prompts, rate inf.
# Needs: bin/ built with nvcc, python3 with torch + transformers, and a Llama 3 tokenizer
# (TOKENIZER, default .models/llama3_1, copied from the shared test data).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/cuda_trio.sh
bench_env
batches="${BATCHES:-1,8,64,128,256}"
export PYTHONUNBUFFERED=1

echo "== references (Hugging Face generate, roofline)"
python3 tests/bench/hf_baseline.py --config "$cfg" --batch-sizes "$batches" --json "$out/hf.json"

echo "== sluice engine alone"
"$bin/sluice-worker" bench --device cuda --model-path "$cfg" --load-format dummy --tokenizer "$tok" \
  --batch-sizes "$batches" --input-len 128 --output-len 128 | tee "$out/sluice_engine.txt"

echo "== prefill: 16 prompts of 1024 tokens, Hugging Face generate() and sluice's engine"
python3 tests/bench/hf_baseline.py --config "$cfg" --batch-sizes 16 --input-len 1024 --output-len 2 \
  --json "$out/hf_prefill.json" | grep "^hf batch"
"$bin/sluice-worker" bench --device cuda --model-path "$cfg" --load-format dummy --tokenizer "$tok" \
  --batch-sizes 16 --input-len 1024 --output-len 2 | tee "$out/sluice_prefill.txt"

# Where a batch-64 decode step goes, kernel by kernel, inside the CUDA graph: TRACE_LIB names
# build/lib/libsluice_kernel_trace.so (make builds it where the toolkit has CUPTI; a machine
# without the toolkit needs libcupti.so.13 on LD_LIBRARY_PATH).
if [ -n "${TRACE_LIB:-}" ]; then
  echo "== kernel timeline of batch-64 decode steps (CUPTI; tracing makes steps ~4% slower)"
  CUDA_INJECTION64_PATH="$(realpath "$TRACE_LIB")" "$bin/sluice-worker" bench --device cuda --model-path "$cfg" \
    --load-format dummy --tokenizer "$tok" --batch-sizes 64 --input-len 128 --output-len 128 2>&1 |
    grep "kernel trace" | tee "$out/kernel_trace.txt" ||
    echo "kernel trace: no records (is libcupti.so on LD_LIBRARY_PATH?); the benchmarks go on"
fi

if [ "${SERVING:-1}" = 1 ]; then
  echo "== serving through controller + worker + gateway"
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
  start_trio "$bin" "$cfg" "$tok"
  python3 tests/bench/serve_bench.py --model llama-3-8b --input-len 1024 --output-len 128 \
    --num-prompts "${NUM_PROMPTS:-500}" --request-rate inf --vocab-size 128256 --json "$out/serving.json"
fi
