//! The reducer: merges the shards' statistics, fits the PCA, projects every features part
//! (a few at a time, never all rows in memory), and writes `Results_PCA`, `pca_model.json`,
//! `errors.json`, `summary.json` and finally `_SUCCESS`. A lock object makes sure that one
//! reducer at a time writes; a reducer that died is taken over once its lock is stale.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::layout::RunLayout;
use crate::manifest::{
    DoneMarker, ImageError, InvocationCost, Manifest, ReduceMessage, StageTimings,
};
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::pca::{self, PcaModel};
use crate::stats::ShardStats;
use crate::store::{ObjectStore, StoreError};

/// Lambda prices used for the run's cost estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    /// USD per GB-second of billed duration.
    pub per_gb_second: f64,
    /// USD per request.
    pub per_request: f64,
}

impl Default for Pricing {
    /// us-east-1 arm64 prices (x86_64 is 0.0000166667 per GB-second).
    fn default() -> Self {
        Self {
            per_gb_second: 0.000_013_333_4,
            per_request: 0.000_000_2,
        }
    }
}

/// Tuning of the reducer.
#[derive(Debug, Clone)]
pub struct ReducerSettings {
    /// Parts projected at once.
    pub concurrency: usize,
    /// A lock older than this belongs to a reducer that died.
    pub lock_stale_after: std::time::Duration,
    /// Prices for the cost estimate.
    pub pricing: Pricing,
}

impl Default for ReducerSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            lock_stale_after: std::time::Duration::from_secs(900),
            pricing: Pricing::default(),
        }
    }
}

/// The reducer's lock content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceLock {
    /// Who holds it (the reduce message's id).
    pub owner: String,
    /// Unix seconds when taken.
    pub acquired_at: u64,
}

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
    pub errors_by_kind: std::collections::BTreeMap<String, usize>,
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

/// What the reducer did with a message.
#[derive(Debug, Clone, PartialEq)]
pub enum ReduceOutcome {
    /// It wrote the run's PCA outputs.
    Reduced(Box<Summary>),
    /// The run was already reduced: nothing written.
    AlreadyReduced,
    /// Too many images failed: summary and error list written, no PCA.
    Failed(Box<Summary>),
}

/// The reducer handler, generic over the store.
pub struct Reducer<S> {
    store: S,
    settings: ReducerSettings,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl<S: ObjectStore> Reducer<S> {
    /// A reducer on `store`.
    pub fn new(store: S, settings: ReducerSettings) -> Self {
        Self { store, settings }
    }

    /// Handles one reduce message; `owner` identifies this delivery (the SQS message id: a
    /// retry of the same message may take over its own lock).
    pub async fn process(&self, message: &ReduceMessage, owner: &str) -> Result<ReduceOutcome> {
        let layout = RunLayout::new(&message.run_id);
        if self.store.exists(&layout.pca_success()).await? {
            info!(run_id = %message.run_id, "already reduced: nothing to do");
            return Ok(ReduceOutcome::AlreadyReduced);
        }
        self.lock(&layout, owner).await?;
        let result = self.reduce(&layout).await;
        if result.is_err() {
            // Let a retry (or another delivery) take over at once.
            if let Err(e) = self.store.delete(&layout.reduce_lock()).await {
                warn!(error = %e, "could not release the reduce lock");
            }
        }
        result
    }

    async fn lock(&self, layout: &RunLayout, owner: &str) -> Result<()> {
        let key = layout.reduce_lock();
        for _ in 0..2 {
            let lock = ReduceLock {
                owner: owner.to_string(),
                acquired_at: unix_now(),
            };
            if self
                .store
                .put_if_absent(&key, serde_json::to_vec(&lock)?.into())
                .await?
            {
                return Ok(());
            }
            let held: ReduceLock = match self.store.get(&key).await {
                Ok(bytes) => serde_json::from_slice(&bytes)?,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if held.owner == owner {
                return Ok(());
            }
            let age = unix_now().saturating_sub(held.acquired_at);
            if age < self.settings.lock_stale_after.as_secs() {
                return Err(Error::RunState(format!(
                    "run {} is being reduced by {} (lock taken {age} s ago); retry later",
                    layout.run_id(),
                    held.owner
                )));
            }
            warn!(run_id = layout.run_id(), holder = %held.owner, age, "taking over a stale reduce lock");
            self.store.delete(&key).await?;
        }
        Err(Error::RunState(format!(
            "could not take the reduce lock of run {}",
            layout.run_id()
        )))
    }

    async fn reduce(&self, layout: &RunLayout) -> Result<ReduceOutcome> {
        let started = Instant::now();
        let manifest: Manifest =
            serde_json::from_slice(&self.store.get(&layout.manifest()).await?)?;
        let shard_ids: Vec<usize> = manifest.shards.iter().map(|s| s.id).collect();
        let concurrency = self.settings.concurrency.max(1);

        let markers: Vec<DoneMarker> = stream::iter(shard_ids.iter().map(|&id| {
            let key = layout.done_marker(id);
            async move {
                let bytes = self.store.get(&key).await.map_err(|e| match e {
                    StoreError::NotFound(_) => {
                        Error::RunState(format!("shard {id} is not done yet"))
                    }
                    other => other.into(),
                })?;
                Ok::<_, Error>(serde_json::from_slice::<DoneMarker>(&bytes)?)
            }
        }))
        .buffered(concurrency * 4)
        .try_collect()
        .await?;

        let mut errors: Vec<ImageError> = Vec::new();
        for &id in &shard_ids {
            let shard_errors: Vec<ImageError> =
                serde_json::from_slice(&self.store.get(&layout.shard_errors(id)).await?)?;
            errors.extend(shard_errors);
        }
        self.store
            .put(&layout.errors(), serde_json::to_vec_pretty(&errors)?.into())
            .await?;

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
            shards: shard_ids.len(),
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
            },
            cost: None,
            finished_at: String::new(),
            failure: None,
        };
        if rows > 0 {
            summary.timings.infer_ms_per_image =
                summary.timings.featurize.infer_s * 1000.0 / rows as f64;
        }

        let fail = |mut summary: Summary, reason: String| async move {
            warn!(run_id = %summary.run_id, %reason, "run failed");
            summary.status = "failed".into();
            summary.failure = Some(reason);
            summary.finished_at = crate::manifest::now_rfc3339();
            self.store
                .put(
                    &layout.summary(),
                    serde_json::to_vec_pretty(&summary)?.into(),
                )
                .await?;
            Ok::<_, Error>(ReduceOutcome::Failed(Box::new(summary)))
        };
        if error_rate > manifest.options.max_error_rate {
            let reason = format!(
                "{} of {images} images failed ({:.1} %), above max_error_rate {:.1} %; see {}",
                errors.len(),
                error_rate * 100.0,
                manifest.options.max_error_rate * 100.0,
                layout.errors()
            );
            return fail(summary, reason).await;
        }

        // Merge in shard order: deterministic to the last bit.
        let mut merged: Option<ShardStats> = None;
        let mut loaded = stream::iter(shard_ids.iter().map(|&id| {
            let key = layout.stats(id);
            async move {
                let bytes = self.store.get(&key).await?;
                ShardStats::from_bytes(&bytes, &key)
            }
        }))
        .buffered(concurrency);
        while let Some(stats) = loaded.next().await {
            let stats = stats?;
            match merged.as_mut() {
                None => merged = Some(stats),
                Some(m) => m.merge(&stats)?,
            }
        }
        let merged = merged.ok_or_else(|| Error::Pca("the run has no shards".into()))?;
        let model = match pca::fit(&merged, &manifest.options.pca) {
            Ok(model) => model,
            Err(e) => return fail(summary, e.to_string()).await,
        };

        let model_ref = &model;
        stream::iter(shard_ids.iter().map(|&id| async move {
            let part = self.store.get(&layout.results_part(id)).await?;
            let projected = project_part(model_ref, part)?;
            self.store.put(&layout.pca_part(id), projected).await?;
            Ok::<_, Error>(())
        }))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;

        summary.feature_dim = model.dim;
        summary.k = model.k;
        summary.explained_variance_ratio = model.explained_variance_ratio.clone();
        summary.cumulative_explained_variance = model.cumulative_explained_variance;
        summary.convention = model.convention_note.clone();
        summary.timings.reduce_s = started.elapsed().as_secs_f64();
        summary.cost = self.cost(&manifest, &markers, InvocationCost::since(started), images);
        summary.finished_at = crate::manifest::now_rfc3339();

        self.store
            .put(&layout.pca_model(), serde_json::to_vec(&model)?.into())
            .await?;
        self.store
            .put(
                &layout.summary(),
                serde_json::to_vec_pretty(&summary)?.into(),
            )
            .await?;
        self.store.put(&layout.pca_success(), Bytes::new()).await?;
        info!(
            run_id = %manifest.run_id, rows, errors = summary.errors, k = model.k,
            cumulative = model.cumulative_explained_variance, "run reduced"
        );
        Ok(ReduceOutcome::Reduced(Box::new(summary)))
    }

    fn cost(
        &self,
        manifest: &Manifest,
        markers: &[DoneMarker],
        reducer: InvocationCost,
        images: usize,
    ) -> Option<CostEstimate> {
        let invocations: Vec<InvocationCost> = manifest
            .splitter
            .into_iter()
            .chain(markers.iter().map(|m| m.cost))
            .chain(std::iter::once(reducer))
            .collect();
        if invocations.iter().all(|i| i.memory_mb.is_none()) {
            return None;
        }
        // Lambda bills each invocation's duration rounded up to the millisecond.
        let gb_seconds: f64 = invocations
            .iter()
            .filter_map(|i| {
                i.memory_mb
                    .map(|mb| i.duration_ms.ceil() / 1000.0 * mb as f64 / 1024.0)
            })
            .sum();
        let requests = invocations.len() as u64;
        let pricing = self.settings.pricing;
        let usd = gb_seconds * pricing.per_gb_second + requests as f64 * pricing.per_request;
        Some(CostEstimate {
            gb_seconds,
            requests,
            usd,
            usd_per_1000_images: if images == 0 {
                0.0
            } else {
                usd * 1000.0 / images as f64
            },
            pricing,
        })
    }
}

/// Projects one features part to a PCA part (pure apart from Parquet encoding).
pub fn project_part(model: &PcaModel, part: Bytes) -> Result<Bytes> {
    let rows = parquet_io::read_rows(Dataset::Features, part)?;
    let projected: Vec<VectorRow> = rows
        .into_iter()
        .map(|r| VectorRow {
            values: model.project(&r.values),
            path: r.path,
            label: r.label,
        })
        .collect();
    parquet_io::write_rows(Dataset::Pca, &projected)
}
