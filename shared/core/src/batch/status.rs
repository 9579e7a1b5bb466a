//! A run's status, read from the store alone (no extra service): shards done, pending and
//! failed, errors, and whether the reduce ran.

use serde::{Deserialize, Serialize};

use crate::batch::featurizer::{failure_key, ReduceClaim, ShardFailure};
use crate::batch::reducer::{ReduceFailure, ReduceLock};
use crate::batch::summary::Summary;
use crate::error::Result;
use crate::layout::{shard_of_done_marker, RunLayout};
use crate::manifest::{DoneMarker, Manifest};
use crate::ports::store::{ObjectStore, StoreError};

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
    /// Set when the run has stopped moving and will not finish by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<Stuck>,
    /// Images in the done shards.
    #[serde(default)]
    pub images_done: usize,
    /// When the run was created (the manifest's time, RFC 3339).
    #[serde(default)]
    pub started_at: String,
    /// Images featurized per second since the run was created (None before the first shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_second: Option<f64>,
    /// Seconds until every shard is done at that rate (None when unknown or done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
}

/// Why and since when a run is stuck; `featurize resume --run ID` recovers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stuck {
    /// Since when (RFC 3339 when known, else Unix seconds).
    pub since: String,
    /// What happened.
    pub reason: String,
}

/// When `status` calls a run stuck.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StallPolicy {
    /// A claimed reduce that no reducer has started after this long was lost.
    pub claim_unanswered_after: std::time::Duration,
    /// A reducer lock older than this belongs to a dead reducer (the reducer's timeout).
    pub lock_stale_after: std::time::Duration,
}

impl Default for StallPolicy {
    fn default() -> Self {
        Self {
            claim_unanswered_after: std::time::Duration::from_secs(300),
            lock_stale_after: std::time::Duration::from_secs(900),
        }
    }
}

/// Images per second and the seconds left, from the images done `elapsed_s` after the
/// run started: None before any image is done (or when no time has passed).
pub fn rate_and_eta(
    images: usize,
    images_done: usize,
    elapsed_s: f64,
) -> (Option<f64>, Option<f64>) {
    if images_done == 0 || elapsed_s <= 0.0 {
        return (None, None);
    }
    let rate = images_done as f64 / elapsed_s;
    let left = images.saturating_sub(images_done);
    (Some(rate), (left > 0).then(|| left as f64 / rate))
}

impl RunStatus {
    /// The run has ended, or will not move by itself: reduced, failed, stuck, or every
    /// shard that is not done has failed. `status --watch` stops there.
    pub fn is_settled(&self) -> bool {
        self.reduced
            || self.summary.as_ref().is_some_and(|s| s.status == "failed")
            || self.stuck.is_some()
            || (!self.failed.is_empty() && self.pending.is_empty())
    }

    /// One word for the run's state.
    pub fn state(&self) -> &'static str {
        match (&self.summary, self.reduced) {
            (_, true) => "complete",
            (Some(s), false) if s.status == "failed" => "failed",
            _ if self.stuck.is_some() => "stuck",
            _ if !self.failed.is_empty() => "shards failing",
            _ if self.done.len() == self.shards => "reducing",
            _ => "featurizing",
        }
    }
}

/// Reads a run's status, calling it stuck by the default [`StallPolicy`].
pub async fn run_status<S: ObjectStore>(store: &S, run_id: &str) -> Result<RunStatus> {
    run_status_with(store, run_id, StallPolicy::default()).await
}

fn rfc3339_of(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// A JSON document, or `None` when the key does not exist.
pub(crate) async fn get_json<S: ObjectStore, T: serde::de::DeserializeOwned>(
    store: &S,
    key: &str,
) -> Result<Option<T>> {
    match store.get(key).await {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Why a run whose shards are all done has not been reduced, if it will not be by itself.
async fn stuck_reduce<S: ObjectStore>(
    store: &S,
    layout: &RunLayout,
    policy: StallPolicy,
) -> Result<Option<Stuck>> {
    let now = crate::manifest::unix_now();
    let resume = format!(
        "run `featurize resume --run {}` to recover",
        layout.run_id()
    );
    let lock: Option<ReduceLock> = get_json(store, &layout.reduce_lock()).await?;
    let failure: Option<ReduceFailure> = get_json(store, &layout.reduce_failure()).await?;
    if let Some(lock) = &lock {
        if !lock.released {
            let age = now.saturating_sub(lock.acquired_at);
            if age >= policy.lock_stale_after.as_secs() {
                return Ok(Some(Stuck {
                    since: rfc3339_of(lock.acquired_at),
                    reason: format!(
                        "reducer {} took the lock {age} s ago and has not finished: the lock is \
                         stale (the reducer died); {resume}",
                        lock.owner
                    ),
                }));
            }
            return Ok(None);
        }
    }
    if let Some(failure) = failure {
        return Ok(Some(Stuck {
            since: failure.at,
            reason: format!(
                "the reduce failed: {}; fix the cause, then {resume}",
                failure.error
            ),
        }));
    }
    let claim: Option<ReduceClaim> = get_json(store, &layout.reduce_claim()).await?;
    if let Some(claim) = claim {
        let age = now.saturating_sub(claim.claimed_at_unix);
        if age >= policy.claim_unanswered_after.as_secs() {
            return Ok(Some(Stuck {
                since: claim.claimed_at,
                reason: format!(
                    "shard {} claimed the reduce {age} s ago but no reducer has started (the \
                     reduce message was lost or dead-lettered); {resume}",
                    claim.claimed_by_shard
                ),
            }));
        }
    }
    Ok(None)
}

/// Reads a run's status.
pub async fn run_status_with<S: ObjectStore>(
    store: &S,
    run_id: &str,
    policy: StallPolicy,
) -> Result<RunStatus> {
    let layout = RunLayout::new(run_id);
    let manifest: Manifest = crate::batch::run_manifest::read_header(store, &layout).await?;
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
        if let Some(marker) = get_json::<_, DoneMarker>(store, &layout.done_marker(id)).await? {
            image_errors += marker.errors;
        }
    }
    let images_done: usize = manifest
        .shards
        .iter()
        .filter(|s| done.contains(&s.id))
        .map(|s| s.count)
        .sum();
    let elapsed_s = crate::manifest::rfc3339_to_unix_ms(&manifest.created_at)
        .map(|start| crate::manifest::unix_now_ms().saturating_sub(start) as f64 / 1000.0)
        .unwrap_or(0.0);
    let (images_per_second, eta_s) = rate_and_eta(manifest.total_images, images_done, elapsed_s);
    let summary: Option<Summary> = get_json(store, &layout.summary()).await?;
    let reduced = store.exists(&layout.pca_success()).await?;
    let all_done = manifest.shards.iter().all(|s| done.contains(&s.id));
    let failed_run = summary.as_ref().is_some_and(|s| s.status == "failed");
    let stuck = if all_done && !reduced && !failed_run {
        stuck_reduce(store, &layout, policy).await?
    } else {
        None
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
        reduced,
        summary,
        stuck,
        images_done,
        started_at: manifest.created_at.clone(),
        images_per_second,
        eta_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_from_progress() {
        assert_eq!(rate_and_eta(100, 0, 10.0), (None, None));
        assert_eq!(rate_and_eta(100, 10, 0.0), (None, None));
        let (rate, eta) = rate_and_eta(100, 25, 5.0);
        assert_eq!(rate, Some(5.0));
        assert_eq!(eta, Some(15.0));
        assert_eq!(rate_and_eta(100, 100, 20.0), (Some(5.0), None));
    }
}
