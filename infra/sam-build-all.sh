#!/usr/bin/env bash
# Builds every function of template.yaml with the SAM CLI, as `sam build` does for a deploy,
# and says how long it took. ARCH=x86_64 builds for x86_64 (the template's Architecture
# parameter); the default is the template's (arm64, which needs
# `rustup target add aarch64-unknown-linux-gnu`).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH="${ARCH:-}"
args=()
[[ -n "$ARCH" ]] && args+=(--parameter-overrides "Architecture=$ARCH")
start=$(date +%s)
AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" sam build "${args[@]}"
echo "sam build: every function in $(( $(date +%s) - start )) s" >&2
