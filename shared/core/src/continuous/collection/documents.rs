//! The documents of a collection: deltas, the published pointer, a snapshot's index and
//! summary, refit options and messages, and how to read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    CollectionLayout, FANOUT_PARTS, KEEP_SNAPSHOTS, MIN_READER_SECS, ORPHAN_DELTA_GRACE_SECS,
    PARTS_PER_MESSAGE, PART_ROWS,
};
use crate::error::Result;
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::ports::store::{ObjectStore, StoreError};
use engine::pca::PcaOptions;
use engine::preprocess::ImageErrorKind;

/// What a processed event found for one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DeltaEntry {
    /// The object with this ETag has these features (row `row` of the delta's part).
    Upsert {
        /// Path in the collection.
        path: String,
        /// Label.
        label: String,
        /// The content's entity tag.
        etag: String,
        /// Its row in the delta's part.
        row: usize,
    },
    /// The object with this ETag cannot be featurized (a permanent failure).
    Failed {
        /// Path in the collection.
        path: String,
        /// Label.
        label: String,
        /// The content's entity tag.
        etag: String,
        /// The kind of failure.
        kind: ImageErrorKind,
        /// Why.
        reason: String,
    },
    /// The object was gone when the event was processed.
    Removed {
        /// Path in the collection.
        path: String,
    },
}

impl DeltaEntry {
    /// The path it is about.
    pub fn path(&self) -> &str {
        match self {
            DeltaEntry::Upsert { path, .. }
            | DeltaEntry::Failed { path, .. }
            | DeltaEntry::Removed { path } => path,
        }
    }
    /// The content it describes (`None`: gone).
    pub fn etag(&self) -> Option<&str> {
        match self {
            DeltaEntry::Upsert { etag, .. } | DeltaEntry::Failed { etag, .. } => Some(etag),
            DeltaEntry::Removed { .. } => None,
        }
    }
}

/// One processed batch's changes to one collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The collection.
    pub collection: String,
    /// Its id (time-ordered, unique).
    pub id: String,
    /// When it was written (Unix ms): the quiet-time check reads it.
    pub written_at_ms: u64,
    /// What was found, one entry per key.
    pub entries: Vec<DeltaEntry>,
    /// The SHA-256 of the model that computed its features (`None`: written before models
    /// were recorded). A refit refuses to mix two models in one collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
}

/// A fresh delta id: time-ordered and random.
pub fn new_delta_id() -> String {
    format!(
        "{:013}-{:016x}",
        crate::manifest::unix_now_ms(),
        fastrand::u64(..)
    )
}

/// Writes a delta: its part (the upserted rows), then its document (the commit point).
pub async fn write_delta<S: ObjectStore>(
    store: &S,
    delta: &Delta,
    rows: &[VectorRow],
) -> Result<()> {
    let layout = CollectionLayout::new(&delta.collection);
    if !rows.is_empty() {
        store
            .put(
                &layout.delta_part(&delta.id),
                parquet_io::write_rows(Dataset::Features, rows)?,
            )
            .await?;
    }
    store
        .put(
            &layout.delta_doc(&delta.id),
            serde_json::to_vec(delta)?.into(),
        )
        .await?;
    Ok(())
}

/// The pointer `collections/<c>/current.json`: the published snapshot and where its views are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentPointer {
    /// The collection.
    pub collection: String,
    /// The snapshot id.
    pub snapshot: String,
    /// How many refits published before it (1 for the first).
    pub seq: u64,
    /// `Results` (path, label, features): a Parquet folder.
    pub results: String,
    /// `Results_PCA` (path, label, pca_features): a Parquet folder.
    pub results_pca: String,
    /// The PCA model (absent with fewer than 2 rows).
    pub pca_model: Option<String>,
    /// The snapshot's summary.
    pub summary: String,
    /// Its error list.
    pub errors: String,
    /// When it was published (RFC 3339).
    pub published_at: String,
    /// When (Unix ms).
    pub published_at_ms: u64,
}

/// What a live or failed path of a collection is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The content's entity tag.
    pub etag: String,
    /// Label.
    pub label: String,
    /// The `Results` part holding its row (live), or `None` (failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// Why it failed (failed paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<(ImageErrorKind, String)>,
}

/// A snapshot's index: every path of the collection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectionIndex {
    /// Path → entry.
    pub entries: BTreeMap<String, IndexEntry>,
    /// The `Results` parts, with their row counts.
    pub parts: BTreeMap<String, usize>,
}

/// Counts and timings of one refit, in `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefitSummary {
    /// The collection.
    pub collection: String,
    /// The snapshot.
    pub snapshot: String,
    /// Refits published so far.
    pub seq: u64,
    /// Live rows (= rows of `Results`).
    pub rows: usize,
    /// Paths in the error list.
    pub errors: usize,
    /// Deltas folded in.
    pub deltas: usize,
    /// Paths the deltas mentioned.
    pub changed_paths: usize,
    /// Rows added (new paths, or failed before).
    pub added: usize,
    /// Rows replaced by new content.
    pub replaced: usize,
    /// Rows removed (deleted, or now failing).
    pub removed: usize,
    /// Paths whose current content no delta has seen yet (kept as they were).
    pub pending: usize,
    /// PCA components (0: no PCA, fewer than 2 rows).
    pub k: usize,
    /// Requested components, when fewer were possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_requested: Option<usize>,
    /// Cumulative explained variance at k.
    pub cumulative_explained_variance: f64,
    /// Seconds: reading the deltas and the current state of changed keys.
    pub resolve_s: f64,
    /// Seconds: updating the statistics (removed and new rows only) and the eigendecomposition.
    pub fit_s: f64,
    /// Seconds: projecting and writing every part of the view.
    pub publish_s: f64,
    /// Wall seconds of the refit.
    pub total_s: f64,
    /// When it was published (RFC 3339).
    pub published_at: String,
    /// When (Unix ms): retention counts a snapshot's time as superseded from its
    /// successor's.
    #[serde(default)]
    pub published_at_ms: u64,
    /// The snapshot this one was built from (the current one when the refit started):
    /// walking these back from the pointer gives every snapshot that was ever published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_on: Option<String>,
    /// Notes (k clamped, no PCA possible).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The SHA-256 of the model whose features the snapshot holds (`None`: no rows, or a
    /// snapshot written before models were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// Index buckets (each an index shard and one `Results` part).
    #[serde(default)]
    pub buckets: usize,
    /// Buckets rewritten by this refit (the others were copied as they were).
    #[serde(default)]
    pub buckets_rewritten: usize,
    /// `Results_PCA` parts projected by projection messages on the refit queue (0: all in
    /// the refit's own process).
    #[serde(default)]
    pub parts_fanned_out: usize,
}

/// What a refit did.
#[derive(Debug, Clone, PartialEq)]
pub enum RefitOutcome {
    /// A new snapshot is published.
    Published(Box<RefitSummary>),
    /// Nothing changed since the published snapshot.
    NothingToDo,
    /// A change is younger than the quiet time and the oldest pending change is younger
    /// than the staleness bound: a later refit will come.
    NotQuiet {
        /// Milliseconds since the last change.
        since_change_ms: u64,
        /// Milliseconds until the quiet time is reached, if nothing else changes.
        quiet_left_ms: u64,
        /// Milliseconds until the oldest pending change reaches the staleness bound
        /// (`None`: no bound).
        staleness_left_ms: Option<u64>,
    },
    /// Other refits published first, [`REFIT_ATTEMPTS`](super::REFIT_ATTEMPTS) times in a
    /// row; this one's work is discarded (its deltas stay for the next refit, unless the
    /// others consumed them).
    LostRace,
    /// The snapshot is written but for its projection, which was sent to the refit queue as
    /// [`ProjectMessage`]s: the last of them to finish publishes it.
    Projecting {
        /// The snapshot.
        snapshot: String,
        /// Its refit number.
        seq: u64,
        /// `Results_PCA` parts to project.
        parts: usize,
        /// Messages sent.
        messages: usize,
    },
}

/// How to refit.
#[derive(Debug, Clone)]
pub struct RefitOptions {
    /// The PCA.
    pub pca: PcaOptions,
    /// Refit only if the newest delta is at least this old (`None`: refit now)...
    pub quiet_ms: Option<u64>,
    /// ...or if the oldest delta is at least this old (`None`: no bound; only with
    /// `quiet_ms`): under steady uploads no change waits longer than this plus one refit.
    pub max_staleness_ms: Option<u64>,
    /// Published snapshots always kept after publishing (the current one included).
    pub keep_snapshots: usize,
    /// A superseded snapshot is kept at least this long (readers still on it).
    pub min_reader_ms: u64,
    /// A delta part whose document was never written is removed once this old.
    pub orphan_delta_grace_ms: u64,
    /// Parts read, projected and written at once.
    pub concurrency: usize,
    /// Rows per index bucket (and `Results` part) the bucket count aims at: a collection
    /// gets `2^j` buckets, doubled when the buckets average more than twice this.
    pub part_rows: usize,
    /// With a queue to send to: a snapshot of more `Results` parts than this is projected by
    /// [`ProjectMessage`]s of [`RefitOptions::parts_per_message`] parts each, not in the
    /// refit's own process.
    pub fanout_parts: usize,
    /// Parts per projection message.
    pub parts_per_message: usize,
    /// A projection that reaches its invocation's deadline minus this stops (after one part
    /// at least) and is delivered again, going on from the parts already written.
    pub deadline_margin_ms: u64,
}

impl Default for RefitOptions {
    fn default() -> Self {
        Self {
            pca: PcaOptions::default(),
            quiet_ms: None,
            max_staleness_ms: None,
            keep_snapshots: KEEP_SNAPSHOTS,
            min_reader_ms: MIN_READER_SECS * 1000,
            orphan_delta_grace_ms: ORPHAN_DELTA_GRACE_SECS * 1000,
            concurrency: 4,
            part_rows: PART_ROWS,
            fanout_parts: FANOUT_PARTS,
            parts_per_message: PARTS_PER_MESSAGE,
            deadline_margin_ms: 30_000,
        }
    }
}

/// A refit message (refit queue): refit `collection` once it has been quiet, or now (`force`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefitMessage {
    /// The collection.
    pub collection: String,
    /// Refit even if a change is younger than the quiet time (on-demand requests).
    #[serde(default)]
    pub force: bool,
}

/// A projection message (refit queue): project parts `from..to` of `snapshot`'s parts (in
/// the order of its publication document) into its `Results_PCA`, and publish the snapshot
/// if every part is then projected. Duplicates and redeliveries are harmless: a part already
/// projected is skipped, and the publication is read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectMessage {
    /// The collection.
    pub collection: String,
    /// The parts to project.
    pub project: ProjectRange,
}

/// A range of a snapshot's parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRange {
    /// The snapshot.
    pub snapshot: String,
    /// The first part (index into the publication document's parts).
    pub from: usize,
    /// One past the last.
    pub to: usize,
}

/// The published pointer with its entity tag, if any.
pub async fn read_current<S: ObjectStore>(
    store: &S,
    layout: &CollectionLayout,
) -> Result<Option<(CurrentPointer, String)>> {
    match store.get_versioned(&layout.current()).await {
        Ok(v) => Ok(Some((serde_json::from_slice(&v.body)?, v.etag))),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Committed deltas (their document keys and ids), oldest first.
pub async fn list_deltas<S: ObjectStore>(
    store: &S,
    layout: &CollectionLayout,
) -> Result<Vec<String>> {
    let prefix = layout.deltas_prefix();
    Ok(store
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| {
            o.key
                .strip_prefix(&prefix)
                .and_then(|n| n.strip_suffix(".json"))
                .map(String::from)
        })
        .collect())
}

/// The time of a delta id (its leading Unix milliseconds).
pub fn delta_time_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}
