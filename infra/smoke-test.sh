#!/usr/bin/env bash
# End-to-end smoke test of a deployed stack (manual; not run in CI, it costs money).
#
#   AWS_REGION=us-east-1 infra/smoke-test.sh STACK_NAME [IMAGES_DIR]
#
# 1. reads the stack outputs (DataBucketName, dead-letter queue URLs);
# 2. uploads SMOKE_PER_CLASS images from each of the first SMOKE_CLASSES class
#    folders of IMAGES_DIR (default ../shared/data/fruits-360/Test) to
#    s3://<bucket>/images/smoke/<label>/... (the prefix is synced with --delete,
#    so it holds exactly this sample);
# 3. writes the run request runs/requests/smoke-<timestamp>.json with
#    {"input_prefix": "images/smoke/", "k": SMOKE_K}; the S3 event starts the splitter;
# 4. polls until a Results_PCA/<run>/_SUCCESS newer than the request appears
#    (the run id is derived by the pipeline, so it is not known up front), failing
#    early if a dead-letter queue grows, and gives up after SMOKE_TIMEOUT seconds;
# 5. prints runs/<run>/summary.json and lists the outputs.
#
# Environment (all optional): AWS_REGION / AWS_DEFAULT_REGION, AWS_PROFILE,
# SMOKE_CLASSES (3), SMOKE_PER_CLASS (5), SMOKE_K (10), SMOKE_TIMEOUT (900),
# SMOKE_POLL (10).
#
# With the featurize CLI built, `featurize status --bucket <bucket> --request
# runs/requests/<name>.json` shows the same run in more detail.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

stack="${1:-}"
if [[ -z "$stack" ]]; then
  echo "usage: $0 STACK_NAME [IMAGES_DIR]" >&2
  exit 2
fi
images_dir="${2:-$repo_root/../shared/data/fruits-360/Test}"
classes="${SMOKE_CLASSES:-3}"
per_class="${SMOKE_PER_CLASS:-5}"
k="${SMOKE_K:-10}"
timeout_s="${SMOKE_TIMEOUT:-900}"
poll_s="${SMOKE_POLL:-10}"
input_prefix="images/smoke/"

command -v aws >/dev/null 2>&1 || { echo "error: the AWS CLI (aws) is required" >&2; exit 1; }
if [[ -z "${AWS_REGION:-${AWS_DEFAULT_REGION:-}}" ]] && [[ -z "$(aws configure get region 2>/dev/null || true)" ]]; then
  echo "error: set AWS_REGION (or AWS_DEFAULT_REGION) to the stack's region" >&2
  exit 1
fi
[[ -d "$images_dir" ]] || { echo "error: no image folder at $images_dir" >&2; exit 1; }

output() {
  aws cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}
bucket="$(output DataBucketName)"
shard_dlq="$(output ShardDeadLetterQueueUrl)"
reduce_dlq="$(output ReduceDeadLetterQueueUrl)"
if [[ -z "$bucket" || "$bucket" == "None" ]]; then
  echo "error: stack $stack has no DataBucketName output (is it deployed, and in this region?)" >&2
  exit 1
fi
echo "stack $stack: bucket $bucket"

dlq_depth() {
  aws sqs get-queue-attributes --queue-url "$1" --attribute-names ApproximateNumberOfMessages \
    --query 'Attributes.ApproximateNumberOfMessages' --output text
}
shard_dlq_before="$(dlq_depth "$shard_dlq")"
reduce_dlq_before="$(dlq_depth "$reduce_dlq")"

# --- 1. stage and upload the sample -------------------------------------------------
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
n_images=0
# (Newline-separated lists: fine for names with spaces, like "Apple Braeburn".)
while IFS= read -r class_dir; do
  label="$(basename "$class_dir")"
  mkdir -p "$stage/$label"
  while IFS= read -r img; do
    cp "$img" "$stage/$label/"
    n_images=$((n_images + 1))
  done < <(find "$class_dir" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) |
    LC_ALL=C sort | head -n "$per_class")
done < <(find "$images_dir" -mindepth 1 -maxdepth 1 -type d | LC_ALL=C sort | head -n "$classes")
if ((n_images <= k)); then
  echo "error: $n_images images is not more than k=$k; raise SMOKE_CLASSES/SMOKE_PER_CLASS" >&2
  exit 1
fi
echo "uploading $n_images images ($classes classes x <= $per_class) to s3://$bucket/$input_prefix"
aws s3 sync --only-show-errors --delete "$stage" "s3://$bucket/$input_prefix"

# --- 2. submit the run request --------------------------------------------------------
name="smoke-$(date -u +%Y%m%dT%H%M%SZ)"
request_key="runs/requests/$name.json"
printf '{"input_prefix": "%s", "k": %d}\n' "$input_prefix" "$k" >"$stage/request.json"
aws s3 cp --only-show-errors --content-type application/json "$stage/request.json" "s3://$bucket/$request_key"
# S3's own timestamp for the request (same format as the listings below, no clock skew).
t0="$(aws s3api list-objects-v2 --bucket "$bucket" --prefix "$request_key" \
  --query 'Contents[0].LastModified' --output text)"
echo "submitted s3://$bucket/$request_key at $t0"

# --- 3. wait for the reducer's _SUCCESS -------------------------------------------------
# Keys under PREFIX ending in SUFFIX, modified at or after t0, newest last.
newer_keys() {
  aws s3api list-objects-v2 --bucket "$bucket" --prefix "$1" \
    --query "Contents[?ends_with(Key, '$2')].[LastModified, Key]" --output text |
    awk -F '\t' -v t0="$t0" '$1 != "None" && $1 >= t0 { print $1 "\t" $2 }' | sort | cut -f2
}

run=""
deadline=$((SECONDS + timeout_s))
while :; do
  success="$(newer_keys Results_PCA/ /_SUCCESS | tail -n 1)"
  if [[ -n "$success" ]]; then
    run="$(echo "$success" | cut -d/ -f2)"
    break
  fi
  manifest="$(newer_keys runs/ /manifest.json | tail -n 1)"
  if [[ -n "$manifest" ]]; then
    seen_run="$(echo "$manifest" | cut -d/ -f2)"
    done_shards="$(aws s3api list-objects-v2 --bucket "$bucket" --prefix "runs/$seen_run/shards/" \
      --query "length(Contents[?ends_with(Key, '.done')] || \`[]\`)" --output text)"
    echo "  run $seen_run: $done_shards shard(s) done"
  else
    echo "  waiting for the splitter..."
  fi
  if (($(dlq_depth "$shard_dlq") > shard_dlq_before || $(dlq_depth "$reduce_dlq") > reduce_dlq_before)); then
    echo "error: a dead-letter queue grew; see the function logs (/aws/lambda/$stack-*)" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "error: no new Results_PCA/*/_SUCCESS after ${timeout_s}s." >&2
    echo "  If these exact inputs were already processed, the (deterministic) run may have been" >&2
    echo "  skipped; check runs/ and the splitter log group /aws/lambda/$stack-splitter." >&2
    exit 1
  fi
  sleep "$poll_s"
done

# --- 4. report --------------------------------------------------------------------------
echo
echo "run $run finished: s3://$bucket/Results_PCA/$run/_SUCCESS"
echo
echo "== runs/$run/summary.json"
aws s3 cp --only-show-errors "s3://$bucket/runs/$run/summary.json" - | python3 -m json.tool
echo
echo "== outputs"
aws s3 ls --recursive "s3://$bucket/Results/$run/"
aws s3 ls --recursive "s3://$bucket/Results_PCA/$run/"
if aws s3 ls "s3://$bucket/runs/$run/errors.json" >/dev/null 2>&1; then
  echo
  echo "== runs/$run/errors.json"
  aws s3 cp --only-show-errors "s3://$bucket/runs/$run/errors.json" - | python3 -m json.tool
fi
