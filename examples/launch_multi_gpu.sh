#!/usr/bin/env bash
# One worker per GPU, all registered with one controller, behind one gateway.
#   MODEL=/models/Meta-Llama-3-8B-Instruct NUM_GPUS=8 examples/launch_multi_gpu.sh
set -euo pipefail
bin="${SLUICE_BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}"
: "${MODEL:?set MODEL to a model directory or .gguf file}"
n="${NUM_GPUS:-$(nvidia-smi -L | wc -l)}"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
"$bin/sluice-controller" --port 21001 & pids+=($!)
for ((i = 0; i < n; i++)); do
  CUDA_VISIBLE_DEVICES=$i "$bin/sluice-worker" --model-path "$MODEL" --device cuda \
    --port $((21002 + i)) --controller-address http://127.0.0.1:21001 & pids+=($!)
done
"$bin/sluice-gateway" --port 8000 --controller-address http://127.0.0.1:21001 & pids+=($!)
wait -n "${pids[@]}"
