//! A collection's status: the published snapshot, what waits for the next refit, and whether
//! the collection is stuck ([`crate::stuck`]): features of two models that no refit will
//! mix, a dangling pointer, a refit that will not be delivered again, or changes waiting
//! longer than the staleness bound plus one refit.
//!
//! Refits leave two records beside the pointer, as shards do: `refits/started.json` (each
//! delivery, with its receive count) and `refits/failure.json` (each failed delivery), written
//! by the reducer's refit handler through [`record_refit_start`] and [`record_refit_failure`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    delta_time_ms, list_deltas, read_current, CollectionLayout, CurrentPointer, Delta, DeltaEntry,
    RefitSummary,
};
use crate::error::Result;
use crate::ports::store::{ObjectStore, StoreError};
use crate::stuck::{Clock, StallPolicy, Stuck, StuckKind, SystemClock};

/// What `featurize status --collection` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionStatus {
    /// The collection.
    pub collection: String,
    /// The published pointer, if any.
    pub current: Option<CurrentPointer>,
    /// The published snapshot's summary.
    pub summary: Option<RefitSummary>,
    /// Deltas waiting for the next refit.
    pub pending_deltas: usize,
    /// Changes (entries) they hold.
    pub pending_changes: usize,
    /// The newest waiting delta's time (RFC 3339-free: Unix ms).
    pub last_change_ms: Option<u64>,
    /// The oldest waiting delta's time (Unix ms): staleness counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_change_ms: Option<u64>,
    /// The last refit delivery that started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refit: Option<RefitStart>,
    /// The last refit delivery that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refit_failure: Option<RefitFailure>,
    /// Set when the collection has stopped moving and will not move by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<Stuck>,
    /// Where the store is (for messages).
    pub location: String,
}

/// One refit delivery's start (overwritten by each delivery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefitStart {
    /// The delivery count (SQS `ApproximateReceiveCount`; 1 when unknown).
    pub receive_count: u32,
    /// When it started (Unix seconds).
    pub at_unix: u64,
}

/// One refit delivery's failure (overwritten by each failed delivery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefitFailure {
    /// The delivery count.
    pub receive_count: u32,
    /// The error.
    pub error: String,
    /// When (Unix seconds).
    pub at_unix: u64,
}

/// `collections/<c>/refits/started.json`.
pub fn refit_started_key(layout: &CollectionLayout) -> String {
    format!("{}refits/started.json", layout.prefix())
}

/// `collections/<c>/refits/failure.json`.
pub fn refit_failure_key(layout: &CollectionLayout) -> String {
    format!("{}refits/failure.json", layout.prefix())
}

/// Records that a refit delivery of `collection` starts (call before the refit).
pub async fn record_refit_start<S: ObjectStore>(
    store: &S,
    collection: &str,
    receive_count: u32,
    clock: &dyn Clock,
) -> Result<()> {
    let record = RefitStart {
        receive_count: receive_count.max(1),
        at_unix: clock.now_unix(),
    };
    let key = refit_started_key(&CollectionLayout::new(collection));
    store.put(&key, serde_json::to_vec(&record)?.into()).await?;
    Ok(())
}

/// Records that a refit delivery of `collection` failed with `error`.
pub async fn record_refit_failure<S: ObjectStore>(
    store: &S,
    collection: &str,
    receive_count: u32,
    error: &str,
    clock: &dyn Clock,
) -> Result<()> {
    let record = RefitFailure {
        receive_count: receive_count.max(1),
        error: error.to_string(),
        at_unix: clock.now_unix(),
    };
    let key = refit_failure_key(&CollectionLayout::new(collection));
    store.put(&key, serde_json::to_vec(&record)?.into()).await?;
    Ok(())
}

async fn get_json<S: ObjectStore, T: serde::de::DeserializeOwned>(
    store: &S,
    key: &str,
) -> Result<Option<T>> {
    match store.get(key).await {
        Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads a collection's status, "stuck" by the default [`StallPolicy`] and the system clock.
pub async fn collection_status<S: ObjectStore>(
    store: &S,
    collection: &str,
) -> Result<CollectionStatus> {
    collection_status_at(store, collection, &StallPolicy::default(), &SystemClock).await
}

/// What a published snapshot lacks (its `_SUCCESS`, summary or state), if anything.
async fn missing_parts<S: ObjectStore>(
    store: &S,
    layout: &CollectionLayout,
    pointer: &CurrentPointer,
) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for key in [layout.success(&pointer.snapshot), pointer.summary.clone()] {
        if !store.exists(&key).await? {
            missing.push(key);
        }
    }
    let state = format!("{}{}/", layout.states_prefix(), pointer.snapshot);
    if store.list(&state).await?.is_empty() {
        missing.push(state);
    }
    Ok(missing)
}

/// Reads a collection's status; "stuck" by `policy` at the time `clock` gives.
pub async fn collection_status_at<S: ObjectStore>(
    store: &S,
    collection: &str,
    policy: &StallPolicy,
    clock: &dyn Clock,
) -> Result<CollectionStatus> {
    let layout = CollectionLayout::new(collection);
    let current = read_current(store, &layout).await?.map(|(p, _)| p);
    let summary = match &current {
        Some(p) => get_json(store, &p.summary).await?,
        None => None,
    };
    let ids = list_deltas(store, &layout).await?;
    let mut pending_changes = 0;
    let mut deltas: BTreeMap<String, Delta> = BTreeMap::new();
    for id in &ids {
        if let Some(delta) = get_json::<_, Delta>(store, &layout.delta_doc(id)).await? {
            pending_changes += delta.entries.len();
            deltas.insert(id.clone(), delta);
        }
    }
    let mut models: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let (Some(p), Some(sha)) = (
        &current,
        summary
            .as_ref()
            .filter(|s: &&RefitSummary| s.rows > 0)
            .and_then(|s| s.model_sha256.as_ref()),
    ) {
        models
            .entry(sha.clone())
            .or_default()
            .push(format!("snapshot {}", p.snapshot));
    }
    for id in &ids {
        if let Some(delta) = deltas.get(id) {
            note_delta_model(&mut models, delta);
        }
    }
    let times: Vec<u64> = ids.iter().filter_map(|id| delta_time_ms(id)).collect();
    let last_refit: Option<RefitStart> = get_json(store, &refit_started_key(&layout)).await?;
    let last_refit_failure: Option<RefitFailure> =
        get_json(store, &refit_failure_key(&layout)).await?;
    let mut status = CollectionStatus {
        collection: collection.to_string(),
        last_change_ms: times.iter().copied().max(),
        oldest_change_ms: times.iter().copied().min(),
        pending_deltas: ids.len(),
        pending_changes,
        current,
        summary,
        last_refit,
        last_refit_failure,
        stuck: None,
        location: store.describe(&layout.prefix()),
    };
    let missing = match &status.current {
        Some(p) => missing_parts(store, &layout, p).await?,
        None => Vec::new(),
    };
    status.stuck = match model_conflict(collection, &models) {
        Some((reason, remedy)) => {
            let since = status.oldest_change_ms.unwrap_or_default() / 1000;
            Some(Stuck::new(StuckKind::ModelsMixed, since, reason, remedy))
        }
        None => stuck_collection(&status, &missing, policy, clock.now_unix()),
    };
    Ok(status)
}

/// Adds `delta`'s model to `models` (model SHA-256 → what holds its features) when the
/// delta holds features (an upsert) and records its model.
pub(super) fn note_delta_model(models: &mut BTreeMap<String, Vec<String>>, delta: &Delta) {
    let features = delta
        .entries
        .iter()
        .any(|e| matches!(e, DeltaEntry::Upsert { .. }));
    if let (Some(sha), true) = (&delta.model_sha256, features) {
        models
            .entry(sha.clone())
            .or_default()
            .push(format!("delta {}", delta.id));
    }
}

/// Whether the features of a collection would come from more than one model: `models` maps
/// each model's SHA-256 to what holds features of it (the snapshot, deltas). Returns the
/// reason and the remedy.
pub fn model_conflict(
    collection: &str,
    models: &BTreeMap<String, Vec<String>>,
) -> Option<(String, String)> {
    if models.len() < 2 {
        return None;
    }
    let held: Vec<String> = models
        .iter()
        .map(|(sha, holders)| {
            let more = if holders.len() > 3 {
                format!(" and {} more", holders.len() - 3)
            } else {
                String::new()
            };
            let shown: Vec<&str> = holders.iter().take(3).map(String::as_str).collect();
            format!("model {sha} ({}{more})", shown.join(", "))
        })
        .collect();
    let reason = format!(
        "collection {collection} would mix the features of different models: {}; a PCA over \
         them is meaningless, so its refits refuse",
        held.join(" and ")
    );
    let remedy = format!(
        "re-featurize the collection with one model: `featurize reconcile --collection \
         {collection} --rebuild` (with --bucket, or --output and --input) runs the current model \
         over every image of the inbox after deleting the collection's view, snapshots and \
         waiting deltas; or put back the model the collection was built with"
    );
    Some((reason, remedy))
}

/// The stuck rules of a collection, in order: a dangling pointer, a lost refit, changes
/// pending too long.
fn stuck_collection(
    status: &CollectionStatus,
    missing: &[String],
    policy: &StallPolicy,
    now: u64,
) -> Option<Stuck> {
    let c = &status.collection;
    let refit = format!("featurize refit --collection {c}");
    if let (Some(p), false) = (&status.current, missing.is_empty()) {
        let reason = format!(
            "current.json names snapshot {} (refit {}), which is incomplete or gone: {} missing; \
             refits and `featurize watch` cannot start from it",
            p.snapshot,
            p.seq,
            missing.join(", ")
        );
        let remedy = format!(
            "point collections/{c}/current.json back at the newest complete snapshot (one with \
             _SUCCESS under collections/{c}/snapshots/ and its state), or delete current.json \
             and run `featurize reconcile --collection {c}` to rebuild the view from the inbox"
        );
        let since = p.published_at_ms / 1000;
        return Some(Stuck::new(
            StuckKind::DanglingPointer,
            since,
            reason,
            remedy,
        ));
    }
    let published = status
        .current
        .as_ref()
        .map_or(0, |p| p.published_at_ms / 1000);
    // Only the last allowed delivery: before it, the pending rule below covers refits that
    // keep failing (and refit messages that were not due yet leave start records too).
    let last_delivery =
        |s: &&RefitStart| s.at_unix >= published && s.receive_count >= policy.max_receive_count;
    if let Some(start) = status.last_refit.as_ref().filter(last_delivery) {
        let bound = policy.refit_lost_after(start.receive_count).as_secs();
        if status.pending_deltas > 0 && now >= start.at_unix.saturating_add(bound) {
            let error = match &status.last_refit_failure {
                Some(f) if f.at_unix >= start.at_unix => format!("; its last error: {}", f.error),
                _ => "; no failure record (out of memory or the reducer's timeout)".into(),
            };
            let reason = format!(
                "its refit (delivery {} of {}) started {} s ago and published nothing, and no \
                 delivery followed: the refit message is dead-lettered{error}",
                start.receive_count,
                policy.max_receive_count,
                now - start.at_unix
            );
            let remedy = format!(
                "read the reducer's log group; fix the cause (ReducerTimeout / ReducerMemory for a \
                 refit too large), then `{refit}` (or move the refit DLQ's messages back)"
            );
            return Some(Stuck::new(
                StuckKind::RefitLost,
                start.at_unix,
                reason,
                remedy,
            ));
        }
    }
    if policy.max_staleness.is_zero() {
        return None; // no staleness bound: changes wait for quiet, however long
    }
    let oldest = status.oldest_change_ms? / 1000;
    let age = now.saturating_sub(oldest);
    if age < policy.pending_too_old_after().as_secs() {
        return None;
    }
    let reason = format!(
        "{} changes in {} deltas wait for a refit, the oldest for {age} s: longer than the \
         staleness bound ({} s) plus one refit ({} s)",
        status.pending_changes,
        status.pending_deltas,
        policy.max_staleness.as_secs(),
        (policy.reducer_timeout + policy.margin).as_secs()
    );
    let remedy = format!(
        "run `{refit}` (add --refit-queue-url to have the reducer do it); if refits fail, read \
         the reducer's log group and the refit DLQ"
    );
    Some(Stuck::new(StuckKind::PendingTooOld, oldest, reason, remedy))
}
