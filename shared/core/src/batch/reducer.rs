//! The reducer: merges the shards' statistics, fits the PCA, projects every features part
//! (a few at a time, never all rows in memory), and writes `Results_PCA`, `pca_model.json`,
//! `errors.json`, `summary.json` and finally `_SUCCESS`. Before fitting anything it checks
//! the run's invariants on the shards' committed objects. A fenced lock makes sure that one
//! reducer at a time writes: a reducer that died is taken over once its lock is stale (or
//! released), and a reducer whose lock was taken over stops before its next write.

use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::batch::featurizer::{committed_part, sha256_hex};
use crate::batch::summary::{
    clamped_pca_options, initial_summary, CostEstimate, ReduceTimings, Summary,
};
use crate::error::{Error, Result};
use crate::layout::RunLayout;
use crate::manifest::{DoneMarker, ImageError, InvocationCost, Manifest, ReduceMessage};
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::ports::store::{ObjectStore, StoreError};
use crate::report::{self, Collector, Limits, Selection};
use engine::pca::{self, PcaModel};
use engine::stats::ShardStats;

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

/// The reducer's lock content. It is only ever replaced conditionally (on its ETag), and
/// each takeover increments `generation`: the pair (owner, generation) is the fencing
/// token a reducer checks before each of its writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceLock {
    /// Who holds it (the reduce message's id).
    pub owner: String,
    /// Incremented by every takeover.
    #[serde(default)]
    pub generation: u64,
    /// Unix seconds when taken.
    pub acquired_at: u64,
    /// Set by a reducer that failed and let go: the next one may take over at once.
    #[serde(default)]
    pub released: bool,
}

/// What a reducer holds while it reduces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken {
    /// The lock's owner.
    pub owner: String,
    /// Its generation.
    pub generation: u64,
}

/// A failed reduce, kept for `status` (`runs/<run>/failures/reduce.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceFailure {
    /// The reduce message's id.
    pub owner: String,
    /// The error.
    pub error: String,
    /// When (RFC 3339).
    pub at: String,
    /// When (Unix seconds).
    pub at_unix: u64,
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
    /// Where the run's images are, for the report's thumbnails.
    input: Option<S>,
}

use crate::manifest::unix_now;

impl<S: ObjectStore> Reducer<S> {
    /// A reducer on `store`.
    pub fn new(store: S, settings: ReducerSettings) -> Self {
        Self {
            store,
            settings,
            input: None,
        }
    }

    /// Reads the run's images from `input` for the report's thumbnails (the data bucket on
    /// AWS, the input folder locally). Without it the report has no thumbnails.
    pub fn with_input(mut self, input: S) -> Self {
        self.input = Some(input);
        self
    }

    /// Handles one reduce message; `owner` identifies this delivery (the SQS message id: a
    /// retry of the same message may take over its own lock).
    pub async fn process(&self, message: &ReduceMessage, owner: &str) -> Result<ReduceOutcome> {
        let layout = RunLayout::new(&message.run_id);
        if self.store.exists(&layout.pca_success()).await? {
            info!(run_id = %message.run_id, "already reduced: nothing to do");
            self.clean_staging(&layout).await?;
            return Ok(ReduceOutcome::AlreadyReduced);
        }
        let token = self.lock(&layout, owner).await?;
        let result = self.reduce(&layout, &token).await;
        if let Err(error) = &result {
            if !matches!(error, Error::LostLock(_)) {
                let record = ReduceFailure {
                    owner: owner.to_string(),
                    error: error.to_string(),
                    at: crate::manifest::now_rfc3339(),
                    at_unix: unix_now(),
                };
                if let Ok(body) = serde_json::to_vec(&record) {
                    if let Err(e) = self.store.put(&layout.reduce_failure(), body.into()).await {
                        warn!(error = %e, "could not record the reduce failure");
                    }
                }
                // Let a retry (or another delivery) take over at once.
                self.release(&layout, &token).await;
            }
        }
        result
    }

    /// Takes the run's lock: creates it, or takes it over (conditionally on its ETag) when
    /// its holder released it or is stale. Returns the fencing token.
    pub async fn lock(&self, layout: &RunLayout, owner: &str) -> Result<LockToken> {
        let key = layout.reduce_lock();
        for _ in 0..3 {
            let fresh = ReduceLock {
                owner: owner.to_string(),
                generation: 1,
                acquired_at: unix_now(),
                released: false,
            };
            if self
                .store
                .put_if_absent(&key, serde_json::to_vec(&fresh)?.into())
                .await?
            {
                return Ok(LockToken {
                    owner: owner.to_string(),
                    generation: 1,
                });
            }
            let current = match self.store.get_versioned(&key).await {
                Ok(v) => v,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let held: ReduceLock = serde_json::from_slice(&current.body)?;
            if held.owner == owner && !held.released {
                // This delivery already holds it (a redelivery, or a create whose answer
                // was lost).
                return Ok(LockToken {
                    owner: owner.to_string(),
                    generation: held.generation,
                });
            }
            let age = unix_now().saturating_sub(held.acquired_at);
            if !held.released && age < self.settings.lock_stale_after.as_secs() {
                return Err(Error::RunState(format!(
                    "run {} is being reduced by {} (lock taken {age} s ago); retry later",
                    layout.run_id(),
                    held.owner
                )));
            }
            let next = ReduceLock {
                owner: owner.to_string(),
                generation: held.generation + 1,
                acquired_at: unix_now(),
                released: false,
            };
            warn!(run_id = layout.run_id(), holder = %held.owner, age, released = held.released,
                generation = next.generation, "taking over the reduce lock");
            let token = LockToken {
                owner: owner.to_string(),
                generation: next.generation,
            };
            if self
                .store
                .put_if_match(&key, serde_json::to_vec(&next)?.into(), &current.etag)
                .await?
                || self.holds(layout, &token).await?
            {
                return Ok(token);
            }
        }
        Err(Error::RunState(format!(
            "could not take the reduce lock of run {}: another reducer took it",
            layout.run_id()
        )))
    }

    async fn holds(&self, layout: &RunLayout, token: &LockToken) -> Result<bool> {
        match self.store.get(&layout.reduce_lock()).await {
            Ok(bytes) => {
                let held: ReduceLock = serde_json::from_slice(&bytes)?;
                Ok(held.owner == token.owner
                    && held.generation == token.generation
                    && !held.released)
            }
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Checked before every write: a reducer whose lock was taken over stops.
    async fn fence(&self, layout: &RunLayout, token: &LockToken) -> Result<()> {
        if self.holds(layout, token).await? {
            Ok(())
        } else {
            Err(Error::LostLock(format!(
                "run {}: {} (generation {}) no longer holds the reduce lock; stopping before any \
                 further write",
                layout.run_id(),
                token.owner,
                token.generation
            )))
        }
    }

    /// [`Self::fenced_put`] of a JSON document (pretty-printed, as people read them).
    async fn fenced_put_json<T: Serialize>(
        &self,
        layout: &RunLayout,
        token: &LockToken,
        key: &str,
        document: &T,
    ) -> Result<()> {
        self.fenced_put(
            layout,
            token,
            key,
            serde_json::to_vec_pretty(document)?.into(),
        )
        .await
    }

    /// Writes an output only while holding the lock.
    async fn fenced_put(
        &self,
        layout: &RunLayout,
        token: &LockToken,
        key: &str,
        body: Bytes,
    ) -> Result<()> {
        self.fence(layout, token).await?;
        self.store.put(key, body).await?;
        Ok(())
    }

    /// Marks the lock released if it is still ours (conditionally: never someone else's).
    async fn release(&self, layout: &RunLayout, token: &LockToken) {
        let key = layout.reduce_lock();
        let result = async {
            let current = self.store.get_versioned(&key).await?;
            let mut held: ReduceLock = serde_json::from_slice(&current.body)?;
            if held.owner != token.owner || held.generation != token.generation {
                return Ok::<_, Error>(false);
            }
            held.released = true;
            Ok(self
                .store
                .put_if_match(&key, serde_json::to_vec(&held)?.into(), &current.etag)
                .await?)
        }
        .await;
        if let Err(e) = result {
            warn!(error = %e, "could not release the reduce lock");
        }
    }

    /// Reads every shard's committed objects and checks the run's invariants before
    /// anything is fitted: each shard committed, its rows + errors = its listed images, its
    /// statistics' count = its rows, its part matches the marker's checksum, and no path is
    /// in two places (two rows, or a row and an error).
    async fn committed_shards(
        &self,
        layout: &RunLayout,
        manifest: &Manifest,
        token: &LockToken,
    ) -> Result<(Vec<DoneMarker>, Vec<ImageError>, Option<ShardStats>)> {
        let concurrency = self.settings.concurrency.max(1);
        let invariant = |m: String| Error::Invariant(format!("run {}: {m}", manifest.run_id));
        let mut loaded = stream::iter(manifest.shards.iter().map(|shard| async move {
            let marker: DoneMarker = match self.store.get(&layout.done_marker(shard.id)).await {
                Ok(bytes) => serde_json::from_slice(&bytes)?,
                Err(StoreError::NotFound(_)) => {
                    return Err(Error::RunState(format!(
                        "shard {} is not done yet",
                        shard.id
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            let errors: Vec<ImageError> = serde_json::from_slice(
                &self
                    .store
                    .get(&layout.attempt_errors(shard.id, &marker.attempt))
                    .await?,
            )?;
            let stats_key = layout.attempt_stats(shard.id, &marker.attempt);
            let stats = ShardStats::from_bytes(&self.store.get(&stats_key).await?, &stats_key)?;
            let part = self.published_part(layout, &marker, token).await?;
            let paths = parquet_io::read_paths(part)?;
            Ok::<_, Error>((marker, errors, stats, paths))
        }))
        .buffered(concurrency);
        // Shard by shard, in order: checked, then its statistics merged and dropped, so
        // memory holds one merged co-moment (plus the shards in flight), not one per shard.
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut markers = Vec::new();
        let mut all_errors = Vec::new();
        let mut merged: Option<ShardStats> = None;
        let mut shards = manifest.shards.iter();
        while let Some((marker, errors, stats, paths)) = loaded.try_next().await? {
            let shard = shards.next().expect("one loaded entry per shard");
            let id = shard.id;
            if marker.shard != id || marker.images != shard.images.len() {
                return Err(invariant(format!(
                    "shard {id}'s done marker is for shard {} with {} images; the manifest lists {}",
                    marker.shard,
                    marker.images,
                    shard.images.len()
                )));
            }
            if paths.len() != marker.rows || errors.len() != marker.errors {
                return Err(invariant(format!(
                    "shard {id}: {} rows and {} errors stored, its marker says {} and {}",
                    paths.len(),
                    errors.len(),
                    marker.rows,
                    marker.errors
                )));
            }
            if paths.len() + errors.len() != shard.images.len() {
                return Err(invariant(format!(
                    "shard {id}: {} rows + {} errors != {} listed images",
                    paths.len(),
                    errors.len(),
                    shard.images.len()
                )));
            }
            if stats.count != marker.rows as u64 {
                return Err(invariant(format!(
                    "shard {id}: statistics of {} rows for a part of {}",
                    stats.count, marker.rows
                )));
            }
            let listed: std::collections::HashSet<&str> =
                shard.images.iter().map(|i| i.path.as_str()).collect();
            for path in paths
                .iter()
                .map(String::as_str)
                .chain(errors.iter().map(|e| e.path.as_str()))
            {
                if !listed.contains(path) {
                    return Err(invariant(format!(
                        "shard {id} holds {path:?}, which it was not given"
                    )));
                }
                if !seen.insert(path.to_string()) {
                    return Err(invariant(format!(
                        "{path:?} is in the outputs twice (two rows, or a row and an error)"
                    )));
                }
            }
            markers.push(marker);
            all_errors.extend(errors);
            match merged.as_mut() {
                None => merged = Some(stats),
                Some(m) => m.merge(&stats)?,
            }
        }
        if seen.len() != manifest.total_images {
            return Err(invariant(format!(
                "{} images accounted for, {} listed",
                seen.len(),
                manifest.total_images
            )));
        }
        Ok((markers, all_errors, merged))
    }

    /// The shard's part as published in `Results`, checked against its marker; published
    /// again from the committed attempt when it is missing or differs.
    async fn published_part(
        &self,
        layout: &RunLayout,
        marker: &DoneMarker,
        token: &LockToken,
    ) -> Result<Bytes> {
        let key = layout.results_part(marker.shard);
        match self.store.get(&key).await {
            Ok(part) if sha256_hex(&part) == marker.part_sha256 => return Ok(part),
            Ok(_) => warn!(
                key,
                "published part differs from the committed one: republishing"
            ),
            Err(StoreError::NotFound(_)) => {
                info!(key, "committed part not published yet: publishing")
            }
            Err(e) => return Err(e.into()),
        }
        let part = committed_part(&self.store, layout, marker).await?;
        self.fenced_put(layout, token, &key, part.clone()).await?;
        Ok(part)
    }

    async fn reduce(&self, layout: &RunLayout, token: &LockToken) -> Result<ReduceOutcome> {
        let started = Instant::now();
        let manifest: Manifest =
            crate::batch::run_manifest::read_full(&self.store, layout, self.settings.concurrency)
                .await?;
        let mut steps = ReduceTimings {
            manifest_s: started.elapsed().as_secs_f64(),
            ..ReduceTimings::default()
        };
        let shard_ids: Vec<usize> = manifest.shards.iter().map(|s| s.id).collect();

        let step = Instant::now();
        let (markers, errors, shard_stats) =
            self.committed_shards(layout, &manifest, token).await?;
        steps.check_merge_s = step.elapsed().as_secs_f64();
        self.fenced_put_json(layout, token, &layout.errors(), &errors)
            .await?;
        self.fenced_put(layout, token, &layout.results_success(), Bytes::new())
            .await?;

        let mut summary = initial_summary(&manifest, &markers, &errors);
        let (images, rows, error_rate) = (summary.images, summary.rows, summary.error_rate);

        if error_rate > manifest.options.max_error_rate {
            let reason = format!(
                "{} of {images} images failed ({:.1} %), above max_error_rate {:.1} %; see {}",
                errors.len(),
                error_rate * 100.0,
                manifest.options.max_error_rate * 100.0,
                layout.errors()
            );
            summary.timings.reduce = steps;
            return self
                .fail_run(
                    layout, token, &manifest, &markers, &errors, summary, reason, started,
                )
                .await;
        }

        // Merged in shard order while checked: deterministic to the last bit.
        let merged = shard_stats.ok_or_else(|| {
            Error::Engine(engine::error::Error::Pca("the run has no shards".into()))
        })?;
        let pca_options = clamped_pca_options(&manifest, &merged, &mut summary);
        let step = Instant::now();
        let model = match pca::fit(&merged, &pca_options) {
            Ok(model) => model,
            Err(e) => {
                steps.fit_s = step.elapsed().as_secs_f64();
                summary.timings.reduce = steps;
                let reason = e.to_string();
                return self
                    .fail_run(
                        layout, token, &manifest, &markers, &errors, summary, reason, started,
                    )
                    .await;
            }
        };
        steps.fit_s = step.elapsed().as_secs_f64();
        let step = Instant::now();

        let selection = self
            .project_parts(layout, token, &model, &shard_ids, &markers)
            .await?;
        steps.project_s = step.elapsed().as_secs_f64();
        let step = Instant::now();

        summary.feature_dim = model.dim;
        summary.k = model.k;
        summary.explained_variance_ratio = model.explained_variance_ratio.clone();
        summary.cumulative_explained_variance = model.cumulative_explained_variance;
        summary.convention = model.convention_note.clone();
        summary.timings.reduce_s = started.elapsed().as_secs_f64();
        summary.cost = self.cost(&manifest, &markers, InvocationCost::since(started), images);
        summary.finished_at = crate::manifest::now_rfc3339();

        self.fenced_put(
            layout,
            token,
            &layout.pca_model(),
            serde_json::to_vec(&model)?.into(),
        )
        .await?;
        self.write_report(
            layout,
            token,
            &manifest,
            &mut summary,
            Some(&model),
            &markers,
            &errors,
            Some(&selection),
        )
        .await?;
        steps.publish_s = step.elapsed().as_secs_f64();
        summary.timings.reduce = steps;
        summary.timings.reduce_s = started.elapsed().as_secs_f64();
        self.fenced_put_json(layout, token, &layout.summary(), &summary)
            .await?;
        self.fenced_put(layout, token, &layout.pca_success(), Bytes::new())
            .await?;
        info!(
            run_id = %manifest.run_id, rows, errors = summary.errors, k = model.k,
            cumulative = model.cumulative_explained_variance, "run reduced"
        );
        self.clean_staging(layout).await?;
        Ok(ReduceOutcome::Reduced(Box::new(summary)))
    }

    /// Records a failed run: its report and summary (no PCA), and the reason in the log.
    #[allow(clippy::too_many_arguments)]
    async fn fail_run(
        &self,
        layout: &RunLayout,
        token: &LockToken,
        manifest: &Manifest,
        markers: &[DoneMarker],
        errors: &[ImageError],
        mut summary: Summary,
        reason: String,
        started: Instant,
    ) -> Result<ReduceOutcome> {
        warn!(run_id = %summary.run_id, %reason, "run failed");
        summary.status = "failed".into();
        summary.failure = Some(reason);
        summary.finished_at = crate::manifest::now_rfc3339();
        summary.timings.reduce_s = started.elapsed().as_secs_f64();
        self.write_report(
            layout,
            token,
            manifest,
            &mut summary,
            None,
            markers,
            errors,
            None,
        )
        .await?;
        self.fenced_put_json(layout, token, &layout.summary(), &summary)
            .await?;
        Ok(ReduceOutcome::Failed(Box::new(summary)))
    }

    /// Projects every shard's published part with the PCA into `Results_PCA`, a few shards at
    /// a time, collecting the report's points and picks as the rows go by.
    async fn project_parts(
        &self,
        layout: &RunLayout,
        token: &LockToken,
        model: &PcaModel,
        shard_ids: &[usize],
        markers: &[DoneMarker],
    ) -> Result<Selection> {
        let concurrency = self.settings.concurrency.max(1);
        let markers_ref = markers;
        let model_ref = &model;
        let collector = std::sync::Mutex::new(Collector::new(Limits::default()));
        let collector_ref = &collector;
        stream::iter(shard_ids.iter().enumerate().map(|(i, &id)| async move {
            let part = self.published_part(layout, &markers_ref[i], token).await?;
            let rows = project_rows(model_ref, part)?;
            {
                let mut c = collector_ref.lock().expect("collector");
                for row in &rows {
                    c.add(&row.path, &row.label, &row.values);
                }
            }
            let projected = parquet_io::write_rows(Dataset::Pca, &rows)?;
            self.fenced_put(layout, token, &layout.pca_part(id), projected)
                .await?;
            Ok::<_, Error>(())
        }))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
        let selection = collector.into_inner().expect("collector").finish();
        Ok(selection)
    }

    /// Builds the report and writes it (before the summary, which records its size and build
    /// time). A report that cannot be drawn is a warning in the summary, not a failed run.
    #[allow(clippy::too_many_arguments)]
    async fn write_report(
        &self,
        layout: &RunLayout,
        token: &LockToken,
        manifest: &Manifest,
        summary: &mut Summary,
        model: Option<&PcaModel>,
        markers: &[DoneMarker],
        errors: &[ImageError],
        selection: Option<&Selection>,
    ) -> Result<()> {
        match report::build(
            self.input.as_ref(),
            manifest,
            summary,
            model,
            markers,
            errors,
            selection,
        )
        .await
        {
            Ok(built) => {
                self.fenced_put(
                    layout,
                    token,
                    &built.info.key,
                    built.html.into_bytes().into(),
                )
                .await?;
                summary.report = Some(built.info);
            }
            Err(e) => {
                warn!(run_id = %manifest.run_id, error = %e, "no report");
                summary
                    .warnings
                    .push(format!("the report could not be built: {e}"));
            }
        }
        Ok(())
    }

    /// Deletes the run's intermediate objects once it is complete (never before: they are
    /// what a retried reduce checks and fits).
    async fn clean_staging(&self, layout: &RunLayout) -> Result<()> {
        let staged = self.store.list(&layout.staging_prefix()).await?;
        stream::iter(staged.iter().map(|o| self.store.delete(&o.key)))
            .buffer_unordered(self.settings.concurrency.max(1) * 4)
            .try_collect::<Vec<()>>()
            .await?;
        if !staged.is_empty() {
            info!(
                run_id = layout.run_id(),
                objects = staged.len(),
                "staging deleted"
            );
        }
        Ok(())
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
    parquet_io::write_rows(Dataset::Pca, &project_rows(model, part)?)
}

/// Projects the rows of one features part.
pub fn project_rows(model: &PcaModel, part: Bytes) -> Result<Vec<VectorRow>> {
    Ok(parquet_io::read_rows(Dataset::Features, part)?
        .into_iter()
        .map(|r| VectorRow {
            values: model.project(&r.values),
            path: r.path,
            label: r.label,
        })
        .collect())
}
