#!/usr/bin/env bash
# Starts Arize Phoenix (an OpenTelemetry trace receiver with a query API, from PyPI) on
# 127.0.0.1:PORT in the background, waits until it answers, and prints its base URL (the only
# line on stdout). Point the orchestrator at it with OTEL_EXPORTER_OTLP_ENDPOINT=<that URL>;
# open the URL in a browser to see the traces. Idempotent: when Phoenix already answers on
# PORT, it just prints the URL.
#
#   infra/phoenix.sh [PORT]           # default: $PHOENIX_PORT, else 6006
#   export PHOENIX_URL=$(infra/phoenix.sh)
#   infra/phoenix.sh --stop [PORT]    # stops the one this script started
#
# Phoenix and its dependencies (~900 MB) go in a virtualenv of their own, kept between runs.
set -euo pipefail

stop=false
if [[ "${1:-}" == "--stop" ]]; then
  stop=true
  shift
fi
port="${1:-${PHOENIX_PORT:-6006}}"
url="http://127.0.0.1:${port}"
state_dir="${TMPDIR:-/tmp}/orchestrator-phoenix"
venv="${PHOENIX_VENV:-${TMPDIR:-/tmp}/orchestrator-phoenix-venv}"
pid_file="${state_dir}/${port}.pid"
log_file="${state_dir}/${port}.log"
mkdir -p "$state_dir"

answers() {
  python3 - "$url" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/v1/projects", timeout=3).read()
PY
}

if $stop; then
  if [[ -f "$pid_file" ]] && kill "$(cat "$pid_file")" 2>/dev/null; then
    echo "stopped Phoenix on port ${port}" >&2
  fi
  rm -f "$pid_file"
  exit 0
fi

if answers; then
  echo "$url"
  exit 0
fi

if [[ ! -x "${venv}/bin/phoenix" ]]; then
  echo "installing arize-phoenix from PyPI into ${venv} (a few minutes, once)..." >&2
  python3 -m venv "$venv"
  "${venv}/bin/pip" install --quiet --disable-pip-version-check 'arize-phoenix==20.26.1' >&2
fi

# Its gRPC receiver is not used; a free port keeps it off 4317, which a collector may hold.
grpc_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
work_dir="$(mktemp -d "${state_dir}/data.XXXXXX")"
PHOENIX_HOST=127.0.0.1 PHOENIX_PORT="$port" PHOENIX_GRPC_PORT="$grpc_port" \
  PHOENIX_WORKING_DIR="$work_dir" PHOENIX_TELEMETRY_ENABLED=false \
  nohup "${venv}/bin/phoenix" serve >>"$log_file" 2>&1 &
pid=$!

for _ in $(seq 1 300); do
  if answers; then
    echo "$pid" >"$pid_file"
    echo "$url"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "Phoenix exited (is port ${port} taken?); its log (${log_file}):" >&2
    tail -n 20 "$log_file" >&2
    exit 1
  fi
  sleep 0.2
done
echo "Phoenix did not answer on ${url} within 60 s; its log: ${log_file}" >&2
exit 1
