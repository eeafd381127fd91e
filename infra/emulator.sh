#!/usr/bin/env bash
# Starts a local DynamoDB emulator (moto server, from PyPI) on 127.0.0.1:PORT in the background,
# waits until it answers, and prints its endpoint (the only line on stdout). Idempotent: when
# an emulator already answers on PORT, it just prints the endpoint.
#
#   infra/emulator.sh [PORT]            # default: $EMULATOR_PORT, else 5005
#   export AWS_ENDPOINT_URL=$(infra/emulator.sh)
#   infra/emulator.sh --stop [PORT]     # stops the one this script started
#
# moto serves requests on threads and its DynamoDB backend takes no lock, so two concurrent
# transactions could interleave (DynamoDB itself never lets them). The server here runs
# moto's app behind one lock: each request is handled whole before the next, as atomic as
# DynamoDB's own requests, while HTTP keep-alive still works.
set -euo pipefail

stop=false
if [[ "${1:-}" == "--stop" ]]; then
  stop=true
  shift
fi
port="${1:-${EMULATOR_PORT:-5005}}"
endpoint="http://127.0.0.1:${port}"
python="${PYTHON:-python3}"
state_dir="${TMPDIR:-/tmp}/orchestrator-emulator"
pid_file="${state_dir}/${port}.pid"
log_file="${state_dir}/${port}.log"
mkdir -p "$state_dir"

answers() {
  "$python" - "$endpoint" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=3).read()
PY
}

if $stop; then
  if [[ -f "$pid_file" ]] && kill "$(cat "$pid_file")" 2>/dev/null; then
    echo "stopped the emulator on port ${port}" >&2
  fi
  rm -f "$pid_file"
  exit 0
fi

if answers; then
  echo "$endpoint"
  exit 0
fi

if ! "$python" -c 'import moto.server, werkzeug' 2>/dev/null; then
  echo "installing moto[server] from PyPI..." >&2
  "$python" -m pip install --quiet --disable-pip-version-check 'moto[server]' >&2
fi

MOTO_PORT="$port" nohup "$python" - "$port" >>"$log_file" 2>&1 <<'PY' &
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()

def serialised(environ, start_response):
    with lock:
        # Consume the body inside the lock: the whole request is one step of the backend.
        return list(app(environ, start_response))

run_simple("127.0.0.1", int(sys.argv[1]), serialised, threaded=True)
PY
pid=$!

for _ in $(seq 1 100); do
  if answers; then
    echo "$pid" >"$pid_file"
    echo "$endpoint"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "the emulator exited (is port ${port} taken by something that is not answering?); its log (${log_file}):" >&2
    tail -n 20 "$log_file" >&2
    exit 1
  fi
  sleep 0.2
done
echo "the emulator did not answer on ${endpoint} within 20 s; its log: ${log_file}" >&2
exit 1
