#!/usr/bin/env bash
# What tracing costs: client CPU per reference run (offline model, in-memory store, one thread:
# the engine alone, where the spans' share is largest) with export off and on, interleaved,
# REPEATS times each; export goes to bench/otlp_sink.py, which accepts everything at once. With
# BINARIES (release Lambda binaries, e.g. "target/release/planner target/release/streamer"),
# also their init time (bench/lambda_init.py) with and without OTEL_EXPORTER_OTLP_ENDPOINT.
#
#   bench/tracing.sh                       # builds bench-driver (bench-fast), 5 x 1000 runs each
#   RUNS=2000 REPEATS=7 bench/tracing.sh
#   BINARIES="target/release/planner target/release/streamer" bench/tracing.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-1000}"
REPEATS="${REPEATS:-5}"
PROFILE="${PROFILE:-bench-fast}"
cargo build -q --profile "$PROFILE" -p orchestrator-bench --bin bench-driver
driver="target/${PROFILE}/bench-driver"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 bench/otlp_sink.py "$port" &
sink=$!
trap 'kill $sink 2>/dev/null' EXIT
sleep 0.5

cpu() {
  "$driver" load --base-url http://127.0.0.1:9 --model offline --store memory --runs "$RUNS" \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["cpu_ms_per_run"], 3))'
}

off=() on=()
for _ in $(seq 1 "$REPEATS"); do
  off+=("$(OTEL_EXPORTER_OTLP_ENDPOINT= cpu)")
  # A queue that holds a whole burst: every span is exported, none dropped.
  on+=("$(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:${port}" OTEL_BSP_MAX_QUEUE_SIZE=65536 cpu)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "client CPU per run, ms (${REPEATS} x ${RUNS} runs): export off ${off[*]} (median $(median "${off[@]}")); on ${on[*]} (median $(median "${on[@]}"))"
echo "the sink received (exports bytes): $(curl -s "http://127.0.0.1:${port}/")"

if [[ -n "${BINARIES:-}" ]]; then
  # shellcheck disable=SC2086
  echo "init, export off:"; OTEL_EXPORTER_OTLP_ENDPOINT= python3 bench/lambda_init.py --runs 20 $BINARIES
  # shellcheck disable=SC2086
  echo "init, export on:"; OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:${port}" python3 bench/lambda_init.py --runs 20 $BINARIES
fi
