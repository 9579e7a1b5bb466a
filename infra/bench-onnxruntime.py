"""Single-thread onnxruntime time per image on the same model and preprocessing, to compare
with `featurize bench` (tract). Needs: pip install onnxruntime pillow numpy.

Usage: python3 infra/bench-onnxruntime.py [MODEL] [IMAGE_DIR] [N]
"""
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

model = sys.argv[1] if len(sys.argv) > 1 else "../shared/models/mobilenet_v2_features.onnx"
folder = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/fruits-360/Test")
n = int(sys.argv[3]) if len(sys.argv) > 3 else 200

paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
start = time.perf_counter()
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
load_ms = (time.perf_counter() - start) * 1000
inputs = [
    (np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0)[None]
    for p in paths
]
session.run(None, {"input": inputs[0]})  # warm-up
times = []
for x in inputs:
    t = time.perf_counter()
    session.run(None, {"input": x})
    times.append((time.perf_counter() - t) * 1000)
print(f"onnxruntime {ort.__version__}, 1 thread, {len(times)} images: load {load_ms:.1f} ms, "
      f"inference mean {statistics.mean(times):.2f} ms, median {statistics.median(times):.2f} ms")
