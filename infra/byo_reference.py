#!/usr/bin/env python3
"""The independent reference for "bring your own model" (docs/model.md): Pillow + numpy +
onnxruntime, written from the spec's definition (and torchvision's arithmetic), not from our
Rust code. Used by tests/e2e/byo_model.rs and infra/byo-matrix.sh; needs the test venv
(infra/requirements-test.txt: pillow, numpy, onnxruntime, onnx).

  byo_reference.py make-model OUT.onnx --layout NCHW|NHWC [--size 224] [--features 32]
                   [--seed 0] [--input-name NAME] [--output-name NAME] [--input-range R]
      A small image model with random weights: an 8x8 stride-8 convolution (every pixel
      reaches the output through its own weights, so a one-pixel shift shows), flattened,
      then a dense layer to FEATURES outputs, plus the global average of the convolution.
      NHWC models start with a Transpose. The batch dimension is symbolic. The convolution's
      weights are scaled for inputs of about -1..1; --input-range R divides them by R, as a
      real model trained on inputs spanning about -R..R has them (a Caffe-style model, fed
      0..255 less the mean: R = 128), so that its features stay of order 1.

  byo_reference.py features MODEL.onnx SPEC IMAGE... [--tensors DIR]
      SPEC is a spec file or a preset name (models/presets/, keras-mobilenet). Prints JSON:
      {"pillow", "onnxruntime", "rows": [{"width", "height", "pixels_hex", "features"}]}, where
      pixels_hex is the model's input image (resized and cropped, before normalization).
      With --tensors, each image's input tensor is written to DIR/<index>.f32 (raw float32,
      little-endian, in the spec's layout).

The preprocessing, from the spec's fields:
  - Image.open(path).convert("RGB");
  - resize with Pillow's filter: to (width, height) (`stretch`), to resize_size square
    (`stretch` then a crop), or torchvision's Resize(int): the shorter side to resize_size,
    the longer to int(resize_size * long / short);
  - torchvision's CenterCrop(crop): zero padding first when smaller ((c - s) // 2 before, the
    rest after), then top = int(round((h - c) / 2)) (half to even), left likewise;
  - x = pixel * scale + offset (float32), channels reversed for BGR, (x - mean[c]) / std[c];
  - NHWC, or NCHW (transposed), batch of one; features = the first output (or output_name).
"""
import argparse
import json
import os
import sys

try:
    import numpy as np
    from PIL import Image
except ImportError as e:  # pragma: no cover - a clear message for a missing venv
    sys.exit(f"byo_reference.py needs Pillow and numpy ({e}): run ./infra/test.sh, which "
             "installs infra/requirements-test.txt into .venv")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
           "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def load_spec(arg):
    if os.path.isfile(arg):
        path = arg
    elif arg == "keras-mobilenet":
        path = os.path.join(ROOT, "models", "model_spec.json")
    else:
        path = os.path.join(ROOT, "models", "presets", arg + ".json")
    with open(path) as f:
        return json.load(f)


def resized_size(spec, width, height):
    """(width, height) after the resize."""
    mode = spec.get("resize_mode", "stretch")
    if mode == "shorter_side":
        s = spec["resize_size"]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(s * long / short)
        return (s, new_long) if width <= height else (new_long, s)
    if spec.get("crop") is not None:
        return (spec["resize_size"], spec["resize_size"])
    return (spec["width"], spec["height"])


def center_crop(pixels, crop_height, crop_width):
    """torchvision.transforms.functional.center_crop on an HxWx3 uint8 array."""
    h, w = pixels.shape[:2]
    if crop_width > w or crop_height > h:
        left = (crop_width - w) // 2 if crop_width > w else 0
        top = (crop_height - h) // 2 if crop_height > h else 0
        right = (crop_width - w + 1) // 2 if crop_width > w else 0
        bottom = (crop_height - h + 1) // 2 if crop_height > h else 0
        pixels = np.pad(pixels, ((top, bottom), (left, right), (0, 0)))
        h, w = pixels.shape[:2]
        if (h, w) == (crop_height, crop_width):
            return pixels
    top = int(round((h - crop_height) / 2.0))
    left = int(round((w - crop_width) / 2.0))
    return pixels[top:top + crop_height, left:left + crop_width]


def model_input(spec, path):
    """(the input image as uint8 HxWx3, the input tensor)."""
    image = Image.open(path).convert("RGB")
    image = image.resize(resized_size(spec, *image.size), FILTERS[spec["resize"]])
    pixels = np.asarray(image, dtype=np.uint8)
    if spec.get("crop") is not None:
        pixels = center_crop(pixels, *spec["crop"])
    x = pixels.astype(np.float32) * np.float32(spec["scale"]) + np.float32(spec["offset"])
    if spec.get("channel_order", "RGB") == "BGR":
        x = x[..., ::-1]
    if spec.get("mean") is not None:
        x = x - np.asarray(spec["mean"], dtype=np.float32)
    if spec.get("std") is not None:
        x = x / np.asarray(spec["std"], dtype=np.float32)
    if spec["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    return pixels, np.ascontiguousarray(x[None], dtype=np.float32)


def features(args):
    import onnxruntime as ort
    import PIL

    spec = load_spec(args.spec)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    input_name = spec.get("input_name") or session.get_inputs()[0].name
    output_name = spec.get("output_name") or session.get_outputs()[0].name
    rows = []
    for index, path in enumerate(args.images):
        pixels, x = model_input(spec, path)
        if args.tensors:
            x.astype("<f4").tofile(os.path.join(args.tensors, f"{index}.f32"))
        out = session.run([output_name], {input_name: x})[0].reshape(-1)
        rows.append({"width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
                     "pixels_hex": pixels.tobytes().hex(),
                     "features": [float(v) for v in out]})
    json.dump({"pillow": PIL.__version__, "onnxruntime": ort.__version__,
               "input_name": input_name, "output_name": output_name, "rows": rows},
              sys.stdout)


def make_model(args):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(args.seed)
    size, k, channels = args.size, 8, 4
    cells = (size // k) ** 2 * channels
    conv_w = (rng.normal(0, 1 / np.sqrt(3 * k * k), (channels, 3, k, k))
              / args.input_range).astype(np.float32)
    conv_b = rng.normal(0, 0.1, channels).astype(np.float32)
    dense_w = rng.normal(0, 1 / np.sqrt(cells), (cells, args.features)).astype(np.float32)
    dense_b = rng.normal(0, 0.1, args.features).astype(np.float32)
    init = [numpy_helper.from_array(a, n) for a, n in
            [(conv_w, "conv_w"), (conv_b, "conv_b"), (dense_w, "dense_w"), (dense_b, "dense_b")]]
    nodes = []
    source = args.input_name
    if args.layout == "NHWC":
        shape = ["batch", size, size, 3]
        nodes.append(helper.make_node("Transpose", [source], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    else:
        shape = ["batch", 3, size, size]
    nodes += [
        helper.make_node("Conv", [source, "conv_w", "conv_b"], ["conv"],
                         kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Flatten", ["conv"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "dense_w"], ["dense"]),
        helper.make_node("Add", ["dense", "dense_b"], ["spatial"]),
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled4"]),
        helper.make_node("Flatten", ["pooled4"], ["pooled"], axis=1),
        helper.make_node("Concat", ["spatial", "pooled"], [args.output_name], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "byo_test_model",
        [helper.make_tensor_value_info(args.input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(args.output_name, TensorProto.FLOAT,
                                       ["batch", args.features + channels])],
        init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="infra/byo_reference.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, args.out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-model")
    make.add_argument("out")
    make.add_argument("--layout", choices=["NCHW", "NHWC"], required=True)
    make.add_argument("--size", type=int, default=224)
    make.add_argument("--features", type=int, default=32)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--input-name", default="pixel_values")
    make.add_argument("--output-name", default="image_embeds")
    make.add_argument("--input-range", type=float, default=1.0,
                      help="divide the first layer's weights by this (inputs in about -R..R)")
    feats = sub.add_parser("features")
    feats.add_argument("model")
    feats.add_argument("spec")
    feats.add_argument("images", nargs="+")
    feats.add_argument("--tensors", help="write each input tensor to DIR/<index>.f32")
    args = parser.parse_args()
    {"make-model": make_model, "features": features}[args.command](args)


if __name__ == "__main__":
    main()
