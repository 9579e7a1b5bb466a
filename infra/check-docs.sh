#!/usr/bin/env bash
# Runs every command block of README.md and docs/*.md AS WRITTEN, from a fresh clone of what
# will land (HEAD plus the working tree: tracked changes, deletions and untracked files that
# git does not ignore), with ../shared beside it. Heavy (a release build, the Lambdas' dev
# build, moto): run by hand, not in CI (docs/testing.md).
#
#   infra/check-docs.sh [--quick] [--heavy] [--keep] [--list] [--only REGEX]
#
#   --quick  ../shared/data/fruits-360/Test is a subset (20 images of 6 labels, symlinks)
#            instead of the 20,622 images: the same commands, minutes less of uploads
#   --heavy  also runs the blocks classed `heavy` (the Lambda cross build chain, check-arm64)
#   --keep   keeps the clone (and its logs) instead of deleting it
#   --list   runs nothing: prints each block's class (and fails on an unclassified one)
#   --only REGEX  runs only the blocks whose file:first-command matches (grep -E); the rest
#            are "not selected" (a block whose context needs an earlier block's output fails)
#
# Each fenced ```sh / ```bash / ```console block (as tests/e2e/docs.rs extracts them) is
# looked up in TABLE below by `file:first-command` (its first line that is not a comment,
# without its trailing `# comment`; `#2` for a file's second block with the same first
# command). The table gives its class and the context this script prepares first:
#   local     runs in the clone (`featurize` = target/release/featurize, on PATH: docs/cli.md)
#   emulator  runs against moto (infra/local-emulator.sh, on MOTO_PORT, default the first free
#             port from 5077) with AWS_ENDPOINT_URL pointing at it, and `cargo lambda watch`
#   account   not run: needs an AWS account (the reason is printed)
#   ci        not run: CI runs it (.ci/run)
#   heavy     run with --heavy only
#   self      this script (docs/testing.md)
# Blocks run in the table's order (the docs' order, where one block needs another's output),
# each in a fresh `bash` with `set -eo pipefail` and the context's variables. A block that
# fails (or exits otherwise than the table expects) is a FAIL with its exit code and the last
# lines of its output. At the end a table: file, line, block, class, result, seconds. Exit 1
# on any FAIL, or on a block the table does not classify (a new block must be added here).
#
# The clone is made in $CHECK_DOCS_DIR (default /tmp/check-docs) and shares CARGO_TARGET_DIR
# ($HOME/.cache/featurize/target unless set) with the main tree, so nothing is built twice;
# its files keep the main tree's mtimes, and on exit every file of the main tree that changed
# since the clone was taken is touched, so that cargo rebuilds it there rather than trusting
# artifacts built from the clone's older copy.
set -uo pipefail
{ # (read whole before it runs: the file may be edited while it runs)
main=$(cd "$(dirname "$0")/.." && pwd)
shared=$(readlink -f "$main/../shared")
quick="" heavy="" keep="" list="" only=""
while (($#)); do
  arg=$1
  shift
  case "$arg" in
    --only) only=${1:?--only needs a pattern}; shift ;;
    --quick) quick=1 ;;
    --heavy) heavy=1 ;;
    --keep) keep=1 ;;
    --list) list=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/featurize/target}
mkdir -p "$CARGO_TARGET_DIR"

# --- the table: class|timeout s|expected exit|before|after|file:first-command ----------------
# `before`/`after` name functions below (ctx_*) run by this script around the block; `-` none.
# Expected exit `serve`: the block ends in a server; it passes once the server listens.
TABLE=$(cat <<'EOF'
local|3600|0|-|quickstart_run|README.md:cargo run --release -p featurize -- run --input ../shared/data/fruits-360/Test --output out
ci|0|0|-|-|README.md:./infra/test.sh
ci|0|0|-|-|docs/testing.md:./infra/test.sh
self|0|0|-|-|docs/testing.md:infra/check-docs.sh
local|1800|0|-|-|docs/performance.md:cargo build --release -p featurize --timings
local|900|0|-|-|docs/performance.md:/usr/bin/time -f "CPU %U %S" featurize bench --input ../shared/data/fruits-360/Test --images 100 --engine avx2 -j 1
local|1800|0|-|-|docs/deploy.md:cargo build --release --bin featurize --features aws
local|900|0|byo_files|-|docs/model.md:featurize run --input photos --output out --model resnet50.onnx --model-spec torchvision
local|900|0|byo_files|-|docs/model.md:.venv/bin/python infra/byo_reference.py features resnet50.onnx resnet50.json a.jpg b.jpg
heavy|7200|0|-|-|docs/deploy.md:models/get-model.sh --from-source
heavy|7200|0|-|-|docs/deploy.md:infra/check-arm64.sh
account|0|0|-|-|docs/deploy.md:infra/preflight.sh
account|0|0|-|-|docs/deploy.md:STACK=featurize
emulator|1800|serve|-|-|docs/deploy.md:infra/setup-deploy-tools.sh
emulator|1800|0|emulator_extras|-|docs/deploy.md:aws s3 cp --recursive ../shared/data/fruits-360/Test "s3://$BUCKET/inbox/fruits/"
emulator|1800|0|emulator|-|docs/cli.md:featurize reconcile --collection photos --input photos --output out
emulator|600|0|emulator|-|docs/operate.md:target/release/featurize status --collection fruits --bucket "$BUCKET"
emulator|1800|0|emulator|-|docs/deploy.md:aws s3 cp --recursive ../shared/data/fruits-360/Test "s3://$BUCKET/images/fruits/"
emulator|1800|0|emulator|submitted_run|docs/deploy.md:cargo build --release --bin featurize --features aws#2
emulator|600|0|emulator|-|docs/deploy.md:target/release/featurize status --bucket "$BUCKET" --run "$RUN_ID"
emulator|600|0|emulator|-|docs/deploy.md:target/release/featurize resume --bucket "$BUCKET" --run "$RUN_ID" \
emulator|600|0|quickstart_in_bucket|-|docs/cli.md:featurize report --run "$RUN_ID" --output out --open
emulator|600|0|quickstart_in_bucket|-|docs/operate.md:target/release/featurize status --bucket "$BUCKET" --run "$RUN_ID"
emulator|600|0|quickstart_in_bucket|-|docs/operate.md:target/release/featurize status --run "$RUN_ID" --output out --watch
emulator|600|0|quickstart_in_bucket|-|docs/operate.md:target/release/featurize resume --bucket "$BUCKET" --run "$RUN_ID" \
emulator|600|0|emulator|s3_notification|docs/deploy.md:echo '{"input_prefix": "images/fruits/", "k": 50}' > fruits.json
emulator|600|0|emulator|-|docs/deploy.md:aws s3 cp "s3://$BUCKET/runs/request-results/fruits.json" -
emulator|3600|0|emulator|-|docs/deploy.md:source .venv-deploy/bin/activate
local|600|1|byo_files|-|docs/model.md:infra/build-layer.sh --model resnet50.onnx --spec resnet50.json
local|1800|1|byo_model_sha|-|docs/model.md:infra/build-layer.sh --model resnet50.onnx --spec resnet50.json
local|600|0|byo_spec_sha|-|docs/model.md:infra/build-layer.sh --model resnet50.onnx --spec resnet50.json
account|0|0|-|-|docs/deploy.md:sam delete --stack-name "$STACK"
account|0|0|-|-|docs/deploy.md:. infra/lambda-build-env.sh
account|0|0|-|-|docs/deploy.md:NAME=$STACK-dev
account|0|0|-|-|docs/deploy.md:for m in FeaturizerShardMappingId FeaturizerIngestMappingId ReducerReduceMappingId ReducerRefitMappingId; do
EOF
)
# Why each skipped block is skipped (by file:first-command).
declare -A WHY=(
  ["README.md:./infra/test.sh"]="CI runs it: .ci/run"
  ["docs/testing.md:./infra/test.sh"]="CI runs it: .ci/run"
  ["docs/testing.md:infra/check-docs.sh"]="this script"
  ["docs/deploy.md:models/get-model.sh --from-source"]="heavy: the Lambdas' cold cross build (~50 min, docs/deploy.md) and a download; run with --heavy"
  ["docs/deploy.md:infra/check-arm64.sh"]="heavy: an arm64 build and an emulated run (~1 h); run by hand, see docs/deploy.md; or with --heavy"
  ["docs/deploy.md:infra/preflight.sh"]="needs an AWS account: the account's Lambda quotas, then sam deploy (CloudFormation)"
  ["docs/deploy.md:STACK=featurize"]="needs an AWS account: reads the deployed stack's Outputs (moto has no SAM transform)"
  ["docs/deploy.md:sam delete --stack-name \"\$STACK\""]="needs an AWS account: deletes the deployed SAM stack"
  ["docs/deploy.md:. infra/lambda-build-env.sh"]="needs an AWS account: reads the stack's Outputs, deploys to its Lambda functions"
  ["docs/deploy.md:NAME=\$STACK-dev"]="needs an AWS account: creates Lambda functions with the stack's IAM roles and layer"
  ["docs/deploy.md:for m in FeaturizerShardMappingId FeaturizerIngestMappingId ReducerReduceMappingId ReducerRefitMappingId; do"]="needs an AWS account: Lambda event-source mappings (moto runs no Lambda)"
)

# --- 1. the clone ----------------------------------------------------------------------------
# A fixed path: the root package reads env!("CARGO_MANIFEST_DIR"), so a clone elsewhere
# would rebuild it (and the Lambdas' dev build would follow it) on every run.
T=${CHECK_DOCS_DIR:-/tmp/check-docs}
if [[ -e "$T/pid" ]] && kill -0 "$(cat "$T/pid")" 2>/dev/null; then
  echo "another infra/check-docs.sh (pid $(cat "$T/pid")) uses $T; set CHECK_DOCS_DIR" >&2
  exit 2
fi
rm -rf "$T" && mkdir -p "$T" && echo $$ >"$T/pid"
clone=$T/main
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
serve_pid="" block_pid=""
cleanup() {
  if [[ -n "$block_pid" ]]; then kill "$block_pid" 2>/dev/null; wait "$block_pid" 2>/dev/null; fi
  if [[ -n "$serve_pid" ]]; then kill -- "-$serve_pid" 2>/dev/null; fi
  [[ -x "$clone/infra/local-emulator.sh" ]] && (cd "$clone" && MOTO_PORT=${MOTO_PORT:-} infra/local-emulator.sh stop) 2>/dev/null
  # Files of the main tree edited after the clone was taken: touch them, so that cargo does
  # not take artifacts built here from the clone's older copy for theirs.
  (cd "$main" && git ls-files -z -co --exclude-standard) | while IFS= read -r -d '' f; do
    [[ -f "$main/$f" ]] && ! cmp -s "$main/$f" "$clone/$f" && [[ "$f" != samconfig.toml ]] \
      && touch "$main/$f"
  done
  if [[ -n "$keep" ]]; then log "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "cloning $main into $clone (HEAD + working tree)"
git clone -q "$main" "$clone" || exit 1
(cd "$main" && git ls-files -z -co --exclude-standard) | while IFS= read -r -d '' f; do
  [[ -f "$main/$f" || -L "$main/$f" ]] || continue
  mkdir -p "$clone/$(dirname "$f")" && cp -pP "$main/$f" "$clone/$f"
done
(cd "$main" && git diff -z --name-only --diff-filter=D HEAD) | while IFS= read -r -d '' f; do
  rm -f "$clone/$f"
done
ln -s "$CARGO_TARGET_DIR" "$clone/target" # `target/release/featurize`, as in the docs
if [[ -n "$quick" ]]; then
  mkdir -p "$T/shared/data/fruits-360/Test"
  for entry in "$shared"/*; do [[ "$(basename "$entry")" == data ]] || ln -s "$entry" "$T/shared/"; done
  ls "$shared/data/fruits-360/Test" | head -6 | while IFS= read -r label; do
    mkdir -p "$T/shared/data/fruits-360/Test/$label"
    ls "$shared/data/fruits-360/Test/$label" | head -20 | while IFS= read -r img; do
      ln -s "$shared/data/fruits-360/Test/$label/$img" "$T/shared/data/fruits-360/Test/$label/$img"
    done
  done
else
  ln -s "$shared" "$T/shared"
fi
free_port() {
  local p=$1
  while ss -ltn | awk '{print $4}' | grep -q ":$p\$"; do p=$((p + 1)); done
  echo "$p"
}
export MOTO_PORT=${MOTO_PORT:-$(free_port 5077)}

# The variables every block sees; contexts append to it.
env_file=$T/env.sh
cat >"$env_file" <<EOF
export CARGO_TARGET_DIR=$CARGO_TARGET_DIR
export PATH=$clone/target/release:\$PATH   # featurize = target/release/featurize (docs/cli.md)
export MOTO_PORT=$MOTO_PORT
EOF
setenv() { printf 'export %s=%q\n' "$1" "$2" >>"$env_file"; }
# Runs a command in the clone with the blocks' variables.
in_clone() { (cd "$clone" && . "$env_file" && "$@"); }

# An aws CLI: the one on PATH, else one installed here from PyPI.
if ! command -v aws >/dev/null 2>&1; then
  log "no aws CLI: installing awscli into $T/venv-aws"
  python3 -m venv "$T/venv-aws" && "$T/venv-aws/bin/pip" install -q awscli || exit 1
  echo "export PATH=$T/venv-aws/bin:\$PATH" >>"$env_file"
fi

# --- 2. the blocks ---------------------------------------------------------------------------
python3 - "$clone" "$T/blocks" <<'PY' || exit 1
import os, sys, glob
root, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
files = ["README.md"] + sorted(os.path.relpath(p, root) for p in glob.glob(f"{root}/docs/*.md"))
index, seen = [], {}
for name in files:
    current = None
    for number, line in enumerate(open(os.path.join(root, name), encoding="utf-8").read().split("\n"), 1):
        fence = line.lstrip()
        if current is None and fence in ("```sh", "```bash", "```console"):
            current = (number, [])
        elif current is not None and fence.startswith("```"):
            first = next((l.strip() for l in current[1] if l.strip() and not l.strip().startswith("#")), "")
            first = first.split(" #")[0].rstrip()
            key = f"{name}:{first}"
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                key += f"#{seen[key]}"
            n = len(index)
            with open(f"{out}/{n:02d}.sh", "w") as f:
                f.write("\n".join(current[1]) + "\n")
            index.append(f"{n:02d}\t{name}\t{current[0]}\t{key}")
            current = None
        elif current is not None:
            current[1].append(line)
with open(f"{out}/index.tsv", "w") as f:
    f.write("\n".join(index) + "\n")
PY

# --- contexts --------------------------------------------------------------------------------
ctx_quickstart_run() { # the quick start's run: out/ and RUN_ID, for the local status/report blocks
  local run
  run=$(ls "$clone/out/runs" | grep -v '^requests$' | head -1)
  [[ -n "$run" ]] || { echo "no run under out/runs" >&2; return 1; }
  QUICKSTART_RUN=$run
  setenv RUN_ID "$run"
}
ctx_byo_files() { # docs/model.md's placeholders: generated models, specs, photos/, sample/, a.jpg, b.jpg
  [[ -f "$clone/resnet50.json" ]] && return 0
  (
    cd "$clone" || exit 1
    # .venv, as ./infra/test.sh makes it (model.md: "`.venv` is what `./infra/test.sh` makes")
    [[ -x .venv/bin/python ]] || python3 -m venv .venv || exit 1
    .venv/bin/python -m pip install -q --disable-pip-version-check -r infra/requirements-test.txt || exit 1
    py=.venv/bin/python
    $py infra/byo_reference.py make-model resnet50.onnx --layout NCHW --features 2044 --output-name features &&
      $py infra/byo_reference.py make-model clip_vision.onnx --layout NCHW --features 512 &&
      $py infra/byo_reference.py make-model my_model.onnx --layout NHWC --features 64 || exit 1
    # resnet50.json: the spec docs/model.md gives in "Writing a spec for a PyTorch export".
    python3 - <<'PY' || exit 1
import json, re
text = open("docs/model.md").read().split("### Writing a spec for a PyTorch export", 1)[1]
spec = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
json.dump(spec, open("resnet50.json", "w"), indent=1)
json.dump({"name": "my model", "layout": "NHWC", "height": 224, "width": 224, "resize": "bilinear",
           "scale": 0.00784313725490196, "offset": -1.0}, open("my_spec.json", "w"), indent=1)
PY
    images=../shared/data/fruits-360/Test
    ls "$images" | head -3 | while IFS= read -r label; do
      mkdir -p "photos/$label" "sample/$label"
      ls "$images/$label" | head -4 | while IFS= read -r img; do
        cp "$images/$label/$img" "photos/$label/$img"
        cp "$images/$label/$img" "sample/$label/$img"
      done
    done
    first=$(ls "$images" | head -1)
    cp "$images/$first/$(ls "$images/$first" | head -1)" a.jpg
    cp "$images/$first/$(ls "$images/$first" | sed -n 2p)" b.jpg
  )
}
# docs/model.md steps 3-4: build-layer.sh stops at the first value samconfig.toml lacks,
# naming it; the reader adds it to parameter_overrides and runs it again.
ctx_byo_model_sha() { # the model's sha256, as the first run named it
  local sha
  sha=$(sed -n "s/.*the layer's model is \([0-9a-f]\{64\}\).*/\1/p" "$T/logs/last.log" | head -1)
  [[ "$sha" == "$(sha256sum "$clone/resnet50.onnx" | cut -d' ' -f1)" ]] ||
    { echo "the first build-layer.sh did not name resnet50.onnx's sha256" >&2; return 1; }
  sed -i "s/ModelSha256=[0-9a-f]*/ModelSha256=$sha/" "$clone/samconfig.toml"
  grep parameter_overrides "$clone/samconfig.toml"
}
ctx_byo_spec_sha() { # the spec's sha256, as the second run named it, and FeatureDim
  local sha
  sha=$(grep -o 'ModelSpecSha256=[0-9a-f]\{64\}' "$T/logs/last.log" | head -1 | cut -d= -f2)
  [[ -n "$sha" ]] || { echo "the second build-layer.sh named no ModelSpecSha256" >&2; return 1; }
  sed -i "s/\(ModelSha256=[0-9a-f]*\)/\1 ModelSpecSha256=$sha FeatureDim=2048/" "$clone/samconfig.toml"
  grep parameter_overrides "$clone/samconfig.toml"
}
ctx_emulator() { # moto's variables (infra/emulator.env), as the stack's Outputs would give them
  grep -q emulator.env "$env_file" && return 0
  [[ -f "$clone/infra/emulator.env" ]] || { echo "no infra/emulator.env: the emulator did not start" >&2; return 1; }
  { # BUCKET and the queue URLs as shell variables, as deploy.md's `BUCKET=$(out …)` sets them
    echo ". $clone/infra/emulator.env"
    echo 'export AWS_ENDPOINT_URL AWS_REGION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=$AWS_REGION'
  } >>"$env_file"
}
ctx_emulator_extras() { # the ingest and refit queues the stack has (the emulator makes shards/reduce)
  ctx_emulator || return 1
  local url
  for q in ingest refit; do
    url=$(in_clone aws sqs create-queue --endpoint-url "http://127.0.0.1:$MOTO_PORT" \
      --queue-name "featurize-$q" --query QueueUrl --output text) || return 1
    printf '%s=%q\n' "${q^^}_QUEUE_URL" "$url" >>"$env_file"
  done
}
ctx_s3_notification() { # what the stack's S3 notification does: invoke the splitter with the event
  (
    cd "$clone" && . "$env_file" && . .venv-deploy/bin/activate || exit 1
    event=$(sed -e 's#runs/requests/demo+run.json#runs/requests/fruits.json#' \
      -e "s#\"featurize-local\"#\"$BUCKET\"#g" tests/events/s3-run-request.json)
    # Bounded: a function that exits at init leaves `cargo lambda invoke` waiting without end
    # (the first invoke compiles the functions: minutes).
    timeout 1800 cargo lambda invoke -A 127.0.0.1 splitter --data-ascii "$event"
  )
}
ctx_submitted_run() { # docs/deploy.md "Watch it": RUN_ID, the run id `featurize submit` printed
  local run
  run=$(grep -o '"run_id": *"[^"]*"' "$T/logs/last.log" | head -1 | sed 's/.*: *"\(.*\)"/\1/')
  [[ -n "$run" ]] || { echo "featurize submit printed no run_id" >&2; return 1; }
  setenv RUN_ID "$run"
}
ctx_quickstart_in_bucket() { # the quick start's run, in the bucket too: one RUN_ID for both
  ctx_emulator || return 1
  setenv RUN_ID "$QUICKSTART_RUN"
  grep -q QUICKSTART_IN_BUCKET "$env_file" && return 0
  (
    cd "$clone" && . "$env_file" || exit 1
    for prefix in "runs/$QUICKSTART_RUN" "Results/$QUICKSTART_RUN" "Results_PCA/$QUICKSTART_RUN"; do
      aws s3 cp --quiet --recursive "out/$prefix" "s3://$BUCKET/$prefix" || exit 1
    done
  ) || return 1
  echo "# QUICKSTART_IN_BUCKET" >>"$env_file"
}

# --- running -----------------------------------------------------------------------------------
mkdir -p "$T/logs"
results=()
failed=0
QUICKSTART_RUN=""
run_block() { # index file line key class timeout expect before after
  local n=$1 file=$2 line=$3 key=$4 class=$5 timeout=$6 expect=$7 before=$8 after=$9
  local out=$T/logs/$n.$RANDOM.log start=$SECONDS code result
  if [[ -n "$list" ]]; then results+=("$file|$line|${key#*:}|$class|would run|0"); return; fi
  if [[ -n "$only" ]] && ! grep -qE -- "$only" <<<"$key"; then
    results+=("$file|$line|${key#*:}|$class|not selected (--only)|0")
    return
  fi
  log "RUN  $file:$line ($class) ${key#*:}"
  if [[ "$before" != - ]] && ! "ctx_$before" >"$out.ctx" 2>&1; then
    result="FAIL (context $before)"
    tail -n 20 "$out.ctx" | sed 's/^/    | /' >&2
  else
    local script=$T/blocks/$n.run.sh
    { echo "set -eo pipefail"; echo ". $env_file"; cat "$T/blocks/$n.sh"; } >"$script"
    if [[ "$expect" == serve ]]; then
      (cd "$clone" && exec setsid bash "$script") >"$out" 2>&1 &
      serve_pid=$!
      code=""
      local waited=0
      until ss -ltn | awk '{print $4}' | grep -q '127.0.0.1:9000$'; do
        if ! kill -0 "$serve_pid" 2>/dev/null; then wait "$serve_pid"; code=$?; break; fi
        ((waited >= timeout)) && { code=124; break; }
        sleep 5; waited=$((waited + 5))
      done
      if [[ -z "$code" ]]; then result="PASS (serving)"; else result="FAIL (exit $code)"; fi
    else
      (cd "$clone" && exec timeout -k 15 "$timeout" bash "$script") >"$out" 2>&1 &
      block_pid=$!
      wait "$block_pid"
      code=$?
      block_pid=""
      if [[ "$code" == "$expect" ]]; then
        result="PASS"
        [[ "$expect" != 0 ]] && result="PASS (exit $code, as documented)"
      else
        result="FAIL (exit $code"
        [[ "$code" == 124 ]] && result+=", timed out after ${timeout}s"
        result+=")"
      fi
    fi
    cp "$out" "$T/logs/last.log"
    if [[ "$result" == FAIL* ]]; then
      tail -n 25 "$out" | sed 's/^/    | /' >&2
    elif [[ "$after" != - ]] && ! "ctx_$after" >"$out.ctx" 2>&1; then
      result="FAIL (after: $after)"
      tail -n 20 "$out.ctx" | sed 's/^/    | /' >&2
    fi
  fi
  [[ "$result" == FAIL* ]] && failed=1
  log "$result  $file:$line  $((SECONDS - start)) s"
  results+=("$file|$line|${key#*:}|$class|$result|$((SECONDS - start))")
}

declare -A classified
while IFS='|' read -r class timeout expect before after key; do
  [[ -z "$class" ]] && continue
  classified[$key]=1
  entry=$(K=$key awk -F'\t' '$4 == ENVIRON["K"]' "$T/blocks/index.tsv" | head -1)
  if [[ -z "$entry" ]]; then
    log "GONE $key (in the table, in no document: remove it from the table)"
    continue
  fi
  IFS=$'\t' read -r n file line _ <<<"$entry"
  case "$class" in
    account) results+=("$file|$line|${key#*:}|$class|SKIP (${WHY[$key]})|0") ;;
    ci | self) results+=("$file|$line|${key#*:}|$class|SKIP (${WHY[$key]})|0") ;;
    heavy)
      if [[ -n "$heavy" ]]; then
        run_block "$n" "$file" "$line" "$key" "$class" "$timeout" "$expect" "$before" "$after"
      else
        results+=("$file|$line|${key#*:}|$class|SKIP (${WHY[$key]})|0")
      fi
      ;;
    *) run_block "$n" "$file" "$line" "$key" "$class" "$timeout" "$expect" "$before" "$after" ;;
  esac
done <<<"$TABLE"
while IFS=$'\t' read -r n file line key; do
  [[ -n "${classified[$key]:-}" ]] && continue
  results+=("$file|$line|${key#*:}|?|MISSING from infra/check-docs.sh's table|0")
  failed=1
done <"$T/blocks/index.tsv"

# --- the table ---------------------------------------------------------------------------------
echo
printf '%-20s %5s  %-58s %-8s %6s  %s\n' file line block class s result
for r in "${results[@]}"; do
  IFS='|' read -r file line block class result secs <<<"$r"
  ((${#block} > 58)) && block="${block:0:55}..."
  printf '%-20s %5s  %-58s %-8s %6s  %s\n' "$file" "$line" "$block" "$class" "$secs" "$result"
done
echo
if ((failed)); then echo "check-docs: FAILED (logs: $T/logs, kept)"; keep=1; exit 1; fi
if [[ -n "$only$list" ]]; then echo "check-docs: every block classified; only some ran (--only/--list)"; exit 0; fi
echo "check-docs: every block classified; every run block passed"
exit 0
}
