//! Where the reducer stages its outputs, and how a committed generation's outputs are
//! published to the keys readers know.
//!
//! Everything a reduce writes for readers — the `Results_PCA` parts, `pca_model.json`,
//! `errors.json`, `report.html`, `summary.json` — is first written under
//! `runs/<run>/reduce/` (not `staging/`, which a lifecycle rule expires), then listed with
//! each object's sha256 in `g<generation>/outputs.json`, and committed through the lock
//! ([`super::lock`]). Only then is each output copied to its visible key, checked against its
//! sha256; `Results/<run>/_SUCCESS` and, last, `Results_PCA/<run>/_SUCCESS` follow. Copying
//! is idempotent (the same bytes every time), so a publisher that dies half-way is finished
//! by the next delivery or `featurize resume`, which find the commit in the lock.
//!
//! Projected parts are staged under the fitted model's digest (`proj-<model>/`), each bound
//! to its source part's sha256: a reduce cut off by its deadline (or killed) leaves them, and
//! the next invocation, fitting the same model from the same committed shards, skips them.

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::lock::ReduceCommit;
use super::{ReduceOutcome, Reducer};
use crate::batch::featurizer::sha256_hex;
use crate::batch::summary::Summary;
use crate::error::{Error, Result};
use crate::layout::RunLayout;
use crate::ports::store::{ObjectStore, StoreError};

/// `runs/<run>/reduce/`: the reducer's staged outputs and checkpoints.
pub fn reduce_prefix(layout: &RunLayout) -> String {
    format!("{}reduce/", layout.run_prefix())
}

/// One generation's staged documents.
pub fn generation_prefix(layout: &RunLayout, generation: u64) -> String {
    format!("{}g{generation:06}/", reduce_prefix(layout))
}

/// The fit of a reduce over exactly these committed shards (`inputs`: their digest).
pub fn fit_checkpoint_key(layout: &RunLayout, inputs: &str) -> String {
    format!("{}fit-{}.json", reduce_prefix(layout), short(inputs))
}

/// A shard's projection by the model of digest `model`, from the part of sha256 `source`.
pub fn projected_part_key(layout: &RunLayout, model: &str, shard: usize, source: &str) -> String {
    format!(
        "{}proj-{}/part-{shard:05}-{}.parquet",
        reduce_prefix(layout),
        short(model),
        short(source)
    )
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(16)]
}

/// One output: where it is staged, where readers find it, and its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedOutput {
    /// The staged object.
    pub staged: String,
    /// Its visible key.
    pub visible: String,
    /// sha256 of its bytes.
    pub sha256: String,
}

/// A generation's outputs, in publishing order (the `_SUCCESS` markers follow them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedOutputs {
    /// The run.
    pub run_id: String,
    /// The generation that staged them.
    pub generation: u64,
    /// Whether the run succeeded (then `Results_PCA/<run>/_SUCCESS` is written last).
    pub succeeded: bool,
    /// The outputs.
    pub outputs: Vec<StagedOutput>,
}

impl<S: ObjectStore> Reducer<S> {
    /// Stages a document of this generation; returns its output entry.
    pub(super) async fn stage(
        &self,
        layout: &RunLayout,
        generation: u64,
        name: &str,
        visible: String,
        body: Bytes,
    ) -> Result<StagedOutput> {
        let staged = format!("{}{name}", generation_prefix(layout, generation));
        let sha256 = sha256_hex(&body);
        self.store.put(&staged, body).await?;
        Ok(StagedOutput {
            staged,
            visible,
            sha256,
        })
    }

    /// Writes the list of a generation's outputs; returns the commit that names it.
    pub(super) async fn stage_list(
        &self,
        layout: &RunLayout,
        token: &super::LockToken,
        succeeded: bool,
        outputs: Vec<StagedOutput>,
    ) -> Result<ReduceCommit> {
        let list = StagedOutputs {
            run_id: layout.run_id().to_string(),
            generation: token.generation,
            succeeded,
            outputs,
        };
        let body: Bytes = serde_json::to_vec_pretty(&list)?.into();
        let key = format!(
            "{}outputs.json",
            generation_prefix(layout, token.generation)
        );
        let outputs_sha256 = sha256_hex(&body);
        self.store.put(&key, body).await?;
        Ok(ReduceCommit {
            owner: token.owner.clone(),
            generation: token.generation,
            succeeded,
            outputs: key,
            outputs_sha256,
            committed_at: crate::manifest::unix_now(),
        })
    }

    /// Publishes a committed generation's outputs (idempotent: anyone may, any number of
    /// times), then the `_SUCCESS` markers, then deletes the run's intermediate objects. A
    /// publisher that finds its staged objects gone because another one finished (and
    /// cleaned up) meanwhile reports the run already reduced.
    pub(super) async fn publish(
        &self,
        layout: &RunLayout,
        commit: &ReduceCommit,
    ) -> Result<ReduceOutcome> {
        match self.publish_once(layout, commit).await {
            Err(e)
                if self
                    .store
                    .exists(&layout.pca_success())
                    .await
                    .unwrap_or(false) =>
            {
                info!(run_id = layout.run_id(), error = %e,
                    "another reducer finished publishing meanwhile");
                Ok(ReduceOutcome::AlreadyReduced)
            }
            other => other,
        }
    }

    async fn publish_once(
        &self,
        layout: &RunLayout,
        commit: &ReduceCommit,
    ) -> Result<ReduceOutcome> {
        let body = self.store.get(&commit.outputs).await.map_err(|e| match e {
            StoreError::NotFound(key) => Error::RunState(format!(
                "run {}: the committed output list {key} is missing",
                layout.run_id()
            )),
            other => other.into(),
        })?;
        if sha256_hex(&body) != commit.outputs_sha256 {
            return Err(Error::RunState(format!(
                "run {}: {} does not match its commit's checksum",
                layout.run_id(),
                commit.outputs
            )));
        }
        let list: StagedOutputs = serde_json::from_slice(&body)?;
        // The parts first (a few at once), then the documents in order, the summary last.
        let (parts, documents): (Vec<&StagedOutput>, Vec<&StagedOutput>) = list
            .outputs
            .iter()
            .partition(|o| o.visible.starts_with(&layout.pca_prefix()));
        stream::iter(parts.into_iter().map(|o| self.copy_output(layout, o)))
            .buffer_unordered(self.settings.concurrency.max(1) * 2)
            .try_for_each(|_| futures::future::ready(Ok(())))
            .await?;
        let mut summary_bytes = None;
        for output in documents {
            let bytes = self.copy_output(layout, output).await?;
            if output.visible == layout.summary() {
                summary_bytes = Some(bytes);
            }
        }
        let summary_bytes = summary_bytes.ok_or_else(|| {
            Error::RunState(format!(
                "run {}: the committed outputs have no summary",
                layout.run_id()
            ))
        })?;
        let summary: Summary = serde_json::from_slice(&summary_bytes)?;
        self.store
            .put(&layout.results_success(), Bytes::new())
            .await?;
        if !list.succeeded {
            return Ok(ReduceOutcome::Failed(Box::new(summary)));
        }
        self.store.put(&layout.pca_success(), Bytes::new()).await?;
        info!(
            run_id = layout.run_id(),
            generation = list.generation,
            outputs = list.outputs.len(),
            "committed outputs published"
        );
        self.clean_staging(layout).await?;
        Ok(ReduceOutcome::Reduced(Box::new(summary)))
    }

    /// Copies one staged output to its visible key, checked against its sha256.
    async fn copy_output(&self, layout: &RunLayout, output: &StagedOutput) -> Result<Bytes> {
        let bytes = self.store.get(&output.staged).await?;
        if sha256_hex(&bytes) != output.sha256 {
            return Err(Error::RunState(format!(
                "run {}: staged output {} changed after the commit",
                layout.run_id(),
                output.staged
            )));
        }
        self.store.put(&output.visible, bytes.clone()).await?;
        Ok(bytes)
    }

    /// Deletes the run's intermediate objects once it is complete (never before: they are
    /// what a retried reduce checks, fits and publishes).
    pub(super) async fn clean_staging(&self, layout: &RunLayout) -> Result<()> {
        let mut staged = self.store.list(&layout.staging_prefix()).await?;
        staged.extend(self.store.list(&reduce_prefix(layout)).await?);
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
}
