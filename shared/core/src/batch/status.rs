//! A run's status, read from the store alone (no extra service): shards done, pending and
//! failed, errors, whether the reduce ran, and whether the run is stuck ([`crate::stuck`]:
//! the rules and their bounds).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::batch::attempts::{shard_of_started_key, started_prefix, ShardStart};
use crate::batch::featurizer::{ReduceClaim, ShardFailure};
use crate::batch::reducer::{ReduceFailure, ReduceLock};
use crate::batch::summary::Summary;
use crate::error::Result;
use crate::layout::{shard_of_done_marker, RunLayout};
use crate::manifest::{DoneMarker, Manifest};
use crate::ports::store::{ObjectStore, StoreError};
pub use crate::stuck::{Clock, StallPolicy, Stuck, StuckKind, SystemClock};

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
    /// Shards not done whose messages will not be delivered again (see [`StuckKind::ShardsLost`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<usize>,
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

/// Reads a run's status, calling it stuck by the default [`StallPolicy`] and the system clock.
pub async fn run_status<S: ObjectStore>(store: &S, run_id: &str) -> Result<RunStatus> {
    run_status_at(store, run_id, &StallPolicy::default(), &SystemClock).await
}

/// Reads a run's status by `policy`, with the system clock.
pub async fn run_status_with<S: ObjectStore>(
    store: &S,
    run_id: &str,
    policy: StallPolicy,
) -> Result<RunStatus> {
    run_status_at(store, run_id, &policy, &SystemClock).await
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

/// What the reducer's refusal of an intermediate that is not what its done marker names
/// says ([`crate::batch::reducer`]'s check).
pub const TAMPERED: &str = "tampered or corrupt";

/// The command that recovers a run.
fn resume(layout: &RunLayout) -> String {
    format!("featurize resume --run {}", layout.run_id())
}

/// What the store says about a run's shards.
struct Shards {
    done: BTreeSet<usize>,
    markers: Vec<DoneMarker>,
    failures: BTreeMap<usize, ShardFailure>,
    starts: BTreeMap<usize, ShardStart>,
}

/// The shard number of a failure record's key (`failures/shard-N.json`).
fn shard_of_failure_key(key: &str) -> Option<usize> {
    let name = key.rsplit('/').next()?;
    name.strip_prefix("shard-")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// Done markers, and for the shards not done their failure and start records: one listing
/// of each prefix, then a read per record found.
async fn read_shards<S: ObjectStore>(
    store: &S,
    layout: &RunLayout,
    manifest: &Manifest,
) -> Result<Shards> {
    let done: BTreeSet<usize> = store
        .list(&layout.done_prefix())
        .await?
        .iter()
        .filter_map(|o| shard_of_done_marker(&o.key))
        .collect();
    let mut markers = Vec::new();
    for &id in &done {
        if let Some(marker) = get_json::<_, DoneMarker>(store, &layout.done_marker(id)).await? {
            markers.push(marker);
        }
    }
    let known: BTreeSet<usize> = manifest.shards.iter().map(|s| s.id).collect();
    let open = |id: &usize| known.contains(id) && !done.contains(id);
    let mut failures = BTreeMap::new();
    let failure_prefix = format!("{}failures/", layout.run_prefix());
    for object in store.list(&failure_prefix).await? {
        let Some(id) = shard_of_failure_key(&object.key).filter(open) else {
            continue;
        };
        if let Some(f) = get_json::<_, ShardFailure>(store, &object.key).await? {
            failures.insert(id, f);
        }
    }
    let mut starts = BTreeMap::new();
    for object in store.list(&started_prefix(layout)).await? {
        let Some(id) = shard_of_started_key(&object.key).filter(open) else {
            continue;
        };
        if let Some(s) = get_json::<_, ShardStart>(store, &object.key).await? {
            starts.insert(id, s);
        }
    }
    Ok(Shards {
        done,
        markers,
        failures,
        starts,
    })
}

/// The last delivery of a shard known from its records: (receive count, Unix seconds), from
/// its start record or its failure record, whichever is later.
fn last_delivery(start: Option<&ShardStart>, failure: Option<&ShardFailure>) -> Option<(u32, u64)> {
    let from_start = start.map(|s| (s.receive_count.max(1), s.at_unix));
    let from_failure = failure.and_then(|f| {
        let at = crate::manifest::rfc3339_to_unix_ms(&f.at)? / 1000;
        Some((f.attempt.unwrap_or(1).max(1), at))
    });
    from_start.into_iter().chain(from_failure).max()
}

/// Why a run with shards not done will not finish by itself, if it will not.
fn stuck_shards(
    layout: &RunLayout,
    manifest: &Manifest,
    shards: &Shards,
    policy: &StallPolicy,
    now: u64,
) -> (Vec<usize>, Option<Stuck>) {
    let mut lost = Vec::new();
    let mut first: Option<(usize, u32, u64)> = None;
    for shard in &manifest.shards {
        if shards.done.contains(&shard.id) {
            continue;
        }
        let failure = shards.failures.get(&shard.id);
        let Some((count, at)) = last_delivery(shards.starts.get(&shard.id), failure) else {
            continue;
        };
        if now >= at.saturating_add(policy.shard_lost_after(count).as_secs()) {
            lost.push(shard.id);
            if first.is_none_or(|(_, _, t)| at < t) {
                first = Some((shard.id, count, at));
            }
        }
    }
    if let Some((id, count, at)) = first {
        let max = policy.max_receive_count;
        let how = if count >= max {
            format!("its last delivery ({count} of {max}) started at {} and ended without a done marker: the message is dead-lettered", crate::stuck::rfc3339_of(at))
        } else {
            format!(
                "its delivery {count} of {max} started at {} and no delivery followed within {} s: the message was lost or dead-lettered",
                crate::stuck::rfc3339_of(at),
                policy.shard_lost_after(count).as_secs()
            )
        };
        let error = match shards.failures.get(&id) {
            Some(f) => format!("; its last error: {}", f.error),
            None => "; no failure record (an init failure, out of memory or a hard timeout)".into(),
        };
        let others = match lost.len() {
            1 => String::new(),
            n => format!(
                " (and {} more of {} lost: {:?})",
                n - 1,
                manifest.shards.len(),
                lost
            ),
        };
        let reason = format!("shard {id} is not done{others}: {how}{error}");
        let remedy = format!(
            "fix the cause (the featurizer's log group; shard errors under {}failures/), then `{}` \
             (or move the shard DLQ's messages back with `aws sqs start-message-move-task`)",
            layout.run_prefix(),
            resume(layout)
        );
        return (
            lost,
            Some(Stuck::new(StuckKind::ShardsLost, at, reason, remedy)),
        );
    }
    let created = crate::manifest::rfc3339_to_unix_ms(&manifest.created_at).map(|ms| ms / 1000);
    let untouched =
        shards.done.is_empty() && shards.starts.is_empty() && shards.failures.is_empty();
    if let (true, Some(created)) = (untouched, created) {
        if now >= created.saturating_add(policy.no_start_after().as_secs()) {
            let reason = format!(
                "no featurizer has started any of its {} shards {} s after the run was created: \
                 the featurizer fails before its handler runs (the model layer, MODEL_PATH, \
                 memory), or the shard messages were lost",
                manifest.shards.len(),
                now - created
            );
            let remedy = format!(
                "read the featurizer's log group (init errors) and the shard DLQ; once fixed, `{}`",
                resume(layout)
            );
            return (
                lost,
                Some(Stuck::new(
                    StuckKind::NoFeaturizerStarted,
                    created,
                    reason,
                    remedy,
                )),
            );
        }
    }
    (lost, None)
}

/// Why a run whose shards are all done has not been reduced, if it will not be by itself.
async fn stuck_reduce<S: ObjectStore>(
    store: &S,
    layout: &RunLayout,
    markers: &[DoneMarker],
    policy: &StallPolicy,
    now: u64,
) -> Result<Option<Stuck>> {
    let lock: Option<ReduceLock> = get_json(store, &layout.reduce_lock()).await?;
    if let Some(lock) = lock.as_ref().filter(|l| !l.released) {
        let age = now.saturating_sub(lock.acquired_at);
        if age < policy.lock_dead_after().as_secs() {
            return Ok(None);
        }
        let what = if lock.committed.is_some() {
            "committed its outputs but did not publish them"
        } else {
            "has not finished"
        };
        let reason = format!(
            "reducer {} took the lock {age} s ago and {what}; no retry took it over within the \
             reduce queue's visibility timeout: the reducer died (out of memory or its timeout) \
             and its message is dead-lettered",
            lock.owner
        );
        let remedy = format!(
            "read the reducer's log group; if the reduce needs more time or memory, raise \
             ReducerTimeout / ReducerMemory; then `{}`",
            resume(layout)
        );
        return Ok(Some(Stuck::new(
            StuckKind::StaleLock,
            lock.acquired_at,
            reason,
            remedy,
        )));
    }
    let failure: Option<ReduceFailure> = get_json(store, &layout.reduce_failure()).await?;
    if let Some(failure) = failure {
        let reason = format!("the reduce failed: {}", failure.error);
        let remedy = if failure.error.contains(TAMPERED) {
            // A resume would fold the same committed objects and fail the same way.
            "an intermediate object was changed after its shard committed it: find out who \
             wrote it (bucket access logs or versions), then submit the request again with \
             another run_id"
                .to_string()
        } else {
            format!("fix the cause, then `{}`", resume(layout))
        };
        return Ok(Some(Stuck::new(
            StuckKind::ReduceFailed,
            failure.at_unix,
            reason,
            remedy,
        )));
    }
    let claim: Option<ReduceClaim> = get_json(store, &layout.reduce_claim()).await?;
    match claim {
        Some(claim) if lock.is_none() => {
            let age = now.saturating_sub(claim.claimed_at_unix);
            if age < policy.claim_unanswered_after.as_secs() {
                return Ok(None);
            }
            let reason = format!(
                "shard {} claimed the reduce {age} s ago but no reducer has started (the reduce \
                 message was lost or dead-lettered, or the reducer fails at init)",
                claim.claimed_by_shard
            );
            let remedy = format!(
                "run `{}` to recover (it sends the reduce again); if it recurs, read the \
                 reducer's log group",
                resume(layout)
            );
            Ok(Some(Stuck::new(
                StuckKind::ClaimWithoutLock,
                claim.claimed_at_unix,
                reason,
                remedy,
            )))
        }
        Some(_) => Ok(None),
        None => {
            let last_done = markers
                .iter()
                .filter_map(|m| m.finished_at_ms)
                .max()
                .map(|ms| ms / 1000);
            let Some(last_done) = last_done else {
                return Ok(None);
            };
            let age = now.saturating_sub(last_done);
            if age < policy.no_claim_after().as_secs() {
                return Ok(None);
            }
            let reason = format!(
                "every shard is done (the last {age} s ago) but no featurizer claimed the reduce: \
                 a featurizer stopped between its done marker and its climb of the completion \
                 tree (or the claim), and its message was not delivered again"
            );
            let remedy = format!("run `{}` to send the reduce", resume(layout));
            Ok(Some(Stuck::new(
                StuckKind::NoClaim,
                last_done,
                reason,
                remedy,
            )))
        }
    }
}

/// Reads a run's status; "stuck" by `policy` at the time `clock` gives.
pub async fn run_status_at<S: ObjectStore>(
    store: &S,
    run_id: &str,
    policy: &StallPolicy,
    clock: &dyn Clock,
) -> Result<RunStatus> {
    let layout = RunLayout::new(run_id);
    let manifest: Manifest = crate::batch::run_manifest::read_header(store, &layout).await?;
    let shards = read_shards(store, &layout, &manifest).await?;
    let image_errors = shards.markers.iter().map(|m| m.errors).sum();
    let mut failed = Vec::new();
    let mut pending = Vec::new();
    for shard in &manifest.shards {
        if shards.done.contains(&shard.id) {
            continue;
        }
        match shards.failures.get(&shard.id) {
            Some(f) => failed.push(f.clone()),
            None => pending.push(shard.id),
        }
    }
    let images_done: usize = manifest
        .shards
        .iter()
        .filter(|s| shards.done.contains(&s.id))
        .map(|s| s.count)
        .sum();
    let now_ms = clock.now_ms();
    let elapsed_s = crate::manifest::rfc3339_to_unix_ms(&manifest.created_at)
        .map(|start| now_ms.saturating_sub(start) as f64 / 1000.0)
        .unwrap_or(0.0);
    let (images_per_second, eta_s) = rate_and_eta(manifest.total_images, images_done, elapsed_s);
    let summary: Option<Summary> = get_json(store, &layout.summary()).await?;
    let reduced = store.exists(&layout.pca_success()).await?;
    let all_done = manifest.shards.iter().all(|s| shards.done.contains(&s.id));
    let failed_run = summary.as_ref().is_some_and(|s| s.status == "failed");
    let now = now_ms / 1000;
    let (lost, mut stuck) = if reduced || failed_run {
        (Vec::new(), None)
    } else if all_done {
        let stuck = stuck_reduce(store, &layout, &shards.markers, policy, now).await?;
        (Vec::new(), stuck)
    } else {
        stuck_shards(&layout, &manifest, &shards, policy, now)
    };
    if !(reduced || failed_run || all_done) {
        // Shards left while the featurizer fails at cold start: that is why they do not
        // move (and the remedy), whatever else the rules found.
        if let Some(health) = crate::health::read_model_health(store).await? {
            stuck = health.stuck().or(stuck);
        }
    }
    Ok(RunStatus {
        run_id: run_id.to_string(),
        images: manifest.total_images,
        shards: manifest.shards.len(),
        done: shards.done.into_iter().collect(),
        pending,
        failed,
        lost,
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

    #[test]
    fn the_last_delivery_is_the_later_of_start_and_failure() {
        let start = ShardStart {
            shard: 1,
            receive_count: 2,
            attempt: "a".into(),
            at_unix: 1_000,
        };
        let failure = ShardFailure {
            shard: 1,
            attempt: Some(3),
            error: "boom".into(),
            at: crate::stuck::rfc3339_of(2_000),
        };
        assert_eq!(last_delivery(Some(&start), None), Some((2, 1_000)));
        assert_eq!(
            last_delivery(Some(&start), Some(&failure)),
            Some((3, 2_000))
        );
        assert_eq!(last_delivery(None, None), None);
        assert_eq!(
            shard_of_failure_key("runs/r/failures/shard-00012.json"),
            Some(12)
        );
        assert_eq!(shard_of_failure_key("runs/r/failures/reduce.json"), None);
    }
}
