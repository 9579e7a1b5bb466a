#!/usr/bin/env python3
"""Convert Google's quantized MobileNetV2 (TFLite) into the featurizer's float32 ONNX model.

    python models/tflite_to_onnx.py SOURCE.tflite OUT.onnx

SOURCE is google-coral/test_data's `mobilenet_v2_1.0_224_quant.tflite` at the commit
named in models/README.md ("Provenance"), whose sha256 is pinned in
models/mobilenet_v2_1.0_224_quant.tflite.sha256 (`models/get-model.sh --from-source`
downloads and checks it). The script refuses any other file: the metadata it writes
names that exact source.

What it builds (the contract in models/README.md and model_spec.json):
- input `input` float32 NHWC [N,224,224,3], transposed to NCHW inside;
- every CONV_2D / DEPTHWISE_CONV_2D up to the global average pool, with its uint8
  weights and int32 biases dequantized to float32 (`scale * (q - zero_point)`, the
  product taken exactly in float64 and rounded once to float32), TF "SAME" padding
  written as explicit ONNX pads, a fused RELU6 as `Clip(0, 6)`;
- each residual ADD as `Add`; the 7x7 AVERAGE_POOL_2D as `GlobalAveragePool` +
  `Flatten`, output `features` float32 [N,1280]. The classifier head (logits,
  reshape, softmax) is dropped, and so is all activation quantization (the result
  is a plain float32 graph).

The output is deterministic: fixed names (a counter in graph order), producer,
IR version 8 and opset 13, no timestamps; two runs give identical bytes, so the
sha256 pinned in models/mobilenet_v2_features.onnx.sha256 is that of this output.
The graph has the exact node pattern the native executor (shared/engine/src/executor)
compiles; anything else would make the featurizer fall back to tract.
"""

import hashlib
import os
import sys

import numpy as np
import onnx
import tflite
from onnx import TensorProto, helper, numpy_helper

# The pinned source's sha256, shared with get-model.sh (which checks downloads against it).
SOURCE_SHA256_FILE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "mobilenet_v2_1.0_224_quant.tflite.sha256"
)
SOURCE_REPO = "github.com/google-coral/test_data @ 104342d2d3480b3e66203073dac24f4e2dbb4c41"
SOURCE_NAME = "mobilenet_v2_1.0_224_quant.tflite"

PRODUCER = ("tflite_to_onnx.py", "1")
IR_VERSION = 8
OPSET = 13
GRAPH_NAME = "mobilenet_v2_features"
DESCRIPTION = (
    "MobileNetV2 1.0/224 ImageNet (TF-slim, quantization-aware-trained) with dequantized "
    "float32 weights; float32 graph. Output 'features' = global-average-pooled 1280-d "
    "penultimate layer."
)

# tflite schema constants (tflite.BuiltinOperator, ActivationFunctionType, Padding, TensorType).
OP = tflite.BuiltinOperator
ACT_NONE, ACT_RELU6 = tflite.ActivationFunctionType.NONE, tflite.ActivationFunctionType.RELU6
PAD_SAME, PAD_VALID = tflite.Padding.SAME, tflite.Padding.VALID
TYPE_UINT8, TYPE_INT32 = tflite.TensorType.UINT8, tflite.TensorType.INT32


class ConversionError(Exception):
    """The source is not the graph this converter knows."""


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a file's content (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def metadata(data: bytes) -> list:
    """The model's metadata_props, in a fixed order."""
    return [
        ("description", DESCRIPTION),
        ("source_repo", SOURCE_REPO),
        (
            "source_file",
            f"{SOURCE_NAME} (git blob {git_blob_sha1(data)}, "
            f"sha256 {hashlib.sha256(data).hexdigest()})",
        ),
        ("source_license", "Apache-2.0 (repository LICENSE)"),
        (
            "preprocessing",
            "RGB uint8 -> resize to 224x224 -> float32 x/127.5 - 1 "
            "(Keras mobilenet_v2.preprocess_input), NHWC",
        ),
        (
            "labels",
            "1001 classes, index 0 = background, 1..1000 = ImageNet-1k synsets in standard "
            "order (Keras index = this index - 1)",
        ),
        ("input_layout", "NHWC [N,224,224,3]"),
        ("num_classes", "1001"),
    ]


class Source:
    """Read access to the single subgraph of a .tflite flatbuffer."""

    def __init__(self, data: bytes):
        self.model = tflite.Model.GetRootAsModel(data, 0)
        if self.model.SubgraphsLength() != 1:
            raise ConversionError(f"expected 1 subgraph, got {self.model.SubgraphsLength()}")
        self.graph = self.model.Subgraphs(0)

    def op_code(self, op) -> int:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        return max(code.BuiltinCode(), code.DeprecatedBuiltinCode())

    def tensor(self, index: int):
        return self.graph.Tensors(index)

    def name(self, index: int) -> str:
        return self.tensor(index).Name().decode()

    def shape(self, index: int) -> list:
        return [int(d) for d in self.tensor(index).ShapeAsNumpy()]

    def dequantized(self, index: int, kind: int) -> np.ndarray:
        """A constant tensor as float32: `scale * (q - zero_point)`, exact in float64 first."""
        tensor = self.tensor(index)
        if tensor.Type() != kind:
            raise ConversionError(f"{self.name(index)}: type {tensor.Type()}, expected {kind}")
        raw = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if not isinstance(raw, np.ndarray) or raw.size == 0:
            raise ConversionError(f"{self.name(index)}: no constant data")
        dtype = np.uint8 if kind == TYPE_UINT8 else np.dtype("<i4")
        q = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(self.shape(index))
        quant = tensor.Quantization()
        if quant is None or quant.ScaleLength() != 1 or quant.ZeroPointLength() != 1:
            raise ConversionError(f"{self.name(index)}: expected per-tensor quantization")
        scale = np.float64(np.float32(quant.Scale(0)))
        zero_point = int(quant.ZeroPoint(0))
        return (scale * (q.astype(np.float64) - zero_point)).astype(np.float32)


def options(op, table):
    """The op's builtin options as the given tflite options table."""
    raw = op.BuiltinOptions()
    if raw is None:
        raise ConversionError("operator without options")
    out = table()
    out.Init(raw.Bytes, raw.Pos)
    return out


def same_pads(size: list, kernel: list, stride: list) -> list:
    """TF "SAME" padding as ONNX pads [h_begin, w_begin, h_end, w_end]."""
    begins, ends = [], []
    for n, k, s in zip(size, kernel, stride):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        begins.append(total // 2)
        ends.append(total - total // 2)
    return begins + ends


class Builder:
    """Builds the ONNX graph with counter-suffixed names, in graph order."""

    def __init__(self):
        self.counter = 0
        self.nodes = []
        self.initializers = []

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}_{self.counter}"

    def constant(self, stem: str, value: np.ndarray) -> str:
        name = self.fresh(stem)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name


def base_name(tflite_name: str) -> str:
    """`MobilenetV2/Conv/Relu6;MobilenetV2/...` -> `MobilenetV2_Conv_Relu6`."""
    return tflite_name.split(";")[0].replace("/", "_")


def convert_conv(src: Source, b: Builder, op, x: str, depthwise: bool, relu6) -> str:
    """One CONV_2D or DEPTHWISE_CONV_2D (+ Clip for a fused RELU6); returns its output."""
    inputs, outputs = list(op.InputsAsNumpy()), list(op.OutputsAsNumpy())
    if len(inputs) != 3 or len(outputs) != 1:
        raise ConversionError("convolution without weights and bias")
    opts = options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
    if (opts.DilationHFactor(), opts.DilationWFactor()) != (1, 1):
        raise ConversionError("dilated convolution")
    weights = src.dequantized(inputs[1], TYPE_UINT8)  # [O,H,W,I], depthwise [1,H,W,C]
    bias = src.dequantized(inputs[2], TYPE_INT32)
    if depthwise:
        if opts.DepthMultiplier() != 1:
            raise ConversionError("depth multiplier != 1")
        weights = weights.transpose(3, 0, 1, 2)  # [C,1,H,W]
        group = weights.shape[0]
    else:
        weights = weights.transpose(0, 3, 1, 2)  # [O,I,H,W]
        group = 1
    kernel = list(weights.shape[2:])
    stride = [opts.StrideH(), opts.StrideW()]
    in_hw = src.shape(inputs[0])[1:3]
    if opts.Padding() == PAD_SAME:
        pads = same_pads(in_hw, kernel, stride)
    elif opts.Padding() == PAD_VALID:
        pads = [0, 0, 0, 0]
    else:
        raise ConversionError(f"padding {opts.Padding()}")
    activation = opts.FusedActivationFunction()
    if activation not in (ACT_NONE, ACT_RELU6):
        raise ConversionError(f"fused activation {activation}")
    stem = base_name(src.name(outputs[0]))
    w = b.constant(f"{stem}_W", weights)
    bias_name = b.constant(f"{stem}_b", bias)
    out = b.fresh(stem)
    b.nodes.append(
        helper.make_node(
            "Conv",
            [x, w, bias_name],
            [out],
            name=out,
            dilations=[1, 1],
            group=group,
            kernel_shape=kernel,
            pads=pads,
            strides=stride,
        )
    )
    if activation == ACT_RELU6:
        clipped = b.fresh(f"{stem}_relu6")
        b.nodes.append(helper.make_node("Clip", [out, *relu6], [clipped], name=clipped))
        out = clipped
    return out


def convert(data: bytes) -> onnx.ModelProto:
    """The features model of the pinned source, as an ONNX ModelProto."""
    src = Source(data)
    graph = src.graph
    (input_index,) = list(graph.InputsAsNumpy())
    if src.shape(input_index) != [1, 224, 224, 3]:
        raise ConversionError(f"input shape {src.shape(input_index)}")
    b = Builder()
    relu6 = (
        b.constant("relu6_min", np.array([0.0], dtype=np.float32)),
        b.constant("relu6_max", np.array([6.0], dtype=np.float32)),
    )
    b.nodes.append(
        helper.make_node(
            "Transpose", ["input"], ["input_nchw"], name="nhwc_to_nchw", perm=[0, 3, 1, 2]
        )
    )
    produced = {int(input_index): "input_nchw"}  # tflite tensor -> ONNX value
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = src.op_code(op)
        inputs, outputs = list(op.InputsAsNumpy()), list(op.OutputsAsNumpy())
        if code in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D):
            x = produced[int(inputs[0])]
            produced[int(outputs[0])] = convert_conv(
                src, b, op, x, code == OP.DEPTHWISE_CONV_2D, relu6
            )
        elif code == OP.ADD:
            if options(op, tflite.AddOptions).FusedActivationFunction() != ACT_NONE:
                raise ConversionError("ADD with a fused activation")
            out = b.fresh("add")
            b.nodes.append(
                helper.make_node(
                    "Add", [produced[int(i)] for i in inputs], [out], name=out
                )
            )
            produced[int(outputs[0])] = out
        elif code == OP.AVERAGE_POOL_2D:
            opts = options(op, tflite.Pool2DOptions)
            hw = src.shape(inputs[0])[1:3]
            if [opts.FilterHeight(), opts.FilterWidth()] != hw or opts.Padding() != PAD_VALID:
                raise ConversionError("average pool is not global")
            pooled = b.fresh("global_avg_pool")
            b.nodes.append(
                helper.make_node(
                    "GlobalAveragePool", [produced[int(inputs[0])]], [pooled], name=pooled
                )
            )
            b.nodes.append(
                helper.make_node(
                    "Flatten", [pooled], ["features"], name="features_flatten", axis=1
                )
            )
            channels = src.shape(inputs[0])[3]
            break
        else:
            raise ConversionError(f"operator {code} before the pool")
    else:
        raise ConversionError("no AVERAGE_POOL_2D: not the MobileNetV2 graph")

    onnx_graph = helper.make_graph(
        b.nodes,
        GRAPH_NAME,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 224, 224, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", channels])],
        initializer=b.initializers,
    )
    model = helper.make_model(
        onnx_graph,
        producer_name=PRODUCER[0],
        producer_version=PRODUCER[1],
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=DESCRIPTION,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, dict(metadata(data)))
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    source, out = argv[1], argv[2]
    with open(source, "rb") as f:
        data = f.read()
    with open(SOURCE_SHA256_FILE, encoding="utf-8") as f:
        expected = f.read().split()[0]
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        print(
            f"error: {source} is not the pinned {SOURCE_NAME}\n"
            f"  expected sha256 {expected} ({SOURCE_SHA256_FILE})\n  got             {got}",
            file=sys.stderr,
        )
        return 1
    try:
        model = convert(data)
    except ConversionError as e:
        print(f"error: {source}: {e}", file=sys.stderr)
        return 1
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    os.replace(tmp, out)
    print(
        f"converted {source}: {len(model.graph.node)} nodes, "
        f"{len(model.graph.initializer)} initializers"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
