//! `featurize simulate --collection N`: a collection of N images refitted after a number of
//! changes, through the real refit code (`pipeline::continuous::collection`), without images
//! or a CNN. The collection's first snapshot is written directly in the refit's own format
//! (buckets of synthetic features); each round replaces `changes` images (new contents, new
//! synthetic features, in deltas of 100 as ingest batches write them) and refits. The store is
//! a folder (copies are hard links) behind a latency model of S3 ([`S3Latency`]) and the
//! request counters; the refit's projection is fanned out to an in-process queue and each
//! projection message is handled as its own invocation. Each invocation is measured: wall
//! time, peak resident memory (the process's `VmHWM`, reset before it), requests and bytes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use pipeline::batch::inference::{synthetic_features, SYNTHETIC_MODEL_ID};
use pipeline::continuous::collection::{
    bucket_count, bucket_of, new_delta_id, project, refit_with, write_delta, BucketInfo,
    CollectionLayout, CurrentPointer, Delta, DeltaEntry, IndexEntry, IndexManifest, IndexShard,
    ProjectMessage, ProjectOutcome, RefitOptions, RefitOutcome, RefitSummary, INDEX_FORMAT,
    PART_ROWS,
};
use pipeline::error::{Error, Result};
use pipeline::parquet_io::{self, Dataset, VectorRow};
use pipeline::ports::counting::{Counters, CountingStore, Usage};
use pipeline::ports::queue::InProcessQueue;
use pipeline::ports::store::{FsStore, ObjectInfo, ObjectStore, StoreError, Versioned};

use super::{add_usage, peak_rss_mb, reset_peak_rss};

/// The simulated collection's name.
pub const SIM_COLLECTION: &str = "sim";
/// The inbox prefix of the simulation.
const INBOX: &str = "inbox/";
/// Rows per delta (an ingest batch).
const DELTA_ROWS: usize = 100;

/// A latency model of S3 seen from a Lambda function in the same region: every request
/// waits its first-byte time, then its bytes at one connection's throughput; a server-side
/// copy waits its own time and throughput (no bytes reach the caller).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct S3Latency {
    /// GET, HEAD, LIST and DELETE: time to first byte, ms.
    pub read_ms: f64,
    /// PUT: ms.
    pub write_ms: f64,
    /// GET throughput of one connection, MB/s.
    pub read_mb_s: f64,
    /// PUT throughput of one connection, MB/s.
    pub write_mb_s: f64,
    /// CopyObject: ms.
    pub copy_ms: f64,
    /// CopyObject throughput (inside S3), MB/s.
    pub copy_mb_s: f64,
}

impl Default for S3Latency {
    fn default() -> Self {
        Self {
            read_ms: 15.0,
            write_ms: 30.0,
            read_mb_s: 90.0,
            write_mb_s: 60.0,
            copy_ms: 40.0,
            copy_mb_s: 250.0,
        }
    }
}

impl S3Latency {
    fn wait(ms: f64, bytes: u64, mb_s: f64) -> Duration {
        Duration::from_secs_f64(ms / 1000.0 + bytes as f64 / (mb_s * 1e6))
    }
}

/// A store behind [`S3Latency`].
#[derive(Debug, Clone)]
pub struct SlowStore<S> {
    inner: S,
    latency: S3Latency,
}

impl<S> SlowStore<S> {
    /// `inner` with `latency`.
    pub fn new(inner: S, latency: S3Latency) -> Self {
        Self { inner, latency }
    }
}

impl<S: ObjectStore> SlowStore<S> {
    async fn read_wait(&self, bytes: u64) {
        let l = self.latency;
        tokio::time::sleep(S3Latency::wait(l.read_ms, bytes, l.read_mb_s)).await;
    }
    async fn write_wait(&self, bytes: u64) {
        let l = self.latency;
        tokio::time::sleep(S3Latency::wait(l.write_ms, bytes, l.write_mb_s)).await;
    }
}

impl<S: ObjectStore> ObjectStore for SlowStore<S> {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let body = self.inner.get(key).await;
        self.read_wait(body.as_ref().map_or(0, |b| b.len() as u64))
            .await;
        body
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        let v = self.inner.get_versioned(key).await;
        self.read_wait(v.as_ref().map_or(0, |v| v.body.len() as u64))
            .await;
        v
    }
    async fn get_if_match(&self, key: &str, version: &str) -> Result<Bytes, StoreError> {
        let body = self.inner.get_if_match(key, version).await;
        self.read_wait(body.as_ref().map_or(0, |b| b.len() as u64))
            .await;
        body
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.write_wait(body.len() as u64).await;
        self.inner.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        self.write_wait(body.len() as u64).await;
        self.inner.put_if_absent(key, body).await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        self.write_wait(body.len() as u64).await;
        self.inner.put_if_match(key, body, etag).await
    }
    async fn copy(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        let size = self.inner.copy(from, to).await?;
        let l = self.latency;
        tokio::time::sleep(S3Latency::wait(l.copy_ms, size, l.copy_mb_s)).await;
        Ok(size)
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.read_wait(0).await;
        self.inner.exists(key).await
    }
    async fn head(&self, key: &str) -> Result<String, StoreError> {
        self.read_wait(0).await;
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.read_wait(0).await;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let listed = self.inner.list(prefix).await?;
        for _ in 0..listed.len().div_ceil(1000).max(1) {
            self.read_wait(0).await;
        }
        Ok(listed)
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

/// The simulated inbox: each image's current ETag (bodies are never read by a refit: it
/// HEADs the changed keys).
#[derive(Debug, Clone, Default)]
pub struct SimInbox {
    etags: Arc<RwLock<HashMap<String, String>>>,
}

impl SimInbox {
    fn set(&self, key: String, etag: String) {
        self.etags.write().expect("inbox lock").insert(key, etag);
    }
    fn etag(&self, key: &str) -> Result<String, StoreError> {
        self.etags
            .read()
            .expect("inbox lock")
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.to_string()))
    }
}

impl ObjectStore for SimInbox {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.etag(key).map(|_| Bytes::new())
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        Ok(Versioned {
            body: Bytes::new(),
            etag: self.etag(key)?,
        })
    }
    async fn head(&self, key: &str) -> Result<String, StoreError> {
        self.etag(key)
    }
    async fn put(&self, key: &str, _body: Bytes) -> Result<(), StoreError> {
        Err(StoreError::InvalidKey(key.to_string()))
    }
    async fn put_if_absent(&self, key: &str, _body: Bytes) -> Result<bool, StoreError> {
        Err(StoreError::InvalidKey(key.to_string()))
    }
    async fn put_if_match(&self, key: &str, _b: Bytes, _e: &str) -> Result<bool, StoreError> {
        Err(StoreError::InvalidKey(key.to_string()))
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.etag(key).is_ok())
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.etags.write().expect("inbox lock").remove(key);
        Ok(())
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        Ok(Vec::new())
    }
    fn describe(&self, key: &str) -> String {
        format!("sim-inbox://{key}")
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct CollectionSimOptions {
    /// Images in the collection.
    pub images: usize,
    /// Changes before each refit, in order (each round on top of the one before).
    pub changes: Vec<usize>,
    /// Feature dimension.
    pub dim: usize,
    /// Label folders.
    pub labels: usize,
    /// PCA components.
    pub k: usize,
    /// The refit's concurrency (`REDUCE_CONCURRENCY`).
    pub concurrency: usize,
    /// The S3 latency model.
    pub latency: S3Latency,
    /// Called before each measured invocation to give freed memory back to the system (the
    /// binary's `malloc_trim`), so that each peak is the invocation's own.
    pub release_memory: Option<fn()>,
}

/// One measured invocation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Invocation {
    /// Wall seconds.
    pub wall_s: f64,
    /// Peak resident memory of the process, MB.
    pub peak_rss_mb: Option<f64>,
    /// Requests and bytes.
    pub usage: Usage,
}

/// One refit of the simulated collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefitRound {
    /// Images changed before it.
    pub changes: usize,
    /// Rows after it.
    pub rows: usize,
    /// Buckets, and how many it rewrote (the others copied).
    pub buckets: usize,
    /// Buckets rewritten.
    pub buckets_rewritten: usize,
    /// The refit message's invocation (up to the projection's fan-out).
    pub refit: Invocation,
    /// The projection messages, one invocation each.
    pub projections: Vec<Invocation>,
    /// Replaced rows the summary reports.
    pub replaced: usize,
}

impl RefitRound {
    /// The longest invocation, seconds.
    pub fn max_invocation_s(&self) -> f64 {
        self.projections
            .iter()
            .map(|p| p.wall_s)
            .fold(self.refit.wall_s, f64::max)
    }
    /// The highest peak of its invocations, MB.
    pub fn max_peak_mb(&self) -> Option<f64> {
        self.projections
            .iter()
            .filter_map(|p| p.peak_rss_mb)
            .chain(self.refit.peak_rss_mb)
            .reduce(f64::max)
    }
    /// Requests and bytes of all its invocations.
    pub fn total_usage(&self) -> Usage {
        self.projections
            .iter()
            .fold(self.refit.usage, |a, p| add_usage(a, p.usage))
    }
}

/// The whole collection simulation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionReport {
    /// Images.
    pub images: usize,
    /// Feature dimension.
    pub dim: usize,
    /// PCA components.
    pub k: usize,
    /// Seconds to write the first snapshot (not measured as a refit).
    pub setup_s: f64,
    /// The latency model.
    pub latency: S3Latency,
    /// One per round.
    pub rounds: Vec<RefitRound>,
}

fn sim_key(i: usize, labels: usize) -> (String, String) {
    let label = format!("class-{:04}", i % labels.max(1));
    (format!("{label}/img-{i:08}.jpg"), label)
}

fn features(path: &str, round: usize, dim: usize) -> Vec<f32> {
    if round == 0 {
        synthetic_features(path, dim)
    } else {
        synthetic_features(&format!("{path}#{round}"), dim)
    }
}

/// Writes the collection's first snapshot (refit 1) directly, bucket by bucket, in the
/// refit's format; its running sums are the synthetic rows' expected moments (every
/// coordinate uniform on [0, 6): mean 3, variance 3), which costs nothing, where the exact
/// sums of a million 1280-d rows would cost 1.6·10¹² multiply-adds of setup. A refit's work
/// does not depend on their values.
async fn write_first_snapshot(
    store: &FsStore,
    inbox: &SimInbox,
    options: &CollectionSimOptions,
) -> Result<()> {
    let layout = CollectionLayout::new(SIM_COLLECTION);
    let n = bucket_count(0, options.images, PART_ROWS);
    let snapshot = format!("{:08}-{:08x}", 1, 0);
    let buckets = write_first_buckets(store, inbox, options, &layout, &snapshot, n).await?;
    let sums = expected_sums(options.images as u64, options.dim);
    publish_first_snapshot(store, options, &layout, &snapshot, buckets, &sums).await
}

/// The first snapshot's buckets: each image's inbox entry (ETag `v0`), then each bucket's
/// part (its rows sorted by path) and state shard. One [`BucketInfo`] per bucket, in order.
async fn write_first_buckets(
    store: &FsStore,
    inbox: &SimInbox,
    options: &CollectionSimOptions,
    layout: &CollectionLayout,
    snapshot: &str,
    n: usize,
) -> Result<Vec<BucketInfo>> {
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); n];
    for i in 0..options.images {
        let (path, _) = sim_key(i, options.labels);
        members[bucket_of(&path, n)].push(i as u32);
        inbox.set(format!("{INBOX}{SIM_COLLECTION}/{path}"), "v0".into());
    }
    let mut buckets = Vec::with_capacity(n);
    for (b, ids) in members.iter().enumerate() {
        let mut rows: Vec<VectorRow> = ids
            .iter()
            .map(|&i| {
                let (path, label) = sim_key(i as usize, options.labels);
                VectorRow {
                    values: features(&path, 0, options.dim),
                    path,
                    label,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.path.cmp(&b.path));
        let part = format!("b{b:05}-{snapshot}.parquet");
        let shard: IndexShard = rows
            .iter()
            .map(|r| {
                let entry = IndexEntry {
                    etag: "v0".into(),
                    label: r.label.clone(),
                    part: Some(part.clone()),
                    error: None,
                };
                (r.path.clone(), entry)
            })
            .collect();
        if !rows.is_empty() {
            let key = format!("{}{part}", layout.results_prefix(snapshot));
            store
                .put(&key, parquet_io::write_rows(Dataset::Features, &rows)?)
                .await?;
            store
                .put(
                    &layout.state_shard(snapshot, b),
                    serde_json::to_vec(&shard)?.into(),
                )
                .await?;
        }
        buckets.push(BucketInfo {
            entries: rows.len(),
            rows: rows.len(),
            part: (!rows.is_empty()).then_some(part),
        });
    }
    Ok(buckets)
}

/// The running sums `count` synthetic rows are expected to have: every coordinate uniform
/// on [0, 6), so shifted by its mean 3 the first moments are 0 and the co-moment matrix is
/// diagonal with the variance 3 (times the count).
fn expected_sums(count: u64, dim: usize) -> engine::stats::RunningSums {
    let mut s2 = vec![0.0; dim * dim];
    for j in 0..dim {
        s2[j * dim + j] = 3.0 * count as f64;
    }
    engine::stats::RunningSums {
        count,
        shift: vec![3.0; dim],
        s1: vec![0.0; dim],
        s2,
    }
}

/// Writes the first snapshot's state (bucket manifest, sums, empty error list) and
/// publishes it as refit 1: its summary, its success marker, then the current pointer.
async fn publish_first_snapshot(
    store: &FsStore,
    options: &CollectionSimOptions,
    layout: &CollectionLayout,
    snapshot: &str,
    buckets: Vec<BucketInfo>,
    sums: &engine::stats::RunningSums,
) -> Result<()> {
    let n = buckets.len();
    let manifest = IndexManifest {
        format: INDEX_FORMAT,
        buckets,
        model_sha256: Some(SYNTHETIC_MODEL_ID.into()),
    };
    store
        .put(
            &layout.state_buckets(snapshot),
            serde_json::to_vec(&manifest)?.into(),
        )
        .await?;
    store
        .put(&layout.state_sums(snapshot), sums.to_bytes().into())
        .await?;
    store
        .put(&layout.errors(snapshot), Bytes::from_static(b"[]"))
        .await?;
    let now = pipeline::manifest::unix_now_ms();
    let summary = RefitSummary {
        collection: SIM_COLLECTION.into(),
        snapshot: snapshot.to_string(),
        seq: 1,
        rows: options.images,
        published_at_ms: now,
        model_sha256: Some(SYNTHETIC_MODEL_ID.into()),
        buckets: n,
        ..RefitSummary::default()
    };
    store
        .put(
            &layout.summary(snapshot),
            serde_json::to_vec(&summary)?.into(),
        )
        .await?;
    store.put(&layout.success(snapshot), Bytes::new()).await?;
    let pointer = CurrentPointer {
        collection: SIM_COLLECTION.into(),
        snapshot: snapshot.to_string(),
        seq: 1,
        results: layout.results_prefix(snapshot),
        results_pca: layout.pca_prefix(snapshot),
        pca_model: None,
        summary: layout.summary(snapshot),
        errors: layout.errors(snapshot),
        published_at: pipeline::manifest::now_rfc3339(),
        published_at_ms: now,
    };
    store
        .put(&layout.current(), serde_json::to_vec(&pointer)?.into())
        .await?;
    Ok(())
}

/// Replaces `changes` images (spread over the collection) with new contents: their new
/// ETags in the inbox, their new features in deltas of [`DELTA_ROWS`].
async fn change(
    store: &FsStore,
    inbox: &SimInbox,
    options: &CollectionSimOptions,
    round: usize,
    changes: usize,
) -> Result<()> {
    let stride = (options.images / changes.max(1)).max(1);
    let etag = format!("v{round}");
    let ids: Vec<usize> = (0..changes.min(options.images))
        .map(|c| (c * stride + round) % options.images)
        .collect();
    for chunk in ids.chunks(DELTA_ROWS) {
        let mut rows = Vec::with_capacity(chunk.len());
        let mut entries = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let (path, label) = sim_key(i, options.labels);
            inbox.set(format!("{INBOX}{SIM_COLLECTION}/{path}"), etag.clone());
            entries.push(DeltaEntry::Upsert {
                path: path.clone(),
                label: label.clone(),
                etag: etag.clone(),
                row: rows.len(),
            });
            rows.push(VectorRow {
                values: features(&path, round, options.dim),
                path,
                label,
            });
        }
        let delta = Delta {
            collection: SIM_COLLECTION.into(),
            id: new_delta_id(),
            written_at_ms: pipeline::manifest::unix_now_ms(),
            entries,
            model_sha256: Some(SYNTHETIC_MODEL_ID.into()),
        };
        write_delta(store, &delta, &rows).await?;
    }
    Ok(())
}

/// Measures one invocation: `run` with fresh counters, its wall time and the process's peak
/// memory from here.
async fn measure<T, F, Fut>(options: &CollectionSimOptions, run: F) -> Result<(T, Invocation)>
where
    F: FnOnce(Arc<Counters>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    if let Some(release) = options.release_memory {
        release();
    }
    reset_peak_rss();
    let counters = Counters::new();
    let started = Instant::now();
    let value = run(counters.clone()).await?;
    Ok((
        value,
        Invocation {
            wall_s: started.elapsed().as_secs_f64(),
            peak_rss_mb: peak_rss_mb(),
            usage: counters.usage(),
        },
    ))
}

/// Runs the collection simulation in `folder`.
pub async fn simulate_collection(
    options: &CollectionSimOptions,
    folder: &Path,
) -> Result<CollectionReport> {
    if options.images < 2 || options.changes.is_empty() {
        return Err(Error::InvalidRequest(
            "simulate a collection of at least 2 images and at least one round of changes".into(),
        ));
    }
    let store = FsStore::new(folder);
    let inbox = SimInbox::default();
    let started = Instant::now();
    write_first_snapshot(&store, &inbox, options).await?;
    let setup_s = started.elapsed().as_secs_f64();
    let refit_options = RefitOptions {
        pca: engine::pca::PcaOptions {
            k: options.k,
            ..Default::default()
        },
        concurrency: options.concurrency.max(1),
        ..RefitOptions::default()
    };
    let slow_inbox = SlowStore::new(inbox.clone(), options.latency);
    let mut rounds = Vec::new();
    for (r, &changes) in options.changes.iter().enumerate() {
        change(&store, &inbox, options, r + 1, changes).await?;
        let queue = InProcessQueue::new();
        let (outcome, refit) = measure(options, |counters| {
            let output =
                CountingStore::new(SlowStore::new(store.clone(), options.latency), counters);
            let (inbox, queue, refit_options) = (&slow_inbox, &queue, &refit_options);
            async move {
                refit_with(
                    &output,
                    inbox,
                    INBOX,
                    SIM_COLLECTION,
                    refit_options,
                    Some(queue),
                )
                .await
            }
        })
        .await?;
        let mut summary = match outcome {
            RefitOutcome::Published(s) => Some(s),
            RefitOutcome::Projecting { .. } => None,
            other => {
                return Err(Error::RunState(format!(
                    "the simulated refit did not publish: {other:?}"
                )))
            }
        };
        let mut projections = Vec::new();
        while let Some(body) = queue.pop() {
            let message: ProjectMessage = serde_json::from_str(&body)?;
            let (outcome, invocation) = measure(options, |counters| {
                let output =
                    CountingStore::new(SlowStore::new(store.clone(), options.latency), counters);
                let (queue, refit_options, message) = (&queue, &refit_options, &message);
                async move {
                    let deadline = Some(Instant::now() + Duration::from_secs(300));
                    project(&output, message, refit_options, deadline, Some(queue)).await
                }
            })
            .await?;
            if let ProjectOutcome::Published(s) = outcome {
                summary = Some(s);
            }
            projections.push(invocation);
        }
        let summary = summary
            .ok_or_else(|| Error::RunState("the simulated refit was never published".into()))?;
        rounds.push(RefitRound {
            changes,
            rows: summary.rows,
            buckets: summary.buckets,
            buckets_rewritten: summary.buckets_rewritten,
            replaced: summary.replaced,
            refit,
            projections,
        });
    }
    Ok(CollectionReport {
        images: options.images,
        dim: options.dim,
        k: options.k,
        setup_s,
        latency: options.latency,
        rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_collection_refits_with_copies_and_fanned_out_projections() {
        let dir = tempfile::tempdir().unwrap();
        let options = CollectionSimOptions {
            images: 150_000,
            changes: vec![1, 100],
            dim: 8,
            labels: 10,
            k: 3,
            concurrency: 8,
            latency: S3Latency {
                read_ms: 0.0,
                write_ms: 0.0,
                copy_ms: 0.0,
                ..S3Latency::default()
            },
            release_memory: None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let report = rt
            .block_on(simulate_collection(&options, dir.path()))
            .unwrap();
        let [one, hundred] = &report.rounds[..] else {
            panic!("two rounds")
        };
        assert_eq!(
            one.buckets, 64,
            "150,000 rows at 4,096 per bucket, no more than twice full"
        );
        assert_eq!(
            (one.rows, one.replaced, one.buckets_rewritten),
            (150_000, 1, 1)
        );
        assert_eq!(one.refit.usage.s3_copy, 2 * 63, "{:?}", one.refit.usage);
        assert_eq!(one.projections.len(), 2, "64 parts, 32 per message");
        // The refit reads O(changed): one bucket of about 2,344 rows, not the collection.
        let collection_bytes: u64 = one.projections.iter().map(|p| p.usage.bytes_read).sum();
        assert!(
            one.refit.usage.bytes_read * 8 < collection_bytes,
            "{} vs {collection_bytes}",
            one.refit.usage.bytes_read
        );
        assert_eq!(hundred.replaced, 100);
        assert!(hundred.buckets_rewritten > 40 && hundred.buckets_rewritten <= 100);
    }
}
