//! The reducer: merges the shards' statistics, fits the PCA, projects every features part
//! (a few at a time, never all rows in memory), and writes `Results_PCA`, `pca_model.json`,
//! `errors.json`, `report.html`, `summary.json` and finally `_SUCCESS`.
//!
//! - **The invariant gate** ([`check`]): before fitting anything it checks the run's
//!   invariants on the shards' committed objects, statistics recomputed against each part.
//! - **Real fencing** ([`lock`], [`publish`]): one reducer at a time holds the run's lock
//!   (each delivery under its own token); it stages every output under `runs/<run>/reduce/`,
//!   and one conditional write — the lock rewritten with its commit, on the lock's entity tag
//!   as this holder wrote it — decides whether they are the run's. Only committed outputs
//!   are copied to the keys readers know, so a reducer whose lock was taken over (or
//!   released) cannot make any output visible.
//! - **Progress across invocations**: the fit is checkpointed under a digest of the
//!   committed shards, and each projected part under the model's digest; a reduce stopped by
//!   its deadline (or killed) is resumed by the next delivery from where it was.

mod check;
mod lock;
mod publish;

use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use check::{inputs_digest, mean_of, stats_match_rows, MEAN_TOLERANCE};
pub use lock::{delivery_token, Acquired, LockToken, ReduceCommit, ReduceLock};
pub use publish::{
    fit_checkpoint_key, generation_prefix, projected_part_key, reduce_prefix, StagedOutput,
    StagedOutputs,
};

use crate::batch::featurizer::sha256_hex;
use crate::batch::report::{self, Collector, Limits, Selection};
use crate::batch::summary::{
    clamped_pca_options, initial_summary, CostEstimate, ReduceTimings, Summary,
};
use crate::error::{Error, Result};
use crate::layout::RunLayout;
use crate::manifest::{DoneMarker, ImageError, InvocationCost, Manifest, ReduceMessage};
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::ports::store::{ObjectStore, StoreError};
use engine::pca::{self, PcaModel};

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
    /// With a deadline ([`Reducer::process_until`]): no new part is projected when less
    /// than this is left (room for the report, the commit and the publication).
    pub deadline_margin: std::time::Duration,
}

impl Default for ReducerSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            lock_stale_after: std::time::Duration::from_secs(900),
            pricing: Pricing::default(),
            deadline_margin: std::time::Duration::from_secs(60),
        }
    }
}

/// The fit of a reduce, kept under the digest of the committed shards it folded
/// ([`fit_checkpoint_key`]): a later invocation over the same shards resumes from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FitCheckpoint {
    inputs: String,
    /// The model as JSON, with every float also kept as its bits (`model_bits`, in
    /// document order): JSON text does not parse back to the last bit, and a resumed
    /// reduce must project with exactly the model a single invocation would have.
    model: serde_json::Value,
    model_bits: Vec<u64>,
    #[serde(default)]
    k_requested: Option<usize>,
    #[serde(default)]
    warnings: Vec<String>,
}

/// The bits of every float of a JSON document, in document order.
fn float_bits(value: &serde_json::Value, out: &mut Vec<u64>) {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            out.push(n.as_f64().unwrap_or_default().to_bits())
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| float_bits(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| float_bits(v, out)),
        _ => {}
    }
}

/// Puts back the exact floats [`float_bits`] took, in the same order.
fn restore_floats(value: &mut serde_json::Value, bits: &mut impl Iterator<Item = u64>) -> bool {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            match bits.next().map(f64::from_bits).map(serde_json::Value::from) {
                Some(exact) => {
                    *value = exact;
                    true
                }
                None => false,
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().all(|v| restore_floats(v, bits)),
        serde_json::Value::Object(map) => map.values_mut().all(|v| restore_floats(v, bits)),
        _ => true,
    }
}

impl FitCheckpoint {
    fn new(inputs: &str, model: &PcaModel, summary: &Summary) -> Result<Self> {
        let value = serde_json::to_value(model)?;
        let mut model_bits = Vec::new();
        float_bits(&value, &mut model_bits);
        Ok(Self {
            inputs: inputs.to_string(),
            model: value,
            model_bits,
            k_requested: summary.k_requested,
            warnings: summary.warnings.clone(),
        })
    }

    /// The model, exactly as fitted.
    fn model(&self) -> Result<PcaModel> {
        let mut value = self.model.clone();
        let mut bits = self.model_bits.iter().copied();
        if !restore_floats(&mut value, &mut bits) || bits.next().is_some() {
            return Err(Error::RunState(
                "a fit checkpoint whose floats do not match its model".into(),
            ));
        }
        Ok(serde_json::from_value(value)?)
    }
}

/// What a reduce read, for the documents it writes.
struct RunInputs<'a> {
    manifest: &'a Manifest,
    markers: &'a [DoneMarker],
    errors: &'a [ImageError],
    started: Instant,
}

/// A failed reduce, kept for `status` (`runs/<run>/failures/reduce.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceFailure {
    /// The delivery's lock token (the reduce message's id and a nonce).
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

    /// Handles one reduce message; `owner` identifies the message (its SQS message id).
    /// Each call holds the lock under its own token (`owner` and a nonce), so two
    /// deliveries of one message exclude each other like any two reducers.
    pub async fn process(&self, message: &ReduceMessage, owner: &str) -> Result<ReduceOutcome> {
        self.process_until(message, owner, None).await
    }

    /// [`Self::process`] within an invocation that ends at `deadline` (Lambda): when less
    /// than [`ReducerSettings::deadline_margin`] is left, it stops projecting (after at least
    /// one part), lets go of the lock and fails with [`Error::Deadline`]; the next delivery
    /// takes over at once and goes on from the parts already projected.
    pub async fn process_until(
        &self,
        message: &ReduceMessage,
        owner: &str,
        deadline: Option<Instant>,
    ) -> Result<ReduceOutcome> {
        let layout = RunLayout::new(&message.run_id);
        if self.store.exists(&layout.pca_success()).await? {
            info!(run_id = %message.run_id, "already reduced: nothing to do");
            self.clean_staging(&layout).await?;
            return Ok(ReduceOutcome::AlreadyReduced);
        }
        let token = delivery_token(owner);
        let held = match self.lock(&layout, &token).await {
            Ok(Acquired::Held(held)) => held,
            Ok(Acquired::Committed(commit)) => {
                info!(run_id = %message.run_id, generation = commit.generation,
                    "outputs already committed: publishing them");
                return self.publish(&layout, &commit).await;
            }
            Err(e) => {
                // A create or takeover of ours may have landed unseen: let it go.
                self.release_owner(&layout, &token).await;
                return Err(e);
            }
        };
        let result = self.reduce(&layout, &held, deadline).await;
        if let Err(error) = &result {
            if !matches!(error, Error::LostLock(_)) {
                let record = ReduceFailure {
                    owner: token.clone(),
                    error: error.to_string(),
                    at: crate::manifest::now_rfc3339(),
                    at_unix: unix_now(),
                };
                if let Ok(body) = serde_json::to_vec(&record) {
                    if let Err(e) = self.store.put(&layout.reduce_failure(), body.into()).await {
                        warn!(error = %e, "could not record the reduce failure");
                    }
                }
                // Let a retry (or another delivery) take over at once, unless we committed
                // (then anyone publishes).
                if !matches!(self.read_lock(&layout).await, Ok(Some((l, _))) if l.committed.is_some())
                {
                    self.release(&layout, &held).await;
                }
            }
        }
        result
    }

    async fn reduce(
        &self,
        layout: &RunLayout,
        token: &LockToken,
        deadline: Option<Instant>,
    ) -> Result<ReduceOutcome> {
        let started = Instant::now();
        let manifest: Manifest =
            crate::batch::run_manifest::read_full(&self.store, layout, self.settings.concurrency)
                .await?;
        let mut steps = ReduceTimings {
            manifest_s: started.elapsed().as_secs_f64(),
            ..ReduceTimings::default()
        };

        let step = Instant::now();
        let markers = self.read_markers(layout, &manifest).await?;
        let inputs = inputs_digest(&manifest, &markers);
        let checkpoint = self.read_fit_checkpoint(layout, &inputs).await?;
        let (errors, merged) = match &checkpoint {
            // An earlier invocation checked these very shards and fitted them.
            Some(_) => (self.error_lists(layout, &markers).await?, None),
            None => self.committed_shards(layout, &manifest, &markers).await?,
        };
        steps.check_merge_s = step.elapsed().as_secs_f64();

        let mut summary = initial_summary(&manifest, &markers, &errors);
        let (images, error_rate) = (summary.images, summary.error_rate);
        let run = RunInputs {
            manifest: &manifest,
            markers: &markers,
            errors: &errors,
            started,
        };
        if error_rate > manifest.options.max_error_rate {
            let reason = format!(
                "{} of {images} images failed ({:.1} %), above max_error_rate {:.1} %; see {}",
                errors.len(),
                error_rate * 100.0,
                manifest.options.max_error_rate * 100.0,
                layout.errors()
            );
            summary.timings.reduce = steps;
            return self.fail_run(layout, token, &run, summary, reason).await;
        }

        let step = Instant::now();
        let model = match checkpoint {
            Some(fit) => {
                summary.k_requested = fit.k_requested;
                summary.warnings.extend(fit.warnings.iter().cloned());
                fit.model()?
            }
            None => {
                // Merged in shard order while checked: deterministic to the last bit.
                let merged = merged.ok_or_else(|| {
                    Error::Engine(engine::error::Error::Pca("the run has no shards".into()))
                })?;
                let pca_options = clamped_pca_options(&manifest, &merged, &mut summary);
                match pca::fit(&merged, &pca_options) {
                    Ok(model) => {
                        self.write_fit_checkpoint(layout, &inputs, &model, &summary)
                            .await?;
                        model
                    }
                    Err(e) => {
                        steps.fit_s = step.elapsed().as_secs_f64();
                        summary.timings.reduce = steps;
                        return self
                            .fail_run(layout, token, &run, summary, e.to_string())
                            .await;
                    }
                }
            }
        };
        steps.fit_s = step.elapsed().as_secs_f64();

        let step = Instant::now();
        let (selection, mut outputs) = self
            .project_parts(layout, token, &model, &markers, deadline)
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
        outputs.push(
            self.stage(
                layout,
                token.generation,
                "pca_model.json",
                layout.pca_model(),
                serde_json::to_vec(&model)?.into(),
            )
            .await?,
        );
        steps.publish_s = step.elapsed().as_secs_f64();
        self.stage_documents(
            layout,
            token,
            &run,
            summary,
            Some(&model),
            Some(&selection),
            steps,
            outputs,
            true,
        )
        .await
    }

    /// Records a failed run: its error list, report and summary (no PCA), committed and
    /// published like a successful run's outputs.
    async fn fail_run(
        &self,
        layout: &RunLayout,
        token: &LockToken,
        run: &RunInputs<'_>,
        mut summary: Summary,
        reason: String,
    ) -> Result<ReduceOutcome> {
        warn!(run_id = %summary.run_id, %reason, "run failed");
        summary.status = "failed".into();
        summary.failure = Some(reason);
        summary.finished_at = crate::manifest::now_rfc3339();
        let steps = summary.timings.reduce;
        self.stage_documents(
            layout,
            token,
            run,
            summary,
            None,
            None,
            steps,
            Vec::new(),
            false,
        )
        .await
    }

    /// Stages the error list, the report and the summary after `outputs`, commits them all
    /// through the lock, and publishes them.
    #[allow(clippy::too_many_arguments)]
    async fn stage_documents(
        &self,
        layout: &RunLayout,
        token: &LockToken,
        run: &RunInputs<'_>,
        mut summary: Summary,
        model: Option<&PcaModel>,
        selection: Option<&Selection>,
        mut steps: ReduceTimings,
        mut outputs: Vec<StagedOutput>,
        succeeded: bool,
    ) -> Result<ReduceOutcome> {
        let step = Instant::now();
        let generation = token.generation;
        outputs.push(
            self.stage(
                layout,
                generation,
                "errors.json",
                layout.errors(),
                serde_json::to_vec_pretty(run.errors)?.into(),
            )
            .await?,
        );
        summary.timings.reduce_s = run.started.elapsed().as_secs_f64();
        match report::build(
            self.input.as_ref(),
            run.manifest,
            &summary,
            model,
            run.markers,
            run.errors,
            selection,
        )
        .await
        {
            Ok(built) => {
                let visible = built.info.key.clone();
                summary.report = Some(built.info);
                outputs.push(
                    self.stage(
                        layout,
                        generation,
                        "report.html",
                        visible,
                        built.html.into_bytes().into(),
                    )
                    .await?,
                );
            }
            Err(e) => {
                warn!(run_id = %run.manifest.run_id, error = %e, "no report");
                summary
                    .warnings
                    .push(format!("the report could not be built: {e}"));
            }
        }
        steps.publish_s += step.elapsed().as_secs_f64();
        summary.timings.reduce = steps;
        summary.timings.reduce_s = run.started.elapsed().as_secs_f64();
        outputs.push(
            self.stage(
                layout,
                generation,
                "summary.json",
                layout.summary(),
                serde_json::to_vec_pretty(&summary)?.into(),
            )
            .await?,
        );
        let commit = self.stage_list(layout, token, succeeded, outputs).await?;
        let commit = self.commit(layout, token, commit).await?;
        info!(run_id = %run.manifest.run_id, generation, succeeded, rows = summary.rows,
            errors = summary.errors, k = summary.k, "reduce committed");
        self.publish(layout, &commit).await
    }

    /// The fit of an earlier invocation over exactly these committed shards, if any.
    async fn read_fit_checkpoint(
        &self,
        layout: &RunLayout,
        inputs: &str,
    ) -> Result<Option<FitCheckpoint>> {
        match self.store.get(&fit_checkpoint_key(layout, inputs)).await {
            Ok(bytes) => {
                let fit: FitCheckpoint = serde_json::from_slice(&bytes)?;
                Ok((fit.inputs == inputs).then(|| {
                    info!(
                        run_id = layout.run_id(),
                        "resuming from the fit of an earlier invocation"
                    );
                    fit
                }))
            }
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_fit_checkpoint(
        &self,
        layout: &RunLayout,
        inputs: &str,
        model: &PcaModel,
        summary: &Summary,
    ) -> Result<()> {
        let fit = FitCheckpoint::new(inputs, model, summary)?;
        self.store
            .put(
                &fit_checkpoint_key(layout, inputs),
                serde_json::to_vec(&fit)?.into(),
            )
            .await?;
        Ok(())
    }

    /// Projects every shard's part with the PCA into staged parts keyed by the model (a few
    /// shards at a time), collecting the report's points and picks as the rows go by. A
    /// part an earlier invocation projected with the same model is read back, not
    /// projected again. Near the deadline no new part is started (after at least one):
    /// the reduce stops with [`Error::Deadline`].
    async fn project_parts(
        &self,
        layout: &RunLayout,
        token: &LockToken,
        model: &PcaModel,
        markers: &[DoneMarker],
        deadline: Option<Instant>,
    ) -> Result<(Selection, Vec<StagedOutput>)> {
        let concurrency = self.settings.concurrency.max(1);
        let model_digest = sha256_hex(&serde_json::to_vec(model)?);
        let collector = std::sync::Mutex::new(Collector::new(Limits::default()));
        let started = std::sync::atomic::AtomicUsize::new(0);
        let margin = self.settings.deadline_margin;
        let (collector_ref, started_ref, digest) = (&collector, &started, &model_digest);
        let staged: Vec<Option<StagedOutput>> =
            stream::iter(markers.iter().map(|marker| async move {
                let key = projected_part_key(layout, digest, marker.shard, &marker.part_sha256);
                let (bytes, rows) = match self.store.get(&key).await {
                    Ok(bytes) => {
                        let rows = parquet_io::read_rows(Dataset::Pca, bytes.clone())?;
                        (bytes, rows)
                    }
                    Err(StoreError::NotFound(_)) => {
                        let near = deadline.is_some_and(|d| Instant::now() + margin >= d);
                        let n = started_ref.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if near && n > 0 {
                            return Ok(None);
                        }
                        self.fence(layout, token).await?;
                        let part = self.published_part(layout, marker).await?;
                        let rows = project_rows(model, part)?;
                        let bytes = parquet_io::write_rows(Dataset::Pca, &rows)?;
                        self.store.put(&key, bytes.clone()).await?;
                        (bytes, rows)
                    }
                    Err(e) => return Err(Error::from(e)),
                };
                if rows.len() != marker.rows {
                    return Err(Error::Invariant(format!(
                        "run {}: shard {}: {} projected rows for a part of {}",
                        layout.run_id(),
                        marker.shard,
                        rows.len(),
                        marker.rows
                    )));
                }
                {
                    let mut c = collector_ref.lock().expect("collector");
                    for row in &rows {
                        c.add(&row.path, &row.label, &row.values);
                    }
                }
                Ok::<_, Error>(Some(StagedOutput {
                    staged: key,
                    visible: layout.pca_part(marker.shard),
                    sha256: sha256_hex(&bytes),
                }))
            }))
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let done = staged.iter().filter(|s| s.is_some()).count();
        if done < staged.len() {
            let remaining_ms = deadline
                .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64)
                .unwrap_or(0);
            info!(
                run_id = layout.run_id(),
                projected = done,
                parts = staged.len(),
                "deadline near: stopping; the next delivery goes on from here"
            );
            return Err(Error::Deadline {
                remaining_ms,
                stage: "projecting the remaining parts (the next delivery goes on from the \
                        parts already projected)",
            });
        }
        let mut outputs: Vec<StagedOutput> = staged.into_iter().flatten().collect();
        outputs.sort_by(|a, b| a.visible.cmp(&b.visible));
        let selection = collector.into_inner().expect("collector").finish();
        Ok((selection, outputs))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpointed_floats_come_back_to_the_last_bit() {
        let floats = [
            0.1 + 0.2,
            1e-300,
            5e-324,
            -2.2250738585072014e-308,
            std::f64::consts::PI,
            123456789.12345679,
            0.0,
            1.0,
        ];
        let value = serde_json::json!({ "a": floats, "k": 5, "nested": [{ "x": floats[0] }] });
        let mut bits = Vec::new();
        float_bits(&value, &mut bits);
        assert_eq!(bits.len(), floats.len() + 1);
        let mut parsed: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&value).unwrap()).unwrap();
        assert!(restore_floats(&mut parsed, &mut bits.iter().copied()));
        let mut again = Vec::new();
        float_bits(&parsed, &mut again);
        assert_eq!(again, bits, "every float exactly as it was");
        assert_eq!(parsed["k"], 5);
    }
}
