//! A run's status, read from the store alone (no extra service): shards done, pending and
//! failed, errors, and whether the reduce ran.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::featurizer::{failure_key, ShardFailure};
use crate::layout::{shard_of_done_marker, RunLayout};
use crate::manifest::{ImageError, Manifest};
use crate::reducer::Summary;
use crate::store::{ObjectStore, StoreError};

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// The run.
    pub run_id: String,
    /// Images listed.
    pub images: usize,
    /// Shards in all.
    pub shards: usize,
    /// Shards with a done marker.
    pub done: Vec<usize>,
    /// Shards neither done nor failed.
    pub pending: Vec<usize>,
    /// Shards not done whose last attempt failed (after enough attempts, in the DLQ).
    pub failed: Vec<ShardFailure>,
    /// Images in the error lists of done shards.
    pub image_errors: usize,
    /// A featurizer claimed the reduce.
    pub reduce_claimed: bool,
    /// The reduce finished (`Results_PCA/<run>/_SUCCESS`).
    pub reduced: bool,
    /// The summary, once written.
    pub summary: Option<Summary>,
}

impl RunStatus {
    /// One word for the run's state.
    pub fn state(&self) -> &'static str {
        match (&self.summary, self.reduced) {
            (_, true) => "complete",
            (Some(s), false) if s.status == "failed" => "failed",
            _ if !self.failed.is_empty() => "shards failing",
            _ if self.done.len() == self.shards => "reducing",
            _ => "featurizing",
        }
    }
}

/// Reads a run's status.
pub async fn run_status<S: ObjectStore>(store: &S, run_id: &str) -> Result<RunStatus> {
    let layout = RunLayout::new(run_id);
    let manifest: Manifest = match store.get(&layout.manifest()).await {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(StoreError::NotFound(_)) => {
            return Err(Error::RunState(format!(
                "no run {run_id} (no {})",
                store.describe(&layout.manifest())
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let done: std::collections::BTreeSet<usize> = store
        .list(&layout.done_prefix())
        .await?
        .iter()
        .filter_map(|o| shard_of_done_marker(&o.key))
        .collect();
    let mut failed = Vec::new();
    let mut pending = Vec::new();
    for shard in &manifest.shards {
        if done.contains(&shard.id) {
            continue;
        }
        match store.get(&failure_key(&layout, shard.id)).await {
            Ok(bytes) => failed.push(serde_json::from_slice(&bytes)?),
            Err(StoreError::NotFound(_)) => pending.push(shard.id),
            Err(e) => return Err(e.into()),
        }
    }
    let mut image_errors = 0;
    for &id in &done {
        if let Ok(bytes) = store.get(&layout.shard_errors(id)).await {
            image_errors += serde_json::from_slice::<Vec<ImageError>>(&bytes)?.len();
        }
    }
    let summary = match store.get(&layout.summary()).await {
        Ok(bytes) => Some(serde_json::from_slice(&bytes)?),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(RunStatus {
        run_id: run_id.to_string(),
        images: manifest.total_images,
        shards: manifest.shards.len(),
        done: done.into_iter().collect(),
        pending,
        failed,
        image_errors,
        reduce_claimed: store.exists(&layout.reduce_claim()).await?,
        reduced: store.exists(&layout.pca_success()).await?,
        summary,
    })
}
