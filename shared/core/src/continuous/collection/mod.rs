//! Collections: what continuous ingestion keeps current. Images dropped under
//! `<inbox>/<collection>/…/<label>/<file>` are featurized as they land ([`crate::continuous::ingest`]),
//! each processed batch leaving a *delta* in the collection's staging area; a *refit*
//! ([`refit()`]) folds the deltas into the collection's state, fits the PCA and publishes a
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
//! **Statistics reuse.** The state keeps running sums of the live rows
//! ([`RunningSums`](engine::stats::RunningSums)); a refit subtracts the rows that went away
//! or were replaced (read from the few parts that hold them) and adds the new ones: the fit
//! costs O(changed · d² + d³). Publishing a view projects every row (O(n · d · k)) and
//! rewrites its parts; both are timed separately in `summary.json`.

mod decide;
mod documents;
mod fit;
mod layout;
mod refit;
mod snapshots;
mod status;

pub use documents::{
    delta_time_ms, list_deltas, new_delta_id, read_current, write_delta, CollectionIndex,
    CurrentPointer, Delta, DeltaEntry, IndexEntry, RefitMessage, RefitOptions, RefitOutcome,
    RefitSummary,
};
pub use layout::{inbox_key, split_inbox_key, CollectionLayout};
pub use refit::{refit, REFIT_ATTEMPTS};
pub use status::{
    collection_status, collection_status_at, record_refit_failure, record_refit_start,
    refit_failure_key, refit_started_key, CollectionStatus, RefitFailure, RefitStart,
};

/// Where the collections live in the output store.
pub const COLLECTIONS_PREFIX: &str = "collections/";
/// Rows per Results part written by a refit.
pub const PART_ROWS: usize = 4096;
/// Published snapshots always kept (the current one and the one before it).
pub const KEEP_SNAPSHOTS: usize = 2;
/// How long a superseded snapshot is kept at least, for readers that read the pointer just
/// before it changed (15 minutes).
pub const MIN_READER_SECS: u64 = 900;
/// How old a delta part whose document was never written (its ingest died between the two)
/// must be before a refit removes it (1 hour: an ingest runs at most 15 minutes).
pub const ORPHAN_DELTA_GRACE_SECS: u64 = 3600;

/// Whether `name` can be a collection name (one path segment, no control characters).
pub fn valid_collection(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(|c| c.is_control())
}

#[cfg(test)]
mod tests;
