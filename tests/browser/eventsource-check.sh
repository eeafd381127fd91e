#!/usr/bin/env bash
# Checks that a browser's EventSource, on a page from another origin, can start a run through
# CORS and consume its stream to `complete`. Needs Debian's chromium (apt-get install chromium).
# Usage: tests/browser/eventsource-check.sh [path/to/orchestrator]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/debug/orchestrator}"
chromium="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$chromium" ] || { echo "chromium not found: apt-get install chromium" >&2; exit 1; }
[ -x "$bin" ] || { echo "no binary at $bin: run cargo build --bin orchestrator" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api_port=$(free_port); page_port=$(free_port)
work=$(mktemp -d)
cleanup() { kill "${api_pid:-}" "${page_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

ORCHESTRATOR_DB="$work/runs.db" ORCHESTRATOR_OFFLINE_CHUNK_MS=1 \
ORCHESTRATOR_CORS_ORIGINS="http://127.0.0.1:$page_port" \
  "$bin" serve --addr "127.0.0.1:$api_port" 2>"$work/serve.log" &
api_pid=$!
python3 -m http.server "$page_port" --bind 127.0.0.1 --directory "$here" >/dev/null 2>&1 &
page_pid=$!
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$api_port/healthz" >/dev/null && curl -sf "http://127.0.0.1:$page_port/eventsource.html" >/dev/null && break
  sleep 0.1
done

dom=$(timeout 60 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/profile" --virtual-time-budget=20000 --dump-dom \
  "http://127.0.0.1:$page_port/eventsource.html?api=http://127.0.0.1:$api_port" 2>/dev/null)
result=$(printf '%s' "$dom" | sed -n 's/.*<pre id="out">\([^<]*\)<\/pre>.*/\1/p')
echo "browser: $result"
case "$result" in
  "DONE status=completed"*"gapFree=true") echo "eventsource: 1 passed, 0 failed" ;;
  *) echo "eventsource: 0 passed, 1 failed" >&2; cat "$work/serve.log" >&2; exit 1 ;;
esac
