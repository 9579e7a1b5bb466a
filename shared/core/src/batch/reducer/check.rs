//! The reducer's invariant gate: before anything is fitted, every shard's committed objects
//! are read and checked against the manifest, the done markers and each other.
//!
//! Every intermediate is verified before it is used: a shard's `stats.bin` and `errors.json`
//! against the sha256 its done marker carries (as its part against `part_sha256`). A
//! mismatch stops the run with "tampered or corrupt: <key>" (an [`Error::Invariant`]: the
//! reduce fails, records why, and publishes nothing). A marker written before the checksums
//! were kept has none: its `stats.bin` is then not trusted at all (the statistics are
//! recomputed from the verified part), and its `errors.json`, when the marker does not list
//! the errors itself, is taken as it is — its paths and counts are still checked below.
//!
//! A committed shard never depends on `staging/` alone: its error list is taken from its
//! done marker when the marker carries it, and its statistics, when the `staging/` lifecycle
//! has expired them, are recomputed from its committed part (checked against the marker's
//! sha256). When they are present, they are checked against the part: the same count, and a
//! mean recomputed from the part's rows — so that one attempt's statistics paired with
//! another attempt's part are caught here, not fitted.

use std::collections::HashSet;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::Reducer;
use crate::batch::featurizer::{committed_part, sha256_hex};
use crate::batch::status::TAMPERED;
use crate::error::{Error, Result};
use crate::layout::RunLayout;
use crate::manifest::{DoneMarker, ImageError, Manifest};
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::ports::store::{ObjectStore, StoreError};
use engine::stats::ShardStats;

/// How far a shard's stored mean may be from the mean recomputed from its part, relative to
/// the larger of 1 and the value (summation order is all that may differ).
pub const MEAN_TOLERANCE: f64 = 1e-6;

/// A digest of exactly which committed shards a reduce folds: the run's fingerprint and
/// options, and each shard's committed attempt, part checksum and counts. A fit checkpoint
/// under it is valid for any later reduce of the same run.
pub fn inputs_digest(manifest: &Manifest, markers: &[DoneMarker]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(manifest.fingerprint.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(&manifest.options).unwrap_or_default());
    for m in markers {
        hasher.update(
            format!(
                "\0{}\0{}\0{}\0{}\0{}",
                m.shard, m.attempt, m.part_sha256, m.rows, m.errors
            )
            .as_bytes(),
        );
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The mean of `rows` (float64), of dimension `dim`.
pub fn mean_of(rows: &[VectorRow], dim: usize) -> Vec<f64> {
    let mut sum = vec![0f64; dim];
    for row in rows {
        for (s, v) in sum.iter_mut().zip(&row.values) {
            *s += f64::from(*v);
        }
    }
    let n = rows.len().max(1) as f64;
    sum.into_iter().map(|s| s / n).collect()
}

/// Whether a stored shard's statistics describe exactly these rows: the count, the
/// dimension, and the mean within [`MEAN_TOLERANCE`]. `Err` says what differs.
pub fn stats_match_rows(stats: &ShardStats, rows: &[VectorRow]) -> std::result::Result<(), String> {
    if stats.count != rows.len() as u64 {
        return Err(format!(
            "statistics of {} rows for a part of {}",
            stats.count,
            rows.len()
        ));
    }
    if rows.is_empty() {
        return Ok(());
    }
    let dim = stats.dim();
    if let Some(row) = rows.iter().find(|r| r.values.len() != dim) {
        return Err(format!(
            "statistics of dimension {dim} for rows of dimension {} ({})",
            row.values.len(),
            row.path
        ));
    }
    let recomputed = mean_of(rows, dim);
    if let Some((i, (a, b))) = stats
        .mean
        .iter()
        .zip(&recomputed)
        .enumerate()
        .find(|(_, (a, b))| (*a - *b).abs() > MEAN_TOLERANCE * a.abs().max(b.abs()).max(1.0))
    {
        return Err(format!(
            "statistics whose mean ({a} in column {i}) is not its part's ({b}): they were \
             computed from other rows (another attempt's?)"
        ));
    }
    Ok(())
}

/// The error of an intermediate whose sha256 is not the one its done marker names: the
/// run stops (nothing is fitted or published) with the file named, and `why` (what the
/// content says, when it could be read) appended.
fn tampered(
    layout: &RunLayout,
    marker: &DoneMarker,
    key: &str,
    actual: &str,
    expected: &str,
    why: &str,
) -> Error {
    let short = |h: &str| h.chars().take(12).collect::<String>();
    let why = if why.is_empty() {
        String::new()
    } else {
        format!("; {why}")
    };
    Error::Invariant(format!(
        "run {}: shard {}: {TAMPERED}: {key} (sha256 {}, its done marker says {}{why}); \
         nothing is published",
        layout.run_id(),
        marker.shard,
        short(actual),
        short(expected),
    ))
}

/// One shard as checked: its marker, error list, statistics, and the paths of its rows.
struct Loaded {
    marker: DoneMarker,
    errors: Vec<ImageError>,
    stats: ShardStats,
    paths: Vec<String>,
}

impl<S: ObjectStore> Reducer<S> {
    /// Every shard's done marker, in manifest order, checked against the manifest.
    pub(super) async fn read_markers(
        &self,
        layout: &RunLayout,
        manifest: &Manifest,
    ) -> Result<Vec<DoneMarker>> {
        let markers: Vec<DoneMarker> =
            stream::iter(manifest.shards.iter().map(|shard| async move {
                match self.store.get(&layout.done_marker(shard.id)).await {
                    Ok(bytes) => Ok(serde_json::from_slice::<DoneMarker>(&bytes)?),
                    Err(StoreError::NotFound(_)) => Err(Error::RunState(format!(
                        "shard {} is not done yet",
                        shard.id
                    ))),
                    Err(e) => Err(e.into()),
                }
            }))
            .buffered(self.settings.concurrency.max(1) * 4)
            .try_collect()
            .await?;
        for (marker, shard) in markers.iter().zip(&manifest.shards) {
            if marker.shard != shard.id || marker.images != shard.images.len() {
                return Err(Error::Invariant(format!(
                    "run {}: shard {}'s done marker is for shard {} with {} images; the \
                     manifest lists {}",
                    manifest.run_id,
                    shard.id,
                    marker.shard,
                    marker.images,
                    shard.images.len()
                )));
            }
        }
        Ok(markers)
    }

    /// A committed shard's error list: from its done marker when it carries it (it does not
    /// expire with `staging/`), else from its committed attempt; either way checked against
    /// the marker's `errors_sha256` when it has one.
    pub(super) async fn shard_errors(
        &self,
        layout: &RunLayout,
        marker: &DoneMarker,
    ) -> Result<Vec<ImageError>> {
        if marker.errors == 0 || marker.error_list.len() == marker.errors {
            if let Some(expected) = &marker.errors_sha256 {
                let actual = sha256_hex(&serde_json::to_vec(&marker.error_list)?);
                if &actual != expected {
                    return Err(tampered(
                        layout,
                        marker,
                        &layout.done_marker(marker.shard),
                        &actual,
                        expected,
                        "its error list is not the one its checksum names",
                    ));
                }
            }
            return Ok(if marker.errors == 0 {
                Vec::new()
            } else {
                marker.error_list.clone()
            });
        }
        let key = layout.attempt_errors(marker.shard, &marker.attempt);
        match self.store.get(&key).await {
            Ok(bytes) => {
                if let Some(expected) = &marker.errors_sha256 {
                    let actual = sha256_hex(&bytes);
                    if &actual != expected {
                        return Err(tampered(layout, marker, &key, &actual, expected, ""));
                    }
                }
                serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Invariant(format!(
                        "run {}: shard {}: corrupt: {key}: {e}",
                        layout.run_id(),
                        marker.shard
                    ))
                })
            }
            Err(StoreError::NotFound(_)) => Err(Error::RunState(format!(
                "shard {} is committed with {} image errors, but its done marker does not list \
                 them and {key} is gone (expired?): featurize the shard again in a new run",
                marker.shard, marker.errors
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Every shard's error list, in order (a reduce resumed from a fit checkpoint).
    pub(super) async fn error_lists(
        &self,
        layout: &RunLayout,
        markers: &[DoneMarker],
    ) -> Result<Vec<ImageError>> {
        let lists: Vec<Vec<ImageError>> =
            stream::iter(markers.iter().map(|m| self.shard_errors(layout, m)))
                .buffered(self.settings.concurrency.max(1) * 4)
                .try_collect()
                .await?;
        Ok(lists.into_iter().flatten().collect())
    }

    /// One shard's committed objects, read and checked against each other.
    async fn load_shard(&self, layout: &RunLayout, marker: DoneMarker) -> Result<Loaded> {
        let errors = self.shard_errors(layout, &marker).await?;
        let part = self.published_part(layout, &marker).await?;
        let rows = parquet_io::read_rows(Dataset::Features, part)?;
        let stats_key = layout.attempt_stats(marker.shard, &marker.attempt);
        let stored = match &marker.stats_sha256 {
            Some(_) => self.store.get(&stats_key).await,
            // A marker from before the checksums: its statistics cannot be verified, so
            // they are not used (the part, which `part_sha256` verifies, is the truth).
            None => Err(StoreError::NotFound(stats_key.clone())),
        };
        let stats = match stored {
            Ok(bytes) => {
                let decoded = ShardStats::from_bytes(&bytes, &stats_key)
                    .map_err(|e| e.to_string())
                    .and_then(|stats| stats_match_rows(&stats, &rows).map(|()| stats));
                let actual = sha256_hex(&bytes);
                let expected = marker.stats_sha256.as_deref().unwrap_or_default();
                match decoded {
                    _ if actual != expected => {
                        let why = decoded.err().unwrap_or_default();
                        return Err(tampered(
                            layout, &marker, &stats_key, &actual, expected, &why,
                        ));
                    }
                    Ok(stats) => stats,
                    // Its own featurizer wrote statistics its rows do not have.
                    Err(what) => {
                        return Err(Error::Invariant(format!(
                            "run {}: shard {}: {what}",
                            layout.run_id(),
                            marker.shard
                        )))
                    }
                }
            }
            Err(StoreError::NotFound(_)) => {
                // Expired with staging/ (or never kept, or not verifiable): the committed
                // part is the truth.
                info!(shard = marker.shard, key = %stats_key,
                    "statistics gone or unverifiable: recomputed from the committed part");
                let dim = rows.first().map(|r| r.values.len()).unwrap_or(0);
                let refs: Vec<&[f32]> = rows.iter().map(|r| r.values.as_slice()).collect();
                ShardStats::from_rows(&refs, dim)
            }
            Err(e) => return Err(e.into()),
        };
        let paths = rows.into_iter().map(|r| r.path).collect();
        Ok(Loaded {
            marker,
            errors,
            stats,
            paths,
        })
    }

    /// Reads every shard's committed objects and checks the run's invariants before
    /// anything is fitted: each shard committed, its rows + errors = its listed images, its
    /// statistics are its part's (count and mean), its part matches the marker's checksum,
    /// and no path is in two places (two rows, or a row and an error). Returns the error
    /// list and the merged statistics.
    pub(super) async fn committed_shards(
        &self,
        layout: &RunLayout,
        manifest: &Manifest,
        markers: &[DoneMarker],
    ) -> Result<(Vec<ImageError>, Option<ShardStats>)> {
        let concurrency = self.settings.concurrency.max(1);
        let invariant = |m: String| Error::Invariant(format!("run {}: {m}", manifest.run_id));
        let mut loaded = stream::iter(
            markers
                .iter()
                .cloned()
                .map(|marker| self.load_shard(layout, marker)),
        )
        .buffered(concurrency);
        // Shard by shard, in order: checked, then its statistics merged and dropped, so
        // memory holds one merged co-moment (plus the shards in flight), not one per shard.
        let mut seen: HashSet<String> = HashSet::new();
        let mut all_errors = Vec::new();
        let mut merged: Option<ShardStats> = None;
        let mut shards = manifest.shards.iter();
        while let Some(Loaded {
            marker,
            errors,
            stats,
            paths,
        }) = loaded.try_next().await?
        {
            let shard = shards.next().expect("one loaded entry per shard");
            let id = shard.id;
            if paths.len() != marker.rows || errors.len() != marker.errors {
                return Err(invariant(format!(
                    "shard {id}: {} rows and {} errors stored, its marker says {} and {}",
                    paths.len(),
                    errors.len(),
                    marker.rows,
                    marker.errors
                )));
            }
            if paths.len() + errors.len() != shard.images.len() {
                return Err(invariant(format!(
                    "shard {id}: {} rows + {} errors != {} listed images",
                    paths.len(),
                    errors.len(),
                    shard.images.len()
                )));
            }
            let listed: HashSet<&str> = shard.images.iter().map(|i| i.path.as_str()).collect();
            for path in paths
                .iter()
                .map(String::as_str)
                .chain(errors.iter().map(|e| e.path.as_str()))
            {
                if !listed.contains(path) {
                    return Err(invariant(format!(
                        "shard {id} holds {path:?}, which it was not given"
                    )));
                }
                if !seen.insert(path.to_string()) {
                    return Err(invariant(format!(
                        "{path:?} is in the outputs twice (two rows, or a row and an error)"
                    )));
                }
            }
            all_errors.extend(errors);
            // As `merge` does, with a shard of no rows (whose recomputed statistics have no
            // dimension) adding nothing.
            match merged.as_mut() {
                None => merged = Some(stats),
                Some(_) if stats.count == 0 => {}
                Some(m) if m.count == 0 => *m = stats,
                Some(m) => m.merge(&stats)?,
            }
        }
        if seen.len() != manifest.total_images {
            return Err(invariant(format!(
                "{} images accounted for, {} listed",
                seen.len(),
                manifest.total_images
            )));
        }
        Ok((all_errors, merged))
    }

    /// The shard's part as published in `Results`, checked against its marker; published
    /// again from the committed attempt when it is missing or differs. (This completes the
    /// featurizer's publication with the bytes its create-once done marker names: no reducer
    /// can write anything else there.)
    pub(super) async fn published_part(
        &self,
        layout: &RunLayout,
        marker: &DoneMarker,
    ) -> Result<Bytes> {
        let key = layout.results_part(marker.shard);
        match self.store.get(&key).await {
            Ok(part) if sha256_hex(&part) == marker.part_sha256 => return Ok(part),
            Ok(_) => warn!(
                key,
                "published part differs from the committed one: republishing"
            ),
            Err(StoreError::NotFound(_)) => {
                info!(key, "committed part not published yet: publishing")
            }
            Err(e) => return Err(e.into()),
        }
        let part = committed_part(&self.store, layout, marker).await?;
        self.store.put(&key, part.clone()).await?;
        Ok(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: Vec<f32>) -> VectorRow {
        VectorRow {
            path: "p".into(),
            label: "l".into(),
            values,
        }
    }

    #[test]
    fn statistics_are_checked_against_their_rows() {
        let rows = vec![row(vec![1.0, 2.0]), row(vec![3.0, 6.0])];
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.values.as_slice()).collect();
        let stats = ShardStats::from_rows(&refs, 2);
        assert_eq!(stats_match_rows(&stats, &rows), Ok(()));
        assert_eq!(mean_of(&rows, 2), vec![2.0, 4.0]);
        // Other rows of the same count: another attempt's statistics.
        let other = vec![row(vec![1.0, 2.0]), row(vec![3.0, 6.5])];
        let err = stats_match_rows(&stats, &other).unwrap_err();
        assert!(err.contains("another attempt"), "{err}");
        // Fewer rows.
        let err = stats_match_rows(&stats, &rows[..1]).unwrap_err();
        assert!(
            err.contains("statistics of 2 rows for a part of 1"),
            "{err}"
        );
        // Another dimension.
        let err = stats_match_rows(&stats, &[row(vec![1.0]), row(vec![2.0])]).unwrap_err();
        assert!(err.contains("dimension"), "{err}");
    }
}
