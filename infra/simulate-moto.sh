#!/usr/bin/env bash
# `featurize simulate` on moto: the real splitter, featurizer bookkeeping and reducer over
# synthetic features, every call through the S3 and SQS adapters, then the requests moto
# served (from its request log) next to the simulation's own counts.
#
#   infra/simulate-moto.sh [IMAGES] [SHARD_SIZE]        (default 10000 4096)
#
# Needs the test venv (infra/test.sh makes it) and a built `featurize` (FEATURIZE_BIN, else
# `cargo run --release`). Not a CI step: a benchmark that prints numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
images=${1:-10000}
shard_size=${2:-4096}
venv=.venv
[ -x "$venv/bin/python" ] || { echo "error: $venv missing: run infra/test.sh once" >&2; exit 1; }

port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d -t featurize-sim-moto.XXXXXX)
"$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null || true; wait $moto_pid 2>/dev/null || true; [ -n "${KEEP:-}" ] && cp "$work/moto.log" "$KEEP"; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null && break
  sleep 0.2
done

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
if [ -n "${FEATURIZE_BIN:-}" ]; then
  bin=("$FEATURIZE_BIN")
else
  bin=(cargo run --quiet --release -p featurize --features aws --)
fi
"${bin[@]}" simulate --images "$images" --shard-size "$shard_size" --endpoint "http://127.0.0.1:$port" --json >"$work/report.json"
"${bin[@]}" simulate --from-json "$work/report.json"

# moto logs one line per request: "METHOD /path?query HTTP/1.1" status.
"$venv/bin/python" - "$work/moto.log" "$work/report.json" "$images" <<'PY'
import collections, json, re, sys
log, report, images = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = json.load(open(report))[0]
line = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/[\d.]+" (\d+)')
ansi = re.compile(r'\x1b\[[0-9;]*m')
served = collections.Counter()
for l in open(log, errors="replace"):
    m = line.search(ansi.sub("", l))
    if not m or m.group(2).startswith("/moto-api"):
        continue
    method, path, status = m.groups()
    path = path.split("?", 1)
    bucket_level = path[0].count("/") == 1 or (path[0].count("/") == 2 and path[0].endswith("/"))
    if method == "POST" and path[0] == "/":
        kind = "SQS"
    elif method == "GET" and bucket_level and len(path) > 1 and "list-type=2" in path[1]:
        kind = "S3 LIST"
    elif method in ("GET", "HEAD"):
        kind = "S3 GET/HEAD"
    elif method == "PUT" and bucket_level:
        kind = "S3 create bucket"
    else:
        kind = f"S3 {method}"
    served[kind] += 1
stages = r["stages"]
field = {"S3 GET/HEAD": "s3_get", "S3 PUT": "s3_put", "S3 LIST": "s3_list", "S3 DELETE": "s3_delete", "SQS": "sqs_requests"}
# Per kind: the stages' counts, the driver's (message delivery, reading the run back).
ours = {k: (sum(s["usage"][f] for s in stages), r["driver"][f]) for k, f in field.items()}
# The setup's requests: the images put as empty objects, the bucket and the two queues
# (CreateQueue, counted with SQS above as + 2).
setup_puts = images
print(f"\nrequests moto served vs the simulation's counts ({images} images, {r['shards']} shards)")
print(f"{'kind':<14} {'moto served':>12} {'= stages':>10} {'+ driver':>10} {'+ setup':>8}")
ok = True
for kind in field:
    setup = setup_puts if kind == "S3 PUT" else 2 if kind == "SQS" else 0
    got = served.get(kind, 0)
    stage, drv = ours[kind]
    flag = "" if got == stage + drv + setup else f"  <- differs by {got - stage - drv - setup}"
    ok &= not flag
    print(f"{kind:<14} {got:>12} {stage:>10} {drv:>10} {setup:>8}{flag}")
print(f"setup: the {setup_puts} synthetic images put as empty objects, 2 CreateQueue; driver: receiving and")
print("deleting the messages (an event-source mapping's requests) and listing the run's objects to measure them")
other = {k: v for k, v in served.items() if k not in ours and k != "S3 create bucket"}
if other:
    print("other requests:", dict(other))
sys.exit(0 if ok else 1)
PY
