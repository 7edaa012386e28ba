#!/usr/bin/env bash
# Starts controller, one worker and the gateway, the way a user does from a shell, and stops
# all three on Ctrl-C. Used by `make run`.
#   MODEL=/path/to/model-dir-or.gguf  (default: examples/models/tiny-dummy, random weights)
#                                      served under its folder's (or file's) name: "tiny-dummy"
#   DEVICE=cuda|cpu                    (default: cuda when nvidia-smi sees a GPU)
#   PORT=8000 CONTROLLER_PORT=21001 WORKER_PORT=21002
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${SLUICE_BIN:-$here/bin}"
port="${PORT:-8000}"; cport="${CONTROLLER_PORT:-21001}"; wport="${WORKER_PORT:-21002}"
extra=()
if [ -n "${MODEL:-}" ]; then
  model="$MODEL"
else
  model="$here/examples/models/tiny-dummy"; extra+=(--load-format dummy)
fi
if [ -z "${DEVICE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then DEVICE=cuda; else DEVICE=cpu; fi
fi
name="$(basename "${model%/}")"; name="${name%.gguf}"

pids=()
cleanup() { trap - INT TERM EXIT; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup INT TERM EXIT

wait_http() {  # url, seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}

"$bin/sluice-controller" --port "$cport" & pids+=($!)
wait_http "http://127.0.0.1:$cport/health" 10
"$bin/sluice-worker" --model-path "$model" --device "$DEVICE" --port "$wport" \
  --controller-address "http://127.0.0.1:$cport" --heartbeat-interval 2 "${extra[@]}" & pids+=($!)
wait_http "http://127.0.0.1:$wport/health" 600
"$bin/sluice-gateway" --port "$port" --controller-address "http://127.0.0.1:$cport" & pids+=($!)
wait_http "http://127.0.0.1:$port/health" 10
for _ in $(seq 1 50); do curl -s "http://127.0.0.1:$port/v1/models" | grep -q "\"$name\"" && break; sleep 0.1; done

cat <<MSG

sluice is up: model '$name' on $DEVICE. Try:

  curl http://127.0.0.1:$port/v1/models
  curl -N http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "$name", "messages": [{"role": "user", "content": "Tell me a story"}], "stream": true, "max_tokens": 64}'

Ctrl-C stops all three.
MSG
wait -n "${pids[@]}"
