//! The statistics of a refit: the running sums updated with the rows leaving and arriving,
//! and the PCA fitted from them.

use crate::error::Result;
use crate::parquet_io::VectorRow;
use engine::pca::{self, PcaModel, PcaOptions};
use engine::stats::RunningSums;

/// The updated statistics and what was fitted from them.
pub(super) struct Fit {
    /// The running sums of the live rows.
    pub(super) sums: RunningSums,
    /// The PCA (none with fewer than 2 rows).
    pub(super) model: Option<PcaModel>,
    /// Notes (k clamped, no PCA possible).
    pub(super) warnings: Vec<String>,
    /// Requested components, when fewer were possible.
    pub(super) k_requested: Option<usize>,
}

/// The running sums with the arriving rows added: the previous snapshot's, or new ones
/// shifted by the arriving rows' mean (the first refit). The rows that leave are subtracted
/// bucket by bucket as they are read ([`RunningSums::remove`]).
pub(super) fn start_sums(sums: Option<RunningSums>, arriving: &[VectorRow]) -> Result<RunningSums> {
    let arriving_refs: Vec<&[f32]> = arriving.iter().map(|r| r.values.as_slice()).collect();
    let dim = arriving
        .first()
        .map(|r| r.values.len())
        .or(sums.as_ref().map(|s| s.dim()));
    let mut sums = match (sums, dim) {
        (Some(s), _) => s,
        (None, Some(dim)) => {
            // The shift: the first rows' mean.
            let mut shift = vec![0.0f64; dim];
            for row in &arriving_refs {
                for (s, &x) in shift.iter_mut().zip(row.iter()) {
                    *s += f64::from(x);
                }
            }
            shift
                .iter_mut()
                .for_each(|s| *s /= arriving_refs.len().max(1) as f64);
            RunningSums::new(shift)
        }
        (None, None) => RunningSums::new(Vec::new()),
    };
    sums.add(&arriving_refs)?;
    Ok(sums)
}

/// Fits the PCA from the updated running sums.
pub(super) fn fit_statistics(sums: RunningSums, pca_options: &PcaOptions) -> Fit {
    let (model, warnings, k_requested) = fit_pca(&sums, pca_options);
    Fit {
        sums,
        model,
        warnings,
        k_requested,
    }
}

/// Fits the PCA of the live rows: none with fewer than 2, k clamped to what the rows allow.
/// Returns the model, the warnings and the requested k when it was clamped.
fn fit_pca(
    sums: &RunningSums,
    options: &PcaOptions,
) -> (Option<PcaModel>, Vec<String>, Option<usize>) {
    let stats = sums.to_stats();
    let mut warnings = Vec::new();
    let mut pca_options = options.clone();
    let mut k_requested = None;
    let model: Option<PcaModel> = if stats.count < 2 {
        warnings.push(format!(
            "{} live rows: no PCA (it needs at least 2)",
            stats.count
        ));
        None
    } else {
        if pca_options.variance.is_none() {
            let k = pca::effective_k(pca_options.k, stats.count, stats.dim());
            if k < pca_options.k {
                warnings.push(format!(
                    "k = {} asked for, but {} rows of dimension {} allow at most {k} components (min(k, n - 1, d)): fitted k = {k}",
                    pca_options.k, stats.count, stats.dim()
                ));
                k_requested = Some(pca_options.k);
                pca_options.k = k;
            }
        }
        match pca::fit(&stats, &pca_options) {
            Ok(model) => Some(model),
            Err(e) => {
                warnings.push(format!("no PCA: {e}"));
                None
            }
        }
    };
    (model, warnings, k_requested)
}
