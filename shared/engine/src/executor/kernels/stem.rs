//! The stem: a dense convolution's im2col patches, and its rows run as GEMMs reading the
//! input in place ([`conv_row`]).

use std::ops::Range;

use super::gemm::{gemm, run_tile, Tile};
use super::{Clamp, PackedB};

/// Geometry of a dense convolution run as im2col + GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Im2Col {
    /// Input height, width, channels.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub c: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Strides (y, x).
    pub stride: (usize, usize),
    /// Padding before (top, left).
    pub pad: (usize, usize),
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Im2Col {
    /// Length of one patch: `kh * kw * c`, ordered (ky, kx, channel).
    pub fn patch_len(&self) -> usize {
        self.kh * self.kw * self.c
    }

    /// Writes the `oh*ow` patches (zero where the kernel is over the padding) into `out`.
    pub fn run(&self, x: &[f32], out: &mut [f32]) {
        self.run_rows(x, 0..self.oh, out);
    }

    /// Writes the patches of output rows `oys` into `out` (`oys.len()*ow` patches).
    pub fn run_rows(&self, x: &[f32], oys: Range<usize>, out: &mut [f32]) {
        let pl = self.patch_len();
        assert!(
            x.len() >= self.h * self.w * self.c,
            "im2col input is too short"
        );
        assert!(oys.end <= self.oh, "im2col output rows");
        assert!(
            out.len() >= oys.len() * self.ow * pl,
            "im2col output is too short"
        );
        for (r, oy) in oys.enumerate() {
            for ox in 0..self.ow {
                self.patch(x, oy, ox, &mut out[(r * self.ow + ox) * pl..][..pl]);
            }
        }
    }

    /// Writes the patch of output pixel (`oy`, `ox`) into `patch` (`patch_len` values).
    #[inline]
    fn patch(&self, x: &[f32], oy: usize, ox: usize, patch: &mut [f32]) {
        let c = self.c;
        let run = self.kw * c;
        let ix0 = (ox * self.stride.1) as isize - self.pad.1 as isize;
        let inside_x = ix0 >= 0 && ix0 as usize + self.kw <= self.w;
        for ky in 0..self.kh {
            let iy = (oy * self.stride.0 + ky) as isize - self.pad.0 as isize;
            let dst = &mut patch[ky * run..][..run];
            if iy < 0 || iy >= self.h as isize {
                dst.fill(0.0);
            } else if inside_x {
                // The kernel row's taps are contiguous in the input: one copy.
                let at = (iy as usize * self.w + ix0 as usize) * c;
                copy_short(&x[at..at + run], dst);
            } else {
                for kx in 0..self.kw {
                    let ix = ix0 + kx as isize;
                    let dst = &mut dst[kx * c..][..c];
                    if ix < 0 || ix >= self.w as isize {
                        dst.fill(0.0);
                    } else {
                        let at = (iy as usize * self.w + ix as usize) * c;
                        dst.copy_from_slice(&x[at..at + c]);
                    }
                }
            }
        }
    }

    /// Output pixels `lo..hi` of a row whose kernel columns are all inside the input.
    fn inside_columns(&self) -> (usize, usize) {
        let (s, p) = (self.stride.1, self.pad.1);
        let lo = p.div_ceil(s).min(self.ow);
        let hi = if self.w + p >= self.kw {
            ((self.w + p - self.kw) / s + 1).min(self.ow)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// Output row `oy` of a dense convolution (`g`, weights `b`: `k = g.patch_len()`), as the
/// GEMM of its im2col patches, `clamp(patches · B + bias)` into `out` (`ow x n`), but
/// without writing the patches where it can: the taps of kernel row `ky` of consecutive
/// output pixels are `kw * c` contiguous input values `stride * c` apart, so each kernel row
/// is one slice of the reduction whose rows of A are read straight from the input (the
/// stem's patches are 27 values gathered from three 9-value runs, and gathering them cost
/// as much as a third of its GEMM). The pixels with a kernel column in the padding, and rows
/// with a kernel row in it, go through `patches` (at least `ow * k` values) as before. The
/// sums are the same values in the same order as the patches' GEMM (a slice's partial sums
/// reload exactly), so the output is the same to the bit.
pub fn conv_row(
    g: &Im2Col,
    x: &[f32],
    oy: usize,
    b: &PackedB,
    clamp: Clamp,
    patches: &mut [f32],
    out: &mut [f32],
) {
    let (k, n) = (b.k, b.n);
    assert_eq!(k, g.patch_len(), "weights for another kernel");
    assert!(x.len() >= g.h * g.w * g.c, "convolution input is too short");
    assert!(oy < g.oh, "convolution output row");
    assert!(out.len() >= g.ow * n, "convolution output is too short");
    let (mr, nr) = b.isa.tile();
    let (lo, hi) = g.inside_columns();
    let iy0 = (oy * g.stride.0) as isize - g.pad.0 as isize;
    let rows_inside = iy0 >= 0 && iy0 as usize + g.kh <= g.h;
    if !rows_inside || hi - lo < mr {
        g.run_rows(x, oy..oy + 1, patches);
        gemm(patches, g.ow, k, b, clamp, None, out);
        return;
    }
    for ox in (0..lo).chain(hi..g.ow) {
        let patch = &mut patches[..k];
        g.patch(x, oy, ox, patch);
        gemm(patch, 1, k, b, clamp, None, &mut out[ox * n..(ox + 1) * n]);
    }
    let seg = g.kw * g.c;
    let lda = g.stride.1 * g.c;
    for p in 0..n.div_ceil(nr) {
        let j0 = p * nr;
        let panel = &b.data[p * k * nr..(p + 1) * k * nr];
        for i in (lo..hi).step_by(mr) {
            for ky in 0..g.kh {
                let at = ((iy0 as usize + ky) * g.w + i * g.stride.1 - g.pad.1) * g.c;
                let tile = Tile {
                    a: &x[at..],
                    lda,
                    k: seg,
                    panel: &panel[ky * seg * nr..(ky + 1) * seg * nr],
                    nr,
                    bias: &b.bias[j0..j0 + nr],
                    clamp,
                    rows: mr.min(hi - i),
                    cols: nr.min(n - j0),
                    ldc: n,
                    residual: None,
                    load_c: ky > 0,
                    finish: ky + 1 == g.kh,
                    prefetch: None,
                };
                run_tile(b.isa, &tile, &mut out[i * n + j0..]);
            }
        }
    }
}

/// `dst.copy_from_slice(src)`, inlined for the short runs of a stem's patches (9 floats for a
/// 3x3 kernel on RGB) instead of a `memcpy` call each.
#[inline(always)]
fn copy_short(src: &[f32], dst: &mut [f32]) {
    // A 3x3 kernel on RGB, the usual stem: a copy of fixed size (two moves, where the loop
    // below moves 4 floats at a time and then one by one).
    if let (Ok(s), Ok(d)) = (
        <&[f32; 9]>::try_from(src),
        <&mut [f32; 9]>::try_from(&mut *dst),
    ) {
        *d = *s;
    } else if src.len() <= 16 {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    } else {
        dst.copy_from_slice(src);
    }
}
