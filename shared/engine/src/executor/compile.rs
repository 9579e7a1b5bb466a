//! Compilation: tract's decluttered graph, node by node, into the executor's steps (the
//! bias, clamp and residual add that follow a convolution fused into its epilogue), then the
//! block fusion and the buffer plan.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer};
use tract_onnx::tract_core::ops::source::TypedSource;

use super::fuse::fuse_blocks;
use super::kernels::{self, Clamp, Depthwise, Im2Col, Isa, PackedB};
use super::plan::{plan_slots, scratch_len};
use super::{unsupported, Executor, Role, Step, Unsupported, Value, ValueId};

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
    fn set(
        &mut self,
        outlet: OutletId,
        value: ValueId,
        roles: Vec<Role>,
    ) -> Result<(), Unsupported> {
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
            return unsupported(format!(
                "shape of {outlet:?}: tract {shape:?}, executor {ours:?}"
            ));
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
            return unsupported(format!(
                "node {} has {} outputs",
                node.name,
                node.outputs.len()
            ));
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
            return unsupported(format!(
                "convolution input axes {roles:?} vs {:?}",
                spec.data_format
            ));
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
        let dst = self.push_value(Value {
            h: oh,
            w: ow,
            c: cout,
        });
        let geometry = Im2Col {
            h: x.h,
            w: x.w,
            c: cin,
            kh,
            kw,
            stride,
            pad,
            oh,
            ow,
        };
        let step = self.conv_step((src, dst), geometry, group, at, bias)?;
        self.steps.push(step);
        let out = OutletId::new(node.id, 0);
        self.open.insert(out, (self.steps.len() - 1, Stage::Bias));
        self.set(out, dst, format_roles(spec.data_format))
    }

    /// The step of a convolution from `src` into `dst` of `group` groups (one: pointwise or
    /// dense; one per channel: depthwise), with the weights `at(o, i, y, x)` (`i` the input
    /// channel within the group) and a bias of one value per output channel.
    fn conv_step(
        &self,
        (src, dst): (ValueId, ValueId),
        geometry: Im2Col,
        group: usize,
        at: impl Fn(usize, usize, usize, usize) -> f32,
        bias: Vec<f32>,
    ) -> Result<Step, Unsupported> {
        let Im2Col {
            h,
            w,
            c: cin,
            kh,
            kw,
            stride,
            pad,
            oh,
            ow,
        } = geometry;
        let cout = bias.len();
        let step = if group == 1 {
            if kh == 1 && kw == 1 && stride == (1, 1) && pad == (0, 0) {
                let b = PackedB::new(self.isa, cin, cout, |i, o| at(o, i, 0, 0), &bias);
                Step::Pointwise {
                    src,
                    dst,
                    b,
                    clamp: Clamp::NONE,
                    residual: None,
                }
            } else {
                // Patch order (ky, kx, channel).
                let b = PackedB::new(
                    self.isa,
                    geometry.patch_len(),
                    cout,
                    |p, o| at(o, p % cin, p / cin / kw, (p / cin) % kw),
                    &bias,
                );
                Step::Dense {
                    src,
                    dst,
                    geometry,
                    b,
                    clamp: Clamp::NONE,
                    residual: None,
                }
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
                h,
                w,
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
        Ok(step)
    }

    fn einsum(&mut self, node: &TypedNode, einsum: &EinSum) -> Result<(), Unsupported> {
        if einsum.q_params.is_some()
            || einsum.operating_dt != f32::datum_type()
            || node.inputs.len() != 2
        {
            return unsupported("einsum that is not a float matrix product");
        }
        let (src, roles) = self.get(node.inputs[0])?;
        let x = self.values[src];
        let Some(weights) = self.konst(node.inputs[1]) else {
            return unsupported("einsum whose second operand is not a constant");
        };
        let (inputs, outputs) = einsum.axes.to_strs();
        let (data, wl, ol): (Vec<char>, Vec<char>, Vec<char>) = match (&inputs[..], &outputs[..]) {
            ([d, w], [o]) => (
                d.chars().collect(),
                w.chars().collect(),
                o.chars().collect(),
            ),
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
            return unsupported(format!(
                "einsum {} does not contract the channels",
                einsum.axes
            ));
        }
        // Every other data axis is kept (a dropped unit axis is fine).
        for (&l, &r) in data.iter().zip(&roles) {
            if l != ci && r != Role::Unit && !ol.contains(&l) {
                return unsupported(format!("einsum {} reduces a spatial axis", einsum.axes));
            }
        }
        let out_roles: Vec<Role> = ol
            .iter()
            .map(|&l| {
                if l == co {
                    Role::C
                } else {
                    role_of(l).unwrap_or(Role::Unit)
                }
            })
            .collect();
        let wshape = weights.shape();
        let ci_first = wl[0] == ci;
        let (cin, cout) = if ci_first {
            (wshape[0], wshape[1])
        } else {
            (wshape[1], wshape[0])
        };
        if cin != x.c {
            return unsupported("einsum channels");
        }
        let w = f32s(&weights)?;
        let b = PackedB::new(
            self.isa,
            cin,
            cout,
            |i, o| {
                if ci_first {
                    w[i * cout + o]
                } else {
                    w[o * cin + i]
                }
            },
            &vec![0.0; cout],
        );
        let dst = self.push_value(Value {
            h: x.h,
            w: x.w,
            c: cout,
        });
        self.steps.push(Step::Pointwise {
            src,
            dst,
            b,
            clamp: Clamp::NONE,
            residual: None,
        });
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
                let data = if const_first {
                    node.inputs[1]
                } else {
                    node.inputs[0]
                };
                self.binary_const(out, data, name, &k)
            }
            [Some(_), Some(_)] => unsupported("binary op on constants"),
        }
    }

    /// `name` (Add, Mul, Max or Min) of the tensor `data` and the constant `k`, fused into the
    /// epilogue of the step that made `data` when it can be, else a per-channel affine step.
    fn binary_const(
        &mut self,
        out: OutletId,
        data: OutletId,
        name: &str,
        k: &Tensor,
    ) -> Result<(), Unsupported> {
        let (v, roles) = self.get(data)?;
        let x = self.values[v];
        let fused = self.fusable(data);
        match name {
            "Add" => {
                let add = self.per_channel(k, x, &roles)?;
                if let Some((step, Stage::Bias)) = fused {
                    let bias_of = match &mut self.steps[step] {
                        Step::Pointwise { b, .. } | Step::Dense { b, .. } => Some(b.bias_mut()),
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
                        *scale *= scalar(k)?;
                        self.open.insert(out, (step, Stage::Clamp));
                        return self.set(out, v, roles);
                    }
                }
                let mul = self.per_channel(k, x, &roles)?;
                self.affine(out, v, roles, mul, vec![0.0; x.c], Clamp::NONE)
            }
            "Max" | "Min" => {
                let bound = scalar(k)?;
                let tighten = |c: Clamp| {
                    if name == "Max" {
                        Clamp {
                            lo: c.lo.max(bound),
                            hi: c.hi.max(bound),
                        }
                    } else {
                        Clamp {
                            lo: c.lo.min(bound),
                            hi: c.hi.min(bound),
                        }
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
        self.steps.push(Step::Affine {
            src,
            dst,
            mul,
            add,
            clamp,
        });
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
        self.steps.push(Step::Pool {
            src,
            dst,
            scale: 1.0,
        });
        let out = OutletId::new(node.id, 0);
        self.open.insert(out, (self.steps.len() - 1, Stage::Bias));
        self.set(out, dst, out_roles)
    }
}

impl Executor {
    /// [`Executor::compile`], fusing the blocks whose depthwise input has at least
    /// `fuse_min_bytes` (see [`fuse_blocks`]).
    pub(super) fn compile_with(
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
        let outputs = model
            .output_outlets()
            .map_err(|e| Unsupported(e.to_string()))?;
        let inputs = model
            .input_outlets()
            .map_err(|e| Unsupported(e.to_string()))?;
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
        let scratch_len = scratch_len(&steps);
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
}
