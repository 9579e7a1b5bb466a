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

/// Instruction set of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86_64 AVX-512F: GEMM tiles of 7 rows x 32 columns (14 zmm accumulators).
    Avx512,
    /// x86_64 AVX2 + FMA: GEMM tiles of 6 rows x 16 columns (12 ymm accumulators).
    Avx2,
    /// Plain Rust (no `unsafe`), any target: the fallback and the reference of the tests.
    Portable,
}

impl Isa {
    /// The best instruction set of this CPU.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::Avx512.available() {
                return Isa::Avx512;
            }
            if Isa::Avx2.available() {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU can run the kernels of `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every instruction set this CPU can run (the tests run each).
    pub fn all_available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    /// Parses `avx512`, `avx2` or `portable`.
    pub fn parse(name: &str) -> Option<Isa> {
        match name {
            "avx512" => Some(Isa::Avx512),
            "avx2" => Some(Isa::Avx2),
            "portable" => Some(Isa::Portable),
            _ => None,
        }
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// (rows, columns) of one GEMM tile.
    fn tile(self) -> (usize, usize) {
        match self {
            Isa::Avx512 => (7, 32),
            Isa::Avx2 => (6, 16),
            Isa::Portable => (4, 16),
        }
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

/// The B operand of [`gemm`] (weights `[k][n]`), packed in panels of `nr` columns: panel `p`
/// holds `k` rows of `nr` values, columns `p*nr..p*nr+nr` (zero past `n`). The bias is padded
/// the same way.
#[derive(Debug, Clone)]
pub struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    nr: usize,
    data: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedB {
    /// Packs `w(row, col)` for `row < k`, `col < n` and a bias of length `n` for the kernels of
    /// `isa`.
    pub fn new(isa: Isa, k: usize, n: usize, w: impl Fn(usize, usize) -> f32, bias: &[f32]) -> Self {
        assert_eq!(bias.len(), n, "bias length");
        let nr = isa.tile().1;
        let panels = n.div_ceil(nr);
        let mut data = vec![0.0; panels * k * nr];
        let mut padded_bias = vec![0.0; panels * nr];
        for p in 0..panels {
            for col in 0..nr.min(n - p * nr) {
                let j = p * nr + col;
                for row in 0..k {
                    data[(p * k + row) * nr + col] = w(row, j);
                }
                padded_bias[j] = bias[j];
            }
        }
        Self {
            isa,
            k,
            n,
            nr,
            data,
            bias: padded_bias,
        }
    }

    /// Rows (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns (output channels).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The bias (padded to whole panels; the padding stays zero).
    pub fn bias_mut(&mut self) -> &mut [f32] {
        &mut self.bias[..self.n]
    }

    /// The instruction set it was packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

/// `c[i][j] = clamp(sum_p a[i*lda + p] * b(p, j) + bias[j], lo, hi) + residual[i][j]` for
/// `i < m`, `j < b.n()`, with `c` and `residual` row-major `m x n`.
///
/// Panics when a slice is too short for the shapes (this check is what makes the unchecked
/// loads of the SIMD kernels sound).
pub fn gemm(
    a: &[f32],
    m: usize,
    lda: usize,
    b: &PackedB,
    clamp: Clamp,
    residual: Option<&[f32]>,
    c: &mut [f32],
) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k, "lda {lda} < k {k}");
    assert!(a.len() >= (m - 1) * lda + k, "A is too short");
    assert!(c.len() >= m * n, "C is too short");
    if let Some(r) = residual {
        assert!(r.len() >= m * n, "residual is too short");
    }
    let (mr, nr) = b.isa.tile();
    debug_assert_eq!(nr, b.nr);
    // Rows per block: the block's A rows (k floats each) stay in L2 while every panel of B
    // streams past them.
    let mc = ((32 * 1024 / k.max(1)) / mr).max(1) * mr;
    let panels = n.div_ceil(nr);
    for i0 in (0..m).step_by(mc) {
        let i1 = (i0 + mc).min(m);
        for p in 0..panels {
            let j0 = p * nr;
            let cols = nr.min(n - j0);
            let panel = &b.data[p * k * nr..(p + 1) * k * nr];
            let bias = &b.bias[j0..j0 + nr];
            for i in (i0..i1).step_by(mr) {
                let rows = mr.min(i1 - i);
                let tile = Tile {
                    a: &a[i * lda..],
                    lda,
                    k,
                    panel,
                    bias,
                    clamp,
                    rows,
                    cols,
                    ldc: n,
                    residual: residual.map(|r| &r[i * n + j0..]),
                };
                let out = &mut c[i * n + j0..];
                match b.isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: a PackedB for Avx512 is only made after `Isa::available`
                    // (checked by the executor), and `tile_avx512` reads and writes only
                    // within the slices of `tile` and `out` (see its comment).
                    Isa::Avx512 => unsafe { x86::tile_avx512(&tile, out) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above, for AVX2 + FMA.
                    Isa::Avx2 => unsafe { x86::tile_avx2(&tile, out) },
                    _ => tile_portable(&tile, out),
                }
            }
        }
    }
}

/// One GEMM tile: `rows <= MR` rows of A from `a` (row `r` at `r * lda`, `k` values), one
/// panel of B, and `cols <= NR` valid output columns; row `r` of the output at `r * ldc`.
struct Tile<'a> {
    a: &'a [f32],
    lda: usize,
    k: usize,
    panel: &'a [f32],
    bias: &'a [f32],
    clamp: Clamp,
    rows: usize,
    cols: usize,
    ldc: usize,
    residual: Option<&'a [f32]>,
}

fn tile_portable(t: &Tile, out: &mut [f32]) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..t.k {
        let b = &t.panel[p * NR..p * NR + NR];
        for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
            let a = t.a[r * t.lda + p];
            for (x, bv) in row.iter_mut().zip(b) {
                *x += a * bv;
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        for (j, x) in row.iter().enumerate().take(t.cols) {
            let mut v = (x + t.bias[j]).max(t.clamp.lo).min(t.clamp.hi);
            if let Some(res) = t.residual {
                v += res[r * t.ldc + j];
            }
            out[r * t.ldc + j] = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Tile;
    use std::arch::x86_64::*;

    /// Bounds (checked here, once per tile, so the loop needs no checks): row `r < rows` of
    /// A is `a[r*lda .. r*lda + k]`; rows `rows..MR` re-read row 0 and are never stored. The
    /// panel holds `k * NR` values, the bias `NR`. Output and residual rows `r < rows` are
    /// `[r*ldc .. r*ldc + cols]`; the columns `cols..NR` are masked off, and masked lanes
    /// neither load nor store (no fault either).
    fn check(t: &Tile, out: &[f32], mr: usize, nr: usize) {
        assert!(t.rows >= 1 && t.rows <= mr && t.cols >= 1 && t.cols <= nr);
        assert!(t.a.len() >= (t.rows - 1) * t.lda + t.k);
        assert!(t.panel.len() >= t.k * nr && t.bias.len() >= nr);
        let last = (t.rows - 1) * t.ldc + t.cols;
        assert!(out.len() >= last);
        if let Some(r) = t.residual {
            assert!(r.len() >= last);
        }
    }

    /// 7 x 32 tile with AVX-512F.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_avx512(t: &Tile, out: &mut [f32]) {
        const MR: usize = 7;
        const NR: usize = 32;
        check(t, out, MR, NR);
        let rows: [*const f32; MR] =
            std::array::from_fn(|r| t.a.as_ptr().add(if r < t.rows { r * t.lda } else { 0 }));
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let mut b = t.panel.as_ptr();
        for p in 0..t.k {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for r in 0..MR {
                let a = _mm512_set1_ps(*rows[r].add(p));
                acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
            }
            b = b.add(NR);
        }
        let masks: [__mmask16; 2] = [
            mask16(t.cols.min(16)),
            mask16(t.cols.saturating_sub(16)),
        ];
        let lo = _mm512_set1_ps(t.clamp.lo);
        let hi = _mm512_set1_ps(t.clamp.hi);
        let bias = [_mm512_loadu_ps(t.bias.as_ptr()), _mm512_loadu_ps(t.bias.as_ptr().add(16))];
        for r in 0..t.rows {
            for h in 0..2 {
                let mut v = _mm512_add_ps(acc[r][h], bias[h]);
                v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                let at = r * t.ldc + 16 * h;
                if let Some(res) = t.residual {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(masks[h], res.as_ptr().add(at)));
                }
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), masks[h], v);
            }
        }
    }

    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// 6 x 16 tile with AVX2 + FMA.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2(t: &Tile, out: &mut [f32]) {
        const MR: usize = 6;
        const NR: usize = 16;
        check(t, out, MR, NR);
        let rows: [*const f32; MR] =
            std::array::from_fn(|r| t.a.as_ptr().add(if r < t.rows { r * t.lda } else { 0 }));
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let mut b = t.panel.as_ptr();
        for p in 0..t.k {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for r in 0..MR {
                let a = _mm256_broadcast_ss(&*rows[r].add(p));
                acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
            }
            b = b.add(NR);
        }
        let masks = [mask8(t.cols.min(8)), mask8(t.cols.saturating_sub(8))];
        let lo = _mm256_set1_ps(t.clamp.lo);
        let hi = _mm256_set1_ps(t.clamp.hi);
        let bias = [_mm256_loadu_ps(t.bias.as_ptr()), _mm256_loadu_ps(t.bias.as_ptr().add(8))];
        for r in 0..t.rows {
            for h in 0..2 {
                let mut v = _mm256_add_ps(acc[r][h], bias[h]);
                v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
                let at = r * t.ldc + 8 * h;
                if let Some(res) = t.residual {
                    v = _mm256_add_ps(v, _mm256_maskload_ps(res.as_ptr().add(at), masks[h]));
                }
                _mm256_maskstore_ps(out.as_mut_ptr().add(at), masks[h], v);
            }
        }
    }

    /// Lanes `0..n` of 8 set (sign bit), the others clear.
    #[target_feature(enable = "avx2")]
    fn mask8(n: usize) -> __m256i {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane)
    }

    /// Depthwise convolution with AVX-512F: 16 channels per vector, masked for the last
    /// partial chunk.
    ///
    /// Bounds (asserted by [`super::Depthwise::run`]): `x` holds `h*w*c` values, `out`
    /// `oh*ow*c`, the weights `kh*kw*c`, the bias `c`. Kernel taps are restricted to
    /// `ky0..ky1`, `kx0..kx1`, the ones inside the input, so every input offset is
    /// `(iy*w + ix)*c + ch` with `iy < h`, `ix < w`, `ch < c`; lanes at or past `c` are
    /// masked off (no load, no store, no fault).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn depthwise_avx512(d: &super::Depthwise, x: &[f32], out: &mut [f32]) {
        let c = d.c;
        let (xp, wp, bp, op) = (x.as_ptr(), d.weights.as_ptr(), d.bias.as_ptr(), out.as_mut_ptr());
        let lo = _mm512_set1_ps(d.clamp.lo);
        let hi = _mm512_set1_ps(d.clamp.hi);
        for oy in 0..d.oh {
            let (y0, ky0, ky1) = super::taps(oy, d.stride.0, d.pad.0, d.h, d.kh);
            for c0 in (0..c).step_by(16) {
                let m = mask16((c - c0).min(16));
                let bias = _mm512_maskz_loadu_ps(m, bp.add(c0));
                // 3x3 kernels: the nine weight vectors stay in registers across the row.
                let w9: [_; 9] = std::array::from_fn(|t| {
                    if d.kh * d.kw == 9 {
                        _mm512_maskz_loadu_ps(m, wp.add(t * c + c0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                for ox in 0..d.ow {
                    let (x0, kx0, kx1) = super::taps(ox, d.stride.1, d.pad.1, d.w, d.kw);
                    let mut acc = _mm512_setzero_ps();
                    if d.kh == 3 && d.kw == 3 && ky0 == 0 && ky1 == 3 && kx0 == 0 && kx1 == 3 {
                        // Interior: all nine taps inside the input (iy0 + 2 < h, ix0 + 2 < w).
                        let (iy0, ix0) = (y0 as usize, x0 as usize);
                        for (t, wv) in w9.iter().enumerate() {
                            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, xp.add(((iy0 + t / 3) * d.w + ix0 + t % 3) * c + c0)), *wv, acc);
                        }
                        let v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(acc, bias), lo), hi);
                        _mm512_mask_storeu_ps(op.add((oy * d.ow + ox) * c + c0), m, v);
                        continue;
                    }
                    for ky in ky0..ky1 {
                        let iy = (y0 + ky as isize) as usize;
                        for kx in kx0..kx1 {
                            let ix = (x0 + kx as isize) as usize;
                            let xv = _mm512_maskz_loadu_ps(m, xp.add((iy * d.w + ix) * c + c0));
                            let wv = _mm512_maskz_loadu_ps(m, wp.add((ky * d.kw + kx) * c + c0));
                            acc = _mm512_fmadd_ps(xv, wv, acc);
                        }
                    }
                    let v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(acc, bias), lo), hi);
                    _mm512_mask_storeu_ps(op.add((oy * d.ow + ox) * c + c0), m, v);
                }
            }
        }
    }

    /// Depthwise convolution with AVX2 + FMA: 8 channels per vector, the last partial chunk
    /// masked (`vmaskmovps` neither loads nor stores masked lanes, and does not fault on
    /// them). Bounds as for [`depthwise_avx512`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn depthwise_avx2(d: &super::Depthwise, x: &[f32], out: &mut [f32]) {
        let c = d.c;
        let (xp, wp, bp, op) = (x.as_ptr(), d.weights.as_ptr(), d.bias.as_ptr(), out.as_mut_ptr());
        let lo = _mm256_set1_ps(d.clamp.lo);
        let hi = _mm256_set1_ps(d.clamp.hi);
        for oy in 0..d.oh {
            let (y0, ky0, ky1) = super::taps(oy, d.stride.0, d.pad.0, d.h, d.kh);
            for c0 in (0..c).step_by(8) {
                let m = mask8((c - c0).min(8));
                let bias = _mm256_maskload_ps(bp.add(c0), m);
                // 3x3 kernels: the nine weight vectors stay in registers across the row.
                let w9: [_; 9] = std::array::from_fn(|t| {
                    if d.kh * d.kw == 9 {
                        _mm256_maskload_ps(wp.add(t * c + c0), m)
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                for ox in 0..d.ow {
                    let (x0, kx0, kx1) = super::taps(ox, d.stride.1, d.pad.1, d.w, d.kw);
                    let mut acc = _mm256_setzero_ps();
                    if d.kh == 3 && d.kw == 3 && ky0 == 0 && ky1 == 3 && kx0 == 0 && kx1 == 3 {
                        // Interior: all nine taps inside the input (iy0 + 2 < h, ix0 + 2 < w).
                        let (iy0, ix0) = (y0 as usize, x0 as usize);
                        for (t, wv) in w9.iter().enumerate() {
                            acc = _mm256_fmadd_ps(_mm256_maskload_ps(xp.add(((iy0 + t / 3) * d.w + ix0 + t % 3) * c + c0), m), *wv, acc);
                        }
                        let v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(acc, bias), lo), hi);
                        _mm256_maskstore_ps(op.add((oy * d.ow + ox) * c + c0), m, v);
                        continue;
                    }
                    for ky in ky0..ky1 {
                        let iy = (y0 + ky as isize) as usize;
                        for kx in kx0..kx1 {
                            let ix = (x0 + kx as isize) as usize;
                            let xv = _mm256_maskload_ps(xp.add((iy * d.w + ix) * c + c0), m);
                            let wv = _mm256_maskload_ps(wp.add((ky * d.kw + kx) * c + c0), m);
                            acc = _mm256_fmadd_ps(xv, wv, acc);
                        }
                    }
                    let v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(acc, bias), lo), hi);
                    _mm256_maskstore_ps(op.add((oy * d.ow + ox) * c + c0), m, v);
                }
            }
        }
    }
}

/// For output index `o` along one axis: the first input index `o*stride - pad` (may be
/// negative) and the kernel taps `k0..k1` that fall inside `0..size`.
#[inline(always)]
fn taps(o: usize, stride: usize, pad: usize, size: usize, k: usize) -> (isize, usize, usize) {
    let i0 = (o * stride) as isize - pad as isize;
    let k0 = (-i0).max(0) as usize;
    let k1 = ((size as isize - i0).min(k as isize)).max(0) as usize;
    (i0, k0, k1.max(k0))
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
    pub weights: Vec<f32>,
    /// Bias per channel.
    pub bias: Vec<f32>,
    /// Clamp after the bias.
    pub clamp: Clamp,
}

impl Depthwise {
    /// Runs it: `x` is `h*w*c`, `out` is `oh*ow*c`.
    pub fn run(&self, x: &[f32], out: &mut [f32]) {
        assert!(x.len() >= self.h * self.w * self.c, "depthwise input is too short");
        assert!(out.len() >= self.oh * self.ow * self.c, "depthwise output is too short");
        assert_eq!(self.weights.len(), self.kh * self.kw * self.c);
        assert_eq!(self.bias.len(), self.c);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the executor only builds a Depthwise for an available Isa; the body is
            // safe code.
            Isa::Avx512 => unsafe { x86::depthwise_avx512(self, x, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { x86::depthwise_avx2(self, x, out) },
            _ => depthwise_portable(self, x, out),
        }
    }
}

#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    a * b + c
}

/// The depthwise convolution in safe Rust, in chunks of 16 channels.
fn depthwise_portable(d: &Depthwise, x: &[f32], out: &mut [f32]) {
    const L: usize = 16;
    let c = d.c;
    let chunks = c / L;
    for oy in 0..d.oh {
        // The kernel rows inside the input for this output row.
        let y0 = (oy * d.stride.0) as isize - d.pad.0 as isize;
        let ky0 = (-y0).max(0) as usize;
        let ky1 = ((d.h as isize - y0).min(d.kh as isize)).max(0) as usize;
        for ox in 0..d.ow {
            let x0 = (ox * d.stride.1) as isize - d.pad.1 as isize;
            let kx0 = (-x0).max(0) as usize;
            let kx1 = ((d.w as isize - x0).min(d.kw as isize)).max(0) as usize;
            let o = &mut out[(oy * d.ow + ox) * c..(oy * d.ow + ox + 1) * c];
            for chunk in 0..chunks {
                let c0 = chunk * L;
                let mut acc = [0.0f32; L];
                for ky in ky0..ky1 {
                    let iy = (y0 + ky as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (x0 + kx as isize) as usize;
                        let xi: &[f32; L] = x[(iy * d.w + ix) * c + c0..][..L]
                            .try_into()
                            .expect("16 values");
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
                for ky in ky0..ky1 {
                    let iy = (y0 + ky as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (x0 + kx as isize) as usize;
                        acc = madd(
                            x[(iy * d.w + ix) * c + ch],
                            d.weights[(ky * d.kw + kx) * c + ch],
                            acc,
                        );
                    }
                }
                o[ch] = (acc + d.bias[ch]).max(d.clamp.lo).min(d.clamp.hi);
            }
        }
    }
}

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
        let (c, pl) = (self.c, self.patch_len());
        assert!(x.len() >= self.h * self.w * c, "im2col input is too short");
        assert!(out.len() >= self.oh * self.ow * pl, "im2col output is too short");
        for oy in 0..self.oh {
            for ox in 0..self.ow {
                let patch = &mut out[(oy * self.ow + ox) * pl..][..pl];
                for ky in 0..self.kh {
                    let iy = (oy * self.stride.0 + ky) as isize - self.pad.0 as isize;
                    for kx in 0..self.kw {
                        let ix = (ox * self.stride.1 + kx) as isize - self.pad.1 as isize;
                        let dst = &mut patch[(ky * self.kw + kx) * c..][..c];
                        if iy < 0 || ix < 0 || iy >= self.h as isize || ix >= self.w as isize {
                            dst.fill(0.0);
                        } else {
                            let at = (iy as usize * self.w + ix as usize) * c;
                            dst.copy_from_slice(&x[at..at + c]);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect()
    }

    /// Plain triple loop, in f64.
    #[allow(clippy::too_many_arguments)]
    fn gemm_reference(
        a: &[f32],
        m: usize,
        k: usize,
        n: usize,
        w: &[f32],
        bias: &[f32],
        clamp: Clamp,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|p| a[i * k + p] as f64 * w[p * n + j] as f64).sum();
                let mut v = (s as f32 + bias[j]).max(clamp.lo).min(clamp.hi);
                if let Some(r) = residual {
                    v += r[i * n + j];
                }
                c[i * n + j] = v;
            }
        }
        c
    }

    #[test]
    fn gemm_matches_the_reference_on_every_isa_and_edge() {
        // MobileNetV2's (k, n) pairs and row counts, plus ragged edges of every tile size.
        let shapes = [
            (49, 320, 1280),
            (49, 960, 160),
            (196, 64, 384),
            (13, 27, 32),
            (8, 16, 24),
            (1, 5, 1),
            (29, 144, 33),
        ];
        for isa in Isa::all_available() {
            for (s, &(m, k, n)) in shapes.iter().enumerate() {
                let a = random(m * k, s as u64);
                let w = random(k * n, 100 + s as u64);
                let bias = random(n, 200 + s as u64);
                let res = random(m * n, 300 + s as u64);
                let packed = PackedB::new(isa, k, n, |p, j| w[p * n + j], &bias);
                for (clamp, residual) in [
                    (Clamp::NONE, None),
                    (Clamp { lo: 0.0, hi: 0.5 }, Some(&res[..])),
                ] {
                    let expected = gemm_reference(&a, m, k, n, &w, &bias, clamp, residual);
                    let mut c = vec![f32::NAN; m * n];
                    gemm(&a, m, k, &packed, clamp, residual, &mut c);
                    for (i, (x, y)) in c.iter().zip(&expected).enumerate() {
                        assert!(
                            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                            "{isa:?} {m}x{k}x{n} at {i}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_leaves_columns_past_n_alone_with_a_strided_a() {
        for isa in Isa::all_available() {
            let (m, k, n, lda) = (9, 7, 20, 11);
            let a = random((m - 1) * lda + k, 1);
            let w = random(k * n, 2);
            let packed = PackedB::new(isa, k, n, |p, j| w[p * n + j], &vec![0.0; n]);
            let mut c = vec![7.0; m * n + 5];
            gemm(&a, m, lda, &packed, Clamp::NONE, None, &mut c);
            assert!(c[m * n..].iter().all(|&v| v == 7.0), "{isa:?} wrote past C");
            let compact: Vec<f32> = (0..m)
                .flat_map(|i| a[i * lda..i * lda + k].to_vec())
                .collect();
            let expected = gemm_reference(&compact, m, k, n, &w, &vec![0.0; n], Clamp::NONE, None);
            for (x, y) in c.iter().zip(&expected) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{isa:?}");
            }
        }
    }

    #[test]
    fn depthwise_simd_matches_portable() {
        for &(h, c, stride, pad) in &[(9usize, 32usize, 1usize, (1usize, 1usize)), (10, 48, 2, (0, 0)), (7, 20, 2, (1, 1))] {
            let oh = (h + pad.0 + 1 - 3) / stride + 1;
            let x = random(h * h * c, 5);
            let base = Depthwise {
                isa: Isa::Portable,
                h,
                w: h,
                c,
                kh: 3,
                kw: 3,
                stride: (stride, stride),
                pad,
                oh,
                ow: oh,
                weights: random(9 * c, 6),
                bias: random(c, 7),
                clamp: Clamp { lo: 0.0, hi: 1.0 },
            };
            let mut expected = vec![0.0; oh * oh * c];
            base.run(&x, &mut expected);
            for isa in Isa::all_available() {
                let d = Depthwise { isa, ..base.clone() };
                let mut got = vec![0.0; oh * oh * c];
                d.run(&x, &mut got);
                for (a, b) in got.iter().zip(&expected) {
                    assert!((a - b).abs() <= 1e-5, "{isa:?}: {a} vs {b}");
                }
            }
        }
    }
}
