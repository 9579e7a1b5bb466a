#!/usr/bin/env bash
# Checks, before `sam deploy`, what Lambda's API reports about the account and refuses to go on
# when the stack would not work there:
#
#   infra/preflight.sh [--region REGION] [Name=Value ...]      (Name=Value: template parameters)
#
# - Concurrency. Every SQS event-source mapping of template.yaml caps its concurrency
#   (ScalingConfig.MaximumConcurrency): the featurizer's shard and ingest mappings
#   (FeaturizerMaxConcurrency each), the reducer's reduce and refit mappings
#   (ReducerMaxConcurrency each). Their sum, plus the functions' reserved concurrency and one
#   invocation each for the splitter and the checker, must fit the account's
#   UnreservedConcurrentExecutions (GetAccountSettings) in the stack's region. If it does not,
#   Lambda throttles the mappings' invocations; a throttled SQS message comes back after its
#   visibility timeout and counts as a delivery, so shards end in the dead-letter queue for no
#   fault of theirs. Refused with the numbers and the two ways out (lower the parameters, or ask
#   for a quota increase).
# - Memory. Lambda's API does not report the memory cap of new accounts (3,008 MB): the
#   template's defaults fit it. When FeaturizerMemory, ReducerMemory or SplitterMemory is set
#   above 3,008 and the account's concurrency quota is below 1,000 (a new account's sign),
#   this warns (it cannot know, so it does not refuse).
#
# Parameter values: template.yaml's defaults, replaced by samconfig.toml's parameter_overrides
# (the [default.deploy.parameters] line when there is one, else [default.global.parameters], as
# SAM CLI reads them), replaced by the Name=Value arguments. The region: --region, else
# samconfig.toml's, else AWS_REGION / AWS_DEFAULT_REGION.
# Needs credentials for the account, the AWS CLI (`aws`) or else .venv-deploy's boto3
# (infra/setup-deploy-tools.sh), and python3 >= 3.11 (tomllib).
# Exit status: 0 fits, 1 refused, 2 usage or the account's settings could not be read.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

region=""
overrides=()
while (($#)); do
  case "$1" in
    --region)
      region="${2:?--region needs a value}"
      shift 2
      ;;
    --region=*)
      region="${1#--region=}"
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *=*)
      overrides+=("$1")
      shift
      ;;
    *)
      echo "usage: $0 [--region REGION] [Name=Value ...]" >&2
      exit 2
      ;;
  esac
done

python=${PYTHON:-python3}
template=${TEMPLATE:-template.yaml}
samconfig=${SAMCONFIG:-samconfig.toml}

# Parameters as the deploy will see them, and the region: "name value" lines, then "region R".
settings=$("$python" - "$template" "$samconfig" "$region" "${overrides[@]}" <<'EOF'
import re, shlex, sys, tomllib

template, samconfig, region, *args = sys.argv[1:]

# Each parameter's Default from template.yaml's Parameters section (two-space names,
# four-space properties; comments and folded descriptions skipped).
defaults, names, name, inside = {}, set(), None, False
for line in open(template):
    if re.match(r"^\S", line):
        inside = line.startswith("Parameters:")
        continue
    if not inside:
        continue
    m = re.match(r"^  ([A-Za-z0-9]+):\s*$", line)
    if m:
        name = m.group(1)
        names.add(name)
        continue
    m = re.match(r"^    Default:\s*(.*?)\s*$", line)
    if m and name:
        defaults[name] = m.group(1).strip("'\"")

cfg = {}
try:
    cfg = tomllib.load(open(samconfig, "rb")).get("default", {})
except FileNotFoundError:
    pass
values = dict(defaults)
for section in ("deploy", "global"):
    params = cfg.get(section, {}).get("parameters", {})
    line = params.get("parameter_overrides")
    if line is not None:
        if isinstance(line, list):
            line = " ".join(line)
        for item in shlex.split(line):
            k, _, v = item.partition("=")
            values[k] = v
        break
for section in ("deploy", "global"):
    r = cfg.get(section, {}).get("parameters", {}).get("region")
    if r and not region:
        region = r
for item in args:
    k, _, v = item.partition("=")
    if k not in names:
        sys.exit(f"error: {k} is not a parameter of {template}")
    values[k] = v
for k, v in sorted(values.items()):
    print(k, v)
print("region", region)
EOF
) || exit 2

value() { awk -v k="$1" '$1 == k {print $2; exit}' <<<"$settings"; }
region=$(value region)
region=${region:-${AWS_REGION:-${AWS_DEFAULT_REGION:-}}}
if [[ -z "$region" ]]; then
  echo "error: no region: set region in samconfig.toml ([default.global.parameters]) or pass --region" >&2
  exit 2
fi
number() {
  local v
  v=$(value "$1")
  if ! [[ "$v" =~ ^[0-9]+$ ]]; then
    echo "error: parameter $1 is '${v}', not a whole number" >&2
    exit 2
  fi
  echo "$v"
}
featurizer=$(number FeaturizerMaxConcurrency)
reducer=$(number ReducerMaxConcurrency)
# The template reserves no concurrency; a ReservedConcurrentExecutions added to a function
# must be counted here too (it comes out of the unreserved pool).
reserved=$(grep -c '^ *ReservedConcurrentExecutions:' "$template" || true)
if ((reserved > 0)); then
  echo "error: $template reserves concurrency; infra/preflight.sh does not count it yet" >&2
  exit 2
fi
async_functions=2 # the splitter (one per run request) and the checker (on its schedules)
needed=$((2 * featurizer + 2 * reducer + async_functions))

# GetAccountSettings through the AWS CLI, else through boto3 in .venv-deploy (which
# infra/setup-deploy-tools.sh installs with the SAM CLI).
account_settings() {
  if command -v aws >/dev/null 2>&1; then
    aws lambda get-account-settings --region "$region" --output json
  elif [[ -x .venv-deploy/bin/python ]]; then
    .venv-deploy/bin/python -c '
import json, sys, boto3
print(json.dumps(boto3.client("lambda", region_name=sys.argv[1]).get_account_settings(), default=str))' "$region"
  else
    echo "error: neither the AWS CLI (aws) nor .venv-deploy (infra/setup-deploy-tools.sh) is installed" >&2
    return 1
  fi
}
if ! settings_json=$(account_settings); then
  echo "error: could not read the account's Lambda settings in $region (GetAccountSettings); check the credentials" >&2
  exit 2
fi
read -r unreserved quota < <("$python" -c '
import json, sys
limit = json.load(sys.stdin)["AccountLimit"]
print(limit["UnreservedConcurrentExecutions"], limit["ConcurrentExecutions"])' <<<"$settings_json")

echo "== preflight for $region: Lambda concurrency quota $quota, unreserved $unreserved"
printf '   %-68s %6s\n' \
  "featurizer: shard + ingest mappings (2 x FeaturizerMaxConcurrency)" "$((2 * featurizer))" \
  "reducer: reduce + refit mappings (2 x ReducerMaxConcurrency)" "$((2 * reducer))" \
  "splitter + checker (asynchronous, one each)" "$async_functions" \
  "needed" "$needed"

for p in FeaturizerMemory ReducerMemory SplitterMemory; do
  mb=$(number "$p")
  if ((mb > 3008 && quota < 1000)); then
    echo "warning: $p=$mb MB, but this account's concurrency quota ($quota) is a new account's, whose memory is often capped at 3008 MB;"
    echo "         Lambda's API does not report that cap: if CreateFunction fails on MemorySize, deploy with $p=3008 or ask AWS Support to raise it"
  fi
done

if ((needed > unreserved)); then
  cat >&2 <<EOF
refused: the event-source mappings may run $needed invocations at once, but the account has only $unreserved unreserved concurrent executions in $region.
  Lambda would throttle them, and throttled SQS messages count as failed deliveries (shards would end in the dead-letter queue).
  Either lower the caps, e.g. in samconfig.toml's parameter_overrides (then run infra/preflight.sh again):
    FeaturizerMaxConcurrency=$(((unreserved - async_functions - 2 * reducer) / 2 > 1 ? (unreserved - async_functions - 2 * reducer) / 2 : 2)) ReducerMaxConcurrency=$reducer
  or ask for more: Service Quotas > AWS Lambda > "Concurrent executions" (L-B99A9384) in $region.
EOF
  exit 1
fi
echo "OK: $needed <= $unreserved unreserved concurrent executions"
