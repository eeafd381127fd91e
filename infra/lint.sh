#!/usr/bin/env bash
# Lints the AWS side: template.yaml with cfn-lint (which runs the SAM translator), the state
# machine with asl-validator, and what neither checks: that the DefinitionUri file exists and
# that its ${...} placeholders and the template's DefinitionSubstitutions name each other.
# Exits non-zero on any finding.
#
# cfn-lint is pinned to 1.53.3 in its own venv (${TMPDIR:-/tmp}/orchestrator-lint-venv): from
# 1.54 on it no longer runs the SAM translator and misses mistakes inside AWS::Serverless
# resources (bad Runtime, InvokeMode, a broken !Ref). asl-validator comes through npx.
set -euo pipefail

cd "$(dirname "$0")/.."

CFN_LINT_VERSION=1.53.3
ASL_VALIDATOR=asl-validator@4.0.0
VENV="${TMPDIR:-/tmp}/orchestrator-lint-venv"
TEMPLATE=template.yaml

if [[ "$("$VENV/bin/cfn-lint" --version 2>/dev/null || true)" != "cfn-lint $CFN_LINT_VERSION" ]]; then
    echo "lint: installing cfn-lint $CFN_LINT_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "cfn-lint==$CFN_LINT_VERSION"
fi

status=0

echo "lint: cfn-lint $CFN_LINT_VERSION $TEMPLATE" >&2
"$VENV/bin/cfn-lint" "$TEMPLATE" || status=1

# The state machine definitions the template points at, and the substitutions each one gets;
# every ${Name} in a definition must be a substitution and every substitution must be used.
definitions=$("$VENV/bin/python" - "$TEMPLATE" <<'EOF'
import re
import sys

import yaml


class Loader(yaml.SafeLoader):
    pass


Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
template = yaml.load(open(sys.argv[1], encoding="utf-8"), Loader=Loader)  # noqa: S506
failed = False
for logical_id, res in (template.get("Resources") or {}).items():
    if res.get("Type") != "AWS::Serverless::StateMachine":
        continue
    props = res.get("Properties") or {}
    uri = props.get("DefinitionUri")
    if not isinstance(uri, str):
        continue
    try:
        text = open(uri, encoding="utf-8").read()
    except OSError as e:
        print(f"{logical_id}: DefinitionUri {uri}: {e.strerror}", file=sys.stderr)
        failed = True
        continue
    used = set(re.findall(r"\$\{([^}]*)\}", text))
    given = set(props.get("DefinitionSubstitutions") or {})
    for name in sorted(used - given):
        print(f"{uri}: ${{{name}}} is not in {logical_id}.DefinitionSubstitutions", file=sys.stderr)
        failed = True
    for name in sorted(given - used):
        print(f"{logical_id}.DefinitionSubstitutions.{name} is not used by {uri}", file=sys.stderr)
        failed = True
    print(uri)
sys.exit(1 if failed else 0)
EOF
) || status=1

for definition in $definitions; do
    echo "lint: $ASL_VALIDATOR $definition" >&2
    npx --yes "$ASL_VALIDATOR" --json-path "$definition" || status=1
done

if [[ $status -ne 0 ]]; then
    echo "lint: FAILED" >&2
else
    echo "lint: ok" >&2
fi
exit $status
