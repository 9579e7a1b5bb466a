//! PCA from merged statistics: covariance (n - 1 denominator, as scikit-learn), a symmetric
//! eigendecomposition in pure Rust (faer, no system LAPACK), the top-k components with
//! scikit-learn's sign convention, and projection of rows. Pure functions.

use faer::{Mat, Side};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::{PcaConvention, PcaOptions};
use crate::stats::ShardStats;

/// A fitted PCA, as written to `pca_model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaModel {
    /// Number of components.
    pub k: usize,
    /// Number of rows it was fitted on.
    pub n: u64,
    /// Feature dimension.
    pub dim: usize,
    /// Feature mean (length dim).
    pub mean: Vec<f64>,
    /// k unit eigenvectors of the covariance, rows, largest variance first.
    pub components: Vec<Vec<f64>>,
    /// Their eigenvalues (variance along each, n - 1 denominator).
    pub explained_variance: Vec<f64>,
    /// Their share of the total variance.
    pub explained_variance_ratio: Vec<f64>,
    /// Cumulative share at k.
    pub cumulative_explained_variance: f64,
    /// Sum of all eigenvalues (trace of the covariance).
    pub total_variance: f64,
    /// How `Results_PCA` was projected.
    pub convention: PcaConvention,
    /// A one-line statement of the convention, for readers of the JSON.
    pub convention_note: String,
    /// Explained-variance ratio of every component the data has (min(n - 1, dim)), largest
    /// first: the scree plot, and how many components a variance share would take.
    #[serde(default)]
    pub spectrum: Vec<f64>,
}

/// The number of components a PCA of `rows` rows of dimension `dim` can have: at most
/// `rows - 1` (centred data has rank n - 1 at most) and `dim`. `requested` is clamped to it;
/// 0 means no PCA is possible (fewer than 2 rows).
pub fn effective_k(requested: usize, rows: u64, dim: usize) -> usize {
    let rows = usize::try_from(rows).unwrap_or(usize::MAX);
    requested.min(rows.saturating_sub(1)).min(dim)
}

/// The fewest leading components whose cumulative ratio reaches `share` (None if the
/// spectrum never does).
pub fn components_for(spectrum: &[f64], share: f64) -> Option<usize> {
    let mut cumulative = 0.0;
    for (i, r) in spectrum.iter().enumerate() {
        cumulative += r;
        if cumulative >= share - 1e-12 {
            return Some(i + 1);
        }
    }
    None
}

/// Fits the PCA from merged statistics.
pub fn fit(stats: &ShardStats, options: &PcaOptions) -> Result<PcaModel> {
    let dim = stats.dim();
    let n = stats.count;
    if n < 2 {
        return Err(Error::Pca(format!(
            "need at least 2 feature rows to fit a PCA, have {n}"
        )));
    }
    let denominator = (n - 1) as f64;
    let covariance =
        Mat::<f64>::from_fn(dim, dim, |i, j| stats.comoment[i * dim + j] / denominator);
    let eigen = covariance
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Pca(format!("eigendecomposition failed: {e:?}")))?;
    let values = eigen.S().column_vector();
    let vectors = eigen.U();
    // faer sorts ascending: walk from the end. Tiny negative eigenvalues are rounding noise.
    let order: Vec<usize> = (0..dim).rev().collect();
    let eigenvalues: Vec<f64> = order.iter().map(|&i| values[i].max(0.0)).collect();
    let total: f64 = (0..dim).map(|i| covariance[(i, i)]).sum();
    if total <= 0.0 {
        return Err(Error::Pca(
            "all feature rows are identical (zero variance)".into(),
        ));
    }
    let max_k = effective_k(dim, n, dim);
    let k = match options.variance {
        Some(target) => {
            let mut cumulative = 0.0;
            let mut k = max_k;
            for (i, v) in eigenvalues.iter().enumerate().take(max_k) {
                cumulative += v / total;
                if cumulative >= target - 1e-12 {
                    k = i + 1;
                    break;
                }
            }
            k
        }
        None => options.k,
    };
    if k == 0 || k > max_k {
        return Err(Error::Pca(format!(
            "k = {k} must be between 1 and min(rows - 1, dimension) = {max_k}"
        )));
    }
    let spectrum: Vec<f64> = eigenvalues[..max_k].iter().map(|v| v / total).collect();
    let components: Vec<Vec<f64>> = order[..k]
        .iter()
        .map(|&c| {
            let mut v: Vec<f64> = (0..dim).map(|r| vectors[(r, c)]).collect();
            // scikit-learn's convention: the largest-magnitude entry of each component is positive.
            let (_, &largest) = v
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .expect("dim > 0");
            if largest < 0.0 {
                v.iter_mut().for_each(|x| *x = -*x);
            }
            v
        })
        .collect();
    let explained_variance = eigenvalues[..k].to_vec();
    let explained_variance_ratio: Vec<f64> = explained_variance.iter().map(|v| v / total).collect();
    let cumulative = explained_variance_ratio.iter().sum();
    let convention_note = match options.convention {
        PcaConvention::Centered => "pca_features = (x - mean) @ components.T (scikit-learn)",
        PcaConvention::Uncentered => "pca_features = components @ x (Spark ML PCAModel.transform)",
    };
    Ok(PcaModel {
        k,
        n,
        dim,
        mean: stats.mean.clone(),
        components,
        explained_variance,
        explained_variance_ratio,
        cumulative_explained_variance: cumulative,
        total_variance: total,
        convention: options.convention,
        convention_note: convention_note.to_string(),
        spectrum,
    })
}

impl PcaModel {
    /// Projects one feature row onto the components, in the model's convention.
    pub fn project(&self, row: &[f32]) -> Vec<f32> {
        let centred: Vec<f64> = match self.convention {
            PcaConvention::Centered => row
                .iter()
                .zip(&self.mean)
                .map(|(&x, m)| f64::from(x) - m)
                .collect(),
            PcaConvention::Uncentered => row.iter().map(|&x| f64::from(x)).collect(),
        };
        self.components
            .iter()
            .map(|c| dot(c, &centred) as f32)
            .collect()
    }
}

/// `a · b` in eight partial sums (which the compiler vectorizes; one running sum is a chain
/// of dependent adds), added pairwise at the end.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (xs, ys) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let tail: f64 = xs.remainder().iter().zip(ys.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = [0.0f64; LANES];
    for (x, y) in xs.zip(ys) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
    ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(rows: &[Vec<f32>]) -> ShardStats {
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        ShardStats::from_rows(&refs, rows[0].len())
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        for n in [0usize, 1, 7, 8, 9, 50, 1280, 1283] {
            let a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..n).map(|i| (i as f64 * 1.3).cos() * 3.0).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let scale: f64 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum::<f64>() + 1.0;
            assert!((dot(&a, &b) - plain).abs() <= 1e-14 * scale, "{n}");
        }
    }

    #[test]
    fn recovers_a_known_principal_axis() {
        // Points along (3, 4)/5 with a little spread across it.
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                let t = i as f32 - 20.0;
                let s = if i % 2 == 0 { 0.1 } else { -0.1 };
                vec![0.6 * t - 0.8 * s + 1.0, 0.8 * t + 0.6 * s - 2.0]
            })
            .collect();
        let model = fit(
            &stats_of(&rows),
            &PcaOptions {
                k: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            (model.components[0][0] - 0.6).abs() < 1e-3,
            "{:?}",
            model.components[0]
        );
        assert!((model.components[0][1] - 0.8).abs() < 1e-3);
        assert!(model.explained_variance_ratio[0] > 0.999);
        assert!((model.cumulative_explained_variance - 1.0).abs() < 1e-12);
        // Centred projection of the mean is zero; uncentred is components @ mean.
        let mean: Vec<f32> = model.mean.iter().map(|&m| m as f32).collect();
        assert!(model.project(&mean).iter().all(|v| v.abs() < 1e-4));
        let spark = PcaModel {
            convention: PcaConvention::Uncentered,
            ..model.clone()
        };
        let p = spark.project(&mean);
        let expected: f64 = model.components[0]
            .iter()
            .zip(&model.mean)
            .map(|(c, m)| c * m)
            .sum();
        assert!((f64::from(p[0]) - expected).abs() < 1e-5);
        assert!(
            (expected - (0.6 * 0.7 + 0.8 * -2.4)).abs() < 1e-2,
            "mean is (1 - 0.3, -2 - 0.4)"
        );
    }

    #[test]
    fn variance_target_picks_smallest_k() {
        let rows: Vec<Vec<f32>> = (0..30)
            .map(|i| {
                let t = i as f32;
                vec![
                    10.0 * (t * 0.37).sin(),
                    3.0 * (t * 1.3).cos(),
                    0.1 * (t * 2.9).sin(),
                ]
            })
            .collect();
        let stats = stats_of(&rows);
        let full = fit(
            &stats,
            &PcaOptions {
                k: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let first = full.explained_variance_ratio[0];
        let by_variance = |v| {
            fit(
                &stats,
                &PcaOptions {
                    variance: Some(v),
                    ..Default::default()
                },
            )
            .unwrap()
            .k
        };
        assert_eq!(by_variance(first * 0.99), 1);
        assert_eq!(by_variance((first + 1e-6).min(1.0)), 2);
        assert!(fit(
            &stats,
            &PcaOptions {
                k: 4,
                ..Default::default()
            }
        )
        .is_err());
        assert!(fit(&stats_of(&rows[..1]), &PcaOptions::default()).is_err());
        assert_eq!(full.spectrum.len(), 3);
        assert!((full.spectrum.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(components_for(&full.spectrum, first * 0.99), Some(1));
        assert_eq!(components_for(&full.spectrum, 1.0), Some(3));
        assert_eq!(components_for(&[0.5, 0.2], 0.9), None);
    }

    #[test]
    fn k_is_clamped_to_rows_minus_one_and_dimension() {
        assert_eq!(effective_k(50, 30, 1280), 29);
        assert_eq!(effective_k(50, 5000, 1280), 50);
        assert_eq!(effective_k(50, 5000, 20), 20);
        assert_eq!(effective_k(50, 1, 1280), 0, "one row: no PCA");
        assert_eq!(effective_k(50, 0, 1280), 0);
        // The clamped k fits; one more does not.
        let rows: Vec<Vec<f32>> = (0..6)
            .map(|i| (0..10).map(|j| ((i * 7 + j * 3) % 11) as f32 + i as f32 * 0.1).collect())
            .collect();
        let stats = stats_of(&rows);
        let k = effective_k(50, stats.count, 10);
        assert_eq!(k, 5);
        let model = fit(&stats, &PcaOptions { k, ..Default::default() }).unwrap();
        assert_eq!(model.k, 5);
        assert!(fit(&stats, &PcaOptions { k: 6, ..Default::default() }).is_err());
    }
}
