//! The executor against tract: each convolution shape of MobileNetV2 (with its bias, ReLU6
//! and residual) as a one-layer tract graph, on random tensors, for every instruction set
//! this CPU has; and the whole model on real images.

use super::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_core::ops::nn::DataFormat;

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| (rng.f32() * 2.0 - 1.0) * scale).collect()
}

#[derive(Debug, Clone, Copy)]
struct Layer {
    h: usize,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    depthwise: bool,
    relu6: bool,
    residual: bool,
}

/// Wires layer `l` (its convolution, then its ReLU6; not its residual) onto `x`, as ONNX
/// MobileNetV2 reads once loaded: Conv (OIHW kernel, bias), then Max 0 / Min 6. Node names
/// start with `name`.
fn wire_conv(m: &mut TypedModel, x: OutletId, name: &str, l: Layer, seed: u64) -> OutletId {
    let ig = if l.depthwise { 1 } else { l.cin };
    let fan_in = (ig * l.k * l.k) as f32;
    let kernel = Tensor::from_shape(
        &[l.cout, ig, l.k, l.k],
        &random(l.cout * ig * l.k * l.k, seed, 2.0 / fan_in.sqrt()),
    )
    .unwrap();
    let bias = Tensor::from_shape(&[l.cout], &random(l.cout, seed + 1, 1.0)).unwrap();
    // TF "SAME" padding, as in the model: nothing before when the stride is 2.
    let (before, after) = if l.k == 1 {
        (0, 0)
    } else if l.stride == 2 {
        (0, 1)
    } else {
        (1, 1)
    };
    let conv = Conv {
        pool_spec: PoolSpec {
            data_format: DataFormat::NHWC,
            kernel_shape: tvec![l.k, l.k],
            padding: PaddingSpec::Explicit(tvec![before, before], tvec![after, after]),
            dilations: None,
            strides: Some(tvec![l.stride, l.stride]),
            input_channels: l.cin,
            output_channels: l.cout,
        },
        kernel_fmt: KernelFormat::OIHW,
        group: if l.depthwise { l.cin } else { 1 },
        q_params: None,
    };
    let k = m.add_const(format!("{name}.kernel"), kernel).unwrap();
    let b = m.add_const(format!("{name}.bias"), bias).unwrap();
    let mut y = m.wire_node(name, conv, &[x, k, b]).unwrap()[0];
    if l.relu6 {
        let zero = m
            .add_const(format!("{name}.zero"), tensor4(&[[[[0f32]]]]))
            .unwrap();
        let six = m
            .add_const(format!("{name}.six"), tensor4(&[[[[6f32]]]]))
            .unwrap();
        y = m
            .wire_node(format!("{name}.max"), math::max(), &[y, zero])
            .unwrap()[0];
        y = m
            .wire_node(format!("{name}.min"), math::min(), &[y, six])
            .unwrap()[0];
    }
    y
}

/// The layer as a tract graph on a `[1, h, h, cin]` input ([`wire_conv`]), then Add of the
/// input when it has a residual.
fn layer_model(l: Layer, seed: u64) -> TypedModel {
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact([1, l.h, l.h, l.cin])).unwrap();
    let mut y = wire_conv(&mut m, x, "conv", l, seed);
    if l.residual {
        y = m.wire_node("residual", math::add(), &[y, x]).unwrap()[0];
    }
    m.select_output_outlets(&[y]).unwrap();
    m.into_decluttered().unwrap()
}

fn tract_run(model: &TypedModel, input: &Tensor) -> Vec<f32> {
    let plan = model
        .clone()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let out = plan.run(tvec!(input.clone().into())).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    let worst = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 2e-5 * scale,
        "{what}: max |delta| {worst} (scale {scale})"
    );
}

/// Every convolution of MobileNetV2 1.0/224: (input size, in, out, kernel, stride).
fn mobilenet_layers() -> Vec<Layer> {
    let base = Layer {
        h: 0,
        cin: 0,
        cout: 0,
        k: 1,
        stride: 1,
        depthwise: false,
        relu6: true,
        residual: false,
    };
    let mut layers = vec![Layer {
        h: 224,
        cin: 3,
        cout: 32,
        k: 3,
        stride: 2,
        ..base
    }];
    for (h, c, stride) in [
        (112, 32, 1),
        (112, 96, 2),
        (56, 144, 1),
        (56, 144, 2),
        (28, 192, 1),
        (28, 192, 2),
        (14, 384, 1),
        (14, 576, 1),
        (14, 576, 2),
        (7, 960, 1),
    ] {
        layers.push(Layer {
            h,
            cin: c,
            cout: c,
            k: 3,
            stride,
            depthwise: true,
            ..base
        });
    }
    // Expansions (ReLU6) and projections (linear, with the residual where in == out).
    for (h, cin, cout) in [
        (112, 32, 16),
        (112, 16, 96),
        (56, 96, 24),
        (56, 24, 144),
        (56, 144, 24),
        (28, 144, 32),
        (28, 32, 192),
        (28, 192, 32),
        (14, 192, 64),
        (14, 64, 384),
        (14, 384, 64),
        (14, 384, 96),
        (14, 96, 576),
        (14, 576, 96),
        (7, 576, 160),
        (7, 160, 960),
        (7, 960, 160),
        (7, 960, 320),
        (7, 320, 1280),
    ] {
        let expand = cout > cin || cout == 1280;
        layers.push(Layer {
            h,
            cin,
            cout,
            relu6: expand,
            residual: !expand && cin == cout,
            ..base
        });
        if !expand && [24, 32, 64, 96, 160].contains(&cout) {
            // A residual add after a projection (here onto the layer's own input, which needs
            // as many channels in as out).
            layers.push(Layer {
                h,
                cin: cout,
                cout,
                relu6: false,
                residual: true,
                ..base
            });
        }
    }
    layers
}

#[test]
fn every_mobilenet_v2_layer_matches_tract() {
    for (i, l) in mobilenet_layers().into_iter().enumerate() {
        let model = layer_model(l, 10 * i as u64);
        let x = random(l.h * l.h * l.cin, 1000 + i as u64, 1.0);
        let input = Tensor::from_shape(&[1, l.h, l.h, l.cin], &x).unwrap();
        let theirs = tract_run(&model, &input);
        for isa in Isa::all_available() {
            let ex =
                Arc::new(Executor::compile(&model, isa).unwrap_or_else(|e| panic!("{l:?}: {e}")));
            // Everything fused into one step.
            assert_eq!(ex.steps.len(), 1, "{l:?}: {:?}", ex.step_kinds());
            let ours = ex.session().run(&x);
            assert_close(&ours, &theirs, &format!("{l:?} {isa:?}"));
        }
    }
}

/// What comes before a test block's depthwise convolution: nothing, a 1x1 expansion to
/// `c` channels, or a dense KxK convolution (a stem) to `c` channels with a stride.
#[derive(Debug, Clone, Copy)]
enum Before {
    Nothing,
    Expand(usize),
    Stem { c: usize, k: usize, stride: usize },
}

/// An inverted-residual block as tract reads it: [1x1 expansion or a stem, + ReLU6] ->
/// depthwise 3x3 + ReLU6 (stride `stride`) -> 1x1 projection (linear) [+ the block's input].
fn block_model(
    h: usize,
    cin: usize,
    before: Before,
    cout: usize,
    stride: usize,
    seed: u64,
) -> TypedModel {
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact([1, h, h, cin])).unwrap();
    let conv = |cin, cout, k, stride, depthwise, relu6| Layer {
        h,
        cin,
        cout,
        k,
        stride,
        depthwise,
        relu6,
        residual: false,
    };
    let (mut y, c, residual) = match before {
        Before::Nothing => (x, cin, stride == 1 && cin == cout),
        Before::Expand(e) => (
            wire_conv(&mut m, x, "expand", conv(cin, e, 1, 1, false, true), seed),
            e,
            stride == 1 && cin == cout,
        ),
        Before::Stem { c, k, stride: s } => (
            wire_conv(&mut m, x, "stem", conv(cin, c, k, s, false, true), seed),
            c,
            false,
        ),
    };
    y = wire_conv(
        &mut m,
        y,
        "dw",
        conv(c, c, 3, stride, true, true),
        seed + 10,
    );
    y = wire_conv(
        &mut m,
        y,
        "project",
        conv(c, cout, 1, 1, false, false),
        seed + 20,
    );
    if residual {
        y = m.wire_node("residual", math::add(), &[y, x]).unwrap()[0];
    }
    m.select_output_outlets(&[y]).unwrap();
    m.into_decluttered().unwrap()
}

#[test]
fn fused_blocks_match_tract() {
    // MobileNetV2's large blocks, and small ones with channel counts off the vector width
    // (masked lanes) and odd sizes (border pixels, last rows).
    use Before::*;
    let blocks = [
        (
            224,
            3,
            Stem {
                c: 32,
                k: 3,
                stride: 2,
            },
            16,
            1,
        ),
        (112, 32, Nothing, 16, 1),
        (112, 16, Expand(96), 24, 2),
        (56, 24, Expand(144), 24, 1),
        (56, 24, Expand(144), 32, 2),
        (28, 32, Expand(192), 32, 1),
        (9, 8, Expand(20), 8, 1),
        (10, 5, Expand(17), 6, 2),
        (11, 7, Nothing, 7, 1),
        (7, 3, Nothing, 5, 2),
        (
            13,
            3,
            Stem {
                c: 17,
                k: 3,
                stride: 2,
            },
            9,
            2,
        ),
        (
            12,
            4,
            Stem {
                c: 8,
                k: 3,
                stride: 1,
            },
            8,
            1,
        ),
    ];
    for (i, &(h, cin, before, cout, stride)) in blocks.iter().enumerate() {
        let model = block_model(h, cin, before, cout, stride, 100 * i as u64);
        let x = random(h * h * cin, 7 + i as u64, 1.0);
        let theirs = tract_run(&model, &Tensor::from_shape(&[1, h, h, cin], &x).unwrap());
        for isa in Isa::all_available() {
            let what = format!("block {:?} {isa:?}", blocks[i]);
            let ex = Arc::new(
                Executor::compile_with(&model, isa, 0).unwrap_or_else(|e| panic!("{what}: {e}")),
            );
            assert_eq!(ex.step_kinds().len(), 1, "{what}: {:?}", ex.step_kinds());
            assert_eq!(
                ex.step_kinds()[0].0,
                "fused block (1x1 + depthwise + 1x1)",
                "{what}"
            );
            assert_close(&ex.session().run(&x), &theirs, &what);
            // And unfused, the same.
            let unfused = Arc::new(Executor::compile_with(&model, isa, usize::MAX).unwrap());
            assert!(unfused.step_kinds().len() >= 2, "{what}");
            assert_close(
                &unfused.session().run(&x),
                &theirs,
                &format!("{what} unfused"),
            );
        }
    }
}

#[test]
fn unknown_ops_are_refused() {
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact([1, 4, 4, 3])).unwrap();
    let y = m.wire_node("sub", math::sub(), &[x, x]).unwrap()[0];
    m.select_output_outlets(&[y]).unwrap();
    let err = Executor::compile(&m.into_decluttered().unwrap(), Isa::Portable).unwrap_err();
    assert!(err.0.contains("Sub"), "{err}");
}

#[test]
fn unfused_ops_and_buffer_reuse_match_tract() {
    // A chain where nothing fuses: a clamp read twice, an add of two computed tensors, a
    // per-channel multiply; the slot plan must keep every operand alive.
    let mut m = TypedModel::default();
    let (h, c) = (6, 16);
    let x = m.add_source("x", f32::fact([1, h, h, c])).unwrap();
    let zero = m.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
    let r = m.wire_node("relu", math::max(), &[x, zero]).unwrap()[0];
    let scale = Tensor::from_shape(&[1, 1, 1, c], &random(c, 3, 1.0)).unwrap();
    let s = m.add_const("scale", scale).unwrap();
    let a = m.wire_node("mul", math::mul(), &[r, s]).unwrap()[0];
    let b = m.wire_node("sum", math::add(), &[a, r]).unwrap()[0];
    let y = m.wire_node("sum2", math::add(), &[b, x]).unwrap()[0];
    m.select_output_outlets(&[y]).unwrap();
    let model = m.into_decluttered().unwrap();
    let xs = random(h * h * c, 4, 1.0);
    let theirs = tract_run(&model, &Tensor::from_shape(&[1, h, h, c], &xs).unwrap());
    for isa in Isa::all_available() {
        let ex = Arc::new(Executor::compile(&model, isa).unwrap());
        assert_close(&ex.session().run(&xs), &theirs, &format!("{isa:?}"));
    }
}
