//! The statistics of a refit: the running sums updated with the rows leaving and arriving,
//! and the PCA fitted from them.

use super::refit::SplitParts;
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

/// Updates the running sums (the leaving rows out, the arriving rows in; the first rows'
/// mean is the shift of new sums) and fits the PCA from them.
pub(super) fn fit_statistics(
    sums: Option<RunningSums>,
    split: &SplitParts,
    arriving: &[VectorRow],
    pca_options: &PcaOptions,
) -> Result<Fit> {
    let leaving_refs: Vec<&[f32]> = split
        .values()
        .flat_map(|(_, gone)| gone)
        .map(|r| r.values.as_slice())
        .collect();
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
    sums.remove(&leaving_refs)?;
    drop(leaving_refs);
    sums.add(&arriving_refs)?;
    let (model, warnings, k_requested) = fit_pca(&sums, pca_options);
    Ok(Fit {
        sums,
        model,
        warnings,
        k_requested,
    })
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
