//! The depthwise convolution, vectorised over channels, one output row at a time.

use std::ops::Range;

use super::portable::depthwise_portable;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Aligned, Clamp, Isa};

/// For output index `o` along one axis: the first input index `o*stride - pad` (may be
/// negative) and the kernel taps `k0..k1` that fall inside `0..size`.
#[inline(always)]
pub(super) fn taps(
    o: usize,
    stride: usize,
    pad: usize,
    size: usize,
    k: usize,
) -> (isize, usize, usize) {
    let i0 = (o * stride) as isize - pad as isize;
    let k0 = (-i0).max(0) as usize;
    let k1 = ((size as isize - i0).min(k as isize)).max(0) as usize;
    (i0, k0, k1.max(k0))
}

/// The pixel counts of the blocks that cover a row of `ow` output pixels: as few blocks of at
/// most `ob` as can cover it, as even as can be (so `ob` or `ob - 1` pixels each whenever
/// `ow >= ob * (ob - 1)`, e.g. 7 + 7 for 14 and 8 x 7 for 56 with `ob` = 8); `ob` = 0: one
/// pixel at a time. (Used by the x86 kernels; the portable one runs pixel by pixel.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn row_blocks(ow: usize, ob: usize) -> impl Iterator<Item = usize> {
    let blocks = if ob == 0 { ow } else { ow.div_ceil(ob) };
    let (base, extra) = ow
        .checked_div(blocks)
        .map_or((0, 0), |base| (base, ow % blocks));
    (0..blocks).map(move |b| base + usize::from(b < extra))
}

/// For a block of `n` output pixels from `ox` of a 3x3 depthwise row: whether its first
/// pixel's left kernel column is off the input (`left`) and its last pixel's right one
/// (`right`), when those are the only taps off it (else None: the block's pixels run one
/// at a time over their taps).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn edges(d: &Depthwise, ox: usize, n: usize) -> Option<(bool, bool)> {
    if n == 0 || d.kh != 3 || d.kw != 3 {
        return None;
    }
    let (s, w) = (d.stride.1 as isize, d.w as isize);
    let first = (ox * d.stride.1) as isize - d.pad.1 as isize;
    let last = first + (n as isize - 1) * s;
    // The first pixel's middle and right columns, the last pixel's left and middle ones and
    // every column of the pixels between must be inside.
    let inside = first >= -1 && last + 1 < w && (n == 1 || (first + s >= 0 && last - s + 2 < w));
    inside.then_some((first < 0, last + 2 >= w))
}

/// A depthwise convolution (one KxK filter per channel) on an `h x w x c` input.
#[derive(Debug, Clone)]
pub struct Depthwise {
    /// Instruction set.
    pub isa: Isa,
    /// Input height, width, channels.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Kernel height and width.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Strides (y, x).
    pub stride: (usize, usize),
    /// Padding before (top, left); the padding after follows from the output size.
    pub pad: (usize, usize),
    /// Output height and width.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Weights, tap-major: `weights[(ky*kw + kx)*c + ch]`.
    pub weights: Aligned,
    /// Bias per channel.
    pub bias: Aligned,
    /// Clamp after the bias.
    pub clamp: Clamp,
}

impl Depthwise {
    /// Runs it: `x` is `h*w*c`, `out` is `oh*ow*c`.
    pub fn run(&self, x: &[f32], out: &mut [f32]) {
        assert!(
            x.len() >= self.h * self.w * self.c,
            "depthwise input is too short"
        );
        let rows: Vec<&[f32]> = x.chunks_exact(self.w * self.c).take(self.h).collect();
        self.run_rows(&rows, 0, 0..self.oh, out);
    }

    /// Input rows `first..last` (inside the padding's reach) that output rows `oys` read.
    pub fn input_rows(&self, oys: Range<usize>) -> Range<usize> {
        if oys.is_empty() {
            return 0..0;
        }
        let (y0, ky0, _) = taps(oys.start, self.stride.0, self.pad.0, self.h, self.kh);
        let (y1, _, ky1) = taps(oys.end - 1, self.stride.0, self.pad.0, self.h, self.kh);
        (y0 + ky0 as isize) as usize
            ..((y1 + ky1 as isize) as usize).max((y0 + ky0 as isize) as usize)
    }

    /// Output rows `oys` from input rows given one by one: `rows[i]` is input row `row0 + i`
    /// (`w*c` values; every row in [`Depthwise::input_rows`] of `oys` must be there), and
    /// `out` holds the output rows `oys` (`oys.len()*ow*c` values). The rows can live
    /// anywhere, e.g. in a ring of the few rows a fused block keeps.
    pub fn run_rows(&self, rows: &[&[f32]], row0: usize, oys: Range<usize>, out: &mut [f32]) {
        let need = self.input_rows(oys.clone());
        assert!(
            need.is_empty() || (need.start >= row0 && need.end <= row0 + rows.len()),
            "depthwise rows {need:?} are not all in {row0}..{}",
            row0 + rows.len()
        );
        for iy in need.clone() {
            assert!(
                rows[iy - row0].len() >= self.w * self.c,
                "depthwise input row is too short"
            );
        }
        assert!(oys.end <= self.oh, "depthwise output rows");
        assert!(
            out.len() >= oys.len() * self.ow * self.c,
            "depthwise output is too short"
        );
        assert_eq!(self.weights.len(), self.kh * self.kw * self.c);
        assert_eq!(self.bias.len(), self.c);
        assert!(self.stride.0 >= 1 && self.stride.1 >= 1);
        assert!(self.isa.available(), "this CPU has no {}", self.isa.name());
        assert!(self.kh <= MAX_KH, "depthwise kernel taller than {MAX_KH}");
        let row_len = self.ow * self.c;
        for (r, oy) in oys.clone().enumerate() {
            // This output row's kernel rows (only the taps inside the input are read; their
            // lengths were checked above).
            let (y0, ky0, ky1) = taps(oy, self.stride.0, self.pad.0, self.h, self.kh);
            let mut t = RowTaps {
                rows: [&[]; MAX_KH],
                ky0,
                ky1,
            };
            for ky in ky0..ky1 {
                t.rows[ky] = rows[(y0 + ky as isize) as usize - row0];
            }
            let orow = &mut out[r * row_len..(r + 1) * row_len];
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the ISA is available and every row pointer the kernel reads points
                // at a whole input row (both asserted above).
                Isa::Avx512 => unsafe { x86::avx512::depthwise_row(self, &t, orow) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Isa::Avx2 => unsafe { x86::avx2::depthwise_row(self, &t, orow) },
                _ => depthwise_portable(self, &t, orow),
            }
        }
    }
}

/// The tallest depthwise kernel the kernels take (the executor leaves taller ones to tract).
pub const MAX_KH: usize = 8;

/// The kernel rows of one output row: `rows[ky]` is input row `oy*stride - pad + ky` for
/// `ky0 <= ky < ky1` (the rows inside the input; at least `w*c` values each), empty elsewhere.
pub(super) struct RowTaps<'a> {
    pub(super) rows: [&'a [f32]; MAX_KH],
    pub(super) ky0: usize,
    pub(super) ky1: usize,
}
