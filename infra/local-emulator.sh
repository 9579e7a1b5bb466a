#!/usr/bin/env bash
# A local stand-in for the deployed stack, for `cargo lambda watch` / `cargo lambda invoke`:
# starts moto (S3 + SQS) on 127.0.0.1:${MOTO_PORT:-5000}, creates the data bucket, the shard
# and reduce queues (with dead-letter queues), uploads a few Fruits-360 images under images/,
# and writes infra/emulator.env with the variables the functions read.
#
#   infra/local-emulator.sh            # leaves moto running (its pid is in infra/emulator.pid)
#   infra/local-emulator.sh stop
#   infra/local-emulator.sh sqs-event shards|reduce [N] > event.json
#       receives up to N (default 1) messages from a queue and prints them as the SqsEvent
#       Lambda would deliver, for `cargo lambda invoke featurizer|reducer --data-file`.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${MOTO_PORT:-5000}
if [ "${1:-}" = sqs-event ]; then
  exec .venv/bin/python - "http://127.0.0.1:$port" "featurize-${2:?shards or reduce}" "${3:-1}" <<'PY'
import json, sys
import boto3
endpoint, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=count, AttributeNames=["All"]).get("Messages", [])
print(json.dumps({"Records": [{
    "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
    "attributes": m.get("Attributes", {}), "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
    "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": "us-east-1"} for m in messages]}, indent=1))
PY
fi
if [ "${1:-}" = stop ]; then
  [ -f infra/emulator.pid ] && kill "$(cat infra/emulator.pid)" 2>/dev/null || true
  rm -f infra/emulator.pid
  exit 0
fi
[ -x .venv/bin/python ] || { python3 -m venv .venv; .venv/bin/pip install -q -r infra/requirements-test.txt; }
.venv/bin/python -m moto.server -H 127.0.0.1 -p "$port" >/tmp/featurize-moto.log 2>&1 &
echo $! > infra/emulator.pid
sleep 2
endpoint="http://127.0.0.1:$port"
images=${IMAGES:-../shared/data/fruits-360/Test}
.venv/bin/python - "$endpoint" "$images" <<'PY'
import hashlib, json, sys
from pathlib import Path
import boto3
endpoint, images = sys.argv[1], Path(sys.argv[2])
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
s3, sqs = boto3.client("s3", **kw), boto3.client("sqs", **kw)
s3.create_bucket(Bucket="featurize-local")
def queue(name, dlq=None):
    attributes = {"VisibilityTimeout": "60"}
    if dlq:
        arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 3})
    return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
shards = queue("featurize-shards", queue("featurize-shards-dlq"))
reduce = queue("featurize-reduce", queue("featurize-reduce-dlq"))
count = 0
for folder in sorted(p for p in images.iterdir() if p.is_dir())[:3]:
    for image in sorted(folder.iterdir())[:20]:
        s3.upload_file(str(image), "featurize-local", f"images/{folder.name}/{image.name}")
        count += 1
# What the stack sets and the functions check at start (tests/e2e/docs.rs checks the names):
# SHARD_SIZE=8 makes 8 shards of the 60 images, and MIN_SHARD_SIZE=1 lowers the stack's minimum
# shard size (16, MinShardSize) for it, else the splitter refuses its own defaults; MODEL_SHA256
# is the model's sha256 (the stack's ModelSha256), which the featurizer's cold start verifies.
model = Path("models/mobilenet_v2_features.onnx")
if not model.exists():
    model = Path("../shared/models/mobilenet_v2_features.onnx")
model = model.resolve()
model_sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
Path("infra/emulator.env").write_text(
    f"AWS_ENDPOINT_URL={endpoint}\nAWS_REGION=us-east-1\nAWS_ACCESS_KEY_ID=test\nAWS_SECRET_ACCESS_KEY=test\n"
    f"BUCKET=featurize-local\nSHARD_QUEUE_URL={shards}\nREDUCE_QUEUE_URL={reduce}\n"
    f"MODEL_PATH={model}\nMODEL_SHA256={model_sha256}\n"
    f"MODEL_SPEC_PATH={Path('models/model_spec.json').resolve()}\nSHARD_SIZE=8\nMIN_SHARD_SIZE=1\nPCA_K=10\nLOG_FORMAT=json\n")
print(f"moto on {endpoint}: bucket featurize-local with {count} images under images/, queues:\n  {shards}\n  {reduce}")
PY
echo "wrote infra/emulator.env; moto pid $(cat infra/emulator.pid)"
