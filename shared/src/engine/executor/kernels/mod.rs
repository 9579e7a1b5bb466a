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

use std::ops::Range;

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
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => (x86::avx512::GEMM_MR, 32),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => (x86::avx2::GEMM_MR, 16),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 => (7, 32),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => (6, 16),
            Isa::Portable => (4, 16),
        }
    }
}

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

/// The B operand of [`gemm`] (weights `[k][n]`), packed in panels of `nr` columns: panel `p`
/// holds `k` rows of `nr` values, columns `p*nr..p*nr+nr` (zero past `n`). The bias is padded
/// the same way.
#[derive(Debug, Clone)]
pub struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    nr: usize,
    data: Aligned,
    bias: Aligned,
    /// Rows of a panel per slice of the reduction in [`gemm`]: `k` cut into the fewest even
    /// slices of at most [`KC_BYTES`].
    kc: usize,
}

impl PackedB {
    /// Packs `w(row, col)` for `row < k`, `col < n` and a bias of length `n` for the kernels of
    /// `isa`.
    pub fn new(isa: Isa, k: usize, n: usize, w: impl Fn(usize, usize) -> f32, bias: &[f32]) -> Self {
        assert_eq!(bias.len(), n, "bias length");
        assert!(isa.available(), "this CPU has no {}", isa.name());
        let nr = isa.tile().1;
        let panels = n.div_ceil(nr);
        let mut data = Aligned::zeroed(panels * k * nr);
        let mut padded_bias = Aligned::zeroed(panels * nr);
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
            kc: slice_rows(k, nr, KC_BYTES),
        }
    }

    /// The same, with slices of the reduction of at most `bytes` (the tests' other slicings).
    #[cfg(test)]
    fn with_slices_of(mut self, bytes: usize) -> Self {
        self.kc = slice_rows(self.k, self.nr, bytes);
        self
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
    let panels = n.div_ceil(nr);
    // Slices of the reduction (`PackedB::kc`): a panel of B is `k * nr` values, more than L1
    // holds for the deep layers (k = 576 is 74 KB with AVX-512). Cut into slices of `kc`
    // rows, each slice stays in L1 while every row tile of the block streams past it; each
    // slice's tiles start from the sums the previous one stored in C, and only the last adds
    // the bias, clamps and adds the residual. The sums are the same f32 values in the same
    // order as in one pass (a stored sum reloads exactly), so the result does not depend on
    // the slicing.
    let kc = b.kc;
    // `first`: the first row tile of a block, which prefetches the slice of B that the
    // block runs next (the rest of this panel, else the next panel's first slice) while it
    // computes, so that slice is on its way from L2 or L3 before its tiles need it.
    let run = |i: usize, rows: usize, p: usize, k0: usize, first: bool, c: &mut [f32]| {
        let j0 = p * nr;
        let k1 = (k0 + kc).min(k);
        let panel = &b.data[p * k * nr..(p + 1) * k * nr];
        let tile = Tile {
            a: &a[i * lda + k0..],
            lda,
            k: k1 - k0,
            panel: &panel[k0 * nr..k1 * nr],
            nr,
            bias: &b.bias[j0..j0 + nr],
            clamp,
            rows,
            cols: nr.min(n - j0),
            ldc: n,
            residual: residual.map(|r| &r[i * n + j0..]),
            load_c: k0 > 0,
            finish: k1 == k,
            prefetch: if !first {
                None
            } else if k1 < k {
                Some(&panel[k1 * nr..(k1 + kc).min(k) * nr])
            } else if p + 1 < panels {
                Some(&b.data[(p + 1) * k * nr..][..kc.min(k) * nr])
            } else {
                None
            },
        };
        run_tile(b.isa, &tile, &mut c[i * n + j0..]);
    };
    // Blocks of rows: a block's A rows stay in L2 while every panel of B streams past them
    // (B's panels, `k * nr` values, from L1 or L2). A small B makes small blocks (A then
    // comes from L1); a large B (the 14x14 and 7x7 layers, up to 1.6 MB) larger ones, so
    // that B is read once when all rows fit.
    let b_bytes = k * panels * nr * 4;
    let a_block = if b_bytes <= 256 * 1024 { 32 * 1024 } else { 1024 * 1024 };
    let mc = ((a_block / 4 / k.max(1)) / mr).max(1) * mr;
    for i0 in (0..m).step_by(mc) {
        let i1 = (i0 + mc).min(m);
        for p in 0..panels {
            // (k = 0: one empty slice, which still writes the bias.)
            for k0 in (0..k.max(1)).step_by(kc) {
                for i in (i0..i1).step_by(mr) {
                    run(i, mr.min(i1 - i), p, k0, i == i0, c);
                }
            }
        }
    }
}

/// Bytes of a slice of a B panel in [`gemm`] (at most): 32 KB, which stays in a 48 KB L1
/// beside a tile's rows of A (7 rows of 256 values with AVX-512; AVX2's panels are half as
/// wide, so its slices are twice as deep).
const KC_BYTES: usize = 32 * 1024;

/// Rows per slice when `k` rows of `nr` floats are cut into the fewest even slices of at
/// most `bytes`.
fn slice_rows(k: usize, nr: usize, bytes: usize) -> usize {
    let slices = (k * nr * 4).div_ceil(bytes).max(1);
    k.div_ceil(slices).max(1)
}

/// Runs one tile with the kernel of `isa` (a narrower one for a last panel of at most half
/// the tile's columns).
fn run_tile(isa: Isa, tile: &Tile, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a PackedB for Avx512 is only used after `Isa::available` (checked by the
        // executor, and by `PackedB::new`); the kernel checks its bounds (x86::check_tile).
        Isa::Avx512 => unsafe {
            use x86::avx512::tile as kernel;
            // The narrow kernel for a last panel of at most 16 columns, and fewer rows for
            // the last rows (no FMA is spent on rows that are not stored).
            match (tile.cols <= 16, tile.rows) {
                (true, 1..=3) => kernel::<3, 1>(tile, out),
                (true, _) => kernel::<{ x86::avx512::GEMM_MR }, 1>(tile, out),
                (false, 1..=3) => kernel::<3, 2>(tile, out),
                (false, _) => kernel::<{ x86::avx512::GEMM_MR }, 2>(tile, out),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 + FMA.
        Isa::Avx2 => unsafe {
            use x86::avx2::tile as kernel;
            match (tile.cols <= 8, tile.rows) {
                (true, 1..=3) => kernel::<3, 1>(tile, out),
                (true, _) => kernel::<{ x86::avx2::GEMM_MR }, 1>(tile, out),
                (false, 1..=3) => kernel::<3, 2>(tile, out),
                (false, _) => kernel::<{ x86::avx2::GEMM_MR }, 2>(tile, out),
            }
        },
        _ => tile_portable(tile, out),
    }
}

/// One GEMM tile: `rows <= MR` rows of A from `a` (row `r` at `r * lda`, `k` values), one
/// panel of B, and `cols <= NR` valid output columns; row `r` of the output at `r * ldc`.
struct Tile<'a> {
    a: &'a [f32],
    lda: usize,
    k: usize,
    panel: &'a [f32],
    /// Values per row of the panel.
    nr: usize,
    bias: &'a [f32],
    clamp: Clamp,
    rows: usize,
    cols: usize,
    ldc: usize,
    residual: Option<&'a [f32]>,
    /// Start from the partial sums in the output (a later slice of the reduction) instead
    /// of zero.
    load_c: bool,
    /// The last slice: add the bias, clamp, add the residual (else store the bare sums).
    finish: bool,
    /// Rows of a B panel (`nr` values each) to prefetch into L1, one row per step of the
    /// reduction (as many as it has); a hint only, it changes no value (the portable tile,
    /// all that other targets compile, has none).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    prefetch: Option<&'a [f32]>,
}

#[cfg(target_arch = "x86_64")]
mod x86;

fn tile_portable(t: &Tile, out: &mut [f32]) {
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

/// For output index `o` along one axis: the first input index `o*stride - pad` (may be
/// negative) and the kernel taps `k0..k1` that fall inside `0..size`.
#[inline(always)]
fn taps(o: usize, stride: usize, pad: usize, size: usize, k: usize) -> (isize, usize, usize) {
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
fn row_blocks(ow: usize, ob: usize) -> impl Iterator<Item = usize> {
    let blocks = if ob == 0 { ow } else { ow.div_ceil(ob) };
    let (base, extra) = ow.checked_div(blocks).map_or((0, 0), |base| (base, ow % blocks));
    (0..blocks).map(move |b| base + usize::from(b < extra))
}

/// For a block of `n` output pixels from `ox` of a 3x3 depthwise row: whether its first
/// pixel's left kernel column is off the input (`left`) and its last pixel's right one
/// (`right`), when those are the only taps off it (else None: the block's pixels run one
/// at a time over their taps).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn edges(d: &Depthwise, ox: usize, n: usize) -> Option<(bool, bool)> {
    if n == 0 || d.kh != 3 || d.kw != 3 {
        return None;
    }
    let (s, w) = (d.stride.1 as isize, d.w as isize);
    let first = (ox * d.stride.1) as isize - d.pad.1 as isize;
    let last = first + (n as isize - 1) * s;
    // The first pixel's middle and right columns, the last pixel's left and middle ones and
    // every column of the pixels between must be inside.
    let inside = first >= -1
        && last + 1 < w
        && (n == 1 || (first + s >= 0 && last - s + 2 < w));
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
struct RowTaps<'a> {
    rows: [&'a [f32]; MAX_KH],
    ky0: usize,
    ky1: usize,
}

#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    a * b + c
}

/// One output row of the depthwise convolution in plain Rust, in chunks of 16 channels.
fn depthwise_portable(d: &Depthwise, t: &RowTaps, o: &mut [f32]) {
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
        assert!(x.len() >= self.h * self.w * self.c, "im2col input is too short");
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
    if let (Ok(s), Ok(d)) = (<&[f32; 9]>::try_from(src), <&mut [f32; 9]>::try_from(&mut *dst)) {
        *d = *s;
    } else if src.len() <= 16 {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    } else {
        dst.copy_from_slice(src);
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
    fn aligned_buffers_start_a_cache_line_and_keep_their_values() {
        for len in [0, 1, 15, 16, 17, 1000, 112 * 112 * 32] {
            let z = Aligned::zeroed(len);
            assert_eq!(z.len(), len);
            assert_eq!(z.as_ptr() as usize % 64, 0, "zeroed({len})");
            assert!(z.iter().all(|&v| v == 0.0));
            let values = random(len, len as u64);
            let a = Aligned::from(values.clone());
            assert_eq!(&a[..], &values[..]);
            assert_eq!(a.as_ptr() as usize % 64, 0, "from({len})");
            // A clone and a moved buffer stay aligned (a cloned Vec would not).
            let b = a.clone();
            assert_eq!(&b[..], &values[..]);
            assert_eq!(b.as_ptr() as usize % 64, 0, "clone({len})");
            let moved = vec![a];
            assert_eq!(moved[0].as_ptr() as usize % 64, 0, "moved({len})");
        }
    }

    #[test]
    fn gemm_matches_the_reference_on_every_isa_and_edge() {
        // Every pointwise convolution of MobileNetV2 1.0/224 as (pixels, in, out), the stem
        // as im2col patches, then ragged edges: rows past a whole tile, last panels of at
        // most half a tile (the narrow kernel) or more, one row, one column.
        let mut shapes = vec![
            (12544, 32, 16),
            (12544, 16, 96),
            (3136, 96, 24),
            (3136, 24, 144),
            (3136, 144, 24),
            (784, 144, 32),
            (784, 32, 192),
            (784, 192, 32),
            (196, 192, 64),
            (196, 64, 384),
            (196, 384, 64),
            (196, 384, 96),
            (196, 96, 576),
            (196, 576, 96),
            (49, 576, 160),
            (49, 160, 960),
            (49, 960, 160),
            (49, 960, 320),
            (49, 320, 1280),
            (12544, 27, 32),
        ];
        shapes.extend([(13, 27, 32), (8, 16, 24), (1, 5, 1), (29, 144, 33), (25, 7, 9), (14, 3, 40)]);
        // Deep reductions cut into slices (uneven, with ragged rows and columns), and none.
        shapes.extend([(29, 1000, 33), (10, 513, 17), (3, 2049, 5), (4, 0, 5)]);
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
    fn slicing_the_reduction_changes_no_bit() {
        // Each slice starts from the f32 sums the previous one stored: one pass and any
        // slicing add the same values in the same order.
        for isa in Isa::all_available() {
            for (s, &(m, k, n)) in [(49, 960, 160), (29, 1000, 33), (10, 513, 17)].iter().enumerate() {
                let a = random(m * k, 400 + s as u64);
                let w = random(k * n, 500 + s as u64);
                let bias = random(n, 600 + s as u64);
                let res = random(m * n, 700 + s as u64);
                let packed = PackedB::new(isa, k, n, |p, j| w[p * n + j], &bias);
                let clamp = Clamp { lo: -0.5, hi: 0.5 };
                let mut whole = vec![f32::NAN; m * n];
                let one_pass = packed.clone().with_slices_of(usize::MAX);
                assert_eq!(one_pass.kc, k);
                gemm(&a, m, k, &one_pass, clamp, Some(&res), &mut whole);
                for kc_bytes in [4096, 16 * 1024, KC_BYTES] {
                    let sliced_b = packed.clone().with_slices_of(kc_bytes);
                    assert!(sliced_b.kc < k, "{kc_bytes}");
                    let mut sliced = vec![f32::NAN; m * n];
                    gemm(&a, m, k, &sliced_b, clamp, Some(&res), &mut sliced);
                    assert!(
                        whole.iter().zip(&sliced).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{isa:?} {m}x{k}x{n}, slices of {kc_bytes} bytes"
                    );
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

    /// Direct depthwise convolution in f64 (pad after: whatever the output size needs).
    fn depthwise_reference(d: &Depthwise, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; d.oh * d.ow * d.c];
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                for ch in 0..d.c {
                    let mut s = d.bias[ch] as f64;
                    for ky in 0..d.kh {
                        for kx in 0..d.kw {
                            let iy = (oy * d.stride.0 + ky) as isize - d.pad.0 as isize;
                            let ix = (ox * d.stride.1 + kx) as isize - d.pad.1 as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < d.h && (ix as usize) < d.w {
                                let at = (iy as usize * d.w + ix as usize) * d.c + ch;
                                s += x[at] as f64 * d.weights[(ky * d.kw + kx) * d.c + ch] as f64;
                            }
                        }
                    }
                    out[(oy * d.ow + ox) * d.c + ch] = (s as f32).max(d.clamp.lo).min(d.clamp.hi);
                }
            }
        }
        out
    }

    #[test]
    fn depthwise_matches_the_reference_on_every_isa_and_mobilenet_shape() {
        // (h, w, c, kernel, stride, pad before, pad after): every depthwise layer of MobileNetV2 1.0/224
        // (TF "SAME": nothing before at stride 2), then ragged channels (masked tails of
        // both vector widths), rows narrower than a block, stride 3, a 5x5 kernel and
        // symmetric padding at stride 2.
        let shapes = [
            (112, 112, 32, 3, 1, 1, 1),
            (112, 112, 96, 3, 2, 0, 1),
            (56, 56, 144, 3, 1, 1, 1),
            (56, 56, 144, 3, 2, 0, 1),
            (28, 28, 192, 3, 1, 1, 1),
            (28, 28, 192, 3, 2, 0, 1),
            (14, 14, 384, 3, 1, 1, 1),
            (14, 14, 576, 3, 1, 1, 1),
            (14, 14, 576, 3, 2, 0, 1),
            (7, 7, 960, 3, 1, 1, 1),
            (9, 13, 20, 3, 1, 1, 1),
            (10, 11, 27, 3, 2, 1, 1),
            (3, 2, 3, 3, 1, 1, 1),
            (5, 17, 12, 3, 2, 0, 0),
            (11, 12, 40, 3, 3, 1, 0),
            (8, 9, 24, 5, 1, 2, 2),
        ];
        for (s, &(h, w, c, k, stride, pad, after)) in shapes.iter().enumerate() {
            let out = |n: usize| (n + pad + after - k) / stride + 1;
            let (oh, ow) = (out(h), out(w));
            let base = Depthwise {
                isa: Isa::Portable,
                h,
                w,
                c,
                kh: k,
                kw: k,
                stride: (stride, stride),
                pad: (pad, pad),
                oh,
                ow,
                weights: random(k * k * c, 6 + s as u64).into(),
                bias: random(c, 7 + s as u64).into(),
                clamp: Clamp { lo: -0.5, hi: 1.0 },
            };
            let x = random(h * w * c, 5 + s as u64);
            let expected = depthwise_reference(&base, &x);
            for isa in Isa::all_available() {
                let d = Depthwise { isa, ..base.clone() };
                // A sentinel past the output: nothing may be written there.
                let mut got = vec![f32::NAN; oh * ow * c + 17];
                d.run(&x, &mut got);
                assert!(got[oh * ow * c..].iter().all(|v| v.is_nan()), "{isa:?} wrote past the output");
                for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{isa:?} {h}x{w}x{c} k{k} s{stride} at {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn conv_row_matches_the_patches_gemm_bit_for_bit() {
        // The stem (224x224x3, 3x3 stride 2, TF padding: nothing before, one after), padding
        // on both sides at stride 1, a 5x5 kernel, and more channels and outputs than a panel.
        let shapes = [
            (224, 224, 3, 3, 2, 0, 1, 32),
            (9, 23, 3, 3, 1, 1, 1, 16),
            (12, 30, 4, 5, 1, 2, 2, 24),
            (11, 40, 8, 3, 2, 1, 1, 40),
        ];
        for (s, &(h, w, c, k, stride, pad, after, n)) in shapes.iter().enumerate() {
            let out = |x: usize| (x + pad + after - k) / stride + 1;
            let g = Im2Col { h, w, c, kh: k, kw: k, stride: (stride, stride), pad: (pad, pad), oh: out(h), ow: out(w) };
            let x = random(h * w * c, 50 + s as u64);
            let wts = random(g.patch_len() * n, 60 + s as u64);
            let bias = random(n, 70 + s as u64);
            let clamp = Clamp { lo: -0.5, hi: 1.5 };
            for isa in Isa::all_available() {
                let b = PackedB::new(isa, g.patch_len(), n, |p, j| wts[p * n + j], &bias);
                let mut patches = vec![0.0; g.ow * g.patch_len()];
                for oy in 0..g.oh {
                    g.run_rows(&x, oy..oy + 1, &mut patches);
                    let mut want = vec![0.0; g.ow * n];
                    gemm(&patches, g.ow, g.patch_len(), &b, clamp, None, &mut want);
                    let mut got = vec![f32::NAN; g.ow * n + 5];
                    conv_row(&g, &x, oy, &b, clamp, &mut patches, &mut got);
                    assert!(got[g.ow * n..].iter().all(|v| v.is_nan()), "{isa:?} wrote past the row");
                    assert_eq!(&got[..g.ow * n], &want[..], "{isa:?} shape {s} row {oy}");
                }
            }
        }
    }

    #[test]
    fn im2col_matches_a_direct_gather() {
        // The stem (stride 2, TF padding: nothing before), symmetric padding, stride 1, and
        // more channels than a short copy.
        for (s, &(h, w, c, k, stride, pad)) in
            [(224, 224, 3, 3, 2, 0), (9, 7, 3, 3, 1, 1), (8, 10, 8, 3, 2, 1), (6, 6, 5, 5, 1, 2)].iter().enumerate()
        {
            let oh = (h + 2 * pad - k) / stride + 1;
            let ow = (w + 2 * pad - k) / stride + 1;
            let g = Im2Col { h, w, c, kh: k, kw: k, stride: (stride, stride), pad: (pad, pad), oh, ow };
            let x = random(h * w * c, 40 + s as u64);
            let mut got = vec![f32::NAN; oh * ow * g.patch_len()];
            g.run(&x, &mut got);
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..k {
                        for kx in 0..k {
                            for ch in 0..c {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                                let want = if inside { x[(iy as usize * w + ix as usize) * c + ch] } else { 0.0 };
                                let at = (oy * ow + ox) * g.patch_len() + (ky * k + kx) * c + ch;
                                assert_eq!(got[at], want, "{h}x{w}x{c} k{k} s{stride} p{pad} at {at}");
                            }
                        }
                    }
                }
            }
        }
    }

}
