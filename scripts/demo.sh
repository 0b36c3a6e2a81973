#!/usr/bin/env bash
# make demo: start the local stack, run examples/prompts.jsonl through the bulk CLI, leave the images (and their
# manifest) in ./demo-images, stop the stack. PORT, LOCAL_API_KEY and DEMO_OUT change the defaults (and every
# variable make run reads). The stack's output stays in the project: build/demo-stack.log (what the terminal would
# show) and build/demo-devstack.log (every line), or DEMO_LOG_DIR; nothing is written to /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PORT:-3000}"
key="${LOCAL_API_KEY:-local-dev-key}"
out="${DEMO_OUT:-demo-images}"
logs="${DEMO_LOG_DIR:-build}"
mkdir -p "$logs"
log="$logs/demo-stack.log"

PYTHONPATH=layers/shared:functions/api:functions/worker:local PORT="$port" LOCAL_API_KEY="$key" \
  DEVSTACK_LOG="$logs/demo-devstack.log" .venv/bin/python -m devstack >"$log" 2>&1 &
stack=$!
trap 'kill -TERM "$stack" 2>/dev/null; wait "$stack" 2>/dev/null || true' EXIT  # (a background job ignores SIGINT)

for _ in $(seq 1 120); do
  if curl -fsS -o /dev/null "http://127.0.0.1:${port}/openapi.json" 2>/dev/null; then break; fi
  if ! kill -0 "$stack" 2>/dev/null; then echo "the local stack did not start:"; cat "$log"; exit 1; fi
  sleep 0.5
done
echo "local stack up on http://127.0.0.1:${port} (log: $log)"

FLUX_IMAGES_API_URL="http://127.0.0.1:${port}" FLUX_IMAGES_API_KEY="$key" \
  .venv/bin/flux-images submit examples/prompts.jsonl --out "$out"
echo "images and manifest in ${out}"
