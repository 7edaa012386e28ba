# Sourced by the scripts that run sluice on a GPU machine (tests/bench/gpu_bench.sh,
# tests/bench/serve_stress.sh, tests/gpu/run_on_device.sh).

# cuda_lib_path BINARY: where BINARY cannot find its CUDA libraries (a machine whose toolkit
# libraries live only in the Python wheels), puts those on LD_LIBRARY_PATH.
cuda_lib_path() {
  ldd "$1" | grep -q "not found" || return 0
  local d
  for d in /usr/local/cuda/lib64 $(python3 -c 'import nvidia, os
print(" ".join(os.path.join(p, "cublas/lib") for p in nvidia.__path__))' 2>/dev/null); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
  done
  ldd "$1" | grep "not found" || true
}

# bench_env: the GPU scripts' settings from the environment, as variables of the caller: bin
# (SLUICE_BIN, default bin), cfg (Llama-3-8B's config), tok (TOKENIZER, default
# .models/llama3_1) and out (OUT, default /tmp); and bin's worker able to find its CUDA libraries.
# Call from the repository root.
bench_env() {
  bin="${SLUICE_BIN:-bin}"
  cfg=tests/bench/configs/llama-3-8b
  tok="${TOKENIZER:-.models/llama3_1}"
  out="${OUT:-/tmp}"
  cuda_lib_path "$bin/sluice-worker"
}

# trio_bg LOGS NAME COMMAND...: runs COMMAND in the background, its output into LOGS/NAME.log
# when LOGS is set, and appends its pid to the caller's `pids`.
trio_bg() {
  local logs=$1 name=$2
  shift 2
  if [ -n "$logs" ]; then "$@" > "$logs/$name.log" 2>&1 & else "$@" & fi
  pids+=($!)
}

# start_trio BIN CONFIG TOKENIZER [LOGDIR]: the controller on :21001, a CUDA worker serving
# CONFIG's shape with random weights as llama-3-8b on :21002 (with WORKER_ARGS, more flags for
# it, split at spaces) and the gateway on :8000 (their logs into LOGDIR when given), their pids
# appended to the caller's `pids`; returns once the gateway lists the model, or fails after 2
# minutes.
start_trio() {
  local bin=$1 cfg=$2 tok=$3 logs=${4:-} _
  local -a extra
  read -r -a extra <<< "${WORKER_ARGS:-}"
  trio_bg "$logs" controller "$bin/sluice-controller" --port 21001 --log-level warn
  trio_bg "$logs" worker "$bin/sluice-worker" --model-path "$cfg" --load-format dummy --tokenizer "$tok" \
    --device cuda --model-names llama-3-8b --port 21002 --heartbeat-interval 2 --log-level warn "${extra[@]}"
  trio_bg "$logs" gateway "$bin/sluice-gateway" --port 8000 --log-level warn
  for _ in $(seq 1 600); do
    curl -s http://127.0.0.1:8000/v1/models | grep -q llama-3-8b && return 0
    sleep 0.2
  done
  echo "start_trio: the gateway does not list llama-3-8b after 2 minutes" >&2
  return 1
}
