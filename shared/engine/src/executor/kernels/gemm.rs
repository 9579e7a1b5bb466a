//! The GEMM: B packed into column panels once, A streamed past it in tiles of registers,
//! the reduction cut into slices that stay in L1.

use super::portable::tile_portable;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Aligned, Clamp, Isa};

/// The B operand of [`gemm`] (weights `[k][n]`), packed in panels of `nr` columns: panel `p`
/// holds `k` rows of `nr` values, columns `p*nr..p*nr+nr` (zero past `n`). The bias is padded
/// the same way.
#[derive(Debug, Clone)]
pub struct PackedB {
    pub(super) isa: Isa,
    pub(super) k: usize,
    pub(super) n: usize,
    nr: usize,
    pub(super) data: Aligned,
    pub(super) bias: Aligned,
    /// Rows of a panel per slice of the reduction in [`gemm`]: `k` cut into the fewest even
    /// slices of at most [`KC_BYTES`].
    pub(super) kc: usize,
}

impl PackedB {
    /// Packs `w(row, col)` for `row < k`, `col < n` and a bias of length `n` for the kernels of
    /// `isa`.
    pub fn new(
        isa: Isa,
        k: usize,
        n: usize,
        w: impl Fn(usize, usize) -> f32,
        bias: &[f32],
    ) -> Self {
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
    pub(super) fn with_slices_of(mut self, bytes: usize) -> Self {
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
    let a_block = if b_bytes <= 256 * 1024 {
        32 * 1024
    } else {
        1024 * 1024
    };
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
pub(super) const KC_BYTES: usize = 32 * 1024;

/// Rows per slice when `k` rows of `nr` floats are cut into the fewest even slices of at
/// most `bytes`.
fn slice_rows(k: usize, nr: usize, bytes: usize) -> usize {
    let slices = (k * nr * 4).div_ceil(bytes).max(1);
    k.div_ceil(slices).max(1)
}

/// Runs one tile with the kernel of `isa` (a narrower one for a last panel of at most half
/// the tile's columns).
pub(super) fn run_tile(isa: Isa, tile: &Tile, out: &mut [f32]) {
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
pub(super) struct Tile<'a> {
    pub(super) a: &'a [f32],
    pub(super) lda: usize,
    pub(super) k: usize,
    pub(super) panel: &'a [f32],
    /// Values per row of the panel.
    pub(super) nr: usize,
    pub(super) bias: &'a [f32],
    pub(super) clamp: Clamp,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) ldc: usize,
    pub(super) residual: Option<&'a [f32]>,
    /// Start from the partial sums in the output (a later slice of the reduction) instead
    /// of zero.
    pub(super) load_c: bool,
    /// The last slice: add the bias, clamp, add the residual (else store the bare sums).
    pub(super) finish: bool,
    /// Rows of a B panel (`nr` values each) to prefetch into L1, one row per step of the
    /// reduction (as many as it has); a hint only, it changes no value (the portable tile,
    /// all that other targets compile, has none).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) prefetch: Option<&'a [f32]>,
}
