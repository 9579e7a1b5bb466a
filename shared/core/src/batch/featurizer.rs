//! The featurizer: one shard at a time — fetch its images (bounded concurrency), decode,
//! resize, normalize and infer on all cores (one model session per thread), write the
//! shard's Parquet part, statistics, errors and done marker under deterministic keys, then
//! take part in the completion barrier (the last shard claims the reduce, exactly once).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::batch::attempts::{started_key, ShardStart};
use crate::batch::guard::{classify_fetch_error, ImageFailure};
use crate::batch::inference::{
    featurize_streamed, synthetic_features, ByteBudget, Engine, FeaturizedBatch, Fetched,
    ImageOutcome, Progress,
};
use crate::error::{Error, Result};
use crate::layout::{shard_of_done_marker, RunLayout};
use crate::manifest::{
    DoneMarker, ImageError, ImageRef, InvocationCost, Manifest, ReduceMessage, Shard, ShardMessage,
    StageTimings,
};
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::ports::queue::Queue;
use crate::ports::store::{ObjectStore, StoreError};
use engine::model::Model;
use engine::stats::ShardStats;

/// Tuning of the featurizer.
#[derive(Debug, Clone)]
pub struct FeaturizerSettings {
    /// Concurrent object reads per shard.
    pub fetch_concurrency: usize,
    /// Inference threads (0: all available cores).
    pub worker_threads: usize,
    /// Stop a shard when less than this is left before the deadline (room for the writes).
    pub deadline_margin: std::time::Duration,
    /// The encoded bytes a shard holds at once (fetches in flight, the prefetch queue and the
    /// images being decoded), at least the run's `max_image_bytes`: see
    /// [`FeaturizerSettings::byte_budget`] and docs/limits.md.
    pub prefetch_bytes: u64,
}

/// The default [`FeaturizerSettings::prefetch_bytes`] where the memory is not known (a
/// local run): 256 MiB.
pub const DEFAULT_PREFETCH_BYTES: u64 = 256 << 20;

impl Default for FeaturizerSettings {
    fn default() -> Self {
        Self {
            fetch_concurrency: 16,
            worker_threads: 0,
            deadline_margin: std::time::Duration::from_secs(20),
            prefetch_bytes: DEFAULT_PREFETCH_BYTES,
        }
    }
}

/// The prefetch budget of a function with `memory_mb` of memory (Lambda's
/// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`): a sixth of it, at least 64 MiB, or
/// [`DEFAULT_PREFETCH_BYTES`] when it is not known. The rest holds the model sessions, the
/// decoded pixels (the pixel budget) and the shard's rows (docs/limits.md).
pub fn prefetch_bytes_for_memory(memory_mb: Option<u64>) -> u64 {
    memory_mb.map_or(DEFAULT_PREFETCH_BYTES, |mb| {
        (mb << 20).div_ceil(6).max(64 << 20)
    })
}

impl FeaturizerSettings {
    /// Images fetched ahead of the inference threads (the channel between them): enough to
    /// keep every thread busy while the next fetches are in flight, few enough to bound
    /// memory (a shard is never held whole).
    pub fn prefetch(&self) -> usize {
        self.fetch_concurrency.max(2 * self.threads()).max(1)
    }

    /// The shard's byte budget for a run whose images are at most `max_image_bytes`:
    /// [`FeaturizerSettings::prefetch_bytes`], raised to `max_image_bytes` so that the
    /// largest allowed image fits.
    pub fn byte_budget(&self, max_image_bytes: u64) -> u64 {
        self.prefetch_bytes.max(max_image_bytes).max(1)
    }

    /// The number of inference threads to use.
    pub fn threads(&self) -> usize {
        if self.worker_threads > 0 {
            self.worker_threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// What happened to a shard message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOutcome {
    /// The shard.
    pub shard: usize,
    /// Rows written (0 when skipped).
    pub rows: usize,
    /// Images in the error list.
    pub errors: usize,
    /// The shard was already done (a redelivery): nothing was rewritten.
    pub already_done: bool,
    /// This invocation claimed the reduce and sent the reduce message.
    pub sent_reduce: bool,
}

/// The barrier claim's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceClaim {
    /// Shard whose featurizer won.
    pub claimed_by_shard: usize,
    /// When (RFC 3339).
    pub claimed_at: String,
    /// When (Unix seconds).
    #[serde(default)]
    pub claimed_at_unix: u64,
}

/// A fresh attempt id: time-ordered and random, so two attempts never share one.
pub fn new_attempt_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{:016x}", fastrand::u64(..))
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The committed part of a shard, read from its attempt and checked against the marker.
pub async fn committed_part<S: ObjectStore>(
    store: &S,
    layout: &RunLayout,
    marker: &DoneMarker,
) -> Result<Bytes> {
    let key = layout.attempt_part(marker.shard, &marker.attempt);
    let part = store.get(&key).await.map_err(|e| match e {
        StoreError::NotFound(_) => Error::RunState(format!(
            "shard {} is committed to attempt {}, but its part {key} is missing",
            marker.shard, marker.attempt
        )),
        other => other.into(),
    })?;
    if sha256_hex(&part) != marker.part_sha256 {
        return Err(Error::RunState(format!(
            "shard {}: part {key} does not match its done marker's checksum",
            marker.shard
        )));
    }
    Ok(part)
}

/// A failed attempt at a shard, kept for `status` (a shard that keeps failing ends in the DLQ).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFailure {
    /// The shard.
    pub shard: usize,
    /// Delivery attempt (SQS ApproximateReceiveCount), when known.
    pub attempt: Option<u32>,
    /// The error.
    pub error: String,
    /// When (RFC 3339).
    pub at: String,
}

/// Key of a shard's last failure record.
pub fn failure_key(layout: &RunLayout, shard: usize) -> String {
    format!("{}failures/shard-{shard:05}.json", layout.run_prefix())
}

/// The featurizer handler, generic over the store and the reduce queue.
pub struct ShardFeaturizer<S, Q> {
    input: S,
    output: S,
    reduce_queue: Q,
    engine: Engine,
    settings: FeaturizerSettings,
    progress: Option<Progress>,
    manifests: Mutex<Vec<Arc<Manifest>>>,
}

impl<S: ObjectStore, Q: Queue> ShardFeaturizer<S, Q> {
    /// A featurizer reading images from `input` and writing the run to `output`.
    pub fn new(
        input: S,
        output: S,
        reduce_queue: Q,
        model: Model,
        settings: FeaturizerSettings,
    ) -> Self {
        Self {
            input,
            output,
            reduce_queue,
            engine: Engine::Model(model),
            settings,
            progress: None,
            manifests: Mutex::new(Vec::new()),
        }
    }

    /// Reports finished images to `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// A featurizer that makes seeded random features of dimension `dim` instead of running
    /// a model (its images are fetched, not decoded): for simulations at scale.
    pub fn synthetic(
        input: S,
        output: S,
        reduce_queue: Q,
        dim: usize,
        settings: FeaturizerSettings,
    ) -> Self {
        Self {
            input,
            output,
            reduce_queue,
            engine: Engine::Synthetic { dim },
            settings,
            progress: None,
            manifests: Mutex::new(Vec::new()),
        }
    }

    /// Reads a run's manifest header (cached: it never changes once written).
    pub async fn manifest(&self, run_id: &str) -> Result<Arc<Manifest>> {
        if let Some(m) = self
            .manifests
            .lock()
            .expect("cache")
            .iter()
            .find(|m| m.run_id == run_id)
        {
            return Ok(m.clone());
        }
        let layout = RunLayout::new(run_id);
        let manifest = Arc::new(
            crate::batch::run_manifest::read_header(&self.output, &layout)
                .await
                .map_err(|e| match e {
                    Error::RunState(_) => Error::RunState(format!("run {run_id} has no manifest")),
                    other => other,
                })?,
        );
        self.manifests.lock().expect("cache").push(manifest.clone());
        Ok(manifest)
    }

    /// Processes one shard message. `deadline` is the invocation's end (Lambda), `attempt`
    /// the delivery count; before fetching, an attempt-started record is written
    /// ([`crate::batch::attempts`]), and on error a failure record, for `status`.
    pub async fn process(
        &self,
        message: &ShardMessage,
        deadline: Option<Instant>,
        attempt: Option<u32>,
    ) -> Result<ShardOutcome> {
        let result = self.process_inner(message, deadline, attempt).await;
        if let Err(error) = &result {
            let layout = RunLayout::new(&message.run_id);
            let record = ShardFailure {
                shard: message.shard,
                attempt,
                error: error.to_string(),
                at: crate::manifest::now_rfc3339(),
            };
            if let Ok(body) = serde_json::to_vec(&record) {
                if let Err(e) = self
                    .output
                    .put(&failure_key(&layout, message.shard), body.into())
                    .await
                {
                    warn!(error = %e, "could not record the shard failure");
                }
            }
        }
        result
    }

    /// Records that a delivery of `shard` starts attempt `attempt` (overwriting the previous
    /// record). A failure to write it is a warning: it only informs `status`.
    async fn record_start(
        &self,
        layout: &RunLayout,
        shard: usize,
        receive_count: Option<u32>,
        attempt: &str,
    ) {
        let record = ShardStart {
            shard,
            receive_count: receive_count.unwrap_or(1),
            attempt: attempt.to_string(),
            at_unix: crate::manifest::unix_now(),
        };
        let written = match serde_json::to_vec(&record) {
            Ok(body) => self
                .output
                .put(&started_key(layout, shard), body.into())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = written {
            warn!(shard, %error, "could not record the attempt's start");
        }
    }

    async fn process_inner(
        &self,
        message: &ShardMessage,
        deadline: Option<Instant>,
        receive_count: Option<u32>,
    ) -> Result<ShardOutcome> {
        let started = Instant::now();
        let manifest = self.manifest(&message.run_id).await?;
        let layout = RunLayout::new(&manifest.run_id);
        let shard = Shard {
            id: message.shard,
            count: 0,
            images: crate::batch::run_manifest::read_shard(&self.output, &manifest, message.shard)
                .await?,
        };
        let shard = &shard;
        self.check_engine_matches(&manifest)?;
        if let Some(marker) = self.committed(&layout, shard.id).await? {
            // Its part was published by the committing attempt, or, if that one died first,
            // is published by the reducer (which checks every part against its marker).
            info!(
                shard = shard.id,
                attempt = %marker.attempt,
                "shard already committed (redelivery): going to the barrier"
            );
            let sent_reduce = self.barrier(&manifest, shard.id).await?;
            return Ok(ShardOutcome {
                shard: shard.id,
                rows: 0,
                errors: 0,
                already_done: true,
                sent_reduce,
            });
        }
        let compute_deadline = deadline.map(|d| {
            d - self
                .settings
                .deadline_margin
                .min(d.saturating_duration_since(Instant::now()))
        });

        // An attempt id of its own: this attempt's objects are never overwritten by another.
        let attempt = new_attempt_id();
        self.record_start(&layout, shard.id, receive_count, &attempt)
            .await;
        let (batch, fetch_s) = self
            .fetch_and_infer(&manifest, shard, compute_deadline)
            .await?;

        // The attempt's objects first, under its own keys; then the done marker, created
        // only if absent, commits exactly one attempt; then the committed part is published.
        let (marker, part) = self
            .stage_attempt(&layout, shard, &attempt, batch, fetch_s, started)
            .await?;
        let committed = self.commit(&layout, &manifest.run_id, marker).await?;
        let ours = committed.attempt == attempt;
        if ours {
            // Publish the committed part. Only the committing attempt does; should it die
            // before this, the reducer publishes the committed part from staging.
            self.output
                .put(&layout.results_part(shard.id), part)
                .await?;
        }
        info!(
            run_id = %manifest.run_id, shard = shard.id, attempt = %committed.attempt,
            rows = committed.rows, errors = committed.errors, wall_s = committed.timings.wall_s,
            "shard done"
        );
        let sent_reduce = self.barrier(&manifest, shard.id).await?;
        Ok(ShardOutcome {
            shard: shard.id,
            rows: if ours { committed.rows } else { 0 },
            errors: if ours { committed.errors } else { 0 },
            already_done: !ours,
            sent_reduce,
        })
    }

    /// Refuses a run featurized with another model, or with another preprocessing spec,
    /// than this featurizer's engine.
    fn check_engine_matches(&self, manifest: &Manifest) -> Result<()> {
        if !manifest.model_sha256.is_empty() && manifest.model_sha256 != self.engine.sha256() {
            return Err(Error::RunState(format!(
                "run {} is featurized with model sha256 {}, but this featurizer loaded {}: \
                 deploy that model again, or start a new run",
                manifest.run_id,
                manifest.model_sha256,
                self.engine.sha256()
            )));
        }
        if let (Some(recorded), Some(ours)) =
            (&manifest.options.model_spec, self.engine.spec_sha256())
        {
            if recorded.sha256 != ours {
                return Err(Error::RunState(format!(
                    "run {} is featurized with {}, but this featurizer's model is preprocessed \
                     with the spec of sha256 {ours}: featurize it with that spec (`--model-spec`; on \
                     AWS the layer built with it, ModelSpecSha256), or start a new run",
                    manifest.run_id,
                    recorded.describe()
                )));
            }
        }
        Ok(())
    }

    /// Writes attempt `attempt`'s objects under its own keys (part, statistics, errors)
    /// and returns its done marker, not yet committed, with the part's bytes. `started` is
    /// the invocation's start, `fetch_s` the fetch's wall time.
    async fn stage_attempt(
        &self,
        layout: &RunLayout,
        shard: &Shard,
        attempt: &str,
        batch: FeaturizedBatch,
        fetch_s: f64,
        started: Instant,
    ) -> Result<(DoneMarker, Bytes)> {
        let write_start = Instant::now();
        let (rows, errors) = split_outcomes(&shard.images, batch.outcomes);
        let (part, stats) = encode_part_and_stats(&rows, self.engine.feature_dim())?;
        self.output
            .put(&layout.attempt_part(shard.id, attempt), part.clone())
            .await?;
        let stats_bytes = Bytes::from(stats.to_bytes());
        let errors_bytes = Bytes::from(serde_json::to_vec(&errors)?);
        let (stats_sha256, errors_sha256) = (sha256_hex(&stats_bytes), sha256_hex(&errors_bytes));
        self.output
            .put(&layout.attempt_stats(shard.id, attempt), stats_bytes)
            .await?;
        self.output
            .put(&layout.attempt_errors(shard.id, attempt), errors_bytes)
            .await?;
        let mut timings = batch.timings;
        timings.fetch_s = fetch_s;
        timings.write_s = write_start.elapsed().as_secs_f64();
        timings.wall_s = started.elapsed().as_secs_f64();
        let marker = DoneMarker {
            shard: shard.id,
            attempt: attempt.to_string(),
            part_sha256: sha256_hex(&part),
            images: shard.images.len(),
            rows: rows.len(),
            errors: errors.len(),
            timings,
            cost: InvocationCost::since(started),
            finished_at_ms: Some(crate::manifest::unix_now_ms()),
            error_list: errors,
            stats_sha256: Some(stats_sha256),
            errors_sha256: Some(errors_sha256),
            engine: Some(self.engine.name()),
        };
        Ok((marker, part))
    }

    /// Fetches the shard's images and runs the engine on them at once: the fetcher fills a
    /// bounded channel (the prefetch) in shard order while the inference threads drain it.
    /// Returns the outcomes and the fetch's wall time.
    async fn fetch_and_infer(
        &self,
        manifest: &Manifest,
        shard: &Shard,
        compute_deadline: Option<Instant>,
    ) -> Result<(FeaturizedBatch, f64)> {
        // Fetch and infer at once: the fetcher fills a bounded channel (the prefetch) in
        // shard order while the inference threads drain it, so the CPU is not idle for the
        // whole download (Lambda bills the wall time).
        let (sender, receiver) = tokio::sync::mpsc::channel(self.settings.prefetch());
        let engine = self.engine.clone();
        let threads = self.settings.threads();
        let max_pixels = manifest.options.max_pixels;
        let progress = self.progress.clone();
        let count = shard.images.len();
        // A failed fetch closes the channel early: the threads finish what is buffered (at
        // most the prefetch) and stop, and the attempt fails with the fetch's error.
        // Only synthetic features need the paths (their seeds); a model run copies none.
        let paths: Vec<String> = match engine {
            Engine::Synthetic { .. } => shard.images.iter().map(|i| i.path.clone()).collect(),
            Engine::Model(_) => Vec::new(),
        };
        let inference = tokio::task::spawn_blocking(move || match engine {
            Engine::Model(model) => featurize_streamed(
                &model,
                count,
                receiver,
                threads,
                max_pixels,
                compute_deadline,
                progress.as_ref(),
            ),
            Engine::Synthetic { dim } => {
                let mut receiver = receiver;
                let mut outcomes = vec![None; count];
                while let Some(fetched) = receiver.blocking_recv() {
                    let i = fetched.index;
                    outcomes[i] = Some(match fetched.image {
                        Ok(_) => ImageOutcome::Features(synthetic_features(&paths[i], dim)),
                        Err(failure) => ImageOutcome::Failed(failure.kind, failure.reason),
                    });
                }
                Ok(FeaturizedBatch {
                    outcomes: outcomes
                        .into_iter()
                        .map(|o| {
                            o.ok_or_else(|| Error::RunState("an image was not fetched".into()))
                        })
                        .collect::<Result<_>>()?,
                    timings: StageTimings::default(),
                })
            }
        });
        let fetch_start = Instant::now();
        let fetched = self
            .fetch_into(manifest, &shard.images, compute_deadline, sender)
            .await;
        let fetch_s = fetch_start.elapsed().as_secs_f64();
        let inferred = inference.await;
        fetched?;
        let batch = inferred??;
        Ok((batch, fetch_s))
    }

    /// Commits the attempt: creates the shard's done marker only if absent. When the create
    /// fails because a marker exists (another attempt committed first, or this attempt's own
    /// create landed and its answer was lost), the stored marker says which attempt won.
    async fn commit(
        &self,
        layout: &RunLayout,
        run_id: &str,
        marker: DoneMarker,
    ) -> Result<DoneMarker> {
        let (shard, attempt) = (marker.shard, marker.attempt.clone());
        let won = self
            .output
            .put_if_absent(
                &layout.done_marker(shard),
                serde_json::to_vec(&marker)?.into(),
            )
            .await?;
        Ok(if won {
            marker
        } else {
            // Another attempt committed first, or this attempt's own create landed and its
            // answer was lost (a retried create): the marker says which.
            let committed = self.committed(layout, shard).await?.ok_or_else(|| {
                Error::RunState(format!(
                    "shard {} of run {}: the done marker vanished",
                    shard, run_id
                ))
            })?;
            if committed.attempt != attempt {
                // Ours stays in staging until the reducer deletes the run's staging area.
                info!(shard, ours = %attempt, committed = %committed.attempt,
                    "another attempt committed this shard first: ours is discarded");
            }
            committed
        })
    }

    /// The shard's done marker, if it is committed.
    async fn committed(&self, layout: &RunLayout, shard: usize) -> Result<Option<DoneMarker>> {
        match self.output.get(&layout.done_marker(shard)).await {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Fetches a shard's images, a few at a time, in shard order, into `sender` (bounded:
    /// it waits while the inference threads are behind). Each is read only if it is still
    /// the content the run listed (`If-Match` on its listed version). A cause that is
    /// permanent for one object (gone, access denied, archived, changed after listing, not a
    /// readable file) is that image's error; any other failure (throttling, 5xx, timeouts, a
    /// local disk error) fails the whole attempt, so the message is retried instead of an
    /// image being lost for good ([`classify_fetch_error`]).
    ///
    /// An image over the run's `max_image_bytes` is its `too_large` error: from its listed
    /// size without a read, else from the read, which stops at the limit. Each read first
    /// takes its listed size (the limit when unknown) from the shard's byte budget
    /// ([`FeaturizerSettings::byte_budget`]), and gives it back once its image is featurized.
    async fn fetch_into(
        &self,
        manifest: &Manifest,
        images: &[ImageRef],
        deadline: Option<Instant>,
        sender: tokio::sync::mpsc::Sender<Fetched>,
    ) -> Result<()> {
        let limit = manifest.options.max_image_bytes;
        let budget = ByteBudget::new(self.settings.byte_budget(limit));
        let mut fetched = stream::iter(images.iter().enumerate().map(|(i, image)| {
            let key = manifest.input.key_of(image);
            let budget = &budget;
            async move {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    let late = StoreError::Remote {
                        op: "GetObject",
                        key,
                        transient: true,
                        source: "deadline reached before the fetch".into(),
                    };
                    return (i, Err(late), None);
                }
                if image.size > limit {
                    let refused = crate::ports::store::check_size(&key, image.size, limit);
                    return (i, refused.map(|()| Bytes::new()), None);
                }
                let reserved = if image.size > 0 { image.size } else { limit };
                let mut permit = budget.take(reserved).await;
                let read = self.input.get_bounded(&key, &image.version, limit).await;
                let read = read.map(|r| r.body);
                if let Ok(body) = &read {
                    budget.fit(&mut permit, body.len() as u64);
                }
                (i, read, Some(permit))
            }
        }))
        .buffered(self.settings.fetch_concurrency.max(1));
        while let Some((i, result, permit)) = fetched.next().await {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let remaining_ms = deadline
                    .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64)
                    .unwrap_or(0);
                return Err(Error::Deadline {
                    remaining_ms,
                    stage: "fetching the shard's images",
                });
            }
            let image: std::result::Result<Bytes, ImageFailure> = match result {
                Ok(bytes) => Ok(bytes),
                Err(e) => Err(classify_fetch_error(e).map_err(Error::Store)?),
            };
            let fetched = Fetched {
                index: i,
                image,
                budget: permit,
            };
            if sender.send(fetched).await.is_err() {
                // The inference threads stopped (deadline): they report it.
                break;
            }
        }
        Ok(())
    }

    /// The completion barrier. After writing its own done marker, a featurizer climbs the
    /// barrier's tree ([`crate::batch::barrier`]: O(log shards) requests, S3 being strongly
    /// consistent); one that reaches the root knows every shard is done, and of all that do,
    /// the conditional create of the claim lets exactly one send the reduce.
    async fn barrier(&self, manifest: &Manifest, shard: usize) -> Result<bool> {
        let layout = RunLayout::new(&manifest.run_id);
        let contiguous = manifest.shards.iter().enumerate().all(|(i, s)| s.id == i);
        let all_done = if contiguous {
            let token = format!("shard-{shard}-{}", new_attempt_id());
            crate::batch::barrier::climb(
                &self.output,
                &layout,
                manifest.shards.len(),
                shard,
                &token,
            )
            .await?
        } else {
            // Shard ids not 0..n (no splitter writes such a manifest): list the markers.
            let done: BTreeSet<usize> = self
                .output
                .list(&layout.done_prefix())
                .await?
                .iter()
                .filter_map(|o| shard_of_done_marker(&o.key))
                .collect();
            manifest.shards.iter().all(|s| done.contains(&s.id))
        };
        if !all_done {
            return Ok(false);
        }
        let claim = ReduceClaim {
            claimed_by_shard: shard,
            claimed_at: crate::manifest::now_rfc3339(),
            claimed_at_unix: crate::manifest::unix_now(),
        };
        let won = self
            .output
            .put_if_absent(&layout.reduce_claim(), serde_json::to_vec(&claim)?.into())
            .await?;
        let send = if won {
            true
        } else {
            // The winner may have died between its claim and its message: its own retry
            // (same shard) sends again; the reducer's lock makes a duplicate harmless. If the
            // message is lost for good, `status` reports the run stuck and `resume` sends it.
            let existing: ReduceClaim =
                serde_json::from_slice(&self.output.get(&layout.reduce_claim()).await?)?;
            existing.claimed_by_shard == shard && !self.output.exists(&layout.pca_success()).await?
        };
        if send {
            let message = ReduceMessage {
                run_id: manifest.run_id.clone(),
                claimed_by_shard: shard,
            };
            self.reduce_queue
                .send_all(vec![serde_json::to_string(&message)?])
                .await?;
            info!(run_id = %manifest.run_id, shard, "all shards done: reduce claimed and requested");
        }
        Ok(send)
    }
}

/// The shard's images' outcomes as Results rows and error-list entries, in shard order.
fn split_outcomes(
    images: &[ImageRef],
    outcomes: Vec<ImageOutcome>,
) -> (Vec<VectorRow>, Vec<ImageError>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (image, outcome) in images.iter().zip(outcomes) {
        match outcome {
            ImageOutcome::Features(values) => rows.push(VectorRow {
                path: image.path.clone(),
                label: image.label.clone(),
                values,
            }),
            ImageOutcome::Failed(kind, reason) => errors.push(ImageError {
                path: image.path.clone(),
                label: image.label.clone(),
                kind,
                reason,
            }),
        }
    }
    (rows, errors)
}

/// The shard's Parquet part and statistics: the encoding (one thread) beside the statistics
/// (a parallel product).
fn encode_part_and_stats(rows: &[VectorRow], dim: usize) -> Result<(Bytes, ShardStats)> {
    let (part, stats) = std::thread::scope(|scope| {
        let part = scope.spawn(|| parquet_io::write_rows(Dataset::Features, rows));
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.values.as_slice()).collect();
        let stats = ShardStats::from_rows(&refs, dim);
        let part = part
            .join()
            .map_err(|_| Error::RunState("the Parquet encoder panicked".into()));
        (part, stats)
    });
    Ok((part??, stats))
}
