#!/usr/bin/env bash
# Throughput of POST /get_worker_address: the controller (pinned to one core) with 100 workers
# over 10 models, driven by wrk (one thread, 32 connections). Prints requests/s and p99.
#
#   SLUICE_BIN=build/ctl/bin tests/bench/bench_controller.sh
#   DURATION=5s CONNECTIONS=32 DISPATCH=lottery tests/bench/bench_controller.sh
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${SLUICE_BIN:-$REPO/bin}"
DURATION="${DURATION:-5s}"
CONNECTIONS="${CONNECTIONS:-32}"
DISPATCH="${DISPATCH:-shortest_queue}"
CTL_CPU="${CTL_CPU:-0}"
WRK_CPU="${WRK_CPU:-1}"

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
[ -x "$BIN/sluice-controller" ] || { echo "$BIN/sluice-controller is not built" >&2; exit 1; }

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
TMP="$(mktemp -d)"
CTL_PID=""
cleanup() {
    if [ -n "$CTL_PID" ]; then kill "$CTL_PID" 2>/dev/null || true; wait "$CTL_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

PIN=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then PIN=(taskset -c "$CTL_CPU"); fi
"${PIN[@]}" "$BIN/sluice-controller" --host 127.0.0.1 --port "$PORT" --dispatch-method "$DISPATCH" \
    --log-level warn >"$TMP/controller.log" 2>&1 &
CTL_PID=$!

for _ in $(seq 100); do
    curl -sf "$URL/health" >/dev/null 2>&1 && break
    sleep 0.05
done
curl -sf "$URL/health" >/dev/null || { echo "controller did not start:"; cat "$TMP/controller.log"; exit 1; }

# 100 workers, 10 per model; heartbeats are not checked so none expires during the run.
for i in $(seq 0 99); do
    curl -sf -X POST "$URL/register_worker" -H 'Content-Type: application/json' \
        -d "{\"worker_name\":\"http://10.0.0.$((i / 10)):$((21002 + i))\",\"check_heart_beat\":false,\"worker_status\":{\"model_names\":[\"model-$((i % 10))\"],\"speed\":$((1 + i % 3)),\"queue_length\":0}}" \
        >/dev/null
done
echo "workers registered: $(curl -sf "$URL/health")"
echo "sample dispatch: $(curl -sf -X POST "$URL/get_worker_address" -H 'Content-Type: application/json' -d '{"model":"model-3"}')"

cat >"$TMP/dispatch.lua" <<'LUA'
-- POST /get_worker_address, cycling over the ten models.
local reqs = {}
local n = 0
init = function(args)
    for m = 0, 9 do
        reqs[m + 1] = wrk.format("POST", "/get_worker_address",
            {["Content-Type"] = "application/json"}, '{"model":"model-' .. m .. '"}')
    end
end
request = function()
    n = n % 10 + 1
    return reqs[n]
end
done = function(summary, latency, requests)
    io.write(string.format("bench_controller: %.0f requests/s, p50 %.0f us, p99 %.0f us, errors %d\n",
        summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status +
        summary.errors.timeout))
end
LUA

WPIN=()
if [ ${#PIN[@]} -gt 0 ]; then WPIN=(taskset -c "$WRK_CPU"); fi
"${WPIN[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$TMP/dispatch.lua" "$URL/get_worker_address"
echo "dispatch method: $DISPATCH; controller pinned to CPU ${CTL_CPU} (if taskset exists); $(nproc) CPUs"
