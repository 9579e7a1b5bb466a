//! The portable kernels (plain Rust, any target): the fallback, and the reference the SIMD
//! kernels are tested against.

use super::depthwise::{taps, Depthwise, RowTaps};
use super::gemm::Tile;

pub(super) fn tile_portable(t: &Tile, out: &mut [f32]) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0.0f32; NR]; MR];
    if t.load_c {
        for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
            row[..t.cols].copy_from_slice(&out[r * t.ldc..r * t.ldc + t.cols]);
        }
    }
    for p in 0..t.k {
        let b = &t.panel[p * t.nr..p * t.nr + NR];
        for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
            let a = t.a[r * t.lda + p];
            for (x, bv) in row.iter_mut().zip(b) {
                *x += a * bv;
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        for (j, x) in row.iter().enumerate().take(t.cols) {
            out[r * t.ldc + j] = if t.finish {
                let mut v = (x + t.bias[j]).max(t.clamp.lo).min(t.clamp.hi);
                if let Some(res) = t.residual {
                    v += res[r * t.ldc + j];
                }
                v
            } else {
                *x
            };
        }
    }
}

#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    a * b + c
}

/// One output row of the depthwise convolution in plain Rust, in chunks of 16 channels.
pub(super) fn depthwise_portable(d: &Depthwise, t: &RowTaps, o: &mut [f32]) {
    const L: usize = 16;
    let c = d.c;
    let chunks = c / L;
    let row = |ky: usize| t.rows[ky];
    for ox in 0..d.ow {
        let (x0, kx0, kx1) = taps(ox, d.stride.1, d.pad.1, d.w, d.kw);
        let o = &mut o[ox * c..(ox + 1) * c];
        for chunk in 0..chunks {
            let c0 = chunk * L;
            let mut acc = [0.0f32; L];
            for ky in t.ky0..t.ky1 {
                let x = row(ky);
                for kx in kx0..kx1 {
                    let ix = (x0 + kx as isize) as usize;
                    let xi: &[f32; L] = x[ix * c + c0..][..L].try_into().expect("16 values");
                    let wi: &[f32; L] = d.weights[(ky * d.kw + kx) * c + c0..][..L]
                        .try_into()
                        .expect("16 values");
                    for l in 0..L {
                        acc[l] = madd(xi[l], wi[l], acc[l]);
                    }
                }
            }
            let bias: &[f32; L] = d.bias[c0..c0 + L].try_into().expect("16 values");
            let dst: &mut [f32; L] = (&mut o[c0..c0 + L]).try_into().expect("16 values");
            for l in 0..L {
                dst[l] = (acc[l] + bias[l]).max(d.clamp.lo).min(d.clamp.hi);
            }
        }
        for ch in chunks * L..c {
            let mut acc = 0.0f32;
            for ky in t.ky0..t.ky1 {
                let x = row(ky);
                for kx in kx0..kx1 {
                    let ix = (x0 + kx as isize) as usize;
                    acc = madd(x[ix * c + ch], d.weights[(ky * d.kw + kx) * c + ch], acc);
                }
            }
            o[ch] = (acc + d.bias[ch]).max(d.clamp.lo).min(d.clamp.hi);
        }
    }
}
