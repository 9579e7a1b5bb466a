//! The compute kernels of the native executor, all on channels-last (HWC) f32 tensors:
//!
//! - [`gemm`]: `C = clamp(A·B + bias, lo, hi) (+ residual)`, A row-major (one row per pixel),
//!   B packed once at load time into column panels ([`PackedB`]); the bias, clamp (ReLU6) and
//!   residual add are applied in registers before the single store (no separate passes);
//! - [`depthwise`]: a depthwise KxK convolution (any stride and padding) vectorised over
//!   channels, with the same fused bias + clamp;
//! - [`im2col`]: the patches of a dense KxK convolution (the stem), which then runs as a GEMM.
//!
//! Each kernel exists in an AVX-512 and an AVX2+FMA version (chosen at run time by
//! [`Isa::detect`]) and a portable version (plain Rust, any target). The portable version is
//! the reference the SIMD ones are tested against, besides tract itself (see the executor's
//! tests).

mod depthwise;
mod gemm;
mod isa;
mod portable;
mod stem;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use depthwise::{Depthwise, MAX_KH};
pub use gemm::{gemm, PackedB};
pub use isa::Isa;
pub use stem::{conv_row, Im2Col};

// The names the x86 kernels (`x86.rs`) reach through `super`.
#[cfg(target_arch = "x86_64")]
use depthwise::{edges, row_blocks, taps, RowTaps};
#[cfg(target_arch = "x86_64")]
use gemm::Tile;

/// Zeroed f32 values whose first one starts a 64-byte cache line, for the tensors and weights
/// the kernels read and write: with every row a multiple of 16 values (the channel counts of
/// MobileNetV2), a whole-vector AVX-512 load or store then never straddles two lines, which
/// costs a second access (the depthwise layers took 15 % longer on `malloc`'s 16-byte
/// alignment, `examples/kernel_bench.rs`). A `Vec` keeps its heap block when moved, so the
/// window stays aligned; the buffer never grows.
#[derive(Default)]
pub struct Aligned {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl Aligned {
    /// Floats per cache line.
    const LINE: usize = 16;

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let buf = vec![0.0f32; len + Self::LINE - 1];
        // An f32 pointer is 4-byte aligned, so the next line is a whole number of floats on.
        let start = (64 - buf.as_ptr() as usize % 64) % 64 / 4;
        Self { buf, start, len }
    }
}

impl From<&[f32]> for Aligned {
    fn from(values: &[f32]) -> Self {
        let mut a = Self::zeroed(values.len());
        a.copy_from_slice(values);
        a
    }
}

impl From<Vec<f32>> for Aligned {
    fn from(values: Vec<f32>) -> Self {
        Self::from(values.as_slice())
    }
}

impl Clone for Aligned {
    /// A new aligned buffer (a cloned `Vec` would have its own, unaligned, start).
    fn clone(&self) -> Self {
        Self::from(&self[..])
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What follows the accumulation, per output value: `clamp(acc + bias[col], lo, hi)`, then
/// `+ residual` when there is one. `lo = -inf, hi = +inf` is no clamp; `(0, 6)` is ReLU6.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    /// Lower bound.
    pub lo: f32,
    /// Upper bound.
    pub hi: f32,
}

impl Clamp {
    /// No clamp.
    pub const NONE: Clamp = Clamp {
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    };
}

#[cfg(test)]
mod tests;
