#!/usr/bin/env bash
# The gateway from curl: list models, a chat answer, then the same answer streamed.
set -euo pipefail
base="${BASE_URL:-http://127.0.0.1:8000/v1}"
model="${MODEL_NAME:-$(curl -s "$base/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')}"

curl -s "$base/models"; echo
curl -s "$base/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$model\", \"messages\": [{\"role\": \"user\", \"content\": \"Tell me a story\"}], \"max_tokens\": 32}"
echo
curl -sN "$base/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$model\", \"messages\": [{\"role\": \"user\", \"content\": \"Tell me a story\"}], \"max_tokens\": 32, \"stream\": true, \"stream_options\": {\"include_usage\": true}}"
