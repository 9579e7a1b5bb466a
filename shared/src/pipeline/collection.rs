//! Collections: what continuous ingestion keeps current. Images dropped under
//! `<inbox>/<collection>/…/<label>/<file>` are featurized as they land ([`crate::ingest`]),
//! each processed batch leaving a *delta* in the collection's staging area; a *refit*
//! ([`refit`]) folds the deltas into the collection's state, fits the PCA and publishes a
//! new *snapshot*, then points `collections/<c>/current.json` at it (written last).
//!
//! Layout (one collection `c`):
//!
//! ```text
//! collections/<c>/current.json                      the pointer: which snapshot is published
//! collections/<c>/snapshots/<id>/Results/*.parquet      path, label, features
//! collections/<c>/snapshots/<id>/Results_PCA/*.parquet  path, label, pca_features
//! collections/<c>/snapshots/<id>/pca_model.json, summary.json, errors.json, _SUCCESS
//! collections/<c>/state/<id>/index.json, sums.bin   what the next refit starts from
//! collections/<c>/staging/deltas/<id>.parquet, .json  processed, not yet published changes
//! ```
//!
//! **Order-free freshness.** A delta records, per key, what the object *was when it was
//! read* (its ETag and features, a failure, or gone). Deltas may land in any order, so the
//! refit asks the store for each changed key's current ETag (a HEAD: O(changed)) and keeps
//! the record of exactly that content; a key that is gone is dropped; a key whose current
//! content no delta has seen yet keeps its previous state until its event is processed. A
//! redelivered event records the same content again and changes nothing.
//!
//! **Statistics reuse.** The state keeps running sums of the live rows ([`RunningSums`]);
//! a refit subtracts the rows that went away or were replaced (read from the few parts that
//! hold them) and adds the new ones: the fit costs O(changed · d² + d³). Publishing a view
//! projects every row (O(n · d · k)) and rewrites its parts; both are timed separately in
//! `summary.json`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::manifest::{ImageError, ImageErrorKind, PcaOptions};
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::pca::{self, PcaModel};
use crate::stats::RunningSums;
use crate::store::{ObjectStore, StoreError};

/// Where the collections live in the output store.
pub const COLLECTIONS_PREFIX: &str = "collections/";
/// Rows per Results part written by a refit.
pub const PART_ROWS: usize = 4096;
/// Snapshots kept (the current one and those before it, for readers still on them).
pub const KEEP_SNAPSHOTS: usize = 2;

/// Whether `name` can be a collection name (one path segment, no control characters).
pub fn valid_collection(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(|c| c.is_control())
}

/// The keys of one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionLayout {
    name: String,
}

impl CollectionLayout {
    /// The layout of collection `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `collections/<c>/`.
    pub fn prefix(&self) -> String {
        format!("{COLLECTIONS_PREFIX}{}/", self.name)
    }
    /// The pointer to the published snapshot, written last.
    pub fn current(&self) -> String {
        format!("{}current.json", self.prefix())
    }
    /// Where processed changes wait for the next refit.
    pub fn deltas_prefix(&self) -> String {
        format!("{}staging/deltas/", self.prefix())
    }
    /// A delta's document (its commit point, written after its part).
    pub fn delta_doc(&self, id: &str) -> String {
        format!("{}{id}.json", self.deltas_prefix())
    }
    /// A delta's features (the `Results` schema).
    pub fn delta_part(&self, id: &str) -> String {
        format!("{}{id}.parquet", self.deltas_prefix())
    }
    /// Every snapshot.
    pub fn snapshots_prefix(&self) -> String {
        format!("{}snapshots/", self.prefix())
    }
    /// One snapshot's folder.
    pub fn snapshot_prefix(&self, id: &str) -> String {
        format!("{}{id}/", self.snapshots_prefix())
    }
    /// Its `Results` dataset (a plain Parquet folder).
    pub fn results_prefix(&self, id: &str) -> String {
        format!("{}Results/", self.snapshot_prefix(id))
    }
    /// Its `Results_PCA` dataset.
    pub fn pca_prefix(&self, id: &str) -> String {
        format!("{}Results_PCA/", self.snapshot_prefix(id))
    }
    /// Its PCA model.
    pub fn pca_model(&self, id: &str) -> String {
        format!("{}pca_model.json", self.snapshot_prefix(id))
    }
    /// Its summary.
    pub fn summary(&self, id: &str) -> String {
        format!("{}summary.json", self.snapshot_prefix(id))
    }
    /// Its error list.
    pub fn errors(&self, id: &str) -> String {
        format!("{}errors.json", self.snapshot_prefix(id))
    }
    /// Written when the snapshot is complete (before the pointer).
    pub fn success(&self, id: &str) -> String {
        format!("{}_SUCCESS", self.snapshot_prefix(id))
    }
    /// Every state.
    pub fn states_prefix(&self) -> String {
        format!("{}state/", self.prefix())
    }
    /// The index (path → content, label, part) of a snapshot.
    pub fn state_index(&self, id: &str) -> String {
        format!("{}{id}/index.json", self.states_prefix())
    }
    /// The running sums of a snapshot's rows.
    pub fn state_sums(&self, id: &str) -> String {
        format!("{}{id}/sums.bin", self.states_prefix())
    }
}

/// Splits an object key under `inbox` into (collection, path in the collection, label):
/// `inbox/c/a/b/x.jpg` → (`c`, `a/b/x.jpg`, `b`). The label is the parent folder's name,
/// the collection's own name for a file directly under it. `None` for keys outside the
/// inbox or not inside a collection folder.
pub fn split_inbox_key(inbox: &str, key: &str) -> Option<(String, String, String)> {
    let rest = key.strip_prefix(inbox)?;
    let (collection, path) = rest.split_once('/')?;
    if !valid_collection(collection) || path.is_empty() || path.ends_with('/') {
        return None;
    }
    let label = crate::listing::label_for(path, collection);
    Some((collection.to_string(), path.to_string(), label))
}

/// The object key of `path` in `collection`.
pub fn inbox_key(inbox: &str, collection: &str, path: &str) -> String {
    format!("{inbox}{collection}/{path}")
}

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
        .put(&layout.delta_doc(&delta.id), serde_json::to_vec(delta)?.into())
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
    /// Notes (k clamped, no PCA possible).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// What a refit did.
#[derive(Debug, Clone, PartialEq)]
pub enum RefitOutcome {
    /// A new snapshot is published.
    Published(Box<RefitSummary>),
    /// Nothing changed since the published snapshot.
    NothingToDo,
    /// A change is younger than the quiet time: a later refit will come.
    NotQuiet {
        /// Milliseconds since the last change.
        since_change_ms: u64,
    },
    /// Other refits published first, [`REFIT_ATTEMPTS`] times in a row; this one's work is
    /// discarded (its deltas stay for the next refit, unless the others consumed them).
    LostRace,
}

/// How to refit.
#[derive(Debug, Clone)]
pub struct RefitOptions {
    /// The PCA.
    pub pca: PcaOptions,
    /// Refit only if the newest delta is at least this old (`None`: refit now).
    pub quiet_ms: Option<u64>,
    /// Snapshots kept after publishing.
    pub keep_snapshots: usize,
    /// Parts read, projected and written at once.
    pub concurrency: usize,
}

impl Default for RefitOptions {
    fn default() -> Self {
        Self {
            pca: PcaOptions::default(),
            quiet_ms: None,
            keep_snapshots: KEEP_SNAPSHOTS,
            concurrency: 4,
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

/// How the refit decided one changed path.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    /// Keep what the index has.
    Keep,
    /// Gone: drop it.
    Drop,
    /// Live with the row of a delta entry: (delta index, row, etag, label).
    Live(usize, usize, String, String),
    /// Failed: (etag, label, kind, reason).
    Fail(String, String, ImageErrorKind, String),
}

/// Decides a changed path from its previous entry, the delta entries that mention it and its
/// current ETag (`None`: gone). Pure: the order of `entries` does not matter.
fn decide(
    previous: Option<&IndexEntry>,
    entries: &[(usize, &DeltaEntry)],
    current: Option<&str>,
) -> Decision {
    let Some(current) = current else {
        return if previous.is_some() {
            Decision::Drop
        } else {
            Decision::Keep
        };
    };
    if previous.is_some_and(|p| p.etag == current) {
        return Decision::Keep;
    }
    // Any entry of exactly this content will do: they all describe the same bytes.
    for (delta, entry) in entries {
        match entry {
            DeltaEntry::Upsert {
                etag, label, row, ..
            } if etag == current => {
                return Decision::Live(*delta, *row, etag.clone(), label.clone());
            }
            DeltaEntry::Failed {
                etag,
                label,
                kind,
                reason,
                ..
            } if etag == current => {
                return Decision::Fail(etag.clone(), label.clone(), *kind, reason.clone());
            }
            _ => {}
        }
    }
    Decision::Keep
}

/// Decides a changed path whose current content cannot be read (a permanent error on its
/// HEAD, e.g. access denied): it fails, with the ingest's reason when the ingest could not
/// read it either (a failed entry without ETag), else with the HEAD's.
fn decide_unreadable(
    collection: &str,
    path: &str,
    previous: Option<&IndexEntry>,
    entries: &[(usize, &DeltaEntry)],
    head_error: &str,
) -> Decision {
    let label_of = |entry: &DeltaEntry| match entry {
        DeltaEntry::Upsert { label, .. } | DeltaEntry::Failed { label, .. } => Some(label.clone()),
        DeltaEntry::Removed { .. } => None,
    };
    let label = entries
        .iter()
        .find_map(|(_, e)| label_of(e))
        .or_else(|| previous.map(|p| p.label.clone()))
        .unwrap_or_else(|| crate::listing::label_for(path, collection));
    let unread = entries.iter().find_map(|(_, e)| match e {
        DeltaEntry::Failed {
            etag, kind, reason, ..
        } if etag.is_empty() => Some((*kind, reason.clone())),
        _ => None,
    });
    let (kind, reason) =
        unread.unwrap_or_else(|| (ImageErrorKind::Fetch, head_error.to_string()));
    Decision::Fail(String::new(), label, kind, reason)
}

fn part_name(snapshot: &str, n: usize) -> String {
    format!("part-{snapshot}-{n:05}.parquet")
}

/// How many times a refit that lost the race for `current.json` starts over before giving up
/// ([`RefitOutcome::LostRace`]: the caller retries later).
pub const REFIT_ATTEMPTS: usize = 5;

/// Folds the collection's deltas into its state, fits the PCA, publishes a new snapshot and
/// points `current.json` at it. `input` holds the inbox (`inbox` + collection + `/` + path).
///
/// Refits of one collection may run at once (two refit messages, a CLI refit): the pointer
/// is replaced only if it is still the one the refit started from (S3 `If-Match`). The loser
/// discards its snapshot and starts over from the winner's, so that a delta the winner did
/// not see (written after it listed them) is folded now, not left waiting for another event.
pub async fn refit<S: ObjectStore, I: ObjectStore>(
    output: &S,
    input: &I,
    inbox: &str,
    collection: &str,
    options: &RefitOptions,
) -> Result<RefitOutcome> {
    for attempt in 1..=REFIT_ATTEMPTS {
        match refit_once(output, input, inbox, collection, options).await? {
            RefitOutcome::LostRace => {
                warn!(collection, attempt, "another refit published first: starting over from its snapshot");
            }
            done => return Ok(done),
        }
    }
    Ok(RefitOutcome::LostRace)
}

async fn refit_once<S: ObjectStore, I: ObjectStore>(
    output: &S,
    input: &I,
    inbox: &str,
    collection: &str,
    options: &RefitOptions,
) -> Result<RefitOutcome> {
    let started = Instant::now();
    if !valid_collection(collection) {
        return Err(Error::InvalidRequest(format!(
            "{collection:?} is not a collection name"
        )));
    }
    let layout = CollectionLayout::new(collection);
    let current = read_current(output, &layout).await?;
    let delta_ids = list_deltas(output, &layout).await?;
    if let (Some(quiet), Some(newest)) = (
        options.quiet_ms,
        delta_ids.iter().filter_map(|id| delta_time_ms(id)).max(),
    ) {
        let since = crate::manifest::unix_now_ms().saturating_sub(newest);
        if since < quiet {
            return Ok(RefitOutcome::NotQuiet {
                since_change_ms: since,
            });
        }
    }
    if delta_ids.is_empty() && current.is_some() {
        return Ok(RefitOutcome::NothingToDo);
    }

    // The state the previous snapshot left.
    let (mut index, mut sums, seq) = match &current {
        Some((pointer, _)) => {
            let index: CollectionIndex = serde_json::from_slice(
                &output.get(&layout.state_index(&pointer.snapshot)).await?,
            )?;
            let key = layout.state_sums(&pointer.snapshot);
            let sums = RunningSums::from_bytes(&output.get(&key).await?, &key)?;
            (index, Some(sums), pointer.seq)
        }
        None => (CollectionIndex::default(), None, 0),
    };
    let previous_snapshot = current.as_ref().map(|(p, _)| p.snapshot.clone());

    // The deltas (documents; parts later, only for the rows that win).
    let concurrency = options.concurrency.max(1);
    let deltas: Vec<Delta> = stream::iter(delta_ids.iter().map(|id| {
        let key = layout.delta_doc(id);
        async move {
        match output.get(&key).await {
            Ok(body) => Ok(Some(serde_json::from_slice::<Delta>(&body)?)),
            // Consumed by a refit that published meanwhile: ours will lose the pointer.
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(Error::from(e)),
        }
        }
    }))
    .buffered(concurrency * 4)
    .try_collect::<Vec<_>>()
    .await?
    .into_iter()
    .flatten()
    .collect();
    let mut by_path: BTreeMap<&str, Vec<(usize, &DeltaEntry)>> = BTreeMap::new();
    for (d, delta) in deltas.iter().enumerate() {
        for entry in &delta.entries {
            by_path.entry(entry.path()).or_default().push((d, entry));
        }
    }
    // The current content of every changed key: O(changed) HEADs. A key that cannot be
    // HEADed for good (access denied) goes to the error list; a transient error fails the
    // refit (its message is delivered again).
    let heads: Vec<(&str, Result<Option<String>, String>)> =
        stream::iter(by_path.keys().map(|&path| async move {
            match input.head(&inbox_key(inbox, collection, path)).await {
                Ok(etag) => Ok((path, Ok(Some(etag)))),
                Err(StoreError::NotFound(_)) => Ok((path, Ok(None))),
                Err(e) if !e.is_transient() => Ok((path, Err(e.to_string()))),
                Err(e) => Err(Error::from(e)),
            }
        }))
        .buffer_unordered(concurrency * 8)
        .try_collect()
        .await?;
    let heads: HashMap<&str, Result<Option<String>, String>> = heads.into_iter().collect();
    let resolve_s = started.elapsed().as_secs_f64();

    let fit_start = Instant::now();
    let mut decisions: Vec<(&str, Decision)> = Vec::new();
    let mut pending = 0;
    for (path, entries) in &by_path {
        let previous = index.entries.get(*path);
        let head = match heads.get(path) {
            Some(Ok(head)) => head.clone(),
            Some(Err(reason)) => {
                decisions.push((*path, decide_unreadable(collection, path, previous, entries, reason)));
                continue;
            }
            None => None,
        };
        let decision = decide(previous, entries, head.as_deref());
        if decision == Decision::Keep && head.is_some() && previous.is_none_or(|p| Some(&p.etag) != head.as_ref()) {
            pending += 1;
        }
        decisions.push((*path, decision));
    }
    // Rows leaving the live set: subtract them (read from the parts that hold them).
    let mut leaving: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, decision) in &decisions {
        if matches!(decision, Decision::Keep) {
            continue;
        }
        if let Some(IndexEntry {
            part: Some(part), ..
        }) = index.entries.get(*path)
        {
            leaving
                .entry(part.clone())
                .or_default()
                .insert(path.to_string());
        }
    }
    let prev_id = previous_snapshot.clone().unwrap_or_default();
    // Each part holding a leaving row is read once: (the rows it keeps, the rows leaving).
    let mut split: HashMap<String, (Vec<VectorRow>, Vec<VectorRow>)> =
        stream::iter(leaving.iter().map(|(part, paths)| {
            let key = format!("{}{part}", layout.results_prefix(&prev_id));
            async move {
                let rows = parquet_io::read_rows(Dataset::Features, output.get(&key).await?)?;
                let (gone, kept): (Vec<VectorRow>, Vec<VectorRow>) =
                    rows.into_iter().partition(|r| paths.contains(&r.path));
                Ok::<_, Error>((part.clone(), (kept, gone)))
            }
        }))
        .buffered(concurrency)
        .try_collect()
        .await?;
    // New rows, from the deltas that hold the winning entries.
    let wanted: BTreeSet<usize> = decisions
        .iter()
        .filter_map(|(_, d)| match d {
            Decision::Live(delta, ..) => Some(*delta),
            _ => None,
        })
        .collect();
    let delta_rows: HashMap<usize, Vec<VectorRow>> = stream::iter(wanted.iter().map(|&d| {
        let key = layout.delta_part(&deltas[d].id);
        async move {
            Ok::<_, Error>((d, parquet_io::read_rows(Dataset::Features, output.get(&key).await?)?))
        }
    }))
    .buffered(concurrency)
    .try_collect()
    .await?;
    let mut arriving: Vec<VectorRow> = Vec::new();
    let (mut added, mut replaced, mut removed) = (0, 0, 0);
    for (path, decision) in &decisions {
        let was_live = index
            .entries
            .get(*path)
            .is_some_and(|e| e.part.is_some());
        match decision {
            Decision::Keep => continue,
            Decision::Drop => {
                if was_live {
                    removed += 1;
                }
                index.entries.remove(*path);
            }
            Decision::Fail(etag, label, kind, reason) => {
                if was_live {
                    removed += 1;
                }
                index.entries.insert(
                    path.to_string(),
                    IndexEntry {
                        etag: etag.clone(),
                        label: label.clone(),
                        part: None,
                        error: Some((*kind, reason.clone())),
                    },
                );
            }
            Decision::Live(delta, row, etag, label) => {
                let source = delta_rows
                    .get(delta)
                    .and_then(|rows| rows.get(*row))
                    .filter(|r| r.path == *path)
                    .ok_or_else(|| {
                        Error::RunState(format!(
                            "delta {} has no row {row} for {path}",
                            deltas[*delta].id
                        ))
                    })?;
                if was_live {
                    replaced += 1;
                } else {
                    added += 1;
                }
                arriving.push(VectorRow {
                    path: path.to_string(),
                    label: label.clone(),
                    values: source.values.clone(),
                });
                index.entries.insert(
                    path.to_string(),
                    IndexEntry {
                        etag: etag.clone(),
                        label: label.clone(),
                        part: None, // set below, once its part is named
                        error: None,
                    },
                );
            }
        }
    }
    let leaving_refs: Vec<&[f32]> = split
        .values()
        .flat_map(|(_, gone)| gone)
        .map(|r| r.values.as_slice())
        .collect();
    let arriving_refs: Vec<&[f32]> = arriving.iter().map(|r| r.values.as_slice()).collect();
    let dim = arriving
        .first()
        .map(|r| r.values.len())
        .or(sums.as_ref().map(|s| s.dim()));
    let mut sums = match (sums.take(), dim) {
        (Some(s), _) => s,
        (None, Some(dim)) => {
            // The shift: the first rows' mean.
            let mut shift = vec![0.0f64; dim];
            for row in &arriving_refs {
                for (s, &x) in shift.iter_mut().zip(row.iter()) {
                    *s += f64::from(x);
                }
            }
            shift
                .iter_mut()
                .for_each(|s| *s /= arriving_refs.len().max(1) as f64);
            RunningSums::new(shift)
        }
        (None, None) => RunningSums::new(Vec::new()),
    };
    sums.remove(&leaving_refs)?;
    drop(leaving_refs);
    sums.add(&arriving_refs)?;
    let stats = sums.to_stats();
    let mut warnings = Vec::new();
    let mut pca_options = options.pca.clone();
    let mut k_requested = None;
    let model: Option<PcaModel> = if stats.count < 2 {
        warnings.push(format!(
            "{} live rows: no PCA (it needs at least 2)",
            stats.count
        ));
        None
    } else {
        if pca_options.variance.is_none() {
            let k = pca::effective_k(pca_options.k, stats.count, stats.dim());
            if k < pca_options.k {
                warnings.push(format!(
                    "k = {} asked for, but {} rows of dimension {} allow at most {k} components (min(k, n - 1, d)): fitted k = {k}",
                    pca_options.k, stats.count, stats.dim()
                ));
                k_requested = Some(pca_options.k);
                pca_options.k = k;
            }
        }
        match pca::fit(&stats, &pca_options) {
            Ok(model) => Some(model),
            Err(e) => {
                warnings.push(format!("no PCA: {e}"));
                None
            }
        }
    };
    let fit_s = fit_start.elapsed().as_secs_f64();

    // Publish: a new snapshot folder, complete with _SUCCESS, then the pointer.
    let publish_start = Instant::now();
    let seq = seq + 1;
    let snapshot = format!("{seq:08}-{:08x}", fastrand::u32(..));
    // Parts of the previous snapshot: carried over, without their leaving rows.
    let old_parts: Vec<(String, usize)> = index.parts.iter().map(|(p, n)| (p.clone(), *n)).collect();
    let model_ref = model.as_ref();
    let layout_ref = &layout;
    let snapshot_ref = &snapshot;
    let prev_ref = &prev_id;
    let carried: Vec<(String, String, usize)> = stream::iter(old_parts.into_iter().map(|(part, _)| {
        // Parts that lose rows were read above; the others are copied as they are.
        let kept = split.remove(&part).map(|(kept, _)| kept);
        async move {
            let (name, rows, bytes) = match kept {
                None => {
                    let bytes = output
                        .get(&format!("{}{part}", layout_ref.results_prefix(prev_ref)))
                        .await?;
                    let rows = parquet_io::read_rows(Dataset::Features, bytes.clone())?;
                    (part.clone(), rows, bytes)
                }
                Some(kept) => {
                    let name = format!("{}-r{seq}", part.trim_end_matches(".parquet")) + ".parquet";
                    let bytes = parquet_io::write_rows(Dataset::Features, &kept)?;
                    (name, kept, bytes)
                }
            };
            if !rows.is_empty() {
                publish_part(output, layout_ref, snapshot_ref, &name, bytes, &rows, model_ref)
                    .await?;
            }
            Ok::<_, Error>((part, name, rows.len()))
        }
    }))
    .buffer_unordered(concurrency)
    .try_collect()
    .await?;
    let mut parts: BTreeMap<String, usize> = BTreeMap::new();
    let mut renamed: HashMap<String, String> = HashMap::new();
    for (old, new, n) in carried {
        if n > 0 {
            parts.insert(new.clone(), n);
        }
        renamed.insert(old, new);
    }
    for entry in index.entries.values_mut() {
        if let Some(part) = &entry.part {
            if let Some(new) = renamed.get(part) {
                entry.part = Some(new.clone());
            }
        }
    }
    // The arriving rows, in new parts.
    let chunks: Vec<(String, &[VectorRow])> = arriving
        .chunks(PART_ROWS)
        .enumerate()
        .map(|(i, chunk)| (part_name(&snapshot, i), chunk))
        .collect();
    for (name, chunk) in &chunks {
        for row in chunk.iter() {
            if let Some(entry) = index.entries.get_mut(&row.path) {
                entry.part = Some(name.clone());
            }
        }
        parts.insert(name.clone(), chunk.len());
    }
    stream::iter(chunks.iter().map(|(name, chunk)| async move {
        let bytes = parquet_io::write_rows(Dataset::Features, chunk)?;
        publish_part(output, layout_ref, snapshot_ref, name, bytes, chunk, model_ref).await
    }))
    .buffer_unordered(concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    parts.retain(|_, n| *n > 0);
    if parts.is_empty() {
        // An empty collection still publishes readable (empty) datasets.
        let name = part_name(&snapshot, 0);
        let bytes = parquet_io::write_rows(Dataset::Features, &[])?;
        publish_part(output, &layout, &snapshot, &name, bytes, &[], model.as_ref()).await?;
    }
    index.parts = parts;

    let errors: Vec<ImageError> = index
        .entries
        .iter()
        .filter_map(|(path, e)| {
            e.error.as_ref().map(|(kind, reason)| ImageError {
                path: path.clone(),
                label: e.label.clone(),
                kind: *kind,
                reason: reason.clone(),
            })
        })
        .collect();
    let rows = index.entries.values().filter(|e| e.part.is_some()).count();
    if rows as u64 != sums.count {
        return Err(Error::Invariant(format!(
            "collection {collection}: {rows} live rows but statistics of {}",
            sums.count
        )));
    }
    let published_at = crate::manifest::now_rfc3339();
    let mut summary = RefitSummary {
        collection: collection.to_string(),
        snapshot: snapshot.clone(),
        seq,
        rows,
        errors: errors.len(),
        deltas: deltas.len(),
        changed_paths: by_path.len(),
        added,
        replaced,
        removed,
        pending,
        k: model.as_ref().map(|m| m.k).unwrap_or(0),
        k_requested,
        cumulative_explained_variance: model
            .as_ref()
            .map(|m| m.cumulative_explained_variance)
            .unwrap_or(0.0),
        resolve_s,
        fit_s,
        publish_s: 0.0,
        total_s: 0.0,
        published_at: published_at.clone(),
        warnings,
    };
    if let Some(model) = &model {
        output
            .put(&layout.pca_model(&snapshot), serde_json::to_vec(model)?.into())
            .await?;
    }
    output
        .put(
            &layout.errors(&snapshot),
            serde_json::to_vec_pretty(&errors)?.into(),
        )
        .await?;
    output
        .put(&layout.state_index(&snapshot), serde_json::to_vec(&index)?.into())
        .await?;
    output
        .put(&layout.state_sums(&snapshot), sums.to_bytes().into())
        .await?;
    summary.publish_s = publish_start.elapsed().as_secs_f64();
    summary.total_s = started.elapsed().as_secs_f64();
    output
        .put(
            &layout.summary(&snapshot),
            serde_json::to_vec_pretty(&summary)?.into(),
        )
        .await?;
    output.put(&layout.success(&snapshot), Bytes::new()).await?;
    let pointer = CurrentPointer {
        collection: collection.to_string(),
        snapshot: snapshot.clone(),
        seq,
        results: layout.results_prefix(&snapshot),
        results_pca: layout.pca_prefix(&snapshot),
        pca_model: model.as_ref().map(|_| layout.pca_model(&snapshot)),
        summary: layout.summary(&snapshot),
        errors: layout.errors(&snapshot),
        published_at,
        published_at_ms: crate::manifest::unix_now_ms(),
    };
    let body: Bytes = serde_json::to_vec_pretty(&pointer)?.into();
    let won = match &current {
        Some((_, etag)) => output.put_if_match(&layout.current(), body, etag).await?,
        None => output.put_if_absent(&layout.current(), body).await?,
    };
    if !won {
        info!(collection, %snapshot, "another refit published first: this snapshot is discarded");
        delete_prefix(output, &layout.snapshot_prefix(&snapshot), concurrency).await?;
        delete_prefix(output, &format!("{}{snapshot}/", layout.states_prefix()), concurrency)
            .await?;
        return Ok(RefitOutcome::LostRace);
    }
    info!(
        collection, %snapshot, seq, rows, errors = errors.len(), added, replaced, removed, pending,
        fit_s, publish_s = summary.publish_s, "collection published"
    );
    // The consumed deltas (documents first: they are the commit points), old snapshots.
    for delta in &deltas {
        output.delete(&layout.delta_doc(&delta.id)).await?;
        output.delete(&layout.delta_part(&delta.id)).await?;
    }
    expire_snapshots(output, &layout, &snapshot, options.keep_snapshots.max(1), concurrency)
        .await?;
    Ok(RefitOutcome::Published(Box::new(summary)))
}

/// Writes one `Results` part and its `Results_PCA` projection into a snapshot.
async fn publish_part<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    snapshot: &str,
    name: &str,
    features: Bytes,
    rows: &[VectorRow],
    model: Option<&PcaModel>,
) -> Result<()> {
    output
        .put(&format!("{}{name}", layout.results_prefix(snapshot)), features)
        .await?;
    let projected: Vec<VectorRow> = rows
        .iter()
        .map(|r| VectorRow {
            path: r.path.clone(),
            label: r.label.clone(),
            values: model.map(|m| m.project(&r.values)).unwrap_or_default(),
        })
        .collect();
    output
        .put(
            &format!("{}{name}", layout.pca_prefix(snapshot)),
            parquet_io::write_rows(Dataset::Pca, &projected)?,
        )
        .await?;
    Ok(())
}

async fn delete_prefix<S: ObjectStore>(output: &S, prefix: &str, concurrency: usize) -> Result<()> {
    let objects = output.list(prefix).await?;
    stream::iter(objects.iter().map(|o| output.delete(&o.key)))
        .buffer_unordered(concurrency * 4)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Deletes all but the newest `keep` snapshots (and their states). Snapshot ids start with
/// their sequence number, so they sort by age.
async fn expire_snapshots<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    current: &str,
    keep: usize,
    concurrency: usize,
) -> Result<()> {
    let prefix = layout.snapshots_prefix();
    let ids: BTreeSet<String> = output
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|o| o.key.strip_prefix(&prefix)?.split('/').next().map(String::from))
        .collect();
    let expired: Vec<&String> = ids
        .iter()
        .rev()
        .filter(|id| id.as_str() != current)
        .skip(keep.saturating_sub(1))
        .filter(|id| id.as_str() < current)
        .collect();
    for id in expired {
        delete_prefix(output, &layout.snapshot_prefix(id), concurrency).await?;
        delete_prefix(output, &format!("{}{id}/", layout.states_prefix()), concurrency).await?;
        info!(collection = layout.name(), snapshot = %id, "snapshot expired");
    }
    Ok(())
}

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
    /// Where the store is (for messages).
    pub location: String,
}

/// Reads a collection's status: the published snapshot and what waits for the next refit.
pub async fn collection_status<S: ObjectStore>(
    store: &S,
    collection: &str,
) -> Result<CollectionStatus> {
    let layout = CollectionLayout::new(collection);
    let current = read_current(store, &layout).await?.map(|(p, _)| p);
    let summary = match &current {
        Some(p) => match store.get(&p.summary).await {
            Ok(b) => Some(serde_json::from_slice(&b)?),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let ids = list_deltas(store, &layout).await?;
    let mut pending_changes = 0;
    for id in &ids {
        match store.get(&layout.delta_doc(id)).await {
            Ok(b) => pending_changes += serde_json::from_slice::<Delta>(&b)?.entries.len(),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(CollectionStatus {
        collection: collection.to_string(),
        last_change_ms: ids.iter().filter_map(|id| delta_time_ms(id)).max(),
        pending_deltas: ids.len(),
        pending_changes,
        current,
        summary,
        location: store.describe(&layout.prefix()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::PcaOptions;

    #[test]
    fn inbox_keys_split_into_collection_path_and_label() {
        assert_eq!(
            split_inbox_key("inbox/", "inbox/fruits/Apple/1.jpg"),
            Some(("fruits".into(), "Apple/1.jpg".into(), "Apple".into()))
        );
        assert_eq!(
            split_inbox_key("inbox/", "inbox/fruits/a/b/x.png"),
            Some(("fruits".into(), "a/b/x.png".into(), "b".into()))
        );
        assert_eq!(
            split_inbox_key("inbox/", "inbox/fruits/x.png"),
            Some(("fruits".into(), "x.png".into(), "fruits".into()))
        );
        assert_eq!(split_inbox_key("inbox/", "other/fruits/a/x.png"), None);
        assert_eq!(split_inbox_key("inbox/", "inbox/x.png"), None);
        assert_eq!(split_inbox_key("inbox/", "inbox/fruits/"), None);
        assert_eq!(split_inbox_key("", "fruits/a/x.png").unwrap().0, "fruits");
        assert_eq!(inbox_key("inbox/", "c", "a/x.jpg"), "inbox/c/a/x.jpg");
        assert_eq!(delta_time_ms(&new_delta_id()).map(|t| t > 0), Some(true));
    }

    fn upsert(path: &str, etag: &str, row: usize) -> DeltaEntry {
        DeltaEntry::Upsert {
            path: path.into(),
            label: "l".into(),
            etag: etag.into(),
            row,
        }
    }

    #[test]
    fn the_current_content_decides_whatever_the_order_of_deltas() {
        let old = IndexEntry {
            etag: "e1".into(),
            label: "l".into(),
            part: Some("p".into()),
            error: None,
        };
        let a = upsert("x", "e1", 0);
        let b = upsert("x", "e2", 3);
        let gone = DeltaEntry::Removed { path: "x".into() };
        for entries in [
            vec![(0, &a), (1, &b), (2, &gone)],
            vec![(2, &gone), (1, &b), (0, &a)],
        ] {
            // Current content e2: the row that read e2 wins, in any order.
            assert_eq!(
                decide(Some(&old), &entries, Some("e2")),
                Decision::Live(1, 3, "e2".into(), "l".into())
            );
            // Gone now: dropped, whatever a delta saw.
            assert_eq!(decide(Some(&old), &entries, None), Decision::Drop);
            // Unchanged content (a redelivery, or a stale read): nothing changes.
            assert_eq!(decide(Some(&old), &entries, Some("e1")), Decision::Keep);
            // Content no delta has seen yet: kept as it is until its event is processed.
            assert_eq!(decide(Some(&old), &entries, Some("e3")), Decision::Keep);
        }
        let failed = DeltaEntry::Failed {
            path: "y".into(),
            label: "l".into(),
            etag: "f".into(),
            kind: ImageErrorKind::Empty,
            reason: "empty".into(),
        };
        assert!(matches!(
            decide(None, &[(0, &failed)], Some("f")),
            Decision::Fail(_, _, ImageErrorKind::Empty, _)
        ));
        assert_eq!(decide(None, &[(0, &gone)], None), Decision::Keep);
    }

    #[test]
    fn collection_names_are_one_segment() {
        assert!(valid_collection("fruits-360"));
        assert!(!valid_collection(""));
        assert!(!valid_collection("a/b"));
        assert!(!valid_collection(".."));
    }

    use crate::test_util::block;

    /// Ingest (synthetic features) → refit → changes → refit, on a local store: the view
    /// holds exactly the live files, the running sums equal the statistics of the live rows,
    /// redelivered events change nothing, and a refit racing on a stale pointer loses.
    #[test]
    fn refits_follow_changes_and_keep_one_row_per_live_file() {
        use crate::queue::InProcessQueue;
        use crate::store::FsStore;
        block(async {
            let dir = tempfile::tempdir().unwrap();
            let input = FsStore::new(dir.path().join("in"));
            let output = FsStore::new(dir.path().join("out"));
            let queue = InProcessQueue::new();
            let ingestor = synthetic_ingestor(input.clone(), output.clone(), &queue);
            let keys: Vec<String> = (0..8).map(|i| format!("inbox/c/l{}/{i}.jpg", i % 2)).collect();
            for k in &keys {
                input.put(k, Bytes::from(k.clone())).await.unwrap();
            }
            input.put("inbox/c/notes.txt", Bytes::from_static(b"x")).await.unwrap();
            let mut all = keys.clone();
            all.push("inbox/c/notes.txt".into());
            all.push("elsewhere/x.jpg".into());
            let first = ingestor.ingest(&all).await.unwrap();
            assert_eq!((first.upserts, first.ignored), (8, 2));
            assert_eq!(queue.len(), 1, "one delayed refit message per collection");
            let options = k2();
            // Not quiet yet with a long quiet time.
            let patient = RefitOptions { quiet_ms: Some(3_600_000), ..options.clone() };
            assert!(matches!(
                refit(&output, &input, "inbox/", "c", &patient).await.unwrap(),
                RefitOutcome::NotQuiet { .. }
            ));
            let RefitOutcome::Published(s1) = refit(&output, &input, "inbox/", "c", &options).await.unwrap() else {
                panic!("not published")
            };
            assert_eq!((s1.rows, s1.added, s1.k), (8, 8, 2));
            let layout = CollectionLayout::new("c");
            let (stale_pointer, stale_etag) = read_current(&output, &layout).await.unwrap().unwrap();

            // Replace one, delete one, add an empty one; redeliver the first batch.
            input.put(&keys[0], Bytes::from_static(b"new content")).await.unwrap();
            input.delete(&keys[1]).await.unwrap();
            input.put("inbox/c/l0/empty.jpg", Bytes::from_static(b"")).await.unwrap();
            ingestor
                .ingest(&[keys[0].clone(), keys[1].clone(), "inbox/c/l0/empty.jpg".into()])
                .await
                .unwrap();
            ingestor.ingest(&all).await.unwrap();
            let RefitOutcome::Published(s2) = refit(&output, &input, "inbox/", "c", &options).await.unwrap() else {
                panic!("not published")
            };
            assert_eq!((s2.rows, s2.replaced, s2.removed, s2.added), (8, 1, 1, 1), "{s2:?}");
            assert_eq!(
                refit(&output, &input, "inbox/", "c", &options).await.unwrap(),
                RefitOutcome::NothingToDo
            );
            // The view: exactly the live files, each once, with its current features.
            let (pointer, _) = read_current(&output, &layout).await.unwrap().unwrap();
            let mut rows = Vec::new();
            for o in output.list(&pointer.results).await.unwrap() {
                rows.extend(parquet_io::read_rows(Dataset::Features, output.get(&o.key).await.unwrap()).unwrap());
            }
            let mut paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
            paths.sort();
            let expected: Vec<String> = keys
                .iter()
                .filter(|k| *k != &keys[1])
                .map(|k| k.strip_prefix("inbox/c/").unwrap().to_string())
                .chain(std::iter::once("l0/empty.jpg".to_string()))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            // The empty file is featurized by the synthetic engine (no decoding): a row too.
            assert_eq!(paths, expected.iter().map(String::as_str).collect::<Vec<_>>());
            let replaced = rows.iter().find(|r| format!("inbox/c/{}", r.path) == keys[0]).unwrap();
            assert_eq!(replaced.values, crate::featurizer::synthetic_features("l0/0.jpg", 6));
            // The running sums are the statistics of exactly these rows.
            let sums_key = layout.state_sums(&pointer.snapshot);
            let sums = RunningSums::from_bytes(&output.get(&sums_key).await.unwrap(), &sums_key).unwrap();
            let refs: Vec<&[f32]> = rows.iter().map(|r| r.values.as_slice()).collect();
            let direct = crate::stats::ShardStats::from_rows(&refs, 6);
            let got = sums.to_stats();
            assert_eq!(got.count, direct.count);
            for (a, b) in got.comoment.iter().zip(&direct.comoment) {
                assert!((a - b).abs() < 1e-9, "{a} vs {b}");
            }
            assert!(list_deltas(&output, &layout).await.unwrap().is_empty(), "deltas consumed");
            // A pointer update from a stale refit is refused.
            assert!(!output
                .put_if_match(&layout.current(), serde_json::to_vec(&stale_pointer).unwrap().into(), &stale_etag)
                .await
                .unwrap());
            assert_eq!(stale_pointer.seq, 1);
            assert_eq!(pointer.seq, 2);
        });
    }

    fn synthetic_ingestor<I: ObjectStore, Q: crate::queue::Queue>(
        input: I,
        output: crate::store::FsStore,
        queue: Q,
    ) -> crate::ingest::Ingestor<I, crate::store::FsStore, Q> {
        crate::ingest::Ingestor::new(
            input,
            output,
            queue,
            crate::featurizer::Engine::Synthetic { dim: 6 },
            crate::ingest::IngestSettings {
                inbox: "inbox/".into(),
                filter: crate::listing::ImageFilter::new("*.jpg").unwrap(),
                max_pixels: 1 << 20,
                threads: 1,
                fetch_concurrency: 4,
                quiet_s: 0,
            },
        )
    }

    async fn view_paths(output: &crate::store::FsStore, collection: &str) -> Vec<String> {
        let (pointer, _) = read_current(output, &CollectionLayout::new(collection))
            .await
            .unwrap()
            .unwrap();
        let mut paths = Vec::new();
        for o in output.list(&pointer.results).await.unwrap() {
            let rows = parquet_io::read_rows(Dataset::Features, output.get(&o.key).await.unwrap()).unwrap();
            paths.extend(rows.into_iter().map(|r| r.path));
        }
        paths.sort();
        paths
    }

    fn k2() -> RefitOptions {
        RefitOptions {
            pca: PcaOptions { k: 2, ..Default::default() },
            ..Default::default()
        }
    }

    /// A key that cannot be read for good (403 AccessDenied on GET and HEAD) does not fail
    /// the ingest batch (which SQS would dead-letter with every other key in it): it lands
    /// in the collection's error list, with the reason, and the other keys are published.
    #[test]
    fn an_unreadable_file_goes_to_the_error_list_and_the_batch_succeeds() {
        use crate::adapters::faults::Faults;
        use crate::queue::InProcessQueue;
        use crate::store::FsStore;
        block(async {
            let dir = tempfile::tempdir().unwrap();
            let raw = FsStore::new(dir.path().join("in"));
            let output = FsStore::new(dir.path().join("out"));
            let faults = Faults::deny("secret");
            let input = faults.store(raw.clone());
            let queue = InProcessQueue::new();
            let ingestor = synthetic_ingestor(input.clone(), output.clone(), &queue);
            let keys = ["inbox/c/l0/a.jpg", "inbox/c/l0/b.jpg", "inbox/c/l1/secret.jpg"];
            for k in keys {
                raw.put(k, Bytes::from(k)).await.unwrap();
            }
            let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            let outcome = ingestor.ingest(&keys).await.expect("a denied key does not fail the batch");
            assert_eq!((outcome.upserts, outcome.failed), (2, 1), "{outcome:?}");
            assert_eq!(faults.injected(), 2, "one GET and one HEAD were denied");
            let RefitOutcome::Published(s) = refit(&output, &input, "inbox/", "c", &k2()).await.unwrap() else {
                panic!("not published")
            };
            assert_eq!((s.rows, s.errors), (2, 1), "{s:?}");
            assert_eq!(view_paths(&output, "c").await, ["l0/a.jpg", "l0/b.jpg"]);
            let (pointer, _) = read_current(&output, &CollectionLayout::new("c")).await.unwrap().unwrap();
            let errors: Vec<ImageError> = serde_json::from_slice(&output.get(&pointer.errors).await.unwrap()).unwrap();
            assert_eq!(errors.len(), 1);
            assert_eq!((errors[0].path.as_str(), errors[0].label.as_str()), ("l1/secret.jpg", "l1"));
            assert_eq!(errors[0].kind, ImageErrorKind::Fetch);
            assert!(errors[0].reason.contains("AccessDenied"), "{}", errors[0].reason);

            // A transient failure, by contrast, fails the batch (SQS delivers it again).
            let flaky = Faults::transient(1.0, std::time::Duration::ZERO, 1);
            let flaky_ingestor = synthetic_ingestor(flaky.store(raw.clone()), output.clone(), &queue);
            let e = flaky_ingestor.ingest(&keys[..1]).await.unwrap_err();
            assert!(e.to_string().contains("503"), "{e}");
        });
    }

    /// Two refits of one collection at once, each stopped just before it publishes the
    /// pointer: the first publishes; the second, which had also seen a later delta, loses the
    /// pointer, discards its snapshot and starts over from the winner's, so that the later
    /// change is published now and no delta is left behind.
    #[test]
    fn a_refit_that_loses_the_race_folds_what_the_winner_missed() {
        use crate::adapters::faults::Faults;
        use crate::queue::InProcessQueue;
        use crate::store::FsStore;
        block(async {
            let dir = tempfile::tempdir().unwrap();
            let input = FsStore::new(dir.path().join("in"));
            let output = FsStore::new(dir.path().join("out"));
            let queue = InProcessQueue::new();
            let ingestor = synthetic_ingestor(input.clone(), output.clone(), &queue);
            let first: Vec<String> = (0..3).map(|i| format!("inbox/c/l0/{i}.jpg")).collect();
            for k in &first {
                input.put(k, Bytes::from(k.clone())).await.unwrap();
            }
            ingestor.ingest(&first).await.unwrap();

            let (wf, lf) = (Faults::pause_before_key("current.json"), Faults::pause_before_key("current.json"));
            let (winner_store, loser_store) = (wf.store(output.clone()), lf.store(output.clone()));
            let winner_done = tokio::sync::Notify::new();
            let layout = CollectionLayout::new("c");
            let options = k2();
            let (won, lost) = tokio::join!(
                async {
                    let r = refit(&winner_store, &input, "inbox/", "c", &options).await;
                    winner_done.notify_one();
                    r
                },
                async {
                    wf.wait_paused().await;
                    // While the winner waits to publish: a new file, and a delete.
                    input.put("inbox/c/l1/late.jpg", Bytes::from_static(b"late")).await.unwrap();
                    input.delete(&first[0]).await.unwrap();
                    ingestor
                        .ingest(&["inbox/c/l1/late.jpg".into(), first[0].clone()])
                        .await
                        .unwrap();
                    assert_eq!(list_deltas(&output, &layout).await.unwrap().len(), 2);
                    let (lost, ()) = tokio::join!(
                        refit(&loser_store, &input, "inbox/", "c", &options),
                        async {
                            lf.wait_paused().await;
                            wf.resume();
                            winner_done.notified().await;
                            lf.resume();
                        }
                    );
                    lost
                }
            );
            let RefitOutcome::Published(won) = won.unwrap() else { panic!("the first refit publishes") };
            assert_eq!((won.seq, won.rows), (1, 3), "{won:?}");
            let RefitOutcome::Published(lost) = lost.unwrap() else { panic!("the second starts over and publishes") };
            assert_eq!((lost.seq, lost.rows, lost.added, lost.removed), (2, 3, 1, 1), "{lost:?}");
            assert_eq!(view_paths(&output, "c").await, ["l0/1.jpg", "l0/2.jpg", "l1/late.jpg"]);
            assert!(list_deltas(&output, &layout).await.unwrap().is_empty(), "no delta left behind");
            // The discarded snapshot is gone: only the two published ones remain.
            let snapshots: BTreeSet<String> = output
                .list(&layout.snapshots_prefix())
                .await
                .unwrap()
                .iter()
                .map(|o| o.key.split('/').nth(3).unwrap().to_string())
                .collect();
            assert_eq!(snapshots.len(), 2, "{snapshots:?}");
            assert_eq!(
                refit(&output, &input, "inbox/", "c", &k2()).await.unwrap(),
                RefitOutcome::NothingToDo
            );
        });
    }

    /// `inbox/<c>/_refit` asks for a refit now: the ingest sends a forced refit message,
    /// which the reducer's refitter carries out even inside the quiet time.
    #[test]
    fn a_refit_request_object_refits_now() {
        use crate::queue::{Drain, InProcessQueue};
        use crate::store::FsStore;
        block(async {
            let dir = tempfile::tempdir().unwrap();
            // One bucket holds the inbox and the collections, as on AWS (the refitter's store).
            let output = FsStore::new(dir.path());
            let input = output.clone();
            let queue = InProcessQueue::new();
            let ingestor = synthetic_ingestor(input.clone(), output.clone(), &queue);
            let keys: Vec<String> = (0..4).map(|i| format!("inbox/c/l0/{i}.jpg")).collect();
            for k in &keys {
                input.put(k, Bytes::from(k.clone())).await.unwrap();
            }
            ingestor.ingest(&keys).await.unwrap();
            let refitter = crate::lambda::Refitter {
                store: output.clone(),
                inbox: "inbox/".into(),
                quiet_ms: 3_600_000,
                options: k2(),
            };
            // The delayed message of the change: not quiet for an hour.
            let delayed: Vec<RefitMessage> = queue.drain().await.unwrap().iter().map(|b| serde_json::from_str(b).unwrap()).collect();
            assert_eq!(delayed, [RefitMessage { collection: "c".into(), force: false }]);
            assert!(matches!(refitter.process(&delayed[0]).await.unwrap(), RefitOutcome::NotQuiet { .. }));
            // The request object.
            input.put("inbox/c/_refit", Bytes::new()).await.unwrap();
            let outcome = ingestor.ingest(&["inbox/c/_refit".into()]).await.unwrap();
            assert_eq!(outcome.refit_requests, ["c"]);
            assert_eq!((outcome.upserts, outcome.ignored, outcome.collections.len()), (0, 0, 0));
            let forced: Vec<RefitMessage> = queue.drain().await.unwrap().iter().map(|b| serde_json::from_str(b).unwrap()).collect();
            assert_eq!(forced, [RefitMessage { collection: "c".into(), force: true }]);
            let RefitOutcome::Published(s) = refitter.process(&forced[0]).await.unwrap() else {
                panic!("a forced refit publishes inside the quiet time")
            };
            assert_eq!(s.rows, 4);
        });
    }
}
