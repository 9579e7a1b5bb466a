//! Per-shard statistics for PCA: count, mean and centred co-moment matrix (float64), merged
//! with the parallel update of Chan, Golub & LeVeque, so the reducer never needs all rows.

use faer::Mat;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"FSTATS01";

/// The largest feature dimension a statistics or running-sums file may declare. The models
/// give 1280; the bound keeps a hostile header from asking for an absurd allocation (the
/// decoders also check the file's length against the dimension, with checked arithmetic,
/// before they allocate anything, so memory stays within about twice the file's size).
pub const MAX_DIM: usize = 65_536;

/// The header and body of a `FSTATS01` / `FSUMS001` file, checked: magic, count, a bounded
/// dimension, and a length that matches it exactly.
struct Decoder<'a> {
    bytes: &'a [u8],
    key: &'a str,
    count: u64,
    dim: usize,
}

impl<'a> Decoder<'a> {
    /// Parses the 24-byte header and checks the length: `vectors` vectors of length d, then
    /// the upper triangle of one symmetric d x d matrix.
    fn open(bytes: &'a [u8], key: &'a str, magic: &[u8; 8], vectors: usize) -> Result<Self> {
        let mut decoder = Self {
            bytes,
            key,
            count: 0,
            dim: 0,
        };
        if bytes.len() < 24 || &bytes[..8] != magic {
            return Err(decoder.bad(format!(
                "not a {} file (bad magic or shorter than its 24-byte header)",
                String::from_utf8_lossy(magic)
            )));
        }
        decoder.count = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let declared = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        let dim = usize::try_from(declared)
            .ok()
            .filter(|&d| d <= MAX_DIM)
            .ok_or_else(|| {
                decoder.bad(format!(
                    "dimension {declared} is over the limit of {MAX_DIM}"
                ))
            })?;
        decoder.dim = dim;
        let expected = body_len(dim, vectors)
            .and_then(|body| body.checked_add(24))
            .ok_or_else(|| decoder.bad(format!("dimension {dim} overflows the file length")))?;
        if bytes.len() != expected {
            return Err(decoder.bad(format!(
                "{} bytes, expected {expected} for dimension {dim}",
                bytes.len()
            )));
        }
        if dim == 0 && decoder.count > 0 {
            return Err(decoder.bad(format!("{} rows of dimension 0", decoder.count)));
        }
        Ok(decoder)
    }

    fn bad(&self, reason: String) -> Error {
        Error::Stats {
            key: self.key.to_string(),
            reason,
        }
    }

    /// The `index`-th float after the header; `what` names it in errors (built only then).
    /// Non-finite values (NaN, infinities) are refused: no honest writer produces them.
    fn float(&self, index: usize, what: impl Fn() -> String) -> Result<f64> {
        let word = index
            .checked_mul(8)
            .and_then(|o| o.checked_add(24))
            .and_then(|o| self.bytes.get(o..o.checked_add(8)?))
            .ok_or_else(|| self.bad(format!("{} lies past the end of the file", what())))?;
        let value = f64::from_le_bytes(word.try_into().expect("8 bytes"));
        if !value.is_finite() {
            return Err(self.bad(format!("{} is not finite ({value})", what())));
        }
        Ok(value)
    }

    /// `dim` floats starting at float `first`.
    fn vector(&self, first: usize, what: &str) -> Result<Vec<f64>> {
        (0..self.dim)
            .map(|i| self.float(first + i, || format!("{what}[{i}]")))
            .collect()
    }

    /// The full symmetric d x d matrix (row-major) from its upper triangle at float `first`.
    fn symmetric(&self, first: usize, what: &str) -> Result<Vec<f64>> {
        let dim = self.dim;
        let mut matrix = vec![0.0; dim * dim];
        let mut at = first;
        for i in 0..dim {
            for j in i..dim {
                let v = self.float(at, || format!("{what}[{i}][{j}]"))?;
                matrix[i * dim + j] = v;
                matrix[j * dim + i] = v;
                at += 1;
            }
        }
        Ok(matrix)
    }

    /// With a count of zero, every value must be zero (what the writers store for nothing).
    fn zero_when_empty(&self, values: &[&[f64]], what: &str) -> Result<()> {
        if self.count == 0 && values.iter().any(|v| v.iter().any(|&x| x != 0.0)) {
            return Err(self.bad(format!("a count of 0 with a non-zero {what}")));
        }
        Ok(())
    }
}

/// Bytes after the header for `vectors` vectors of length `dim` and one upper triangle of
/// a `dim` x `dim` matrix, or `None` on overflow.
fn body_len(dim: usize, vectors: usize) -> Option<usize> {
    let triangle = dim.checked_mul(dim.checked_add(1)?)? / 2;
    dim.checked_mul(vectors)?
        .checked_add(triangle)?
        .checked_mul(8)
}

/// Count, mean and co-moment `M = sum (x - mean)(x - mean)^T` of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardStats {
    /// Number of rows.
    pub count: u64,
    /// Mean of the rows (length d).
    pub mean: Vec<f64>,
    /// Co-moment, d x d, row-major (symmetric).
    pub comoment: Vec<f64>,
}

impl ShardStats {
    /// Statistics of nothing (the identity of [`ShardStats::merge`]).
    pub fn empty(dim: usize) -> Self {
        Self {
            count: 0,
            mean: vec![0.0; dim],
            comoment: vec![0.0; dim * dim],
        }
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Computes the statistics of `rows` (each of length `dim`), in float64.
    pub fn from_rows(rows: &[&[f32]], dim: usize) -> Self {
        let n = rows.len();
        if n == 0 {
            return Self::empty(dim);
        }
        let mut mean = vec![0.0f64; dim];
        for row in rows {
            for (m, &x) in mean.iter_mut().zip(row.iter()) {
                *m += f64::from(x);
            }
        }
        for m in &mut mean {
            *m /= n as f64;
        }
        let centred = Mat::<f64>::from_fn(n, dim, |i, j| f64::from(rows[i][j]) - mean[j]);
        // Symmetric: the lower triangle only (half the products), mirrored. Column `j` of
        // the column-major result, from its diagonal down, is row `j` of `comoment` there.
        let mut m = Mat::<f64>::zeros(dim, dim);
        faer::linalg::matmul::triangular::matmul(
            m.as_mut(),
            faer::linalg::matmul::triangular::BlockStructure::TriangularLower,
            faer::Accum::Replace,
            centred.transpose(),
            faer::linalg::matmul::triangular::BlockStructure::Rectangular,
            centred.as_ref(),
            faer::linalg::matmul::triangular::BlockStructure::Rectangular,
            1.0,
            faer::get_global_parallelism(),
        );
        let mut comoment = vec![0.0; dim * dim];
        for j in 0..dim {
            let column = m.col(j);
            for i in j..dim {
                comoment[j * dim + i] = column[i];
                comoment[i * dim + j] = column[i];
            }
        }
        Self {
            count: n as u64,
            mean,
            comoment,
        }
    }

    /// Merges `other` into `self` (Chan et al.): exact, order-independent up to rounding.
    pub fn merge(&mut self, other: &ShardStats) -> Result<()> {
        if other.dim() != self.dim() {
            return Err(Error::Pca(format!(
                "cannot merge statistics of dimension {} into {}",
                other.dim(),
                self.dim()
            )));
        }
        if other.count == 0 {
            return Ok(());
        }
        if self.count == 0 {
            *self = other.clone();
            return Ok(());
        }
        let total = self.count.checked_add(other.count).ok_or_else(|| {
            Error::Pca(format!(
                "cannot merge statistics of {} rows into {}: the count overflows",
                other.count, self.count
            ))
        })?;
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let dim = self.dim();
        let delta: Vec<f64> = other
            .mean
            .iter()
            .zip(&self.mean)
            .map(|(b, a)| b - a)
            .collect();
        let weight = na * nb / n;
        for i in 0..dim {
            let di = delta[i] * weight;
            let row = &mut self.comoment[i * dim..(i + 1) * dim];
            let other_row = &other.comoment[i * dim..(i + 1) * dim];
            for j in 0..dim {
                row[j] += other_row[j] + di * delta[j];
            }
        }
        for (m, d) in self.mean.iter_mut().zip(&delta) {
            *m += d * nb / n;
        }
        self.count = total;
        Ok(())
    }

    /// Serializes: magic, count, dim, mean, upper triangle of the co-moment (little-endian f64).
    pub fn to_bytes(&self) -> Vec<u8> {
        let dim = self.dim();
        let mut out = Vec::with_capacity(24 + 8 * (dim + dim * (dim + 1) / 2));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(dim as u64).to_le_bytes());
        for m in &self.mean {
            out.extend_from_slice(&m.to_le_bytes());
        }
        for i in 0..dim {
            for j in i..dim {
                out.extend_from_slice(&self.comoment[i * dim + j].to_le_bytes());
            }
        }
        out
    }

    /// Parses [`ShardStats::to_bytes`]; `key` names the object in errors. Refuses, with
    /// [`Error::Stats`] naming the key and what is wrong: a bad magic, a dimension over
    /// [`MAX_DIM`], a length that does not match the dimension, a non-finite value, a negative
    /// variance (a diagonal co-moment entry below zero), and a count of zero with non-zero
    /// values (or rows of dimension 0). Never panics, whatever the bytes.
    pub fn from_bytes(bytes: &[u8], key: &str) -> Result<Self> {
        let decoder = Decoder::open(bytes, key, MAGIC, 1)?;
        let dim = decoder.dim;
        let mean = decoder.vector(0, "mean")?;
        let comoment = decoder.symmetric(dim, "co-moment")?;
        if let Some(i) = (0..dim).find(|&i| comoment[i * dim + i] < 0.0) {
            return Err(decoder.bad(format!(
                "co-moment[{i}][{i}] is negative ({}): a sum of squares cannot be",
                comoment[i * dim + i]
            )));
        }
        decoder.zero_when_empty(&[&mean, &comoment], "mean or co-moment")?;
        Ok(Self {
            count: decoder.count,
            mean,
            comoment,
        })
    }
}

const SUMS_MAGIC: &[u8; 8] = b"FSUMS001";

/// Running sums of a changing set of feature vectors, about a fixed shift `c`:
/// `n`, `s1 = sum (x - c)` and `s2 = sum (x - c)(x - c)^T` (float64). Rows can be added and
/// removed in O(d^2) each, so a collection's statistics follow its changes without reading
/// the rows that did not change; [`RunningSums::to_stats`] gives the count, mean and centred
/// co-moment a PCA is fitted from. The shift (the first rows' mean, kept for good) keeps
/// the sums small, so `s2 - s1 s1^T / n` loses little to cancellation.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningSums {
    /// Number of rows.
    pub count: u64,
    /// The shift `c` (length d).
    pub shift: Vec<f64>,
    /// `sum (x - c)`.
    pub s1: Vec<f64>,
    /// `sum (x - c)(x - c)^T`, d x d row-major (symmetric).
    pub s2: Vec<f64>,
}

impl RunningSums {
    /// No rows yet, shifted by `shift`.
    pub fn new(shift: Vec<f64>) -> Self {
        let dim = shift.len();
        Self {
            count: 0,
            shift,
            s1: vec![0.0; dim],
            s2: vec![0.0; dim * dim],
        }
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.shift.len()
    }

    fn check(&self, row: &[f32]) -> Result<()> {
        if row.len() != self.dim() {
            return Err(Error::Pca(format!(
                "a row of dimension {} in sums of dimension {}",
                row.len(),
                self.dim()
            )));
        }
        Ok(())
    }

    fn apply(&mut self, rows: &[&[f32]], sign: f64) -> Result<()> {
        let dim = self.dim();
        if rows.is_empty() {
            return Ok(());
        }
        for row in rows {
            self.check(row)?;
        }
        let centred = Mat::<f64>::from_fn(rows.len(), dim, |i, j| {
            f64::from(rows[i][j]) - self.shift[j]
        });
        let product = centred.transpose() * &centred;
        for i in 0..dim {
            for j in 0..dim {
                self.s2[i * dim + j] += sign * product[(i, j)];
            }
        }
        for r in 0..rows.len() {
            for j in 0..dim {
                self.s1[j] += sign * centred[(r, j)];
            }
        }
        Ok(())
    }

    /// Adds rows: O(rows * d^2).
    pub fn add(&mut self, rows: &[&[f32]]) -> Result<()> {
        let total = self.count.checked_add(rows.len() as u64).ok_or_else(|| {
            Error::Pca(format!(
                "cannot add {} rows to sums of {}: the count overflows",
                rows.len(),
                self.count
            ))
        })?;
        self.apply(rows, 1.0)?;
        self.count = total;
        Ok(())
    }

    /// Removes rows that were added before: O(rows * d^2).
    pub fn remove(&mut self, rows: &[&[f32]]) -> Result<()> {
        if rows.len() as u64 > self.count {
            return Err(Error::Pca(format!(
                "cannot remove {} rows from sums of {}",
                rows.len(),
                self.count
            )));
        }
        self.apply(rows, -1.0)?;
        self.count -= rows.len() as u64;
        if self.count == 0 {
            // Exactly nothing again (no rounding residue).
            self.s1.iter_mut().for_each(|v| *v = 0.0);
            self.s2.iter_mut().for_each(|v| *v = 0.0);
        }
        Ok(())
    }

    /// Count, mean and centred co-moment: `M = s2 - s1 s1^T / n`.
    pub fn to_stats(&self) -> ShardStats {
        let dim = self.dim();
        if self.count == 0 {
            return ShardStats::empty(dim);
        }
        let n = self.count as f64;
        let mean: Vec<f64> = self
            .s1
            .iter()
            .zip(&self.shift)
            .map(|(s, c)| c + s / n)
            .collect();
        let mut comoment = vec![0.0; dim * dim];
        for i in 0..dim {
            for j in 0..dim {
                comoment[i * dim + j] = self.s2[i * dim + j] - self.s1[i] * self.s1[j] / n;
            }
        }
        ShardStats {
            count: self.count,
            mean,
            comoment,
        }
    }

    /// Serializes: magic, count, dim, shift, s1, upper triangle of s2 (little-endian f64).
    pub fn to_bytes(&self) -> Vec<u8> {
        let dim = self.dim();
        let mut out = Vec::with_capacity(24 + 8 * (2 * dim + dim * (dim + 1) / 2));
        out.extend_from_slice(SUMS_MAGIC);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(dim as u64).to_le_bytes());
        for v in self.shift.iter().chain(&self.s1) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for i in 0..dim {
            for j in i..dim {
                out.extend_from_slice(&self.s2[i * dim + j].to_le_bytes());
            }
        }
        out
    }

    /// Parses [`RunningSums::to_bytes`]; `key` names the object in errors. Refuses, with
    /// [`Error::Stats`]: a bad magic, a dimension over [`MAX_DIM`], a length that does not
    /// match the dimension, a non-finite value, and a count of zero with non-zero sums (or
    /// rows of dimension 0). Never panics, whatever the bytes.
    pub fn from_bytes(bytes: &[u8], key: &str) -> Result<Self> {
        let decoder = Decoder::open(bytes, key, SUMS_MAGIC, 2)?;
        let dim = decoder.dim;
        let shift = decoder.vector(0, "shift")?;
        let s1 = decoder.vector(dim, "s1")?;
        let s2 = decoder.symmetric(2 * dim, "s2")?;
        decoder.zero_when_empty(&[&s1, &s2], "s1 or s2")?;
        Ok(Self {
            count: decoder.count,
            shift,
            s1,
            s2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                (0..dim)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((state >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 1.0
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn merged_shards_equal_the_whole() {
        let dim = 7;
        let data = rows(50, dim, 1);
        let all: Vec<&[f32]> = data.iter().map(|r| r.as_slice()).collect();
        let whole = ShardStats::from_rows(&all, dim);
        let mut merged = ShardStats::empty(dim);
        for chunk in all.chunks(13) {
            merged.merge(&ShardStats::from_rows(chunk, dim)).unwrap();
        }
        assert_eq!(merged.count, 50);
        for (a, b) in merged.mean.iter().zip(&whole.mean) {
            assert!((a - b).abs() < 1e-12);
        }
        for (a, b) in merged.comoment.iter().zip(&whole.comoment) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        // Direct definition for one entry.
        let (i, j) = (2, 5);
        let direct: f64 = data
            .iter()
            .map(|r| (f64::from(r[i]) - whole.mean[i]) * (f64::from(r[j]) - whole.mean[j]))
            .sum();
        assert!((whole.comoment[i * dim + j] - direct).abs() < 1e-9);
    }

    #[test]
    fn bytes_round_trip_and_reject_garbage() {
        let data = rows(5, 4, 2);
        let all: Vec<&[f32]> = data.iter().map(|r| r.as_slice()).collect();
        let stats = ShardStats::from_rows(&all, 4);
        let back = ShardStats::from_bytes(&stats.to_bytes(), "k").unwrap();
        assert_eq!(back.count, 5);
        assert_eq!(back.mean, stats.mean);
        for (a, b) in back.comoment.iter().zip(&stats.comoment) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!(ShardStats::from_bytes(b"nope", "k").is_err());
        let mut short = stats.to_bytes();
        short.pop();
        assert!(ShardStats::from_bytes(&short, "k").is_err());
        assert!(ShardStats::empty(3).merge(&ShardStats::empty(4)).is_err());
    }

    /// A header: magic, count, dim.
    fn header(magic: &[u8; 8], count: u64, dim: u64) -> Vec<u8> {
        let mut out = magic.to_vec();
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&dim.to_le_bytes());
        out
    }

    fn reason(result: Result<impl std::fmt::Debug>) -> String {
        let error = result.unwrap_err();
        assert!(matches!(error, Error::Stats { .. }), "{error:?}");
        let text = error.to_string();
        assert!(
            text.contains("runs/r/stats.bin"),
            "the key is named: {text}"
        );
        text
    }

    #[test]
    fn a_24_byte_file_with_a_huge_dimension_is_refused_without_a_panic() {
        for dim in [
            u64::MAX,
            1 << 63,
            1 << 32,
            3_037_000_500,
            MAX_DIM as u64 + 1,
        ] {
            let bytes = header(MAGIC, 1, dim);
            assert_eq!(bytes.len(), 24);
            let text = reason(ShardStats::from_bytes(&bytes, "runs/r/stats.bin"));
            assert!(text.contains("over the limit of 65536"), "{text}");
            let text = reason(RunningSums::from_bytes(
                &header(SUMS_MAGIC, 1, dim),
                "runs/r/stats.bin",
            ));
            assert!(text.contains("over the limit"), "{text}");
        }
        // Within the limit but not matching the length: refused before any allocation.
        let text = reason(ShardStats::from_bytes(
            &header(MAGIC, 1, MAX_DIM as u64),
            "runs/r/stats.bin",
        ));
        assert!(
            text.contains("24 bytes, expected 17180655640 for dimension 65536"),
            "{text}"
        );
    }

    #[test]
    fn non_finite_values_are_refused_naming_the_value() {
        let data = rows(5, 3, 4);
        let all: Vec<&[f32]> = data.iter().map(|r| r.as_slice()).collect();
        let good = ShardStats::from_rows(&all, 3).to_bytes();
        for (index, bad, what) in [
            (0, f64::NAN, "mean[0] is not finite (NaN)"),
            (2, f64::INFINITY, "mean[2] is not finite (inf)"),
            (3, f64::NAN, "co-moment[0][0] is not finite"),
            (7, f64::NEG_INFINITY, "co-moment[1][2] is not finite (-inf)"),
        ] {
            let mut bytes = good.clone();
            bytes[24 + 8 * index..32 + 8 * index].copy_from_slice(&bad.to_le_bytes());
            let text = reason(ShardStats::from_bytes(&bytes, "runs/r/stats.bin"));
            assert!(text.contains(what), "{text}");
        }
        let mut sums = RunningSums::new(vec![0.5; 2]);
        sums.add(&all.iter().map(|r| &r[..2]).collect::<Vec<_>>())
            .unwrap();
        let mut bytes = sums.to_bytes();
        bytes[24 + 8 * 3..24 + 8 * 4].copy_from_slice(&f64::NAN.to_le_bytes());
        let text = reason(RunningSums::from_bytes(&bytes, "runs/r/stats.bin"));
        assert!(text.contains("s1[1] is not finite"), "{text}");
    }

    #[test]
    fn inconsistent_counts_and_negative_variances_are_refused() {
        // A count of 0 with a non-zero mean.
        let mut bytes = header(MAGIC, 0, 1);
        bytes.extend_from_slice(&1.5f64.to_le_bytes());
        bytes.extend_from_slice(&0.0f64.to_le_bytes());
        let text = reason(ShardStats::from_bytes(&bytes, "runs/r/stats.bin"));
        assert!(text.contains("a count of 0 with a non-zero mean"), "{text}");
        // A negative variance.
        let mut bytes = header(MAGIC, 2, 1);
        bytes.extend_from_slice(&1.5f64.to_le_bytes());
        bytes.extend_from_slice(&(-0.25f64).to_le_bytes());
        let text = reason(ShardStats::from_bytes(&bytes, "runs/r/stats.bin"));
        assert!(text.contains("co-moment[0][0] is negative"), "{text}");
        // Rows of dimension 0.
        let text = reason(ShardStats::from_bytes(
            &header(MAGIC, 4, 0),
            "runs/r/stats.bin",
        ));
        assert!(text.contains("4 rows of dimension 0"), "{text}");
        // What the writers store for nothing still reads back.
        for dim in [0, 3] {
            let empty = ShardStats::empty(dim);
            assert_eq!(
                ShardStats::from_bytes(&empty.to_bytes(), "k").unwrap(),
                empty
            );
            let sums = RunningSums::new(vec![0.25; dim]);
            assert_eq!(
                RunningSums::from_bytes(&sums.to_bytes(), "k").unwrap(),
                sums
            );
        }
    }

    #[test]
    fn counts_that_would_overflow_are_errors() {
        let mut huge = ShardStats::from_bytes(
            &{
                let mut b = header(MAGIC, u64::MAX, 1);
                b.extend_from_slice(&1.0f64.to_le_bytes());
                b.extend_from_slice(&0.0f64.to_le_bytes());
                b
            },
            "k",
        )
        .unwrap();
        let one = ShardStats::from_rows(&[&[2.0f32][..]], 1);
        assert!(huge.merge(&one).is_err());
        assert_eq!(huge.count, u64::MAX, "unchanged");
        let mut sums = RunningSums::new(vec![0.0]);
        sums.count = u64::MAX;
        assert!(sums.add(&[&[1.0f32][..]]).is_err());
        assert_eq!(sums.count, u64::MAX, "unchanged");
    }

    #[test]
    fn running_sums_follow_adds_and_removes() {
        let dim = 6;
        let data = rows(40, dim, 3);
        let all: Vec<&[f32]> = data.iter().map(|r| r.as_slice()).collect();
        let mut sums = RunningSums::new(vec![0.5; dim]);
        sums.add(&all[..30]).unwrap();
        sums.remove(&all[5..12]).unwrap();
        sums.add(&all[30..]).unwrap();
        let kept: Vec<&[f32]> = all[..5].iter().chain(&all[12..]).copied().collect();
        let direct = ShardStats::from_rows(&kept, dim);
        let got = sums.to_stats();
        assert_eq!(got.count, 33);
        for (a, b) in got.mean.iter().zip(&direct.mean) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        for (a, b) in got.comoment.iter().zip(&direct.comoment) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        let back = RunningSums::from_bytes(&sums.to_bytes(), "k").unwrap();
        assert_eq!(back, sums);
        assert!(RunningSums::from_bytes(b"FSUMS001", "k").is_err());
        assert!(sums.remove(&all).is_err(), "more rows than it holds");
        let wrong = [1.0f32; 3];
        assert!(sums.add(&[&wrong[..]]).is_err());
        // Removing everything leaves exactly nothing.
        let mut s = RunningSums::new(vec![0.0; dim]);
        s.add(&all[..4]).unwrap();
        s.remove(&all[..4]).unwrap();
        assert_eq!(s, RunningSums::new(vec![0.0; dim]));
    }
}
