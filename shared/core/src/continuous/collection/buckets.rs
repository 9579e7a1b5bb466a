//! The buckets of a refit's new snapshot: what the previous index says about the changed
//! paths, which buckets are copied and which rewritten (and from what), and the error list
//! carried from the previous snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::index::{bucket_of, BucketInfo, IndexManifest, IndexShard};
use super::IndexEntry;
use crate::manifest::ImageError;
use crate::parquet_io::VectorRow;

/// What the previous index says, as far as this refit needs it.
#[derive(Default)]
pub(super) struct OldIndex {
    /// The entries of the changed paths.
    pub(super) known: BTreeMap<String, IndexEntry>,
    /// The bucketed index's manifest.
    pub(super) manifest: Option<IndexManifest>,
    /// Its shards read so far (those of changed paths).
    pub(super) shards: HashMap<usize, IndexShard>,
    /// An index in the old format: every entry and every row (migrated by this refit).
    pub(super) legacy: Option<(IndexShard, Vec<VectorRow>)>,
}

impl OldIndex {
    pub(super) fn buckets(&self) -> usize {
        self.manifest.as_ref().map_or(0, |m| m.buckets.len())
    }
    pub(super) fn entries(&self) -> usize {
        match (&self.manifest, &self.legacy) {
            (Some(m), _) => m.entries(),
            (None, Some((entries, _))) => entries.len(),
            (None, None) => 0,
        }
    }
}

/// What a bucket of the new snapshot is made from.
pub(super) enum Job {
    /// Unchanged: its part and shard are copied.
    Copy(usize, BucketInfo),
    /// Rewritten: its previous entries (if already read) or where to read them, with what
    /// changes in it.
    Rewrite {
        bucket: usize,
        source: Source,
        entries: Vec<(String, IndexEntry)>,
        arriving: Vec<VectorRow>,
    },
}

/// Where a rewritten bucket's previous entries and rows are.
pub(super) enum Source {
    /// Nothing before.
    Empty,
    /// In the old bucket `old` (of the previous snapshot's buckets), whose shard may be read
    /// already; filtered to the new bucket's paths when the bucket count grew.
    Bucket(usize, Option<IndexShard>),
    /// Given (an index of the old format, read whole).
    Given(IndexShard, Vec<VectorRow>),
}

/// A bucket written: its description, the rows that left it (to subtract), and whether it
/// was rewritten.
pub(super) struct Built {
    pub(super) bucket: usize,
    pub(super) info: BucketInfo,
    pub(super) gone: Vec<VectorRow>,
    pub(super) rewritten: bool,
}

/// Which buckets of the new snapshot are copied and which rewritten (with what): a bucket is
/// rewritten when a changed path hashes to it, or when the bucket count changed or the index
/// is migrated from the old format (then every bucket is).
pub(super) fn plan(
    old: &mut OldIndex,
    touched: &HashSet<&str>,
    arriving: Vec<VectorRow>,
    n: usize,
) -> Vec<Job> {
    let mut entries: HashMap<usize, Vec<(String, IndexEntry)>> = HashMap::new();
    for path in touched {
        if let Some(entry) = old.known.get(*path) {
            entries
                .entry(bucket_of(path, n))
                .or_default()
                .push((path.to_string(), entry.clone()));
        }
    }
    let mut arriving_by: HashMap<usize, Vec<VectorRow>> = HashMap::new();
    for row in arriving {
        arriving_by
            .entry(bucket_of(&row.path, n))
            .or_default()
            .push(row);
    }
    let mut given: HashMap<usize, (IndexShard, Vec<VectorRow>)> = HashMap::new();
    if let Some((all, rows)) = old.legacy.take() {
        for (path, entry) in all {
            given
                .entry(bucket_of(&path, n))
                .or_default()
                .0
                .insert(path, entry);
        }
        for row in rows {
            given
                .entry(bucket_of(&row.path, n))
                .or_default()
                .1
                .push(row);
        }
    }
    let touched_buckets: HashSet<usize> = touched.iter().map(|p| bucket_of(p, n)).collect();
    let n_old = old.buckets();
    let regrown = n_old != n;
    let previous: Option<Vec<BucketInfo>> = old.manifest.as_ref().map(|m| m.buckets.clone());
    (0..n)
        .map(|b| {
            let source = if let Some((shard, rows)) = given.remove(&b) {
                Source::Given(shard, rows)
            } else if let Some(buckets) = &previous {
                if !regrown && !touched_buckets.contains(&b) {
                    return Job::Copy(b, buckets[b].clone());
                }
                let ob = b & (n_old - 1);
                let shard = if regrown {
                    None
                } else {
                    old.shards.remove(&ob)
                };
                Source::Bucket(ob, shard)
            } else {
                Source::Empty
            };
            Job::Rewrite {
                bucket: b,
                source,
                entries: entries.remove(&b).unwrap_or_default(),
                arriving: arriving_by.remove(&b).unwrap_or_default(),
            }
        })
        .collect()
}

/// The new error list: the previous one without the changed paths, plus the changed paths
/// that fail now; sorted by path. O(errors + changed), not O(n).
pub(super) fn error_list(
    previous: Vec<ImageError>,
    touched: &HashSet<&str>,
    known: &BTreeMap<String, IndexEntry>,
) -> Vec<ImageError> {
    let mut errors: Vec<ImageError> = previous
        .into_iter()
        .filter(|e| !touched.contains(e.path.as_str()))
        .collect();
    errors.extend(touched.iter().filter_map(|path| {
        let e = known.get(*path)?;
        e.error.as_ref().map(|(kind, reason)| ImageError {
            path: path.to_string(),
            label: e.label.clone(),
            kind: *kind,
            reason: reason.clone(),
        })
    }));
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    errors
}
