"""The whole job in Python, as a baseline for `featurize run`: Pillow decode + resize (the
reference preprocessing of models/model_spec.json: convert("RGB"), BICUBIC to 224x224,
x / 127.5 - 1, NHWC), onnxruntime with 1 thread per process, a pool of worker processes
(batch 1, as the featurizer runs), then PCA (k components, centered, from the covariance's
eigendecomposition in numpy; scikit-learn is not needed) and Parquet output with pyarrow:
features/part-0.parquet (path, label, features) and pca/part-0.parquet (path, label, pca).

Usage:
  .venv/bin/python infra/python-pipeline.py INPUT_DIR OUTPUT_DIR [--images N] [--processes 2]
      [--k 50] [--model ../shared/models/mobilenet_v2_features.onnx]

Images are the files under INPUT_DIR ending in .jpg/.jpeg/.png (case-insensitive), sorted by
path, the first N; the label is the parent folder's name. Prints one line with the image count,
the wall time (process start to the last file written) and images/s; `--json` prints it as JSON.
"""
import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

START = time.perf_counter()

import numpy as np  # noqa: E402


def worker_init(model):
    import onnxruntime as ort

    global SESSION
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    SESSION = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def featurize(paths):
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                x = np.asarray(im.convert("RGB").resize((224, 224), Image.BICUBIC), dtype=np.float32)
            x = (x / 127.5 - 1.0)[None]
            out.append(SESSION.run(None, {"input": x})[0][0].astype(np.float32))
        except Exception as e:  # noqa: BLE001 - an unreadable image is listed, not fatal
            out.append(str(e))
    return out


def pca(features, k):
    mean = features.mean(axis=0, dtype=np.float64)
    centered = features.astype(np.float64) - mean
    cov = centered.T @ centered / max(len(features) - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:k]
    components = vectors[:, order].T
    explained = values[order].sum() / values.sum()
    return (centered @ components.T).astype(np.float32), explained


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=16, help="images per task sent to a worker")
    parser.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "../shared/models/mobilenet_v2_features.onnx"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted(
        str(p) for p in Path(args.input).rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )[: args.images]
    chunks = [paths[i : i + args.chunk] for i in range(0, len(paths), args.chunk)]
    with mp.get_context("fork").Pool(args.processes, initializer=worker_init, initargs=(args.model,)) as pool:
        results = [r for chunk in pool.imap(featurize, chunks) for r in chunk]
    ok = [(p, r) for p, r in zip(paths, results) if not isinstance(r, str)]
    errors = len(paths) - len(ok)
    features = np.stack([r for _, r in ok])
    labels = [Path(p).parent.name for p, _ in ok]
    names = [p for p, _ in ok]
    k = min(args.k, len(ok) - 1, features.shape[1])
    projected, explained = pca(features, k)

    out = Path(args.output)
    (out / "features").mkdir(parents=True, exist_ok=True)
    (out / "pca").mkdir(parents=True, exist_ok=True)

    def table(vectors, column):
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        lists = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        return pa.table({"path": names, "label": labels, column: lists})

    pq.write_table(table(features, "features"), out / "features" / "part-0.parquet")
    pq.write_table(table(projected, "pca"), out / "pca" / "part-0.parquet")
    wall = time.perf_counter() - START
    result = {
        "images": len(paths),
        "errors": errors,
        "processes": args.processes,
        "k": k,
        "explained_variance": round(float(explained), 4),
        "wall_s": round(wall, 3),
        "images_per_s": round(len(paths) / wall, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"python pipeline (Pillow + onnxruntime {args.processes} x 1 thread + numpy PCA k={k} + pyarrow): "
            f"{len(paths)} images, {errors} errors, wall {wall:.2f} s, {len(paths) / wall:.1f} images/s, "
            f"PCA explains {explained:.1%}"
        )


if __name__ == "__main__":
    main()
