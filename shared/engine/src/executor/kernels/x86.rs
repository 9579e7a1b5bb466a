//! The x86_64 kernels, written once ([`simd_kernels!`]) and expanded for AVX-512F
//! ([`avx512`]: 16 lanes, `__mmask16` masks) and for AVX2 + FMA ([`avx2`]: 8 lanes,
//! `vmaskmovps` masks). Each ISA module defines the same small set of `#[inline(always)]`
//! primitives (`load`, `load_masked`, `fma`, ...), and the macro's kernels call them by name,
//! so the two versions cannot drift apart; the kernels themselves carry the
//! `#[target_feature]`, so the primitives are inlined into code compiled for that ISA.
//!
//! Safety, for every kernel here: the caller ([`super::gemm`], [`super::Depthwise::run`])
//! has checked that the CPU supports the ISA; the bounds each kernel relies on are checked
//! by its caller or at its top (once per call, not per load), as its comment says. Masked lanes neither load
//! nor store, and do not fault.

use super::{Depthwise, RowTaps, Tile};

/// Bounds of a GEMM tile (checked once per tile, so the loop needs no checks): row
/// `r < rows` of A is `a[r*lda .. r*lda + k]`; rows `rows..MR` re-read row 0 and are never
/// stored. The panel holds `k` rows of `nr >= nv * lanes` values, the bias `nv * lanes`.
/// Output and residual rows `r < rows` are `[r*ldc .. r*ldc + cols]`; columns `cols..` of
/// the tile are masked off.
fn check_tile(t: &Tile, out: &[f32], mr: usize, cols_max: usize) {
    assert!(t.rows >= 1 && t.rows <= mr && t.cols >= 1 && t.cols <= cols_max);
    assert!(t.nr >= cols_max);
    assert!(t.a.len() >= (t.rows - 1) * t.lda + t.k);
    assert!(t.panel.len() >= t.k * t.nr && t.bias.len() >= cols_max);
    let last = (t.rows - 1) * t.ldc + t.cols;
    assert!(out.len() >= last);
    if let Some(r) = t.residual {
        assert!(r.len() >= last);
    }
}

/// The kernels of one ISA, expanded in a module that defines `V` (a vector of `L` f32), `M`
/// (a lane mask), `mask(n)` (lanes `0..n`), `zero`, `splat`, `load`, `load_masked`,
/// `store`, `store_masked`, `add`, `fma(a, b, c) = a*b + c`, `min`, `max`, `prefetch` (a
/// hint into L1), and the tile shapes `GEMM_MR` (rows of a GEMM tile; its columns are 2
/// vectors, or 1 for a narrow last panel) and `DW_OB` (output pixels per depthwise block).
macro_rules! simd_kernels {
    ($feature:tt) => {
        use super::super::{edges, row_blocks, taps};
        use super::{check_tile, Depthwise, RowTaps, Tile};

        /// Loads `L` values, or lanes `0..` of `m` when `masked`.
        #[inline(always)]
        unsafe fn ld(p: *const f32, m: M, masked: bool) -> V {
            if masked {
                load_masked(p, m)
            } else {
                load(p)
            }
        }

        #[inline(always)]
        unsafe fn st(p: *mut f32, v: V, m: M, masked: bool) {
            if masked {
                store_masked(p, m, v)
            } else {
                store(p, v)
            }
        }

        /// One GEMM tile of `MR` rows x `NV` vectors: `MR * NV` accumulators in registers
        /// (zero, or the partial sums in the output for a later slice of the reduction),
        /// each step broadcasting one value of each of the `MR` rows of A against `NV`
        /// vectors of the B panel; on the last slice, bias, clamp and residual in registers
        /// before the store (else the bare sums are stored).
        ///
        /// # Safety
        /// The CPU must support the module's ISA (bounds: [`check_tile`]).
        #[target_feature(enable = $feature)]
        pub(in super::super) unsafe fn tile<const MR: usize, const NV: usize>(
            t: &Tile,
            out: &mut [f32],
        ) {
            check_tile(t, out, MR, NV * L);
            let a = t.a.as_ptr();
            let mut rows = [a; MR];
            for (r, row) in rows.iter_mut().enumerate() {
                if r < t.rows {
                    *row = a.add(r * t.lda);
                }
            }
            let op = out.as_mut_ptr();
            let mut masks = [mask(L); NV];
            for (v, m) in masks.iter_mut().enumerate() {
                *m = mask(t.cols.saturating_sub(v * L).min(L));
            }
            let mut acc = [[zero(); NV]; MR];
            if t.load_c {
                for r in 0..MR.min(t.rows) {
                    for v in 0..NV {
                        acc[r][v] = load_masked(op.add(r * t.ldc + v * L), masks[v]);
                    }
                }
            }
            let mut b = t.panel.as_ptr();
            // (The rows to prefetch lie inside `t.prefetch`; a prefetch never faults anyway.)
            let (pf, pf_rows) = match t.prefetch {
                Some(rows) => (rows.as_ptr(), rows.len() / t.nr),
                None => (b, 0),
            };
            // Two loops, the steps that prefetch and the rest, rather than one with a test:
            // the one loop needed a register more than x86_64 has (a row pointer was reloaded
            // from the stack at every step, 10-20 % slower without LTO).
            let pf_rows = pf_rows.min(t.k);
            for p in 0..pf_rows {
                // Each 64-byte line of the row (`nr` floats: two lines with AVX-512).
                let mut line = 0;
                while line < t.nr {
                    prefetch(pf.add(p * t.nr + line));
                    line += 16;
                }
                tile_step(&rows, p, b, &mut acc);
                b = b.add(t.nr);
            }
            for p in pf_rows..t.k {
                tile_step(&rows, p, b, &mut acc);
                b = b.add(t.nr);
            }
            if !t.finish {
                for r in 0..MR.min(t.rows) {
                    for v in 0..NV {
                        store_masked(op.add(r * t.ldc + v * L), masks[v], acc[r][v]);
                    }
                }
                return;
            }
            let lo = splat(t.clamp.lo);
            let hi = splat(t.clamp.hi);
            let mut bias = [zero(); NV];
            for (v, x) in bias.iter_mut().enumerate() {
                *x = load(t.bias.as_ptr().add(v * L));
            }
            for r in 0..MR {
                if r >= t.rows {
                    break;
                }
                for v in 0..NV {
                    let at = r * t.ldc + v * L;
                    let mut x = min(max(add(acc[r][v], bias[v]), lo), hi);
                    if let Some(res) = t.residual {
                        x = add(x, load_masked(res.as_ptr().add(at), masks[v]));
                    }
                    store_masked(op.add(at), masks[v], x);
                }
            }
        }

        /// One step of the reduction of [`tile`]: `NV` vectors of the panel's row at `b`
        /// against value `p` of each of the `MR` rows of A.
        #[inline(always)]
        unsafe fn tile_step<const MR: usize, const NV: usize>(
            rows: &[*const f32; MR],
            p: usize,
            b: *const f32,
            acc: &mut [[V; NV]; MR],
        ) {
            let mut bv = [zero(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = load(b.add(v * L));
            }
            for r in 0..MR {
                let av = splat(*rows[r].add(p));
                for v in 0..NV {
                    acc[r][v] = fma(av, bv[v], acc[r][v]);
                }
            }
        }

        /// One output row of a depthwise convolution, channels-last, vectorised over
        /// channels. 3x3 kernels run in blocks of `DW_OB` output pixels along the row (the
        /// input rows they share are loaded once, the three weights of a kernel row once per
        /// block) wherever the kernel columns are all inside the input; the border pixels,
        /// and other kernel sizes, one pixel at a time over the taps inside the input.
        ///
        /// # Safety
        /// The CPU must support the module's ISA; each row of `t.ky0..t.ky1` must be a whole
        /// input row (`w*c` values), `out` must hold `ow*c` values, the weights
        /// `kh*kw*c` and the bias `c` ([`Depthwise::run_rows`] checks all of it).
        #[target_feature(enable = $feature)]
        pub(in super::super) unsafe fn depthwise_row(d: &Depthwise, t: &RowTaps, out: &mut [f32]) {
            // The channel counts of MobileNetV2 as constants: the offsets of a block's taps,
            // `(j*S + kx)*c`, become displacements of three row pointers (a runtime `c` needs
            // a register or a spill per offset); any other count runs the generic copy.
            match d.c {
                32 => depthwise_row_c::<32>(d, t, out),
                96 => depthwise_row_c::<96>(d, t, out),
                144 => depthwise_row_c::<144>(d, t, out),
                192 => depthwise_row_c::<192>(d, t, out),
                384 => depthwise_row_c::<384>(d, t, out),
                576 => depthwise_row_c::<576>(d, t, out),
                960 => depthwise_row_c::<960>(d, t, out),
                _ => depthwise_row_c::<0>(d, t, out),
            }
        }

        /// [`depthwise_row`] for `C` channels (`d.c == C`), or any count (`C == 0`).
        ///
        /// A 3x3 kernel at stride 1 or 2 runs the row in even blocks of `DW_OB` or
        /// `DW_OB - 1` pixels ([`row_blocks`]); a block's first pixel may miss its left
        /// kernel column and its last pixel its right one (the padding), so the border
        /// pixels run in registers with their neighbours instead of one tap at a time (at
        /// 14x14 and 7x7, two or three pixels of every row are border pixels).
        #[target_feature(enable = $feature)]
        unsafe fn depthwise_row_c<const C: usize>(d: &Depthwise, t: &RowTaps, out: &mut [f32]) {
            debug_assert!(C == 0 || C == d.c);
            let orow = out.as_mut_ptr();
            let sx = d.stride.1;
            let blocked = d.kh == 3 && d.kw == 3 && (sx == 1 || sx == 2);
            let mut ox = 0;
            for n in row_blocks(d.ow, if blocked { DW_OB } else { 0 }) {
                match edges(d, ox, n) {
                    Some((left, right)) if n == DW_OB => match sx {
                        1 => dw_block::<DW_OB, 1, C>(d, t, orow, ox, left, right),
                        _ => dw_block::<DW_OB, 2, C>(d, t, orow, ox, left, right),
                    },
                    Some((left, right)) if n == DW_OB - 1 => match sx {
                        1 => dw_block::<{ DW_OB - 1 }, 1, C>(d, t, orow, ox, left, right),
                        _ => dw_block::<{ DW_OB - 1 }, 2, C>(d, t, orow, ox, left, right),
                    },
                    _ => {
                        for o in ox..ox + n {
                            dw_pixel(d, t, orow, o);
                        }
                    }
                }
                ox += n;
            }
        }

        /// `OB` output pixels `ox..ox + OB` of one output row (`orow`), stride `S` along the
        /// row, 3x3 kernel; every kernel column is inside the input except, when `left`, the
        /// first pixel's left one and, when `right`, the last pixel's right one ([`edges`]).
        #[inline(always)]
        unsafe fn dw_block<const OB: usize, const S: usize, const C: usize>(
            d: &Depthwise,
            t: &RowTaps,
            orow: *mut f32,
            ox: usize,
            left: bool,
            right: bool,
        ) {
            let c = if C == 0 { d.c } else { C };
            // The first pixel's left kernel column (-1 when it is the padding).
            let x0 = (ox * S) as isize - d.pad.1 as isize;
            let (wp, bp) = (d.weights.as_ptr(), d.bias.as_ptr());
            let op = orow.add(ox * c);
            let lo = splat(d.clamp.lo);
            let hi = splat(d.clamp.hi);
            let full = c / L;
            for chunk in 0..c.div_ceil(L) {
                let c0 = chunk * L;
                let m = mask(c - c0);
                // The interior blocks (all but two of a row) compiled without the edge tests.
                let e = (left, right);
                match (chunk >= full, left || right) {
                    (true, true) => {
                        dw_chunk::<OB, S, C, true>(d, t, wp, bp, op, c0, m, true, x0, e, lo, hi)
                    }
                    (true, false) => {
                        dw_chunk::<OB, S, C, false>(d, t, wp, bp, op, c0, m, true, x0, e, lo, hi)
                    }
                    (false, true) => {
                        dw_chunk::<OB, S, C, true>(d, t, wp, bp, op, c0, m, false, x0, e, lo, hi)
                    }
                    (false, false) => {
                        dw_chunk::<OB, S, C, false>(d, t, wp, bp, op, c0, m, false, x0, e, lo, hi)
                    }
                }
            }
        }

        /// Channels `c0..c0 + L` of [`dw_block`] (`masked`: lanes past `c` off). The taps
        /// off the input (`left`, `right`, looked at only when `EDGE`) are skipped, never
        /// loaded: their addresses are only formed (wrapping), not read.
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn dw_chunk<const OB: usize, const S: usize, const C: usize, const EDGE: bool>(
            d: &Depthwise,
            t: &RowTaps,
            wp: *const f32,
            bp: *const f32,
            op: *mut f32,
            c0: usize,
            m: M,
            masked: bool,
            x0: isize,
            (left, right): (bool, bool),
            lo: V,
            hi: V,
        ) {
            let c = if C == 0 { d.c } else { C };
            let bias = ld(bp.add(c0), m, masked);
            let mut acc = [bias; OB];
            for ky in t.ky0..t.ky1 {
                let row = t.rows[ky]
                    .as_ptr()
                    .wrapping_offset(x0 * c as isize + c0 as isize);
                let w = wp.add(ky * 3 * c + c0);
                let (w0, w1, w2) = (
                    ld(w, m, masked),
                    ld(w.add(c), m, masked),
                    ld(w.add(2 * c), m, masked),
                );
                for (j, a) in acc.iter_mut().enumerate() {
                    let p = row.wrapping_add(j * S * c);
                    if !(EDGE && j == 0 && left) {
                        *a = fma(ld(p, m, masked), w0, *a);
                    }
                    *a = fma(ld(p.wrapping_add(c), m, masked), w1, *a);
                    if !(EDGE && j == OB - 1 && right) {
                        *a = fma(ld(p.wrapping_add(2 * c), m, masked), w2, *a);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                st(op.add(j * c + c0), min(max(*a, lo), hi), m, masked);
            }
        }

        /// One output pixel, over the kernel taps inside the input (any kernel size).
        #[inline(always)]
        unsafe fn dw_pixel(d: &Depthwise, t: &RowTaps, orow: *mut f32, ox: usize) {
            let c = d.c;
            let (x0, kx0, kx1) = taps(ox, d.stride.1, d.pad.1, d.w, d.kw);
            let (wp, bp) = (d.weights.as_ptr(), d.bias.as_ptr());
            let op = orow.add(ox * c);
            let lo = splat(d.clamp.lo);
            let hi = splat(d.clamp.hi);
            let full = c / L;
            for chunk in 0..c.div_ceil(L) {
                let c0 = chunk * L;
                let masked = chunk >= full;
                let m = mask(c - c0);
                let mut acc = ld(bp.add(c0), m, masked);
                for ky in t.ky0..t.ky1 {
                    let row = t.rows[ky].as_ptr();
                    for kx in kx0..kx1 {
                        let ix = (x0 + kx as isize) as usize;
                        let xv = ld(row.add(ix * c + c0), m, masked);
                        let wv = ld(wp.add((ky * d.kw + kx) * c + c0), m, masked);
                        acc = fma(xv, wv, acc);
                    }
                }
                st(op.add(c0), min(max(acc, lo), hi), m, masked);
            }
        }
    };
}

/// AVX-512F: 16 lanes; GEMM tiles of 7 rows x 32 columns (14 zmm accumulators; every pixel
/// count of MobileNetV2 at 224 is a multiple of 7), depthwise
/// blocks of 8 pixels.
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    type V = __m512;
    type M = __mmask16;
    const L: usize = 16;
    pub(in super::super) const GEMM_MR: usize = 7;
    const DW_OB: usize = 8;

    #[inline(always)]
    fn mask(n: usize) -> M {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as M
        }
    }
    #[inline(always)]
    unsafe fn zero() -> V {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> V {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> V {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f32, m: M) -> V {
        _mm512_maskz_loadu_ps(m, p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: V) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, m: M, v: V) {
        _mm512_mask_storeu_ps(p, m, v)
    }
    #[inline(always)]
    unsafe fn add(a: V, b: V) -> V {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: V, b: V, c: V) -> V {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn min(a: V, b: V) -> V {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: V, b: V) -> V {
        _mm512_max_ps(a, b)
    }

    simd_kernels!("avx512f,avx2,fma");
}

/// AVX2 + FMA: 8 lanes; GEMM tiles of 6 rows x 16 columns (12 ymm accumulators), depthwise
/// blocks of 4 pixels.
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    type V = __m256;
    type M = __m256i;
    const L: usize = 8;
    pub(in super::super) const GEMM_MR: usize = 6;
    const DW_OB: usize = 4;

    /// Lanes `0..n` set (sign bit), the others clear.
    #[inline(always)]
    unsafe fn mask(n: usize) -> M {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lane)
    }
    #[inline(always)]
    unsafe fn zero() -> V {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> V {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> V {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f32, m: M) -> V {
        _mm256_maskload_ps(p, m)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: V) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, m: M, v: V) {
        _mm256_maskstore_ps(p, m, v)
    }
    #[inline(always)]
    unsafe fn add(a: V, b: V) -> V {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: V, b: V, c: V) -> V {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn min(a: V, b: V) -> V {
        _mm256_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: V, b: V) -> V {
        _mm256_max_ps(a, b)
    }

    simd_kernels!("avx2,fma");
}
