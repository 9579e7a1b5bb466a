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
//! megabytes, run fused one output row at a time ([`Step::Block`], [`fuse::fuse_blocks`]), so that
//! those tensors never leave the cache. Buffers are reused by liveness.

pub mod kernels;

mod compile;
mod fuse;
mod plan;
mod session;

use thiserror::Error;
use tract_onnx::prelude::*;

pub use kernels::{Clamp, Isa};
use kernels::{Depthwise, Im2Col, PackedB};
pub use session::ExecutorSession;

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
// A few dozen steps per graph, matched in the hot loop: boxing the large ones buys nothing.
#[allow(clippy::large_enum_variant)]
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
    Depthwise {
        src: ValueId,
        dst: ValueId,
        op: Depthwise,
    },
    /// An inverted-residual block run one output row at a time: the convolution before the
    /// depthwise one (`expand`: a 1x1 expansion, or the stem before the first block), the
    /// depthwise convolution, then the 1x1 projection
    /// (`project`, `clamp`, `residual`), as [`fuse::fuse_blocks`] found them. The expanded tensor
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
    Add {
        a: ValueId,
        b: ValueId,
        dst: ValueId,
    },
    /// Sum over height and width, times `scale`.
    Pool {
        src: ValueId,
        dst: ValueId,
        scale: f32,
    },
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

impl Executor {
    /// Compiles a decluttered tract graph of one `[1, H, W, C]` f32 input and one output
    /// for the kernels of `isa`, or says why it cannot.
    pub fn compile(model: &TypedModel, isa: Isa) -> Result<Self, Unsupported> {
        Self::compile_with(model, isa, fuse::FUSE_MIN_BYTES)
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
}

#[cfg(test)]
mod tests;
