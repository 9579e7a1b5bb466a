//! Per-shard statistics for PCA: count, mean and centred co-moment matrix (float64), merged
//! with the parallel update of Chan, Golub & LeVeque, so the reducer never needs all rows.

use faer::Mat;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"FSTATS01";

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
        self.count += other.count;
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

    /// Parses [`ShardStats::to_bytes`]; `key` names the object in errors.
    pub fn from_bytes(bytes: &[u8], key: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Stats {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Err(bad("not a statistics file (bad magic)"));
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let count = word(8);
        let dim = usize::try_from(word(16)).map_err(|_| bad("dimension overflows"))?;
        let expected = 24 + 8 * (dim + dim * (dim + 1) / 2);
        if bytes.len() != expected {
            return Err(bad(&format!(
                "{} bytes, expected {expected} for dimension {dim}",
                bytes.len()
            )));
        }
        let float = |i: usize| f64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let mean: Vec<f64> = (0..dim).map(|i| float(24 + 8 * i)).collect();
        let mut comoment = vec![0.0; dim * dim];
        let mut at = 24 + 8 * dim;
        for i in 0..dim {
            for j in i..dim {
                let v = float(at);
                comoment[i * dim + j] = v;
                comoment[j * dim + i] = v;
                at += 8;
            }
        }
        Ok(Self {
            count,
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
        self.apply(rows, 1.0)?;
        self.count += rows.len() as u64;
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

    /// Parses [`RunningSums::to_bytes`]; `key` names the object in errors.
    pub fn from_bytes(bytes: &[u8], key: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Stats {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        if bytes.len() < 24 || &bytes[..8] != SUMS_MAGIC {
            return Err(bad("not a running-sums file (bad magic)"));
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let count = word(8);
        let dim = usize::try_from(word(16)).map_err(|_| bad("dimension overflows"))?;
        let expected = 24 + 8 * (2 * dim + dim * (dim + 1) / 2);
        if bytes.len() != expected {
            return Err(bad(&format!(
                "{} bytes, expected {expected} for dimension {dim}",
                bytes.len()
            )));
        }
        let float = |i: usize| f64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let shift: Vec<f64> = (0..dim).map(|i| float(24 + 8 * i)).collect();
        let s1: Vec<f64> = (0..dim).map(|i| float(24 + 8 * (dim + i))).collect();
        let mut s2 = vec![0.0; dim * dim];
        let mut at = 24 + 16 * dim;
        for i in 0..dim {
            for j in i..dim {
                let v = float(at);
                s2[i * dim + j] = v;
                s2[j * dim + i] = v;
                at += 8;
            }
        }
        Ok(Self {
            count,
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
