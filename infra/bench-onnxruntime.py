"""Single-thread onnxruntime time per image on the same model and preprocessing, to compare
with `featurize bench` (tract or the native executor). Needs: pip install onnxruntime pillow numpy.

Usage:
  python3 infra/bench-onnxruntime.py [MODEL] [IMAGE_DIR] [N]
      decodes and resizes N images with Pillow and prints the mean and median inference time;
  python3 infra/bench-onnxruntime.py --serve MODEL INPUTS N
      what `featurize bench --compare onnxruntime` runs: reads N preprocessed images (raw
      little-endian float32, NHWC 224x224x3 each) from the file INPUTS, then answers commands
      on stdin, one line each on stdout, so that the two engines are timed in turns:
        run      -> "<median ms> <mean ms>" per image over the N images;
        profile  -> one JSON object: onnxruntime's per-node profile summed by operator type,
                    ms per image ({"Conv": 5.1, ...}).
"""
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


# The model's input: its first (any model: `bench --model M --model-spec S --compare onnxruntime`).
INPUT = "input"


def session(model, profile=False):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_all(sess, inputs):
    times = []
    for x in inputs:
        t = time.perf_counter()
        sess.run(None, {INPUT: x})
        times.append((time.perf_counter() - t) * 1000)
    return times


def profile(model, inputs):
    sess = session(model, profile=True)
    sess.run(None, {INPUT: inputs[0]})  # warm-up (its events are skipped below)
    run_all(sess, inputs)
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("name") == "model_run"]
    first_end = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    by_op = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first_end:
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1000.0 / len(inputs)
    os.remove(path)
    return by_op


def serve(model, inputs_path, n):
    global INPUT
    data = np.fromfile(inputs_path, dtype="<f4")
    sess = session(model)
    INPUT = sess.get_inputs()[0].name
    # One image per run, in the model's own layout (a symbolic batch dimension is 1).
    shape = [1] + [d if isinstance(d, int) else -1 for d in sess.get_inputs()[0].shape[1:]]
    inputs = list(data.reshape(n, *shape))
    run_all(sess, inputs[:1])  # warm-up
    print(f"ready onnxruntime {ort.__version__}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            times = run_all(sess, inputs)
            print(f"{statistics.median(times):.4f} {statistics.mean(times):.4f}", flush=True)
        elif command == "profile":
            print(json.dumps(profile(model, inputs)), flush=True)
        elif command in ("quit", ""):
            break


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    from PIL import Image

    model = sys.argv[1] if len(sys.argv) > 1 else "../shared/models/mobilenet_v2_features.onnx"
    folder = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/fruits-360/Test")
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    start = time.perf_counter()
    sess = session(model)
    load_ms = (time.perf_counter() - start) * 1000
    inputs = [
        (np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0)[None]
        for p in paths
    ]
    sess.run(None, {INPUT: inputs[0]})  # warm-up
    times = run_all(sess, inputs)
    print(f"onnxruntime {ort.__version__}, 1 thread, {len(times)} images: load {load_ms:.1f} ms, "
          f"inference mean {statistics.mean(times):.2f} ms, median {statistics.median(times):.2f} ms")


if __name__ == "__main__":
    main()
