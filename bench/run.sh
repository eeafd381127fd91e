#!/usr/bin/env bash
# The benchmarks in one command: builds the `orchestrator` binary as users run it (release: fat
# LTO) and the mock and load driver (profile bench-fast: release with thin LTO and symbols, so
# it builds in minutes on a 2-core machine and profiles name functions; PROFILE=release for
# both in release), runs the load driver against the mock LLM, the exec-to-first-frame and
# idle-server checks on the release binary, one run on DynamoDB (moto emulator) for the cost
# model, then the criterion micro-benchmarks. Prints a table; writes bench/results.json.
# With AWS_E2E=1 it first runs the reference run on the emulated AWS stack (tests/aws_run.rs:
# moto + cargo lambda watch, debug builds, minutes) and the cost model takes its Step Functions
# and Lambda figures from that run instead of modelling them.
#
#   bench/run.sh                 # everything (a few minutes)
#   bench/run.sh --quick         # fewer runs
#   bench/run.sh --base-url URL  # another OpenAI-compatible server instead of the mock
#   NO_DYNAMODB=1 bench/run.sh   # skip the DynamoDB run (and so the cost model)
#   NO_MICRO=1 bench/run.sh      # skip the criterion micro-benchmarks
#   AWS_E2E=1 bench/run.sh       # measure transitions, invocations, durations on the emulated stack
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-bench-fast}"
export CARGO_TERM_COLOR=never
echo "== build: orchestrator (release), mock and driver (profile $PROFILE)" >&2
cargo build --release -p orchestrator-cli --bin orchestrator >&2
cargo build --profile "$PROFILE" -p orchestrator-bench --bins >&2
BIN="target/$PROFILE"

ARGS=("$@")
if [[ -n "${AWS_E2E:-}" ]]; then
  # The emulated run writes its figures here; the driver reads them (--aws-figures).
  FIGURES="${AWS_RUN_FIGURES:-target/aws-run-figures.json}"
  echo "== the reference run on the emulated AWS stack (tests/aws_run.rs) -> $FIGURES" >&2
  rm -f "$FIGURES"
  AWS_RUN_FIGURES="$FIGURES" ORCHESTRATOR_AWS_E2E=1 \
    cargo test -p orchestrator-aws --test aws_run -- --nocapture >&2
  ARGS+=(--aws-figures "$FIGURES")
fi
if [[ -z "${NO_DYNAMODB:-}" && -z "${DYNAMODB_ENDPOINT:-}" ]]; then
  echo "== DynamoDB emulator (infra/emulator.sh)" >&2
  if DYNAMODB_ENDPOINT="$(bash infra/emulator.sh "${EMULATOR_PORT:-5005}")"; then
    export DYNAMODB_ENDPOINT
  else
    echo "the emulator did not start: no DynamoDB figures" >&2
  fi
fi
[[ -n "${NO_DYNAMODB:-}" ]] && unset DYNAMODB_ENDPOINT

echo "== load, latency, memory, cold start, cost" >&2
"$BIN/bench-driver" all --orchestrator target/release/orchestrator --out bench/results.json "${ARGS[@]}"

if [[ -z "${NO_MICRO:-}" ]]; then
  echo
  echo "== micro-benchmarks (criterion)"
  cargo bench --profile "$PROFILE" -p orchestrator-bench --bench micro -- --noplot 2>/dev/null \
    | grep -E '^[a-z]+/|time:' | paste - - | sed -E 's/ +/ /g'
fi
