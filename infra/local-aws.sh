#!/usr/bin/env bash
# Brings the project's AWS shape up on this machine, with no AWS account, and tears it down:
# DynamoDB and Step Functions (moto, executing the real ASL) on 127.0.0.1:PORT, and every Lambda
# function of the workspace under `cargo lambda watch` on 127.0.0.1:LAMBDA_PORT, the Step
# Functions' Lambda tasks reaching the real binaries. See infra/README.md.
#
#   infra/local-aws.sh up [--port P] [--lambda-port L] [--env-file F] [--table NAME]
#                         [--type EXPRESS|STANDARD] [--concurrency N] [--no-build]
#                         [--no-warm] [--hot-reload] [--timeout SECONDS]
#   infra/local-aws.sh status      # the `up` lines again, when it is up
#   infra/local-aws.sh down
#
# `up` prints KEY=VALUE lines on stdout (and nothing else), progress goes to stderr:
#   AWS_ENDPOINT_URL=http://127.0.0.1:P        (DynamoDB, Step Functions, Lambda invoke)
#   AWS_REGION=us-east-1  AWS_ACCESS_KEY_ID=test  AWS_SECRET_ACCESS_KEY=test
#   TABLE_NAME=orchestrator-local
#   STATE_MACHINE_ARN=arn:aws:states:us-east-1:123456789012:stateMachine:orchestrator-local-runs
#   STATE_MACHINE_TYPE=EXPRESS                  (--type; default: the template's StateMachineType)
#   RUNS_QUEUE_URL=http://127.0.0.1:P/123456789012/orchestrator-local-runs   (SQS, moto)
#   DLQ_URL=http://127.0.0.1:P/123456789012/orchestrator-local-runs-dlq
#   LAMBDA_ENDPOINT=http://127.0.0.1:L         (cargo lambda watch itself)
#   STREAM_URL=http://127.0.0.1:L/lambda-url/streamer   (the streamer's function URL)
#   LOCAL_AWS_DIR=...                           (pids and logs)
# so `set -a; eval "$(infra/local-aws.sh up)"; set +a` exports them.
#
# `up` when it is already up (both processes alive and answering) applies the template and
# the ASL again (the table is kept, the state machine gets the current definition) and prints
# the same lines; its port and env flags are then ignored (`down` first to change them).
# State: ${LOCAL_AWS_DIR:-${TMPDIR:-/tmp}/orchestrator-local-aws}/ (one stack per directory).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
helper="${repo}/infra/local_aws.py"
state_dir="${LOCAL_AWS_DIR:-${TMPDIR:-/tmp}/orchestrator-local-aws}"
state_file="${state_dir}/up.env"

say() { echo "local-aws: $*" >&2; }
die() { echo "local-aws: $*" >&2; exit 1; }

usage() {
  sed -n '7,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

cmd="${1:-}"
[[ -n "$cmd" ]] || usage
shift

port="" lambda_port="" env_file="" table="orchestrator-local" concurrency=4
build=true warm=true hot_reload=false timeout=1200 sm_type=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --lambda-port) lambda_port="$2"; shift 2 ;;
    --env-file) env_file="$2"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    --type) sm_type="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --no-build) build=false; shift ;;
    --no-warm) warm=false; shift ;;
    --hot-reload) hot_reload=true; shift ;;
    --timeout) timeout="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) die "unknown argument: $1 (see infra/local-aws.sh --help)" ;;
  esac
done

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

answers() { # URL: any HTTP answer within 3 s
  "$python" - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=3).read()
except urllib.error.HTTPError:
    pass
PY
}

# Stops one process started by `up`: its process group (setsid made it a leader), and any
# descendant that moved to a group of its own (cargo lambda watch runs each function instance
# under watchexec).
stop_pid() { # NAME
  local name="$1" pid_file="${state_dir}/$1.pid" pid descendants=() queue=() p kids
  [[ -f "$pid_file" ]] || return 0
  pid="$(cat "$pid_file")"
  rm -f "$pid_file"
  alive "$pid" || return 0
  queue=("$pid")
  while [[ ${#queue[@]} -gt 0 ]]; do
    p="${queue[0]}"
    queue=("${queue[@]:1}")
    kids="$(ps -o pid= --ppid "$p" 2>/dev/null || true)"
    for k in $kids; do descendants+=("$k"); queue+=("$k"); done
  done
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive "$pid" || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  for k in "${descendants[@]}"; do kill -KILL "$k" 2>/dev/null || true; done
  say "stopped ${name} (pid ${pid})"
}

down() {
  if [[ ! -d "$state_dir" ]]; then
    say "nothing to stop (${state_dir} does not exist)"
    return 0
  fi
  if ! ls "${state_dir}"/*.pid >/dev/null 2>&1; then
    say "nothing to stop in ${state_dir}"
  fi
  stop_pid watch
  stop_pid server
  rm -f "$state_file"
}

# moto >= 5.2.5: before it, a second StartExecution on a state machine that has run once fails
# (deepcopy of the live execution's lock; moto issue 10077).
ensure_python_deps() {
  if ! "$python" - <<'PY' 2>/dev/null; then
import moto, moto.server, moto.stepfunctions.parser, werkzeug, yaml, boto3, antlr4, jsonpath_ng
v = tuple(int(x) for x in moto.__version__.split(".")[:3] if x.isdigit())
raise SystemExit(0 if v >= (5, 2, 5) else 1)
PY
    say "installing moto[server]>=5.2.5 with pip (DynamoDB, Step Functions and their ASL interpreter)..."
    "$python" -m pip install --quiet --disable-pip-version-check 'moto[server]>=5.2.5' >&2 \
      || die "moto[server]>=5.2.5 is missing and its pip install failed (see above); fix: ${python} -m pip install 'moto[server]>=5.2.5'"
  fi
}

ensure_cargo_lambda() {
  if cargo lambda --version >/dev/null 2>&1; then return 0; fi
  say "cargo lambda not found: installing it with pip (cargo-lambda, a prebuilt binary)..."
  local out
  if ! out="$("$python" -m pip install --quiet --disable-pip-version-check cargo-lambda 2>&1)"; then
    die "cargo lambda not found and pip install failed: ${out}
  fix: '${python} -m pip install cargo-lambda' (or 'cargo install cargo-lambda', slow), then put its bin directory on PATH"
  fi
  if ! cargo lambda --version >/dev/null 2>&1; then
    local scripts
    scripts="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
    export PATH="${scripts}:${HOME}/.local/bin:${PATH}"
    cargo lambda --version >/dev/null 2>&1 \
      || die "pip installed cargo-lambda but 'cargo lambda' still does not run; add the directory holding cargo-lambda (${scripts}?) to PATH"
  fi
}

port_free() { # PORT
  "$python" - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.close()
PY
}

print_lines() { cat "$state_file"; }

up() {
  mkdir -p "$state_dir"
  # Already up? Re-apply the template and the ASL, print the same lines.
  if [[ -f "$state_file" ]] && alive "$(cat "${state_dir}/server.pid" 2>/dev/null)" \
     && alive "$(cat "${state_dir}/watch.pid" 2>/dev/null)"; then
    local endpoint lambda_endpoint
    endpoint="$(sed -n 's/^AWS_ENDPOINT_URL=//p' "$state_file")"
    lambda_endpoint="$(sed -n 's/^LAMBDA_ENDPOINT=//p' "$state_file")"
    if answers "${endpoint}/moto-api/" && answers "${lambda_endpoint}/"; then
      say "already up (${endpoint}, ${lambda_endpoint}); applying the template and the ASL again"
      if [[ -n "$port$lambda_port$env_file" ]]; then
        say "note: --port, --lambda-port and --env-file are ignored while it is up ('infra/local-aws.sh down' first to change them)"
      fi
      (cd "$repo" && "$python" "$helper" setup --endpoint "$endpoint" --table "$(sed -n 's/^TABLE_NAME=//p' "$state_file")" \
        --template "$template" "${asl_args[@]}" --type "$(sed -n 's/^STATE_MACHINE_TYPE=//p' "$state_file")" >/dev/null)
      print_lines
      return 0
    fi
  fi
  # Half up, or left over: start clean.
  if ls "${state_dir}"/*.pid >/dev/null 2>&1; then
    say "a previous stack in ${state_dir} is not whole: stopping it first"
    down
    mkdir -p "$state_dir"
  fi

  local started=$SECONDS
  : >"${state_dir}/server.log"
  : >"${state_dir}/watch.log"
  ensure_python_deps
  ensure_cargo_lambda
  [[ -n "$port" ]] || port="$("$python" "$helper" free-port)"
  [[ -n "$lambda_port" ]] || lambda_port="$("$python" "$helper" free-port)"
  [[ "$port" != "$lambda_port" ]] || die "--port and --lambda-port must differ"
  port_free "$port" || die "port ${port} is taken on 127.0.0.1: pass another --port, or leave it out for a free one"
  port_free "$lambda_port" || die "port ${lambda_port} is taken on 127.0.0.1: pass another --lambda-port, or leave it out for a free one"
  if [[ -n "$env_file" && ! -f "$env_file" ]]; then
    die "--env-file ${env_file}: no such file"
  fi

  local endpoint="http://127.0.0.1:${port}" lambda_endpoint="http://127.0.0.1:${lambda_port}"

  # 1. moto + the Lambda forwarding middleware, one Python process.
  setsid "$python" "$helper" serve --port "$port" --lambda-url "$lambda_endpoint" \
    </dev/null >>"${state_dir}/server.log" 2>&1 &
  echo $! >"${state_dir}/server.pid"
  "$python" "$helper" wait "${endpoint}/moto-api/" --timeout 60 --pid "$(cat "${state_dir}/server.pid")" \
    --what "the moto server" --log "${state_dir}/server.log" || { down; exit 1; }
  say "moto (DynamoDB, Step Functions) + Lambda forwarding on ${endpoint} (log: ${state_dir}/server.log)"

  # 2. Step Functions execution on, the table, the state machine.
  local setup_out
  local type_args=()
  [[ -z "$sm_type" ]] || type_args=(--type "$sm_type")
  if ! setup_out="$(cd "$repo" && "$python" "$helper" setup --endpoint "$endpoint" --table "$table" \
      --template "$template" "${asl_args[@]}" "${type_args[@]}")"; then
    down
    die "setting up the table or the state machine failed (above)"
  fi
  local state_machine_arn runs_queue_url dlq_url
  state_machine_arn="$(sed -n 's/^STATE_MACHINE_ARN=//p' <<<"$setup_out")"
  sm_type="$(sed -n 's/^STATE_MACHINE_TYPE=//p' <<<"$setup_out")"
  runs_queue_url="$(sed -n 's/^RUNS_QUEUE_URL=//p' <<<"$setup_out")"
  dlq_url="$(sed -n 's/^DLQ_URL=//p' <<<"$setup_out")"

  # 3. The function binaries, built before watch serves them (watch would build each one on
  #    its first invocation, inside a Step Functions task).
  local fns pkgs bins
  if ! fns="$(cd "$repo" && "$python" "$helper" functions --repo "$repo" 2>"${state_dir}/build.log")"; then
    cat "${state_dir}/build.log" >&2
    down
    die "cargo metadata failed (above): the workspace's Cargo.toml does not load"
  fi
  pkgs="$(awk '{print $1}' <<<"$fns" | sort -u | tr '\n' ' ')"
  bins="$(awk '{print $2}' <<<"$fns" | tr '\n' ' ')"
  if $build; then
    local t0=$SECONDS p
    if [[ -z "${pkgs// /}" ]]; then
      say "no workspace package under functions/ yet: nothing to build (watch serves the other binaries)"
    else
      say "building the function binaries (${bins% }); a cold build takes minutes (log: ${state_dir}/build.log)"
      : >"${state_dir}/build.log"
      # One package per build, as watch's `cargo run --bin NAME` selects it: the features of
      # shared dependencies are unified per selection, so a build of all the packages at once
      # would leave watch rebuilding dependencies on each function's first call.
      for p in $pkgs; do
        if ! (cd "$repo" && cargo build -p "$p" --bins) >>"${state_dir}/build.log" 2>&1; then
          tail -n 30 "${state_dir}/build.log" >&2
          down
          die "the function binaries do not build (above; whole log: ${state_dir}/build.log); fix them, or pass --no-build"
        fi
      done
      say "built in $((SECONDS - t0)) s"
    fi
  fi

  # 4. cargo lambda watch, with the functions' environment.
  local env_args=(
    --set "TABLE_NAME=${table}"
    --set "AWS_ENDPOINT_URL=${endpoint}"
    --set "AWS_REGION=us-east-1"
    --set "AWS_DEFAULT_REGION=us-east-1"
    --set "AWS_ACCESS_KEY_ID=test"
    --set "AWS_SECRET_ACCESS_KEY=test"
    --set "STATE_MACHINE_ARN=${state_machine_arn}"
    --set "STATE_MACHINE_TYPE=${sm_type}"
    --set "SCHEDULER_ROLE_ARN=$([[ "$sm_type" == EXPRESS ]] && echo arn:aws:iam::123456789012:role/orchestrator-local-scheduler)"
    --set "SPECIALIST_FUNCTIONS=strategy=strategy,generation=generation,qa=qa,finalize=finalize"
    --set "DLQ_URL=${dlq_url}"
    --set "EVENT_BUS_NAME=default"
  )
  [[ -z "$env_file" ]] || env_args+=(--env-file "$env_file")
  "$python" "$helper" merge-env "${state_dir}/functions.env" "${env_args[@]}"
  # --disable-cors: a real function URL adds no CORS headers of its own (none are configured),
  # so the streamer's own CORS handling is what a browser sees, as on AWS.
  local watch_args=(-A 127.0.0.1 -P "$lambda_port" --env-file "${state_dir}/functions.env"
    --concurrency "$concurrency" --disable-cors)
  $hot_reload || watch_args+=(--ignore-changes)
  (cd "$repo" && exec setsid cargo lambda watch "${watch_args[@]}" </dev/null >>"${state_dir}/watch.log" 2>&1) &
  echo $! >"${state_dir}/watch.pid"
  if ! "$python" "$helper" wait "${lambda_endpoint}/" --timeout "$timeout" --pid "$(cat "${state_dir}/watch.pid")" \
      --what "cargo lambda watch" --log "${state_dir}/watch.log"; then
    down
    exit 1
  fi
  say "cargo lambda watch on ${lambda_endpoint} (log: ${state_dir}/watch.log)"
  if $warm && [[ -n "${bins// /}" ]]; then
    # shellcheck disable=SC2086 # one binary name per word
    "$python" "$helper" warm --lambda-port "$lambda_port" --timeout "$timeout" $bins
  fi

  cat >"$state_file" <<EOF
AWS_ENDPOINT_URL=${endpoint}
AWS_REGION=us-east-1
AWS_ACCESS_KEY_ID=test
AWS_SECRET_ACCESS_KEY=test
TABLE_NAME=${table}
STATE_MACHINE_ARN=${state_machine_arn}
STATE_MACHINE_TYPE=${sm_type}
RUNS_QUEUE_URL=${runs_queue_url}
DLQ_URL=${dlq_url}
LAMBDA_ENDPOINT=${lambda_endpoint}
STREAM_URL=${lambda_endpoint}/lambda-url/streamer
LOCAL_AWS_DIR=${state_dir}
EOF
  say "up in $((SECONDS - started)) s"
  print_lines
}

# The inputs (overridable for tests of this script itself).
template="${LOCAL_AWS_TEMPLATE:-${repo}/template.yaml}"
[[ -f "$template" || ! -f "${repo}/infra/template.yaml" ]] || template="${repo}/infra/template.yaml"
# The definition: the template's state machine of the chosen type, unless LOCAL_AWS_ASL names one.
asl_args=()
[[ -z "${LOCAL_AWS_ASL:-}" ]] || asl_args=(--asl "$LOCAL_AWS_ASL")

case "$cmd" in
  up) up ;;
  down) down ;;
  status)
    if [[ -f "$state_file" ]] && alive "$(cat "${state_dir}/server.pid" 2>/dev/null)" \
       && alive "$(cat "${state_dir}/watch.pid" 2>/dev/null)"; then
      print_lines
    else
      say "not up (${state_dir})"
      exit 1
    fi
    ;;
  *) usage ;;
esac
