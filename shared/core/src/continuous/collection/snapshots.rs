//! The files of a snapshot: its parts (with their projections), and retention: which
//! snapshots and delta parts are deleted after a publication, and how a refit tells whether a
//! snapshot was ever published (the chain of `based_on` in the snapshots' summaries).

use std::collections::BTreeSet;

use futures::stream::{self, StreamExt, TryStreamExt};
use futures::FutureExt;
use tracing::info;

use super::{delta_time_ms, read_current, CollectionLayout, CurrentPointer, RefitSummary};
use crate::error::Result;
use crate::ports::store::{ObjectStore, StoreError};

/// The name of the `n`th part of new rows in `snapshot`.
pub(super) fn part_name(snapshot: &str, n: usize) -> String {
    format!("part-{snapshot}-{n:05}.parquet")
}

pub(super) async fn delete_prefix<S: ObjectStore>(
    output: &S,
    prefix: &str,
    concurrency: usize,
) -> Result<()> {
    let objects = output.list(prefix).await?;
    stream::iter(
        objects
            .iter()
            .map(|o| output.delete(&o.key).boxed())
            .collect::<Vec<_>>(),
    )
    .buffer_unordered(concurrency * 4)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// What retention keeps and removes after a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retention {
    /// Published snapshots always kept: the current one and those just before it.
    pub keep: usize,
    /// A published snapshot is kept at least this long after it stopped being current (a
    /// reader that read the pointer just before may still be reading it).
    pub min_reader_ms: u64,
    /// A delta part without its document (its ingest died between the two) is removed once
    /// it is this old.
    pub orphan_delta_grace_ms: u64,
    /// Now (Unix ms).
    pub now_ms: u64,
}

/// What [`expire`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Expired {
    /// Snapshots no pointer ever named (crashed or racing losers), removed first.
    pub orphans: Vec<String>,
    /// Published snapshots past their retention.
    pub expired: Vec<String>,
    /// Delta parts without a document.
    pub orphan_deltas: Vec<String>,
}

/// One published snapshot, found by walking back from the current pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Link {
    /// The snapshot id.
    pub id: String,
    /// Its refit number.
    pub seq: u64,
    /// When it was published (Unix ms; 0 when unknown).
    pub published_at_ms: u64,
}

/// The refit number a snapshot id starts with.
pub(super) fn seq_of(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// The published snapshots, newest first: the current one, then each one's predecessor as
/// its summary records it (`based_on`), down to refit `down_to` or to the first whose summary
/// is gone or does not say. `complete`: the walk reached `down_to`.
pub(super) async fn published_chain<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    current: &CurrentPointer,
    down_to: u64,
) -> Result<(Vec<Link>, bool)> {
    let mut chain = vec![Link {
        id: current.snapshot.clone(),
        seq: current.seq,
        published_at_ms: current.published_at_ms,
    }];
    let mut id = current.snapshot.clone();
    loop {
        if chain.last().is_some_and(|l| l.seq <= down_to) {
            return Ok((chain, true));
        }
        let summary: RefitSummary = match output.get(&layout.summary(&id)).await {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(StoreError::NotFound(_)) => return Ok((chain, false)),
            Err(e) => return Err(e.into()),
        };
        let Some(previous) = summary.based_on else {
            return Ok((chain, false));
        };
        let seq = seq_of(&previous).unwrap_or(0);
        if chain.last().is_some_and(|l| seq >= l.seq) {
            // Not older than its successor: not a chain to follow.
            return Ok((chain, false));
        }
        let published_at_ms = match output.get(&layout.summary(&previous)).await {
            Ok(bytes) => serde_json::from_slice::<RefitSummary>(&bytes)?.published_at_ms,
            Err(StoreError::NotFound(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        chain.push(Link {
            id: previous.clone(),
            seq,
            published_at_ms,
        });
        id = previous;
    }
}

/// What a pointer write did, read back after an ambiguous answer ("changed", "exists", or
/// a transient error on a write that S3 may have applied while its response was lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PointerWrite {
    /// Ours was published (it may be superseded since).
    Ours,
    /// Another refit published at our refit number: ours never will be.
    Lost,
    /// The pointer is still older than ours: our write has not landed.
    NotLanded,
    /// Cannot tell (the history back to ours is gone): leave the snapshot to retention.
    Unknown,
}

/// Whether the pointer `ours` was published: the pointer is ours, or the chain of published
/// snapshots back from it holds ours.
pub(super) async fn read_back_pointer<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    ours: &CurrentPointer,
) -> Result<PointerWrite> {
    let Some((now, _)) = read_current(output, layout).await? else {
        return Ok(PointerWrite::NotLanded);
    };
    if now.snapshot == ours.snapshot {
        return Ok(PointerWrite::Ours);
    }
    if now.seq < ours.seq {
        return Ok(PointerWrite::NotLanded);
    }
    if now.seq == ours.seq {
        return Ok(PointerWrite::Lost);
    }
    let (chain, complete) = published_chain(output, layout, &now, ours.seq).await?;
    Ok(if chain.iter().any(|l| l.id == ours.snapshot) {
        PointerWrite::Ours
    } else if complete {
        PointerWrite::Lost
    } else {
        PointerWrite::Unknown
    })
}

/// The snapshot ids present (a snapshot folder or a state folder).
async fn snapshot_ids<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
) -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for prefix in [layout.snapshots_prefix(), layout.states_prefix()] {
        ids.extend(output.list(&prefix).await?.iter().filter_map(|o| {
            o.key
                .strip_prefix(&prefix)?
                .split('/')
                .next()
                .map(String::from)
        }));
    }
    Ok(ids)
}

/// Retention after a publication, against the pointer as it is now:
/// - a snapshot no pointer ever named and that can no longer be published (its refit number
///   is not above the current one's: a racing or crashed loser) is removed first — it never
///   counts as one of the kept ones;
/// - a published snapshot is removed only once it is neither among the `keep` newest nor
///   superseded less than `min_reader_ms` ago;
/// - a snapshot numbered above the current one (a refit in progress) is left alone;
/// - delta parts without a document, older than the grace time, are removed.
pub(super) async fn expire<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    retention: &Retention,
    concurrency: usize,
) -> Result<Expired> {
    let mut done = Expired {
        orphan_deltas: expire_orphan_deltas(output, layout, retention, concurrency).await?,
        ..Expired::default()
    };
    let Some((current, _)) = read_current(output, layout).await? else {
        return Ok(done);
    };
    let ids = snapshot_ids(output, layout).await?;
    let oldest = ids.iter().filter_map(|id| seq_of(id)).min().unwrap_or(0);
    let (chain, _) = published_chain(output, layout, &current, oldest).await?;
    for id in &ids {
        if *id == current.snapshot {
            continue;
        }
        match chain.iter().position(|l| l.id == *id) {
            Some(i) => {
                let superseded_at = chain[i - 1].published_at_ms;
                let recent =
                    retention.now_ms.saturating_sub(superseded_at) < retention.min_reader_ms;
                if i >= retention.keep.max(1) && !recent {
                    done.expired.push(id.clone());
                }
            }
            None if seq_of(id).is_none_or(|seq| seq <= current.seq) => {
                done.orphans.push(id.clone())
            }
            None => {}
        }
    }
    for id in done.orphans.iter().chain(&done.expired) {
        delete_prefix(output, &layout.snapshot_prefix(id), concurrency).await?;
        delete_prefix(
            output,
            &format!("{}{id}/", layout.states_prefix()),
            concurrency,
        )
        .await?;
    }
    if done != Expired::default() {
        info!(collection = layout.name(), orphans = ?done.orphans, expired = ?done.expired,
            orphan_deltas = done.orphan_deltas.len(), "retention");
    }
    Ok(done)
}

/// Removes delta parts whose document was never written (the ingest died between the two)
/// once they are older than the grace time (an ingest still running writes it soon).
async fn expire_orphan_deltas<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    retention: &Retention,
    concurrency: usize,
) -> Result<Vec<String>> {
    let prefix = layout.deltas_prefix();
    let listed = output.list(&prefix).await?;
    let docs: BTreeSet<&str> = listed
        .iter()
        .filter_map(|o| o.key.strip_prefix(&prefix)?.strip_suffix(".json"))
        .collect();
    let orphans: Vec<String> = listed
        .iter()
        .filter_map(|o| o.key.strip_prefix(&prefix)?.strip_suffix(".parquet"))
        .filter(|id| !docs.contains(id))
        .filter(|id| {
            delta_time_ms(id).is_some_and(|t| {
                retention.now_ms.saturating_sub(t) >= retention.orphan_delta_grace_ms
            })
        })
        .map(String::from)
        .collect();
    let keys: Vec<String> = orphans.iter().map(|id| layout.delta_part(id)).collect();
    stream::iter(
        keys.iter()
            .map(|key| output.delete(key).boxed())
            .collect::<Vec<_>>(),
    )
    .buffer_unordered(concurrency * 4)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(orphans)
}
