//! A snapshot's index, split in buckets by a hash of the path: bucket `b` of `n` (a power of
//! two) holds the paths whose hash is `b` modulo `n`, in one index shard
//! (`state/<id>/index/<b>.json`) and one `Results` part. A refit reads and rewrites only the
//! buckets holding a changed path; the others are copied as they are (server-side). The
//! manifest (`state/<id>/buckets.json`) lists each bucket's part and counts, and the model.
//!
//! Snapshots written before the buckets have one `index.json` (a [`CollectionIndex`]):
//! readers still read it ([`read_index`]), and the next refit migrates the collection.

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt, TryStreamExt};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::{CollectionIndex, CollectionLayout, IndexEntry};
use crate::error::{Error, Result};
use crate::ports::store::{ObjectStore, StoreError};

/// The format of [`IndexManifest`].
pub const INDEX_FORMAT: u32 = 2;

/// One bucket of a snapshot's index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketInfo {
    /// Paths in it, live or failed (0: no index shard).
    pub entries: usize,
    /// Live rows: its `Results` part's rows (0: no part).
    pub rows: usize,
    /// Its `Results` part (file name in the snapshot's `Results/`), when it has rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
}

/// The manifest of a bucketed index: `state/<id>/buckets.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexManifest {
    /// [`INDEX_FORMAT`].
    pub format: u32,
    /// The buckets, `2^j` of them.
    pub buckets: Vec<BucketInfo>,
    /// The SHA-256 of the model whose features the rows are (`None`: no rows yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
}

impl IndexManifest {
    /// Paths in the index.
    pub fn entries(&self) -> usize {
        self.buckets.iter().map(|b| b.entries).sum()
    }
    /// Live rows.
    pub fn rows(&self) -> usize {
        self.buckets.iter().map(|b| b.rows).sum()
    }
    /// The `Results` parts, in bucket order.
    pub fn parts(&self) -> Vec<String> {
        self.buckets.iter().filter_map(|b| b.part.clone()).collect()
    }
}

/// One index shard: the entries of the paths of one bucket.
pub type IndexShard = BTreeMap<String, IndexEntry>;

/// The 64-bit hash of a path the buckets use: the first 8 bytes of its SHA-256 (stable
/// across versions and platforms).
pub fn path_hash(path: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(path.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The bucket of `path` among `n` (a power of two).
pub fn bucket_of(path: &str, n: usize) -> usize {
    (path_hash(path) & (n.max(1) as u64 - 1)) as usize
}

/// The bucket count for `entries` paths: the smallest power of two at least `old` (a
/// collection's buckets never shrink) that gives at most `part_rows` paths per bucket on
/// average, but only grown when the average is above twice that (so that a collection near
/// a boundary does not reshard back and forth).
pub fn bucket_count(old: usize, entries: usize, part_rows: usize) -> usize {
    let part_rows = part_rows.max(1);
    let old = old.max(1).next_power_of_two();
    if entries <= old.saturating_mul(part_rows).saturating_mul(2) {
        return old;
    }
    entries.div_ceil(part_rows).next_power_of_two().max(old)
}

/// How a snapshot's state is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredIndex {
    /// Buckets (this format).
    Buckets(IndexManifest),
    /// One `index.json` (before the buckets).
    Legacy(CollectionIndex),
}

/// Reads a snapshot's index manifest, or its whole index in the old format.
pub async fn read_stored_index<S: ObjectStore>(
    store: &S,
    layout: &CollectionLayout,
    snapshot: &str,
) -> Result<StoredIndex> {
    match store.get(&layout.state_buckets(snapshot)).await {
        Ok(body) => {
            let manifest: IndexManifest = serde_json::from_slice(&body)?;
            if manifest.format != INDEX_FORMAT || !manifest.buckets.len().is_power_of_two() {
                return Err(Error::RunState(format!(
                    "{}: index format {} with {} buckets is not one this version reads",
                    store.describe(&layout.state_buckets(snapshot)),
                    manifest.format,
                    manifest.buckets.len()
                )));
            }
            Ok(StoredIndex::Buckets(manifest))
        }
        Err(StoreError::NotFound(_)) => Ok(StoredIndex::Legacy(serde_json::from_slice(
            &store.get(&layout.state_index(snapshot)).await?,
        )?)),
        Err(e) => Err(e.into()),
    }
}

/// Reads one index shard (empty when the bucket has no paths).
pub async fn read_shard<S: ObjectStore>(
    store: &S,
    layout: &CollectionLayout,
    snapshot: &str,
    bucket: usize,
    info: &BucketInfo,
) -> Result<IndexShard> {
    if info.entries == 0 {
        return Ok(IndexShard::new());
    }
    Ok(serde_json::from_slice(
        &store.get(&layout.state_shard(snapshot, bucket)).await?,
    )?)
}

/// A snapshot's whole index (every path), whatever its format: for readers that need every
/// path by nature (`featurize reconcile`, `featurize watch`'s first pass).
pub async fn read_index<S: ObjectStore>(
    store: &S,
    layout: &CollectionLayout,
    snapshot: &str,
) -> Result<CollectionIndex> {
    let manifest = match read_stored_index(store, layout, snapshot).await? {
        StoredIndex::Legacy(index) => return Ok(index),
        StoredIndex::Buckets(manifest) => manifest,
    };
    let shards: Vec<IndexShard> = stream::iter(
        manifest
            .buckets
            .iter()
            .enumerate()
            .map(|(b, info)| read_shard(store, layout, snapshot, b, info).boxed())
            .collect::<Vec<_>>(),
    )
    .buffered(16)
    .try_collect()
    .await?;
    let mut index = CollectionIndex::default();
    for shard in shards {
        index.entries.extend(shard);
    }
    for info in &manifest.buckets {
        if let Some(part) = &info.part {
            index.parts.insert(part.clone(), info.rows);
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_grow_by_doubling() {
        // Stable: the same path, the same bucket, on every platform.
        assert_eq!(path_hash("l0/0.jpg"), path_hash("l0/0.jpg"));
        assert_eq!(bucket_of("anything", 1), 0);
        // Doubling splits a bucket in two: b (mod n) goes to b or b + n (mod 2n).
        for i in 0..200 {
            let p = format!("class/{i}.jpg");
            assert_eq!(bucket_of(&p, 16) % 8, bucket_of(&p, 8));
        }
        // Spread: 4096 paths over 16 buckets, none empty, none with twice its share.
        let mut counts = [0usize; 16];
        for i in 0..4096 {
            counts[bucket_of(&format!("c/{i:06}.jpg"), 16)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 128 && c < 512), "{counts:?}");
        // Counts: from nothing, as many as needed; kept until twice as full; never shrunk.
        assert_eq!(bucket_count(0, 0, 4096), 1);
        assert_eq!(bucket_count(0, 8, 4096), 1);
        assert_eq!(bucket_count(0, 1_000_000, 4096), 256);
        assert_eq!(bucket_count(1, 8192, 4096), 1);
        assert_eq!(bucket_count(1, 8193, 4096), 4);
        assert_eq!(bucket_count(256, 2_000_000, 4096), 256);
        assert_eq!(bucket_count(256, 2_200_000, 4096), 1024);
        assert_eq!(bucket_count(256, 10, 4096), 256);
    }
}
