//! PCA from merged statistics: covariance (n - 1 denominator, as scikit-learn), a symmetric
//! eigendecomposition in pure Rust (faer, no system LAPACK), the top-k components with
//! scikit-learn's sign convention, and projection of rows. Pure functions.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd;
use faer::{Col, Conj, Mat, MatRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stats::ShardStats;

/// Default number of principal components (the original notebook's k).
pub const DEFAULT_K: usize = 50;
/// How projections are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PcaConvention {
    /// `(x - mean) @ components.T`, as scikit-learn.
    #[default]
    Centered,
    /// `components @ x`, as Spark ML's `PCAModel.transform`.
    Uncentered,
}

impl PcaConvention {
    /// Parses `centered` / `uncentered` (also `sklearn` / `spark`).
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "centered" | "centred" | "sklearn" => Ok(Self::Centered),
            "uncentered" | "uncentred" | "spark" => Ok(Self::Uncentered),
            other => Err(Error::InvalidRequest(format!(
                "PCA convention {other:?} is neither 'centered' nor 'uncentered'"
            ))),
        }
    }
}

/// How many components to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaOptions {
    /// Number of components (ignored when `variance` is set).
    pub k: usize,
    /// Keep the smallest k whose cumulative explained-variance ratio reaches this share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance: Option<f64>,
    /// Projection convention.
    #[serde(default)]
    pub convention: PcaConvention,
}

impl Default for PcaOptions {
    fn default() -> Self {
        Self {
            k: DEFAULT_K,
            variance: None,
            convention: PcaConvention::Centered,
        }
    }
}

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
    let total: f64 = (0..dim).map(|i| covariance[(i, i)]).sum();
    if total <= 0.0 {
        return Err(Error::Pca(
            "all feature rows are identical (zero variance)".into(),
        ));
    }
    let mut eigen = SymmetricEigen::new(covariance.as_ref())?;
    // Largest first. Tiny negative eigenvalues are rounding noise.
    let eigenvalues: Vec<f64> = eigen.values.iter().rev().map(|v| v.max(0.0)).collect();
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
    let components: Vec<Vec<f64>> = eigen
        .top_vectors(k)
        .into_iter()
        .map(|mut v| {
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

/// A symmetric eigendecomposition that keeps every eigenvalue but builds only the
/// eigenvectors asked for: faer's own steps (Householder tridiagonalisation, then the
/// tridiagonal problem by divide and conquer, as `Mat::self_adjoint_eigen` runs them, so the
/// eigenvalues are the same), except that the tridiagonal eigenvectors are carried back
/// through the Householder reflections only for the top `k` (the back-transformation of all
/// `dim` of them was a third of the fit, for the 50 of 1280 a PCA keeps).
struct SymmetricEigen {
    /// All eigenvalues, ascending.
    values: Vec<f64>,
    /// The tridiagonalised matrix: its part below the subdiagonal holds the reflections.
    tridiagonal: Mat<f64>,
    /// The reflections' block factors.
    householder: Mat<f64>,
    /// The tridiagonal matrix's eigenvectors (columns, ascending eigenvalues).
    vectors: Mat<f64>,
    /// Working memory of the largest step.
    scratch: MemBuffer,
}

impl SymmetricEigen {
    /// Decomposes `a` (symmetric; its lower triangle is read).
    fn new(a: MatRef<'_, f64>) -> Result<Self> {
        let n = a.nrows();
        let par = faer::get_global_parallelism();
        let block = faer::linalg::qr::no_pivoting::factor::recommended_block_size::<f64>(n, n);
        let mut scratch = MemBuffer::new(evd::self_adjoint_evd_scratch::<f64>(
            n,
            evd::ComputeEigenvectors::Yes,
            par,
            Default::default(),
        ));
        let mut tridiagonal = Mat::<f64>::zeros(n, n);
        tridiagonal.copy_from_triangular_lower(a);
        let mut householder = Mat::<f64>::zeros(block, n.saturating_sub(1));
        evd::tridiag::tridiag_in_place(
            tridiagonal.as_mut(),
            householder.as_mut(),
            par,
            MemStack::new(&mut scratch),
            Default::default(),
        );
        let diag = Col::<f64>::from_fn(n, |i| tridiagonal[(i, i)]);
        let subdiag = Col::<f64>::from_fn(n, |i| {
            if i + 1 < n {
                tridiagonal[(i + 1, i)]
            } else {
                0.0
            }
        });
        let mut values = Col::<f64>::zeros(n);
        let mut vectors = Mat::<f64>::zeros(n, n);
        evd::tridiagonal_self_adjoint_evd(
            diag.as_diagonal(),
            subdiag.as_diagonal(),
            values.as_diagonal_mut(),
            Some(vectors.as_mut()),
            par,
            MemStack::new(&mut scratch),
            Default::default(),
        )
        .map_err(|e| Error::Pca(format!("eigendecomposition failed: {e:?}")))?;
        Ok(Self {
            values: values.iter().copied().collect(),
            tridiagonal,
            householder,
            vectors,
            scratch,
        })
    }

    /// The eigenvectors of the `k` largest eigenvalues, largest first (unit length).
    fn top_vectors(&mut self, k: usize) -> Vec<Vec<f64>> {
        let n = self.values.len();
        let k = k.min(n);
        let mut top = Mat::<f64>::from_fn(n, k, |i, j| self.vectors[(i, n - 1 - j)]);
        if n > 1 {
            // Q = diag(1, H_1 ... H_{n-2}): the first row is untouched.
            faer::linalg::householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
                self.tridiagonal.as_ref().submatrix(1, 0, n - 1, n - 1),
                self.householder.as_ref(),
                Conj::No,
                top.as_mut().subrows_mut(1, n - 1),
                faer::get_global_parallelism(),
                MemStack::new(&mut self.scratch),
            );
        }
        (0..k)
            .map(|j| top.col(j).iter().copied().collect())
            .collect()
    }
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
    let tail: f64 = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .map(|(x, y)| x * y)
        .sum();
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
    fn partial_eigenvectors_match_the_full_decomposition() {
        // A covariance with a decaying spectrum and near-equal pairs, like features'.
        let (rows, dim) = (120usize, 90usize);
        let mut rng = fastrand::Rng::with_seed(7);
        let data: Vec<Vec<f32>> = (0..rows)
            .map(|_| {
                (0..dim)
                    .map(|j| {
                        (rng.f32() - 0.5) / (1.0 + j as f32 * 0.2)
                            + if j % 9 == 0 { rng.f32() } else { 0.0 }
                    })
                    .collect()
            })
            .collect();
        let stats = stats_of(&data);
        let cov = Mat::<f64>::from_fn(dim, dim, |i, j| {
            stats.comoment[i * dim + j] / (rows - 1) as f64
        });
        let full = cov.self_adjoint_eigen(faer::Side::Lower).unwrap();
        let mut ours = SymmetricEigen::new(cov.as_ref()).unwrap();
        let values = full.S().column_vector();
        assert_eq!(ours.values.len(), dim);
        for (i, v) in ours.values.iter().enumerate() {
            assert!(
                (v - values[i]).abs() <= 1e-12 * values[dim - 1],
                "eigenvalue {i}"
            );
        }
        let k = 12;
        let top = ours.top_vectors(k);
        assert_eq!(top.len(), k);
        for (j, v) in top.iter().enumerate() {
            let reference = full.U().col(dim - 1 - j);
            let cos: f64 = v.iter().zip(reference.iter()).map(|(a, b)| a * b).sum();
            let norm: f64 = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-12, "component {j} has norm {norm}");
            assert!(
                cos.abs() > 1.0 - 1e-10,
                "component {j}: |cos| {}",
                cos.abs()
            );
            // Av = lambda v.
            let lambda = ours.values[dim - 1 - j];
            for r in 0..dim {
                let av: f64 = (0..dim).map(|c| cov[(r, c)] * v[c]).sum();
                assert!(
                    (av - lambda * v[r]).abs() < 1e-10 * values[dim - 1],
                    "component {j} row {r}"
                );
            }
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
            .map(|i| {
                (0..10)
                    .map(|j| ((i * 7 + j * 3) % 11) as f32 + i as f32 * 0.1)
                    .collect()
            })
            .collect();
        let stats = stats_of(&rows);
        let k = effective_k(50, stats.count, 10);
        assert_eq!(k, 5);
        let model = fit(
            &stats,
            &PcaOptions {
                k,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(model.k, 5);
        assert!(fit(
            &stats,
            &PcaOptions {
                k: 6,
                ..Default::default()
            }
        )
        .is_err());
    }
}
