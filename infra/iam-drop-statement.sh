#!/usr/bin/env bash
# The "one statement removed" check, for real: for each Allow statement of the three
# functions' roles in template.yaml (or the Sids given as arguments), writes a copy of the
# template without it, runs the IAM scenarios against that copy (FEATURIZE_TEMPLATE) and
# expects them to fail naming the missing permission. Prints one line per statement and
# exits non-zero if a removal went unnoticed.
#
# `iam::every_allow_statement_is_needed` checks the same in memory (and per action and
# resource) in one test run; this script is the slow confirmation (~1 min per statement).
#   infra/iam-drop-statement.sh                     # every statement
#   infra/iam-drop-statement.sh ReleaseReduceLock   # some
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d -t iam-drop.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The Sids of the statements under the functions' Policies (unique in the template).
mapfile -t all_sids < <(python3 - <<'EOF'
import re
sids, in_function = [], False
for line in open("template.yaml"):
    if re.match(r"^  [A-Za-z0-9]+:$", line):
        in_function = False
    if line.strip() == "Type: AWS::Serverless::Function":
        in_function = True
    m = re.match(r"^ {12}- Sid: (\S+)$", line)
    if in_function and m:
        sids.append(m.group(1))
assert len(sids) == len(set(sids)), f"Sids are not unique: {sids}"
print("\n".join(sids))
EOF
)
sids=("${@:-${all_sids[@]}}")

unnoticed=0
for sid in "${sids[@]}"; do
  copy="$work/template-without-$sid.yaml"
  # Drop the statement: its "- Sid:" line and every following line indented deeper.
  python3 - "$sid" "$copy" <<'EOF'
import sys
sid, out = sys.argv[1], sys.argv[2]
lines, kept, skipping = open("template.yaml").read().split("\n"), [], False
for line in lines:
    if line == f"            - Sid: {sid}":
        skipping = True
        continue
    if skipping and (line.startswith("              ") or line.strip().startswith("#")):
        continue
    skipping = False
    kept.append(line)
assert len(kept) < len(lines), f"no statement {sid}"
open(out, "w").write("\n".join(kept))
EOF
  log="$work/$sid.log"
  if FEATURIZE_TEMPLATE="$copy" infra/test.sh --test e2e -- iam:: --skip every_allow_statement_is_needed >"$log" 2>&1; then
    echo "without $sid: the IAM scenarios PASSED (the statement is not needed)"
    unnoticed=$((unnoticed + 1))
  else
    denied=$(grep -m1 -o 'AccessDenied: [^"]*' "$log" || true)
    echo "without $sid: fails -> ${denied:-$(grep -m1 'panicked' "$log")}"
  fi
done
[ "$unnoticed" -eq 0 ]
