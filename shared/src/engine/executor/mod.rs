//! A dedicated executor for channels-last CNN graphs made of convolutions (dense, pointwise,
//! depthwise), per-channel bias, clamps (ReLU6), residual adds and a global average pool —
//! MobileNetV2 and its relatives.
//!
//! It is compiled from the graph tract loaded and decluttered (so BatchNorm is already folded
//! into the convolutions' weights and biases): [`Executor::compile`] walks that graph, reads
//! the weights from its constants and refuses ([`Unsupported`]) any node it does not know,
//! in which case the caller keeps tract's plan. Every tensor is kept channels-last (HWC, one
//! image) whatever layout tract's facts have; the walk only tracks which of tract's axes is
//! height, width or channels.
//!
//! Execution: pointwise convolutions are GEMMs on the activations as they lie (one row per
//! pixel), dense ones GEMMs on im2col patches, depthwise ones a channel-vectorised kernel; the
//! bias, clamp and residual add that follow a convolution in the graph are fused into its
//! store (see [`kernels`]). The early inverted-residual blocks, whose expanded tensors are
//! megabytes, run fused one output row at a time ([`Step::Block`], [`fuse_blocks`]), so that
//! those tensors never leave the cache. Buffers are reused by liveness.

pub mod kernels;

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer};
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::ops::konst::Const;

pub use kernels::{Clamp, Isa};
use kernels::{Aligned, Depthwise, Im2Col, PackedB};

/// Why a graph cannot run on the executor (tract then runs it).
#[derive(Debug, Error)]
#[error("native executor: {0}")]
pub struct Unsupported(pub String);

fn unsupported<T>(why: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(why.into()))
}

/// What an axis of a tract fact is, in the executor's HWC tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A unit axis (batch of one, or a pooled height/width).
    Unit,
    H,
    W,
    C,
}

/// A tensor of the executor: `h x w x c`, channels-last, one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Value {
    h: usize,
    w: usize,
    c: usize,
}

impl Value {
    fn len(&self) -> usize {
        self.h * self.w * self.c
    }

    /// The tract shape of this tensor seen through `roles`.
    fn shape(&self, roles: &[Role]) -> Vec<usize> {
        roles
            .iter()
            .map(|r| match r {
                Role::Unit => 1,
                Role::H => self.h,
                Role::W => self.w,
                Role::C => self.c,
            })
            .collect()
    }
}

type ValueId = usize;

/// One step of the program.
#[derive(Debug)]
enum Step {
    /// 1x1 convolution, stride 1: `dst = clamp(src · B + bias) (+ residual)`.
    Pointwise {
        src: ValueId,
        dst: ValueId,
        b: PackedB,
        clamp: Clamp,
        residual: Option<ValueId>,
    },
    /// Dense convolution: im2col patches into the scratch buffer, then the same GEMM.
    Dense {
        src: ValueId,
        dst: ValueId,
        geometry: Im2Col,
        b: PackedB,
        clamp: Clamp,
        residual: Option<ValueId>,
    },
    /// Depthwise convolution (bias and clamp fused).
    Depthwise { src: ValueId, dst: ValueId, op: Depthwise },
    /// An inverted-residual block run one output row at a time: the convolution before the
    /// depthwise one (`expand`: a 1x1 expansion, or the stem before the first block), the
    /// depthwise convolution, then the 1x1 projection
    /// (`project`, `clamp`, `residual`), as [`fuse_blocks`] found them. The expanded tensor
    /// only exists as a ring of `kh` rows and the depthwise one as a single row, so neither
    /// leaves the cache (unfused, the early blocks write and read back megabytes per image).
    Block {
        src: ValueId,
        dst: ValueId,
        expand: Expand,
        dw: Depthwise,
        project: PackedB,
        clamp: Clamp,
        residual: Option<ValueId>,
    },
    /// Per-channel `clamp(x * mul + add)`.
    Affine {
        src: ValueId,
        dst: ValueId,
        mul: Vec<f32>,
        add: Vec<f32>,
        clamp: Clamp,
    },
    /// Elementwise sum of two tensors of the same shape.
    Add { a: ValueId, b: ValueId, dst: ValueId },
    /// Sum over height and width, times `scale`.
    Pool { src: ValueId, dst: ValueId, scale: f32 },
}

impl Step {
    fn reads(&self) -> Vec<ValueId> {
        match self {
            Step::Pointwise { src, residual, .. }
            | Step::Dense { src, residual, .. }
            | Step::Block { src, residual, .. } => std::iter::once(*src).chain(*residual).collect(),
            Step::Depthwise { src, .. } | Step::Affine { src, .. } | Step::Pool { src, .. } => {
                vec![*src]
            }
            Step::Add { a, b, .. } => vec![*a, *b],
        }
    }

    fn dst(&self) -> ValueId {
        match self {
            Step::Pointwise { dst, .. }
            | Step::Dense { dst, .. }
            | Step::Depthwise { dst, .. }
            | Step::Block { dst, .. }
            | Step::Affine { dst, .. }
            | Step::Add { dst, .. }
            | Step::Pool { dst, .. } => *dst,
        }
    }

    /// A short name for profiles.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Pointwise { .. } => "pointwise conv (GEMM + epilogue)",
            Step::Dense { .. } => "dense conv (im2col + GEMM)",
            Step::Depthwise { .. } => "depthwise conv (+ epilogue)",
            Step::Block { .. } => "fused block (1x1 + depthwise + 1x1)",
            Step::Affine { .. } => "per-channel affine",
            Step::Add { .. } => "add",
            Step::Pool { .. } => "global average pool",
        }
    }

    /// Multiply-accumulates of the step.
    fn macs(&self, values: &[Value]) -> usize {
        match self {
            Step::Pointwise { dst, b, .. } | Step::Dense { dst, b, .. } => {
                values[*dst].h * values[*dst].w * b.k() * b.n()
            }
            Step::Depthwise { dst, op, .. } => values[*dst].len() * op.kh * op.kw,
            Step::Block {
                src,
                dst,
                expand,
                dw,
                project,
                ..
            } => {
                let x = values[*src];
                let expand = match expand {
                    Expand::None => 0,
                    Expand::Pointwise(b, _) => x.h * x.w * b.k() * b.n(),
                    Expand::Dense(g, b, _) => g.oh * g.ow * b.k() * b.n(),
                };
                let out = values[*dst];
                expand + out.h * out.w * (dw.c * dw.kh * dw.kw + project.k() * project.n())
            }
            _ => 0,
        }
    }
}

/// What makes a [`Step::Block`]'s depthwise input rows.
#[derive(Debug)]
enum Expand {
    /// Nothing: the block's input is the depthwise input.
    None,
    /// A 1x1 convolution (GEMM) and its clamp.
    Pointwise(PackedB, Clamp),
    /// A dense convolution (im2col + GEMM, the stem) and its clamp.
    Dense(Im2Col, PackedB, Clamp),
}

/// How far the epilogue of the step that made an outlet has gone, so that what follows it in
/// the graph can still be fused into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Only the bias so far: another bias, a clamp or a residual can follow.
    Bias,
    /// Clamped: a tighter clamp or a residual can follow.
    Clamp,
    /// Residual added: nothing more.
    Residual,
}

/// A compiled graph: the steps, their weights, and the buffer plan. Shared by all threads;
/// each thread runs its own [`ExecutorSession`].
#[derive(Debug)]
pub struct Executor {
    isa: Isa,
    steps: Vec<Step>,
    values: Vec<Value>,
    /// Buffer slot of each value.
    slot_of: Vec<usize>,
    /// Size of each slot (floats).
    slot_len: Vec<usize>,
    input: ValueId,
    output: ValueId,
    /// Largest im2col scratch (floats).
    scratch_len: usize,
}

struct Builder<'m> {
    model: &'m TypedModel,
    isa: Isa,
    steps: Vec<Step>,
    values: Vec<Value>,
    /// tract outlet -> (value, tract's axes of it).
    outlets: HashMap<OutletId, (ValueId, Vec<Role>)>,
    /// Outlets made by a step whose epilogue is still open: the step and its stage.
    open: HashMap<OutletId, (usize, Stage)>,
    input: Option<ValueId>,
}

fn f32s(t: &Tensor) -> Result<Vec<f32>, Unsupported> {
    if t.datum_type() != f32::datum_type() {
        return unsupported(format!("constant of type {:?}", t.datum_type()));
    }
    let view = t
        .to_plain_array_view::<f32>()
        .map_err(|e| Unsupported(format!("constant: {e}")))?;
    Ok(view.iter().copied().collect())
}

fn scalar(t: &Tensor) -> Result<f32, Unsupported> {
    let values = f32s(t)?;
    match values.first() {
        Some(&first) if values.iter().all(|&x| x == first) => Ok(first),
        _ => unsupported("constant is not a scalar"),
    }
}

/// The roles of tract's axes for a convolution's data format.
fn format_roles(format: DataFormat) -> Vec<Role> {
    match format {
        DataFormat::NCHW => vec![Role::Unit, Role::C, Role::H, Role::W],
        DataFormat::NHWC => vec![Role::Unit, Role::H, Role::W, Role::C],
        DataFormat::CHW => vec![Role::C, Role::H, Role::W],
        DataFormat::HWC => vec![Role::H, Role::W, Role::C],
    }
}

impl<'m> Builder<'m> {
    fn get(&self, outlet: OutletId) -> Result<(ValueId, Vec<Role>), Unsupported> {
        self.outlets
            .get(&outlet)
            .cloned()
            .ok_or_else(|| Unsupported(format!("input {outlet:?} is not a computed tensor")))
    }

    fn konst(&self, outlet: OutletId) -> Option<Arc<Tensor>> {
        self.model.outlet_fact(outlet).ok()?.konst.clone()
    }

    fn push_value(&mut self, v: Value) -> ValueId {
        self.values.push(v);
        self.values.len() - 1
    }

    /// Records the output of a node, after checking that the executor's idea of its shape is
    /// tract's.
    fn set(&mut self, outlet: OutletId, value: ValueId, roles: Vec<Role>) -> Result<(), Unsupported> {
        let fact = self
            .model
            .outlet_fact(outlet)
            .map_err(|e| Unsupported(e.to_string()))?;
        if fact.datum_type != f32::datum_type() {
            return unsupported(format!("{:?} tensor", fact.datum_type));
        }
        let shape = fact
            .shape
            .as_concrete()
            .ok_or_else(|| Unsupported("symbolic shape".into()))?;
        let ours = self.values[value].shape(&roles);
        if shape != ours.as_slice() {
            return unsupported(format!("shape of {outlet:?}: tract {shape:?}, executor {ours:?}"));
        }
        self.outlets.insert(outlet, (value, roles));
        Ok(())
    }

    /// The open epilogue of `outlet`, when `outlet` is read by this node only (so changing
    /// the tensor in place changes nothing else).
    fn fusable(&self, outlet: OutletId) -> Option<(usize, Stage)> {
        let single = self.model.outlet_successors(outlet).len() == 1
            && self
                .model
                .output_outlets()
                .is_ok_and(|o| !o.contains(&outlet));
        if single {
            self.open.get(&outlet).copied()
        } else {
            None
        }
    }

    /// A per-channel vector from a constant that broadcasts against a tensor seen through
    /// `roles` along its channel axis only (or a scalar).
    fn per_channel(&self, t: &Tensor, v: Value, roles: &[Role]) -> Result<Vec<f32>, Unsupported> {
        let values = f32s(t)?;
        if values.len() == 1 {
            return Ok(vec![values[0]; v.c]);
        }
        let shape = t.shape();
        if shape.len() > roles.len() {
            return unsupported("constant of a higher rank");
        }
        let offset = roles.len() - shape.len();
        for (i, &d) in shape.iter().enumerate() {
            if d != 1 && !(roles[offset + i] == Role::C && d == v.c) {
                return unsupported(format!("constant {shape:?} is not per-channel"));
            }
        }
        Ok(values)
    }

    fn node(&mut self, id: usize) -> Result<(), Unsupported> {
        let model = self.model;
        let node = model.node(id);
        let out = OutletId::new(id, 0);
        if node.op_as::<Const>().is_some() {
            return Ok(());
        }
        if node.outputs.len() != 1 {
            return unsupported(format!("node {} has {} outputs", node.name, node.outputs.len()));
        }
        if let Some(source) = node.op_as::<TypedSource>() {
            let shape = source
                .fact
                .shape
                .as_concrete()
                .ok_or_else(|| Unsupported("symbolic input".into()))?;
            let &[1, h, w, c] = shape else {
                return unsupported(format!("input shape {shape:?} is not [1, H, W, C]"));
            };
            if self.input.is_some() {
                return unsupported("more than one input");
            }
            let v = self.push_value(Value { h, w, c });
            self.input = Some(v);
            return self.set(out, v, vec![Role::Unit, Role::H, Role::W, Role::C]);
        }
        if let Some(conv) = node.op_as::<Conv>() {
            return self.conv(node, conv);
        }
        if let Some(einsum) = node.op_as::<EinSum>() {
            return self.einsum(node, einsum);
        }
        if let Some(bin) = node.op_as::<TypedBinOp>() {
            return self.binary(node, bin);
        }
        if let Some(reduce) = node.op_as::<Reduce>() {
            return self.reduce(node, reduce);
        }
        if let Some(axis) = node.op_as::<AxisOp>() {
            let (v, mut roles) = self.get(node.inputs[0])?;
            let shape = self.values[v].shape(&roles);
            match axis {
                AxisOp::Add(at) if *at <= roles.len() => roles.insert(*at, Role::Unit),
                AxisOp::Rm(at) if *at < roles.len() && shape[*at] == 1 => {
                    roles.remove(*at);
                }
                AxisOp::Move(from, to) if *from < roles.len() && *to < roles.len() => {
                    let r = roles.remove(*from);
                    roles.insert(*to, r);
                }
                other => return unsupported(format!("axis op {other:?}")),
            }
            // Another view of the same tensor (the data stays channels-last).
            return self.set(out, v, roles);
        }
        unsupported(format!("op {} ({})", node.op.name(), node.name))
    }

    fn conv(&mut self, node: &TypedNode, conv: &Conv) -> Result<(), Unsupported> {
        if conv.q_params.is_some() {
            return unsupported("quantized convolution");
        }
        let (src, roles) = self.get(node.inputs[0])?;
        let x = self.values[src];
        let spec = &conv.pool_spec;
        if roles != format_roles(spec.data_format) {
            return unsupported(format!("convolution input axes {roles:?} vs {:?}", spec.data_format));
        }
        if spec.kernel_shape.len() != 2 || spec.dilations().iter().any(|&d| d != 1) {
            return unsupported("convolution that is not 2-D or is dilated");
        }
        if matches!(spec.padding, PaddingSpec::ExplicitOnnxPool(..)) {
            return unsupported("pool padding on a convolution");
        }
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let strides = spec.strides();
        let stride = (strides[0], strides[1]);
        let padding = spec.computed_padding(&[x.h, x.w]);
        let (oh, ow) = (padding[0].convoluted, padding[1].convoluted);
        let pad = (padding[0].pad_before, padding[1].pad_before);
        let (cin, cout) = (spec.input_channels, spec.output_channels);
        if cin != x.c {
            return unsupported("input channels");
        }
        let Some(kernel) = node.inputs.get(1).and_then(|&o| self.konst(o)) else {
            return unsupported("convolution kernel is not a constant");
        };
        let bias = match node.inputs.get(2) {
            None => vec![0.0; cout],
            Some(&o) => {
                let Some(b) = self.konst(o) else {
                    return unsupported("convolution bias is not a constant");
                };
                let b = f32s(&b)?;
                match b.len() {
                    1 => vec![b[0]; cout],
                    n if n == cout => b,
                    n => return unsupported(format!("bias of {n} values for {cout} channels")),
                }
            }
        };
        if node.inputs.len() > 3 {
            return unsupported("convolution with extra inputs");
        }
        let group = conv.group;
        let ig = cin / group.max(1);
        let kshape = kernel.shape().to_vec();
        let expected: Vec<usize> = match conv.kernel_fmt {
            KernelFormat::OIHW => vec![cout, ig, kh, kw],
            KernelFormat::HWIO => vec![kh, kw, ig, cout],
            KernelFormat::OHWI => vec![cout, kh, kw, ig],
        };
        if kshape != expected {
            return unsupported(format!("kernel shape {kshape:?}, expected {expected:?}"));
        }
        let k = f32s(&kernel)?;
        // k(o, i, y, x) with i the input channel within the group.
        let fmt = conv.kernel_fmt;
        let at = move |o: usize, i: usize, y: usize, xx: usize| -> f32 {
            match fmt {
                KernelFormat::OIHW => k[((o * ig + i) * kh + y) * kw + xx],
                KernelFormat::HWIO => k[((y * kw + xx) * ig + i) * cout + o],
                KernelFormat::OHWI => k[((o * kh + y) * kw + xx) * ig + i],
            }
        };
        let dst = self.push_value(Value { h: oh, w: ow, c: cout });
        let step = if group == 1 {
            if kh == 1 && kw == 1 && stride == (1, 1) && pad == (0, 0) {
                let b = PackedB::new(self.isa, cin, cout, |i, o| at(o, i, 0, 0), &bias);
                Step::Pointwise { src, dst, b, clamp: Clamp::NONE, residual: None }
            } else {
                let geometry = Im2Col { h: x.h, w: x.w, c: cin, kh, kw, stride, pad, oh, ow };
                // Patch order (ky, kx, channel).
                let b = PackedB::new(
                    self.isa,
                    geometry.patch_len(),
                    cout,
                    |p, o| at(o, p % cin, p / cin / kw, (p / cin) % kw),
                    &bias,
                );
                Step::Dense { src, dst, geometry, b, clamp: Clamp::NONE, residual: None }
            }
        } else if group == cin && cout == cin {
            if kh > kernels::MAX_KH {
                return unsupported(format!("depthwise kernel of height {kh}"));
            }
            let mut weights = vec![0.0; kh * kw * cin];
            for ch in 0..cin {
                for y in 0..kh {
                    for xx in 0..kw {
                        weights[(y * kw + xx) * cin + ch] = at(ch, 0, y, xx);
                    }
                }
            }
            let op = Depthwise {
                isa: self.isa,
                h: x.h,
                w: x.w,
                c: cin,
                kh,
                kw,
                stride,
                pad,
                oh,
                ow,
                weights: weights.into(),
                bias: bias.into(),
                clamp: Clamp::NONE,
            };
            Step::Depthwise { src, dst, op }
        } else {
            return unsupported(format!("grouped convolution ({group} groups)"));
        };
        self.steps.push(step);
        let out = OutletId::new(node.id, 0);
        self.open.insert(out, (self.steps.len() - 1, Stage::Bias));
        self.set(out, dst, format_roles(spec.data_format))
    }

    fn einsum(&mut self, node: &TypedNode, einsum: &EinSum) -> Result<(), Unsupported> {
        if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
            return unsupported("einsum that is not a float matrix product");
        }
        let (src, roles) = self.get(node.inputs[0])?;
        let x = self.values[src];
        let Some(weights) = self.konst(node.inputs[1]) else {
            return unsupported("einsum whose second operand is not a constant");
        };
        let (inputs, outputs) = einsum.axes.to_strs();
        let (data, wl, ol): (Vec<char>, Vec<char>, Vec<char>) = match (&inputs[..], &outputs[..]) {
            ([d, w], [o]) => (d.chars().collect(), w.chars().collect(), o.chars().collect()),
            _ => return unsupported("einsum arity"),
        };
        if data.len() != roles.len() || wl.len() != 2 || weights.rank() != 2 {
            return unsupported(format!("einsum {}", einsum.axes));
        }
        // The contracted letter is the weights' letter that the data has.
        let (ci, co) = match (data.contains(&wl[0]), data.contains(&wl[1])) {
            (true, false) => (wl[0], wl[1]),
            (false, true) => (wl[1], wl[0]),
            _ => return unsupported(format!("einsum {}", einsum.axes)),
        };
        let role_of = |l: char| data.iter().position(|&d| d == l).map(|p| roles[p]);
        if role_of(ci) != Some(Role::C) || ol.contains(&ci) {
            return unsupported(format!("einsum {} does not contract the channels", einsum.axes));
        }
        // Every other data axis is kept (a dropped unit axis is fine).
        for (&l, &r) in data.iter().zip(&roles) {
            if l != ci && r != Role::Unit && !ol.contains(&l) {
                return unsupported(format!("einsum {} reduces a spatial axis", einsum.axes));
            }
        }
        let out_roles: Vec<Role> = ol
            .iter()
            .map(|&l| if l == co { Role::C } else { role_of(l).unwrap_or(Role::Unit) })
            .collect();
        let wshape = weights.shape();
        let ci_first = wl[0] == ci;
        let (cin, cout) = if ci_first { (wshape[0], wshape[1]) } else { (wshape[1], wshape[0]) };
        if cin != x.c {
            return unsupported("einsum channels");
        }
        let w = f32s(&weights)?;
        let b = PackedB::new(
            self.isa,
            cin,
            cout,
            |i, o| if ci_first { w[i * cout + o] } else { w[o * cin + i] },
            &vec![0.0; cout],
        );
        let dst = self.push_value(Value { h: x.h, w: x.w, c: cout });
        self.steps.push(Step::Pointwise { src, dst, b, clamp: Clamp::NONE, residual: None });
        let out = OutletId::new(node.id, 0);
        self.open.insert(out, (self.steps.len() - 1, Stage::Bias));
        self.set(out, dst, out_roles)
    }

    fn binary(&mut self, node: &TypedNode, bin: &TypedBinOp) -> Result<(), Unsupported> {
        let name = bin.0.name();
        let out = OutletId::new(node.id, 0);
        if node.inputs.len() != 2 {
            return unsupported("binary arity");
        }
        let consts = [self.konst(node.inputs[0]), self.konst(node.inputs[1])];
        let const_first = consts[0].is_some();
        match consts {
            [None, None] => {
                if name != "Add" {
                    return unsupported(format!("{name} of two tensors"));
                }
                let (a, ra) = self.get(node.inputs[0])?;
                let (b, rb) = self.get(node.inputs[1])?;
                if ra != rb || self.values[a] != self.values[b] {
                    return unsupported("add of tensors of different shapes");
                }
                // Fused into the step that made one operand, as its residual.
                for (this, other) in [(0, 1), (1, 0)] {
                    let (v, _) = self.get(node.inputs[this])?;
                    let (r, _) = self.get(node.inputs[other])?;
                    if let Some((step, stage)) = self.fusable(node.inputs[this]) {
                        if stage < Stage::Residual && v != r {
                            match &mut self.steps[step] {
                                Step::Pointwise { residual, .. } | Step::Dense { residual, .. } => {
                                    *residual = Some(r);
                                    self.open.insert(out, (step, Stage::Residual));
                                    return self.set(out, v, ra);
                                }
                                _ => {}
                            }
                        }
                    }
                }
                let dst = self.push_value(self.values[a]);
                self.steps.push(Step::Add { a, b, dst });
                self.set(out, dst, ra)
            }
            [Some(k), None] | [None, Some(k)] => {
                let data = if const_first { node.inputs[1] } else { node.inputs[0] };
                let (v, roles) = self.get(data)?;
                let x = self.values[v];
                let fused = self.fusable(data);
                match name.as_ref() {
                    "Add" => {
                        let add = self.per_channel(&k, x, &roles)?;
                        if let Some((step, Stage::Bias)) = fused {
                            let bias_of = match &mut self.steps[step] {
                                Step::Pointwise { b, .. } | Step::Dense { b, .. } => {
                                    Some(b.bias_mut())
                                }
                                Step::Depthwise { op, .. } => Some(&mut op.bias[..]),
                                _ => None,
                            };
                            if let Some(bias) = bias_of {
                                for (b, a) in bias.iter_mut().zip(&add) {
                                    *b += a;
                                }
                                self.open.insert(out, (step, Stage::Bias));
                                return self.set(out, v, roles);
                            }
                        }
                        self.affine(out, v, roles, vec![1.0; x.c], add, Clamp::NONE)
                    }
                    "Mul" => {
                        if let Some((step, Stage::Bias)) = fused {
                            if let Step::Pool { scale, .. } = &mut self.steps[step] {
                                *scale *= scalar(&k)?;
                                self.open.insert(out, (step, Stage::Clamp));
                                return self.set(out, v, roles);
                            }
                        }
                        let mul = self.per_channel(&k, x, &roles)?;
                        self.affine(out, v, roles, mul, vec![0.0; x.c], Clamp::NONE)
                    }
                    "Max" | "Min" => {
                        let bound = scalar(&k)?;
                        let tighten = |c: Clamp| {
                            if name == "Max" {
                                Clamp { lo: c.lo.max(bound), hi: c.hi.max(bound) }
                            } else {
                                Clamp { lo: c.lo.min(bound), hi: c.hi.min(bound) }
                            }
                        };
                        if let Some((step, stage)) = fused {
                            if stage <= Stage::Clamp {
                                let clamp = match &mut self.steps[step] {
                                    Step::Pointwise { clamp, .. } | Step::Dense { clamp, .. } => {
                                        Some(clamp)
                                    }
                                    Step::Depthwise { op, .. } => Some(&mut op.clamp),
                                    _ => None,
                                };
                                if let Some(clamp) = clamp {
                                    *clamp = tighten(*clamp);
                                    self.open.insert(out, (step, Stage::Clamp));
                                    return self.set(out, v, roles);
                                }
                            }
                        }
                        let clamp = tighten(Clamp::NONE);
                        self.affine(out, v, roles, vec![1.0; x.c], vec![0.0; x.c], clamp)
                    }
                    other => unsupported(format!("{other} with a constant")),
                }
            }
            [Some(_), Some(_)] => unsupported("binary op on constants"),
        }
    }

    fn affine(
        &mut self,
        out: OutletId,
        src: ValueId,
        roles: Vec<Role>,
        mul: Vec<f32>,
        add: Vec<f32>,
        clamp: Clamp,
    ) -> Result<(), Unsupported> {
        let dst = self.push_value(self.values[src]);
        self.steps.push(Step::Affine { src, dst, mul, add, clamp });
        self.set(out, dst, roles)
    }

    fn reduce(&mut self, node: &TypedNode, reduce: &Reduce) -> Result<(), Unsupported> {
        if !matches!(reduce.reducer, Reducer::Sum) {
            return unsupported(format!("reduce {:?}", reduce.reducer));
        }
        let (src, roles) = self.get(node.inputs[0])?;
        let x = self.values[src];
        let mut out_roles = roles.clone();
        for &axis in &reduce.axes {
            match roles.get(axis) {
                Some(Role::H | Role::W | Role::Unit) => out_roles[axis] = Role::Unit,
                _ => return unsupported("reduce over channels"),
            }
        }
        for r in [Role::H, Role::W] {
            if out_roles.contains(&r) && (if r == Role::H { x.h } else { x.w }) > 1 {
                return unsupported("reduce over one spatial axis only");
            }
        }
        let dst = self.push_value(Value { h: 1, w: 1, c: x.c });
        self.steps.push(Step::Pool { src, dst, scale: 1.0 });
        let out = OutletId::new(node.id, 0);
        self.open.insert(out, (self.steps.len() - 1, Stage::Bias));
        self.set(out, dst, out_roles)
    }
}

impl Executor {
    /// Compiles a decluttered tract graph of one `[1, H, W, C]` f32 input and one output
    /// for the kernels of `isa`, or says why it cannot.
    pub fn compile(model: &TypedModel, isa: Isa) -> Result<Self, Unsupported> {
        Self::compile_with(model, isa, FUSE_MIN_BYTES)
    }

    /// [`Executor::compile`], fusing the blocks whose depthwise input has at least
    /// `fuse_min_bytes` (see [`fuse_blocks`]).
    fn compile_with(
        model: &TypedModel,
        isa: Isa,
        fuse_min_bytes: usize,
    ) -> Result<Self, Unsupported> {
        if !isa.available() {
            return unsupported(format!("this CPU has no {}", isa.name()));
        }
        let mut b = Builder {
            model,
            isa,
            steps: vec![],
            values: vec![],
            outlets: HashMap::new(),
            open: HashMap::new(),
            input: None,
        };
        let order = model.eval_order().map_err(|e| Unsupported(e.to_string()))?;
        for id in order {
            b.node(id)?;
        }
        let outputs = model.output_outlets().map_err(|e| Unsupported(e.to_string()))?;
        let inputs = model.input_outlets().map_err(|e| Unsupported(e.to_string()))?;
        if outputs.len() != 1 || inputs.len() != 1 {
            return unsupported("not one input and one output");
        }
        let (output, roles) = b.get(outputs[0])?;
        // The output must read, in tract's order, as the executor's HWC data.
        let order: Vec<Role> = roles.iter().copied().filter(|&r| r != Role::Unit).collect();
        let v = b.values[output];
        let expected: Vec<Role> = [(Role::H, v.h), (Role::W, v.w), (Role::C, v.c)]
            .into_iter()
            .filter(|&(_, n)| n > 1)
            .map(|(r, _)| r)
            .collect();
        let order: Vec<Role> = order
            .into_iter()
            .filter(|r| match r {
                Role::H => v.h > 1,
                Role::W => v.w > 1,
                _ => true,
            })
            .collect();
        if order != expected {
            return unsupported(format!("output axes {roles:?}"));
        }
        let input = b.input.ok_or_else(|| Unsupported("no input".into()))?;
        if b.steps.is_empty() {
            return unsupported("nothing to compute");
        }
        let Builder { steps, values, .. } = b;
        let steps = fuse_blocks(steps, &values, output, fuse_min_bytes);
        let (slot_of, slot_len) = plan_slots(&steps, &values, input, output);
        let scratch_len = steps
            .iter()
            .map(|s| match s {
                Step::Dense { geometry, .. } => geometry.oh * geometry.ow * geometry.patch_len(),
                Step::Block { expand, dw, .. } => block_scratch(expand, dw).iter().sum(),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        Ok(Self {
            isa,
            steps,
            values,
            slot_of,
            slot_len,
            input,
            output,
            scratch_len,
        })
    }

    /// The instruction set of its kernels.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Floats of the input (`H * W * C`, channels-last).
    pub fn input_len(&self) -> usize {
        self.values[self.input].len()
    }

    /// Floats of the output.
    pub fn output_len(&self) -> usize {
        self.values[self.output].len()
    }

    /// The steps: (kind, multiply-accumulates), in order (profiles).
    pub fn step_kinds(&self) -> Vec<(&'static str, usize)> {
        self.steps
            .iter()
            .map(|s| (s.kind(), s.macs(&self.values)))
            .collect()
    }

    /// A per-thread runner with its own buffers.
    pub fn session(self: &Arc<Self>) -> ExecutorSession {
        ExecutorSession {
            executor: Arc::clone(self),
            slots: self.slot_len.iter().map(|&n| Aligned::zeroed(n)).collect(),
            scratch: Aligned::zeroed(self.scratch_len),
        }
    }
}

/// The smallest expanded tensor (bytes) whose block [`fuse_blocks`] fuses: below it the
/// tensor stays in L2 between the steps anyway, and whole-tensor GEMMs use the cores better
/// than row-sized ones.
const FUSE_MIN_BYTES: usize = 1 << 20;

/// Replaces each inverted-residual block, `[pointwise (expansion)] -> depthwise -> pointwise
/// (projection)` whose intermediate tensors have no other reader, by one [`Step::Block`],
/// when the tensor the depthwise convolution reads is at least `min_bytes`.
fn fuse_blocks(steps: Vec<Step>, values: &[Value], output: ValueId, min_bytes: usize) -> Vec<Step> {
    let mut readers = vec![0usize; values.len()];
    for s in &steps {
        for r in s.reads() {
            readers[r] += 1;
        }
    }
    readers[output] += 1;
    let internal = |v: ValueId| readers[v] == 1 && values[v].len() * 4 >= min_bytes;
    let mut steps: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(steps.len());
    let mut i = 0;
    while i < steps.len() {
        let at = |j: usize| steps.get(j).and_then(Option::as_ref);
        // (steps taken, with an expansion)
        let shape = match (at(i), at(i + 1), at(i + 2)) {
            (
                Some(
                    Step::Pointwise {
                        dst: e,
                        residual: None,
                        ..
                    }
                    | Step::Dense {
                        dst: e,
                        residual: None,
                        ..
                    },
                ),
                Some(Step::Depthwise { src, dst: d, .. }),
                Some(Step::Pointwise { src: p, .. }),
            ) if src == e && p == d && internal(*e) && readers[*d] == 1 => Some((3, true)),
            (
                Some(Step::Depthwise { src, dst: d, .. }),
                Some(Step::Pointwise { src: p, .. }),
                _,
            ) if p == d && readers[*d] == 1 && values[*src].len() * 4 >= min_bytes => {
                Some((2, false))
            }
            _ => None,
        };
        let Some((taken, with_expand)) = shape else {
            out.push(steps[i].take().expect("each step once"));
            i += 1;
            continue;
        };
        let mut take = |j: usize| steps[i + j].take().expect("each step once");
        let (src, expand, first) = if with_expand {
            match take(0) {
                Step::Pointwise { src, b, clamp, .. } => {
                    (Some(src), Expand::Pointwise(b, clamp), 1)
                }
                Step::Dense {
                    src,
                    geometry,
                    b,
                    clamp,
                    ..
                } => (Some(src), Expand::Dense(geometry, b, clamp), 1),
                _ => unreachable!("matched above"),
            }
        } else {
            (None, Expand::None, 0)
        };
        let Step::Depthwise {
            src: dw_src,
            op: dw,
            ..
        } = take(first)
        else {
            unreachable!()
        };
        let Step::Pointwise {
            dst,
            b: project,
            clamp,
            residual,
            ..
        } = take(first + 1)
        else {
            unreachable!()
        };
        out.push(Step::Block {
            src: src.unwrap_or(dw_src),
            dst,
            expand,
            dw,
            project,
            clamp,
            residual,
        });
        i += taken;
    }
    out
}

/// Floats of a [`Step::Block`]'s scratch: the ring of `kh` expanded rows (none without an
/// expansion), one depthwise output row, and one row of im2col patches (a dense expansion).
fn block_scratch(expand: &Expand, dw: &Depthwise) -> [usize; 3] {
    let ring = match expand {
        Expand::None => 0,
        _ => dw.kh * dw.w * dw.c,
    };
    let patches = match expand {
        Expand::Dense(g, ..) => g.ow * g.patch_len(),
        _ => 0,
    };
    [ring, dw.ow * dw.c, patches]
}

/// Assigns each value a buffer slot: a slot is reused once every reader of its value has run
/// (a step never writes into a slot it reads).
fn plan_slots(
    steps: &[Step],
    values: &[Value],
    input: ValueId,
    output: ValueId,
) -> (Vec<usize>, Vec<usize>) {
    let mut last_use = vec![0usize; values.len()];
    for (i, s) in steps.iter().enumerate() {
        last_use[s.dst()] = last_use[s.dst()].max(i);
        for r in s.reads() {
            last_use[r] = last_use[r].max(i);
        }
    }
    last_use[output] = usize::MAX;
    let mut slot_of = vec![usize::MAX; values.len()];
    let mut slot_len: Vec<usize> = vec![values[input].len()];
    slot_of[input] = 0;
    let mut live: Vec<ValueId> = vec![input];
    let mut free: Vec<usize> = vec![];
    for (i, s) in steps.iter().enumerate() {
        live.retain(|&v| {
            if last_use[v] < i {
                free.push(slot_of[v]);
                false
            } else {
                true
            }
        });
        let dst = s.dst();
        if slot_of[dst] != usize::MAX {
            continue;
        }
        let need = values[dst].len();
        // The smallest free slot that fits, else the largest (grown), else a new one.
        let pick = free
            .iter()
            .enumerate()
            .filter(|(_, &sl)| slot_len[sl] >= need)
            .min_by_key(|(_, &sl)| slot_len[sl])
            .or_else(|| free.iter().enumerate().max_by_key(|(_, &sl)| slot_len[sl]))
            .map(|(at, _)| at);
        let slot = match pick {
            Some(at) => free.swap_remove(at),
            None => {
                slot_len.push(0);
                slot_len.len() - 1
            }
        };
        slot_len[slot] = slot_len[slot].max(need);
        slot_of[dst] = slot;
        live.push(dst);
    }
    (slot_of, slot_len)
}

/// One thread's runner: the executor and its buffers.
pub struct ExecutorSession {
    executor: Arc<Executor>,
    slots: Vec<Aligned>,
    scratch: Aligned,
}

impl ExecutorSession {
    /// Runs one image (`input`: `H * W * C` floats, channels-last) and returns the output.
    pub fn run(&mut self, input: &[f32]) -> Vec<f32> {
        self.run_profiled(input, None)
    }

    /// [`ExecutorSession::run`], adding each step's time to `profile[step]`.
    pub fn run_profiled(
        &mut self,
        input: &[f32],
        mut profile: Option<&mut Vec<std::time::Duration>>,
    ) -> Vec<f32> {
        let ex = &*self.executor;
        assert_eq!(input.len(), ex.input_len(), "input length");
        self.slots[ex.slot_of[ex.input]][..input.len()].copy_from_slice(input);
        if let Some(p) = profile.as_deref_mut() {
            p.resize(ex.steps.len(), std::time::Duration::ZERO);
        }
        for (i, step) in ex.steps.iter().enumerate() {
            let start = profile.is_some().then(std::time::Instant::now);
            let dst_slot = ex.slot_of[step.dst()];
            let mut dst = std::mem::take(&mut self.slots[dst_slot]);
            let len = |v: ValueId| ex.values[v].len();
            let slot = |v: ValueId| -> &[f32] {
                let s = ex.slot_of[v];
                assert_ne!(s, dst_slot, "a step reads the slot it writes");
                &self.slots[s][..len(v)]
            };
            let out = &mut dst[..len(step.dst())];
            match step {
                Step::Pointwise { src, b, clamp, residual, .. } => {
                    let x = ex.values[*src];
                    let res = residual.map(slot);
                    kernels::gemm(slot(*src), x.h * x.w, x.c, b, *clamp, res, out);
                }
                Step::Dense { src, geometry, b, clamp, residual, .. } => {
                    let patches = &mut self.scratch[..geometry.oh * geometry.ow * geometry.patch_len()];
                    geometry.run(slot(*src), patches);
                    let res = residual.map(slot);
                    kernels::gemm(
                        patches,
                        geometry.oh * geometry.ow,
                        geometry.patch_len(),
                        b,
                        *clamp,
                        res,
                        out,
                    );
                }
                Step::Depthwise { src, op, .. } => op.run(slot(*src), out),
                Step::Block {
                    src,
                    expand,
                    dw,
                    project,
                    clamp,
                    residual,
                    ..
                } => {
                    let [ring_len, row_len, patches_len] = block_scratch(expand, dw);
                    let (ring, rest) = self.scratch.split_at_mut(ring_len);
                    let (dw_row, rest) = rest.split_at_mut(row_len);
                    run_block(
                        slot(*src),
                        ex.values[*src],
                        expand,
                        dw,
                        (project, *clamp),
                        residual.map(slot),
                        (ring, dw_row, &mut rest[..patches_len]),
                        out,
                    );
                }
                Step::Affine { src, mul, add, clamp, .. } => {
                    let c = mul.len();
                    for (o, x) in out.chunks_exact_mut(c).zip(slot(*src).chunks_exact(c)) {
                        for j in 0..c {
                            o[j] = (x[j] * mul[j] + add[j]).max(clamp.lo).min(clamp.hi);
                        }
                    }
                }
                Step::Add { a, b, .. } => {
                    for ((o, x), y) in out.iter_mut().zip(slot(*a)).zip(slot(*b)) {
                        *o = x + y;
                    }
                }
                Step::Pool { src, scale, .. } => {
                    let c = out.len();
                    out.fill(0.0);
                    for px in slot(*src).chunks_exact(c) {
                        for (o, x) in out.iter_mut().zip(px) {
                            *o += x;
                        }
                    }
                    for o in out.iter_mut() {
                        *o *= scale;
                    }
                }
            }
            self.slots[dst_slot] = dst;
            if let (Some(p), Some(start)) = (profile.as_deref_mut(), start) {
                p[i] += start.elapsed();
            }
        }
        self.slots[ex.slot_of[ex.output]][..ex.output_len()].to_vec()
    }
}

/// Runs a [`Step::Block`] one output row at a time: the expanded rows the depthwise row needs
/// (each computed once, kept in a ring of `kh` rows: a row is overwritten only once every
/// later output row is past it), the depthwise row, then its projection (+ the residual's
/// row) into `out`. `scratch` is the ring, the depthwise row and a row of patches
/// ([`block_scratch`]).
#[allow(clippy::too_many_arguments)]
fn run_block(
    src: &[f32],
    x: Value,
    expand: &Expand,
    dw: &Depthwise,
    (project, clamp): (&PackedB, Clamp),
    residual: Option<&[f32]>,
    (ring, dw_row, patches): (&mut [f32], &mut [f32], &mut [f32]),
    out: &mut [f32],
) {
    let line = dw.w * dw.c;
    let out_row = dw.ow * project.n();
    let mut next = 0;
    for oy in 0..dw.oh {
        let need = dw.input_rows(oy..oy + 1);
        let mut rows: [&[f32]; kernels::MAX_KH] = [&[]; kernels::MAX_KH];
        if let Expand::None = expand {
            for (r, iy) in rows.iter_mut().zip(need.clone()) {
                *r = &src[iy * line..(iy + 1) * line];
            }
        } else {
            while next < need.end {
                let at = (next % dw.kh) * line;
                let ring_row = &mut ring[at..at + line];
                match expand {
                    Expand::Pointwise(b, c) => {
                        let a = &src[next * x.w * x.c..(next + 1) * x.w * x.c];
                        kernels::gemm(a, x.w, x.c, b, *c, None, ring_row);
                    }
                    Expand::Dense(g, b, c) => {
                        kernels::conv_row(g, src, next, b, *c, patches, ring_row);
                    }
                    Expand::None => unreachable!("handled above"),
                }
                next += 1;
            }
            for (r, iy) in rows.iter_mut().zip(need.clone()) {
                *r = &ring[(iy % dw.kh) * line..][..line];
            }
        }
        dw.run_rows(&rows[..need.len()], need.start, oy..oy + 1, dw_row);
        let res = residual.map(|r| &r[oy * out_row..(oy + 1) * out_row]);
        kernels::gemm(
            dw_row,
            dw.ow,
            dw.c,
            project,
            clamp,
            res,
            &mut out[oy * out_row..(oy + 1) * out_row],
        );
    }
}

#[cfg(test)]
mod tests;
