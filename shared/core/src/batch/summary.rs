//! The run's summary, `runs/<run>/summary.json`: what the reducer reports of a run — counts,
//! errors by kind, the PCA's explained variance, where the time went and what it cost — and
//! the pure steps that fill it before the PCA.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::batch::reducer::Pricing;
use crate::batch::report::ReportInfo;
use crate::manifest::{DoneMarker, ImageError, Manifest, StageTimings};
use engine::pca;
use engine::stats::ShardStats;

/// The run summary, `runs/<run>/summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The run.
    pub run_id: String,
    /// `succeeded` or `failed` (too many errors).
    pub status: String,
    /// Where the images came from.
    pub input: String,
    /// Images listed.
    pub images: usize,
    /// Rows in `Results`.
    pub rows: usize,
    /// Images in the error list.
    pub errors: usize,
    /// errors / images.
    pub error_rate: f64,
    /// Errors per kind.
    pub errors_by_kind: BTreeMap<String, usize>,
    /// Number of shards.
    pub shards: usize,
    /// Feature dimension.
    pub feature_dim: usize,
    /// Components kept.
    pub k: usize,
    /// Explained-variance ratio per component.
    pub explained_variance_ratio: Vec<f64>,
    /// Their sum.
    pub cumulative_explained_variance: f64,
    /// Projection convention.
    pub convention: String,
    /// Stage times.
    pub timings: SummaryTimings,
    /// Lambda cost estimate (absent when not run on Lambda).
    pub cost: Option<CostEstimate>,
    /// When the run finished (RFC 3339).
    pub finished_at: String,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The k the run asked for, when the fitted `k` is smaller (clamped to min(k, n - 1, d)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_requested: Option<usize>,
    /// What the run did differently from what it was asked (e.g. a clamped k).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The HTML report: key, size and build time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportInfo>,
    /// Which engine ran the model, and in how many shards (each featurizer may run on
    /// another CPU): e.g. `{"native (avx2)": 5, "tract": 1}`. Shards whose marker predates
    /// the record are not counted; empty in summaries written before it was kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engines: BTreeMap<String, usize>,
}

impl Summary {
    /// The engines, as a line reads them: `native (avx2)`, or `native (avx2) × 5 shards,
    /// tract × 1 shard` when the shards differ; `None` when none was recorded.
    pub fn engines_line(&self) -> Option<String> {
        match self.engines.len() {
            0 => None,
            1 => self.engines.keys().next().cloned(),
            _ => Some(
                self.engines
                    .iter()
                    .map(|(engine, shards)| {
                        format!(
                            "{engine} × {shards} shard{}",
                            if *shards == 1 { "" } else { "s" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }
}

/// Where the time went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryTimings {
    /// Splitter wall time.
    pub split_s: f64,
    /// Featurizer stage times summed over shards (CPU-seconds across threads for decode,
    /// resize and infer).
    pub featurize: StageTimings,
    /// Reducer wall time.
    pub reduce_s: f64,
    /// Mean inference time per image, ms.
    pub infer_ms_per_image: f64,
    /// Share of the featurizers' billed (wall) time spent waiting for images to arrive:
    /// `featurize.fetch_wait_s / featurize.wall_s`.
    #[serde(default)]
    pub fetch_wait_share: f64,
    /// The reducer's wall time by step (`reduce_s` is their sum, plus small writes).
    #[serde(default)]
    pub reduce: ReduceTimings,
}

/// Where the reducer's time goes, seconds of wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReduceTimings {
    /// Reading the manifest (header and shard lists).
    pub manifest_s: f64,
    /// Checking every shard's commit and merging the shards' statistics (streamed).
    pub check_merge_s: f64,
    /// The PCA fit on the merged co-moment (eigen-decomposition of d x d).
    pub fit_s: f64,
    /// Reading each features part, projecting it and writing its `Results_PCA` part.
    pub project_s: f64,
    /// The report, `pca_model.json`, `summary.json` and `_SUCCESS`.
    pub publish_s: f64,
}

/// The Lambda cost of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostEstimate {
    /// Billed GB-seconds (duration x memory), all functions.
    pub gb_seconds: f64,
    /// Invocations.
    pub requests: u64,
    /// USD.
    pub usd: f64,
    /// USD per 1,000 images.
    pub usd_per_1000_images: f64,
    /// Prices used.
    pub pricing: Pricing,
}

/// The run's PCA options, with k clamped to what the rows allow (min(k, n - 1, d)) and a
/// warning in the summary when it was. Only fewer than 2 rows (no PCA at all) fails the run,
/// in `fit`.
pub(crate) fn clamped_pca_options(
    manifest: &Manifest,
    merged: &ShardStats,
    summary: &mut Summary,
) -> engine::pca::PcaOptions {
    let mut pca_options = manifest.options.pca.clone();
    if pca_options.variance.is_none() {
        let k = pca::effective_k(pca_options.k, merged.count, merged.dim());
        if k >= 1 && k < pca_options.k {
            let warning = format!(
                "k = {} asked for, but {} rows of dimension {} allow at most {k} components (min(k, n - 1, d)): fitted k = {k}",
                pca_options.k,
                merged.count,
                merged.dim()
            );
            warn!(run_id = %manifest.run_id, requested = pca_options.k, k, "k clamped");
            summary.k_requested = Some(pca_options.k);
            summary.warnings.push(warning);
            pca_options.k = k;
        }
    }
    pca_options
}

/// The run's summary before the PCA: counts, error kinds and the shards' timings summed.
pub(crate) fn initial_summary(
    manifest: &Manifest,
    markers: &[DoneMarker],
    errors: &[ImageError],
) -> Summary {
    let images = manifest.total_images;
    let rows: usize = markers.iter().map(|m| m.rows).sum();
    let error_rate = if images == 0 {
        0.0
    } else {
        errors.len() as f64 / images as f64
    };
    let mut summary = Summary {
        run_id: manifest.run_id.clone(),
        status: "succeeded".into(),
        input: manifest.input.uri.clone(),
        images,
        rows,
        errors: errors.len(),
        error_rate,
        errors_by_kind: errors.iter().fold(Default::default(), |mut m, e| {
            *m.entry(
                serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
            )
            .or_insert(0) += 1;
            m
        }),
        shards: manifest.shards.len(),
        feature_dim: 0,
        k: 0,
        explained_variance_ratio: Vec::new(),
        cumulative_explained_variance: 0.0,
        convention: String::new(),
        timings: SummaryTimings {
            split_s: manifest
                .splitter
                .map(|s| s.duration_ms / 1000.0)
                .unwrap_or(0.0),
            featurize: markers.iter().fold(StageTimings::default(), |mut t, m| {
                t.add(&m.timings);
                t
            }),
            reduce_s: 0.0,
            infer_ms_per_image: 0.0,
            fetch_wait_share: 0.0,
            reduce: ReduceTimings::default(),
        },
        cost: None,
        finished_at: String::new(),
        failure: None,
        k_requested: None,
        warnings: Vec::new(),
        report: None,
        engines: markers.iter().filter_map(|m| m.engine.clone()).fold(
            BTreeMap::new(),
            |mut engines, engine| {
                *engines.entry(engine).or_insert(0) += 1;
                engines
            },
        ),
    };
    if summary.timings.featurize.wall_s > 0.0 {
        summary.timings.fetch_wait_share =
            summary.timings.featurize.fetch_wait_s / summary.timings.featurize.wall_s;
    }
    if rows > 0 {
        summary.timings.infer_ms_per_image =
            summary.timings.featurize.infer_s * 1000.0 / rows as f64;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{InputLocation, InvocationCost, RunOptions};

    fn marker(shard: usize, engine: Option<&str>) -> DoneMarker {
        DoneMarker {
            shard,
            attempt: "a".into(),
            part_sha256: String::new(),
            images: 1,
            rows: 1,
            errors: 0,
            timings: StageTimings::default(),
            cost: InvocationCost {
                duration_ms: 1.0,
                memory_mb: None,
            },
            finished_at_ms: None,
            error_list: Vec::new(),
            stats_sha256: None,
            errors_sha256: None,
            engine: engine.map(str::to_string),
        }
    }

    #[test]
    fn the_summary_counts_the_engines_of_the_shards_and_reads_old_summaries() {
        let manifest = Manifest {
            run_id: "r".into(),
            created_at: String::new(),
            input: InputLocation {
                uri: "in".into(),
                bucket: None,
                prefix: String::new(),
            },
            options: RunOptions::default(),
            total_images: 4,
            shards: Vec::new(),
            splitter: None,
            model_sha256: String::new(),
            fingerprint: String::new(),
            request: None,
        };
        let markers = [
            marker(0, Some("native (avx2)")),
            marker(1, Some("tract")),
            marker(2, Some("native (avx2)")),
            marker(3, None),
        ];
        let summary = initial_summary(&manifest, &markers, &[]);
        assert_eq!(
            summary.engines,
            BTreeMap::from([("native (avx2)".to_string(), 2), ("tract".to_string(), 1)])
        );
        assert_eq!(
            summary.engines_line().unwrap(),
            "native (avx2) × 2 shards, tract × 1 shard"
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["engines"]["tract"], 1);
        let mut old = json;
        old.as_object_mut().unwrap().remove("engines");
        let old: Summary = serde_json::from_value(old).unwrap();
        assert!(old.engines.is_empty() && old.engines_line().is_none());
        let one = initial_summary(&manifest, &markers[..1], &[]);
        assert_eq!(one.engines_line().unwrap(), "native (avx2)");
    }
}
