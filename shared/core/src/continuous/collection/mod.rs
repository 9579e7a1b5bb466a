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
//! collections/<c>/state/<id>/buckets.json, index/<b>.json, sums.bin
//!                                                   what the next refit starts from
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
//! or were replaced (read from the few buckets that hold them) and adds the new ones: the
//! fit costs O(changed · d² + d³).
//!
//! **Buckets.** The index and the `Results` rows are split in `2^j` buckets by a hash of the
//! path ([`bucket_of`]): a refit reads and rewrites only the buckets of changed paths and
//! copies the others server-side. Publishing a view projects every row (O(n · d · k)),
//! streamed part by part and, past [`FANOUT_PARTS`] parts, fanned out through the refit
//! queue ([`ProjectMessage`], [`project`]); fit and publication are timed separately in
//! `summary.json`.

mod buckets;
mod decide;
mod documents;
mod fit;
mod index;
mod layout;
mod publish;
mod refit;
mod snapshots;
mod status;

pub use documents::{
    delta_time_ms, list_deltas, new_delta_id, read_current, write_delta, CollectionIndex,
    CurrentPointer, Delta, DeltaEntry, IndexEntry, ProjectMessage, ProjectRange, RefitMessage,
    RefitOptions, RefitOutcome, RefitSummary,
};
pub use index::{
    bucket_count, bucket_of, read_index, read_stored_index, BucketInfo, IndexManifest, IndexShard,
    StoredIndex, INDEX_FORMAT,
};
pub use layout::{inbox_key, split_inbox_key, CollectionLayout};
pub use publish::{project, ProjectOutcome, ProjectSender};
pub use refit::{refit, refit_with, RefitFuture, REFIT_ATTEMPTS};
pub use status::{
    collection_status, collection_status_at, model_conflict, record_refit_failure,
    record_refit_start, refit_failure_key, refit_started_key, CollectionStatus, RefitFailure,
    RefitStart,
};

/// Where the collections live in the output store.
pub const COLLECTIONS_PREFIX: &str = "collections/";
/// Rows per index bucket (and its `Results` part) that the bucket count aims at.
pub const PART_ROWS: usize = 4096;
/// A snapshot of more parts than this is projected through the refit queue (with a queue).
pub const FANOUT_PARTS: usize = 32;
/// Parts per projection message.
pub const PARTS_PER_MESSAGE: usize = 32;
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
#[cfg(test)]
mod tests_buckets;
