#!/usr/bin/env bash
# Serving runs of shrinking batches, one after another on one trio (controller, CUDA worker,
# gateway) over Llama-3-8B's shape: RUNS runs of serve_bench.py with 67, 74, ... prompts of
# 261, 322, ... tokens, each bounded to 25 s. A stall (a run past its bound) prints the worker's
# step counter twice and the GPU's use, then stops. This reproduced the Hopper products' hang
# (docs/performance.md, "A hang in serving tails") in 1 run of 2 to 11.
# Env: SLUICE_BIN (bin), TOKENIZER (.models/llama3_1), RUNS (14), OUT (/tmp), and WORKER_ARGS,
# more flags for the worker (e.g. "--cuda-options hopper=0 --no-overlap-steps" to bisect).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/cuda_trio.sh
bench_env
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start_trio "$bin" "$cfg" "$tok" "$out" || exit 1
steps() {
  curl -s -m 2 http://127.0.0.1:21002/metrics | grep -E "^sluice_worker_(engine_steps_total|requests_running)" | tr '\n' ' '
  echo
}
for i in $(seq 1 "${RUNS:-14}"); do
  n=$((60 + 7 * i))
  timeout 25 python3 tests/bench/serve_bench.py --model llama-3-8b --input-len $((200 + 61 * i)) \
    --output-len $((64 + 9 * i)) --num-prompts $n --request-rate inf --vocab-size 128256 --seed "$i" \
    > "$out/stress_$i.txt" 2>&1
  rc=$?
  echo "run $i ($n prompts): rc=$rc $(grep -E 'successful|failed' "$out/stress_$i.txt" | tr -s ' ' | tr '\n' ' ')"
  if [ $rc != 0 ]; then
    echo "stalled: $(steps)"; sleep 2; echo "2 s later: $(steps)"
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader
    exit 1
  fi
done
echo "all ${RUNS:-14} runs finished"
