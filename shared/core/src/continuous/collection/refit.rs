//! The refit: folds a collection's deltas into its state, fits the PCA, publishes a new
//! snapshot and points `current.json` at it. One attempt is a [`Refit`], run phase by phase
//! ([`Refit::run`]).
//!
//! Its cost grows with what changed, but for the projection: the index is split in buckets
//! by a hash of the path ([`super::index`]), each with one `Results` part; only the buckets
//! holding a changed path are read and rewritten, the others are copied server-side
//! ([`ObjectStore::copy`]: S3 `CopyObject`, a hard link locally). Projecting every row into
//! `Results_PCA` is O(n) by nature (the model changes): it is streamed part by part, and
//! past [`RefitOptions::fanout_parts`] parts fanned out through the refit queue
//! ([`super::publish`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::Instant;

use futures::stream::{self, StreamExt, TryStreamExt};
// Every future run in a stream below is boxed (`.boxed()`) and collected before it is
// streamed: the refit's future must be `Send` for callers that need it (reconcile), which
// rustc cannot prove for a stream that keeps closures over borrowed items
// (rust-lang/rust#110338).
use futures::FutureExt;
use tracing::warn;

use super::buckets::{error_list, plan, Built, Job, OldIndex, Source};
use super::decide::{
    apply_decisions, decide, decide_unreadable, refit_due, Decision, Decisions, Due,
};
use super::fit::{fit_statistics, start_sums};
use super::index::{
    bucket_count, bucket_of, read_shard, read_stored_index, BucketInfo, IndexManifest, IndexShard,
    StoredIndex, INDEX_FORMAT,
};
use super::publish::{ProjectSender, Publication};
use super::status::{model_conflict, note_delta_model};
use super::{
    delta_time_ms, inbox_key, list_deltas, read_current, valid_collection, CollectionLayout,
    CurrentPointer, Delta, DeltaEntry, IndexEntry, RefitOptions, RefitOutcome, RefitSummary,
};
use crate::error::{Error, Result};
use crate::manifest::ImageError;
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::ports::store::{ObjectStore, StoreError};
use engine::stats::RunningSums;

mod write;

/// How many times a refit that lost the race for `current.json` starts over before giving up
/// ([`RefitOutcome::LostRace`]: the caller retries later).
pub const REFIT_ATTEMPTS: usize = 5;

/// The boxed future of a refit.
pub type RefitFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<RefitOutcome>> + Send + 'a>>;

/// Folds the collection's deltas into its state, fits the PCA, publishes a new snapshot and
/// points `current.json` at it, all in this process. `input` holds the inbox (`inbox` +
/// collection + `/` + path).
///
/// Refits of one collection may run at once (two refit messages, a CLI refit): the pointer
/// is replaced only if it is still the one the refit started from (S3 `If-Match`). The loser
/// discards its snapshot and starts over from the winner's, so that a delta the winner did
/// not see (written after it listed them) is folded now, not left waiting for another event.
///
/// The future is boxed as `Send` here, where the stores' types are still generic: callers
/// that need a `Send` future of their own (a trait method) would otherwise hit the
/// compiler's higher-ranked lifetime limits on the streams inside.
pub fn refit<'a, S: ObjectStore, I: ObjectStore>(
    output: &'a S,
    input: &'a I,
    inbox: &'a str,
    collection: &'a str,
    options: &'a RefitOptions,
) -> RefitFuture<'a> {
    refit_with(output, input, inbox, collection, options, None)
}

/// [`refit`], with the refit queue: a snapshot of more than
/// [`RefitOptions::fanout_parts`] parts is projected by messages sent to `sender`
/// ([`RefitOutcome::Projecting`]; the last of them publishes it, see
/// [`super::publish::project`]).
pub fn refit_with<'a, S: ObjectStore, I: ObjectStore>(
    output: &'a S,
    input: &'a I,
    inbox: &'a str,
    collection: &'a str,
    options: &'a RefitOptions,
    sender: Option<&'a dyn ProjectSender>,
) -> RefitFuture<'a> {
    Box::pin(async move {
        for attempt in 1..=REFIT_ATTEMPTS {
            let refit = Refit::new(output, input, inbox, collection, options, sender)?;
            match refit.run().await? {
                RefitOutcome::LostRace => {
                    warn!(
                        collection,
                        attempt, "another refit published first: starting over from its snapshot"
                    );
                }
                done => return Ok(done),
            }
        }
        Ok(RefitOutcome::LostRace)
    })
}

/// Changed paths, each with the delta entries that mention it: (delta index, entry).
type ByPath<'d> = BTreeMap<&'d str, Vec<(usize, &'d DeltaEntry)>>;
/// The current content of each changed key: its ETag (`None`: gone), or why it cannot be
/// read for good.
type Heads<'d> = HashMap<&'d str, Result<Option<String>, String>>;

/// One attempt at a refit: the stores, the collection and the options, and the pointer it
/// started from. [`Refit::run`] calls the phases in order.
struct Refit<'a, S, I> {
    output: &'a S,
    input: &'a I,
    inbox: &'a str,
    collection: &'a str,
    options: &'a RefitOptions,
    sender: Option<&'a dyn ProjectSender>,
    layout: CollectionLayout,
    /// Parts read, projected and written at once (at least 1).
    concurrency: usize,
    started: Instant,
    started_at_ms: u64,
    /// The published pointer and its entity tag, read first.
    current: Option<(CurrentPointer, String)>,
}

/// The state the previous snapshot left.
struct Previous {
    stored: Option<StoredIndex>,
    sums: Option<RunningSums>,
    seq: u64,
    errors: Vec<ImageError>,
}

impl<'a, S: ObjectStore, I: ObjectStore> Refit<'a, S, I> {
    fn new(
        output: &'a S,
        input: &'a I,
        inbox: &'a str,
        collection: &'a str,
        options: &'a RefitOptions,
        sender: Option<&'a dyn ProjectSender>,
    ) -> Result<Self> {
        if !valid_collection(collection) {
            return Err(Error::InvalidRequest(format!(
                "{collection:?} is not a collection name"
            )));
        }
        Ok(Self {
            output,
            input,
            inbox,
            collection,
            options,
            sender,
            layout: CollectionLayout::new(collection),
            concurrency: options.concurrency.max(1),
            started: Instant::now(),
            started_at_ms: crate::manifest::unix_now_ms(),
            current: None,
        })
    }

    /// The refit, phase by phase.
    async fn run(mut self) -> Result<RefitOutcome> {
        let delta_ids = match self.read_pointer().await? {
            ControlFlow::Continue(ids) => ids,
            ControlFlow::Break(outcome) => return Ok(outcome),
        };
        let previous = self.read_state().await?;
        let deltas = self.read_deltas(&delta_ids).await?;
        let model_sha256 = self.check_models(&previous, &deltas)?;
        let by_path = group_by_path(&deltas);
        let heads = self.head_changed(&by_path).await?;
        let resolve_s = self.started.elapsed().as_secs_f64();

        let fit_start = Instant::now();
        let mut old = self.read_old_index(previous.stored, &by_path).await?;
        let (decisions, pending) = self.decide_paths(&old.known, &by_path, &heads);
        let mut delta_rows = self.read_winning_rows(&deltas, &decisions).await?;
        let touched: HashSet<&str> = decisions
            .iter()
            .filter(|(_, d)| *d != Decision::Keep)
            .map(|(p, _)| *p)
            .collect();
        let before = touched
            .iter()
            .filter(|p| old.known.contains_key(**p))
            .count();
        let changes = apply_decisions(&mut old.known, &decisions, &mut delta_rows, &deltas)?;
        drop(delta_rows);
        let after = touched
            .iter()
            .filter(|p| old.known.contains_key(**p))
            .count();
        let mut sums = start_sums(previous.sums, &changes.arriving)?;
        let entries = (old.entries() + after).saturating_sub(before);
        let n = bucket_count(old.buckets(), entries, self.options.part_rows);

        let seq = previous.seq + 1;
        let snapshot = format!("{seq:08}-{:08x}", fastrand::u32(..));
        let publish_started_at_ms = crate::manifest::unix_now_ms();
        let errors = error_list(previous.errors, &touched, &old.known);
        let (added, replaced, removed) = (changes.added, changes.replaced, changes.removed);
        let jobs = plan(&mut old, &touched, changes.arriving, n);
        let built = self
            .build_buckets(jobs, &old, &touched, n, &snapshot)
            .await?;
        let (buckets, rewritten) = collect_buckets(built, n, &mut sums)?;
        let model_sha256 = model_sha256.or_else(|| old.manifest.and_then(|m| m.model_sha256));
        let manifest = IndexManifest {
            format: INDEX_FORMAT,
            buckets,
            model_sha256: model_sha256.clone(),
        };
        let rows = manifest.rows();
        if rows as u64 != sums.count {
            return Err(Error::Invariant(format!(
                "collection {}: {rows} live rows but statistics of {}",
                self.collection, sums.count
            )));
        }
        let mut fit = fit_statistics(sums, &self.options.pca);
        let fit_s = fit_start.elapsed().as_secs_f64();

        let parts = manifest.parts();
        let published_at = crate::manifest::now_rfc3339();
        let summary = RefitSummary {
            collection: self.collection.to_string(),
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
            k: fit.model.as_ref().map(|m| m.k).unwrap_or(0),
            k_requested: fit.k_requested,
            cumulative_explained_variance: fit
                .model
                .as_ref()
                .map(|m| m.cumulative_explained_variance)
                .unwrap_or(0.0),
            resolve_s,
            fit_s,
            publish_s: 0.0,
            total_s: 0.0,
            published_at: published_at.clone(),
            published_at_ms: crate::manifest::unix_now_ms(),
            based_on: self.current.as_ref().map(|(p, _)| p.snapshot.clone()),
            warnings: std::mem::take(&mut fit.warnings),
            model_sha256,
            buckets: n,
            buckets_rewritten: rewritten,
            parts_fanned_out: 0,
        };
        self.write_documents(&snapshot, &fit, &errors, &manifest)
            .await?;
        let publication = Publication {
            pointer: self.pointer(&snapshot, seq, fit.model.is_some(), published_at),
            replaces: self.current.as_ref().map(|(_, etag)| etag.clone()),
            deltas: deltas.iter().map(|d| d.id.clone()).collect(),
            parts,
            summary,
            started_at_ms: self.started_at_ms,
            publish_started_at_ms,
            mean_bits: Vec::new(),
            component_bits: Vec::new(),
        };
        self.project_and_publish(snapshot, seq, publication, fit.model.as_ref())
            .await
    }

    /// Reads the published pointer and lists the deltas. Stops here when a change is younger
    /// than the quiet time and none is older than the staleness bound, or when nothing
    /// changed since the published snapshot.
    async fn read_pointer(&mut self) -> Result<ControlFlow<RefitOutcome, Vec<String>>> {
        self.current = read_current(self.output, &self.layout).await?;
        let delta_ids = list_deltas(self.output, &self.layout).await?;
        if let Due::Wait {
            since_change_ms,
            quiet_left_ms,
            staleness_left_ms,
        } = refit_due(
            delta_ids.iter().filter_map(|id| delta_time_ms(id)),
            crate::manifest::unix_now_ms(),
            self.options.quiet_ms,
            self.options.max_staleness_ms,
        ) {
            return Ok(ControlFlow::Break(RefitOutcome::NotQuiet {
                since_change_ms,
                quiet_left_ms,
                staleness_left_ms,
            }));
        }
        if delta_ids.is_empty() && self.current.is_some() {
            return Ok(ControlFlow::Break(RefitOutcome::NothingToDo));
        }
        Ok(ControlFlow::Continue(delta_ids))
    }

    /// The state the previous snapshot left (its index manifest, or its whole index in the
    /// old format, its running sums and its error list), if any.
    async fn read_state(&self) -> Result<Previous> {
        let output = self.output;
        let Some((pointer, _)) = &self.current else {
            return Ok(Previous {
                stored: None,
                sums: None,
                seq: 0,
                errors: Vec::new(),
            });
        };
        let stored = read_stored_index(output, &self.layout, &pointer.snapshot).await?;
        let key = self.layout.state_sums(&pointer.snapshot);
        let sums = RunningSums::from_bytes(&output.get(&key).await?, &key)?;
        let errors = serde_json::from_slice(&output.get(&pointer.errors).await?)?;
        Ok(Previous {
            stored: Some(stored),
            sums: Some(sums),
            seq: pointer.seq,
            errors,
        })
    }

    /// The one model whose features the collection holds after this refit: the previous
    /// snapshot's and every delta's with features must agree. Two models refuse the refit
    /// (a PCA over both would be meaningless), naming the remedy.
    fn check_models(&self, previous: &Previous, deltas: &[Delta]) -> Result<Option<String>> {
        let mut models: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let (Some(StoredIndex::Buckets(m)), Some((p, _))) = (&previous.stored, &self.current) {
            if let (Some(sha), true) = (&m.model_sha256, m.rows() > 0) {
                models
                    .entry(sha.clone())
                    .or_default()
                    .push(format!("snapshot {}", p.snapshot));
            }
        }
        for delta in deltas {
            note_delta_model(&mut models, delta);
        }
        if let Some((reason, remedy)) = model_conflict(self.collection, &models) {
            return Err(Error::RunState(format!("{reason}. Remedy: {remedy}")));
        }
        Ok(models.into_keys().next())
    }

    /// The published snapshot's id (empty: none).
    fn previous_id(&self) -> String {
        self.current
            .as_ref()
            .map(|(p, _)| p.snapshot.clone())
            .unwrap_or_default()
    }

    /// What the previous index has for the changed paths: the shards of their buckets (a
    /// bucketed index), or the whole index and every row (the old format, migrated now).
    async fn read_old_index(
        &self,
        stored: Option<StoredIndex>,
        by_path: &ByPath<'_>,
    ) -> Result<OldIndex> {
        let (output, layout, prev) = (self.output, &self.layout, self.previous_id());
        let mut old = OldIndex::default();
        match stored {
            None => {}
            Some(StoredIndex::Buckets(manifest)) => {
                let n = manifest.buckets.len();
                let wanted: BTreeSet<usize> = by_path.keys().map(|p| bucket_of(p, n)).collect();
                let prev = &prev;
                let shards: Vec<(usize, IndexShard)> = stream::iter(
                    wanted
                        .into_iter()
                        .map(|b| {
                            let info = &manifest.buckets[b];
                            async move {
                                Ok::<_, Error>((
                                    b,
                                    read_shard(output, layout, prev, b, info).await?,
                                ))
                            }
                            .boxed()
                        })
                        .collect::<Vec<_>>(),
                )
                .buffer_unordered(self.concurrency * 4)
                .try_collect()
                .await?;
                old.shards = shards.into_iter().collect();
                for path in by_path.keys() {
                    let shard = old.shards.get(&bucket_of(path, n));
                    if let Some(entry) = shard.and_then(|s| s.get(*path)) {
                        old.known.insert(path.to_string(), entry.clone());
                    }
                }
                old.manifest = Some(manifest);
            }
            Some(StoredIndex::Legacy(index)) => {
                let mut rows = Vec::new();
                for part in index.parts.keys() {
                    let key = format!("{}{part}", layout.results_prefix(&prev));
                    rows.extend(parquet_io::read_rows(
                        Dataset::Features,
                        output.get(&key).await?,
                    )?);
                }
                for path in by_path.keys() {
                    if let Some(entry) = index.entries.get(*path) {
                        old.known.insert(path.to_string(), entry.clone());
                    }
                }
                old.legacy = Some((index.entries, rows));
            }
        }
        Ok(old)
    }

    /// The deltas' documents (their parts later, only for the rows that win).
    async fn read_deltas(&self, delta_ids: &[String]) -> Result<Vec<Delta>> {
        let output = self.output;
        Ok(stream::iter(
            delta_ids
                .iter()
                .map(|id| {
                    let key = self.layout.delta_doc(id);
                    async move {
                        match output.get(&key).await {
                            Ok(body) => Ok(Some(serde_json::from_slice::<Delta>(&body)?)),
                            // Consumed by a refit that published meanwhile: ours will lose the pointer.
                            Err(StoreError::NotFound(_)) => Ok(None),
                            Err(e) => Err(Error::from(e)),
                        }
                    }
                    .boxed()
                })
                .collect::<Vec<_>>(),
        )
        .buffered(self.concurrency * 4)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .flatten()
        .collect())
    }

    /// The current content of every changed key: O(changed) HEADs. A key that cannot be
    /// HEADed for good (access denied) goes to the error list; a transient error fails the
    /// refit (its message is delivered again).
    async fn head_changed<'d>(&self, by_path: &ByPath<'d>) -> Result<Heads<'d>> {
        let (input, inbox, collection) = (self.input, self.inbox, self.collection);
        let heads: Vec<(&str, Result<Option<String>, String>)> = stream::iter(
            by_path
                .keys()
                .map(|&path| {
                    async move {
                        match input.head(&inbox_key(inbox, collection, path)).await {
                            Ok(etag) => Ok((path, Ok(Some(etag)))),
                            Err(StoreError::NotFound(_)) => Ok((path, Ok(None))),
                            Err(e) if !e.is_transient() => Ok((path, Err(e.to_string()))),
                            Err(e) => Err(Error::from(e)),
                        }
                    }
                    .boxed()
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(self.concurrency * 8)
        .try_collect()
        .await?;
        Ok(heads.into_iter().collect())
    }

    /// Decides every changed path; also counts the paths whose current content no delta has
    /// seen yet (pending).
    fn decide_paths<'d>(
        &self,
        known: &BTreeMap<String, IndexEntry>,
        by_path: &ByPath<'d>,
        heads: &Heads<'d>,
    ) -> (Decisions<'d>, usize) {
        let mut decisions: Decisions<'d> = Vec::new();
        let mut pending = 0;
        for (path, entries) in by_path {
            let previous = known.get(*path);
            let head = match heads.get(path) {
                Some(Ok(head)) => head.clone(),
                Some(Err(reason)) => {
                    decisions.push((
                        *path,
                        decide_unreadable(self.collection, path, previous, entries, reason),
                    ));
                    continue;
                }
                None => None,
            };
            let decision = decide(previous, entries, head.as_deref());
            if decision == Decision::Keep
                && head.is_some()
                && previous.is_none_or(|p| Some(&p.etag) != head.as_ref())
            {
                pending += 1;
            }
            decisions.push((*path, decision));
        }
        (decisions, pending)
    }

    /// New rows: the parts of the deltas that hold the winning entries.
    async fn read_winning_rows(
        &self,
        deltas: &[Delta],
        decisions: &Decisions<'_>,
    ) -> Result<HashMap<usize, Vec<VectorRow>>> {
        let wanted: BTreeSet<usize> = decisions
            .iter()
            .filter_map(|(_, d)| match d {
                Decision::Live(delta, ..) => Some(*delta),
                _ => None,
            })
            .collect();
        let output = self.output;
        stream::iter(
            wanted
                .iter()
                .map(|&d| {
                    let key = self.layout.delta_part(&deltas[d].id);
                    async move {
                        Ok::<_, Error>((
                            d,
                            parquet_io::read_rows(Dataset::Features, output.get(&key).await?)?,
                        ))
                    }
                    .boxed()
                })
                .collect::<Vec<_>>(),
        )
        .buffered(self.concurrency)
        .try_collect()
        .await
    }

    /// Builds every bucket of the new snapshot, `concurrency` at a time: the unchanged ones
    /// copied, the others rewritten.
    async fn build_buckets(
        &self,
        jobs: Vec<Job>,
        old: &OldIndex,
        touched: &HashSet<&str>,
        n: usize,
        snapshot: &str,
    ) -> Result<Vec<Built>> {
        stream::iter(
            jobs.into_iter()
                .map(|job| self.build_bucket(job, old, touched, n, snapshot).boxed())
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(self.concurrency)
        .try_collect()
        .await
    }

    /// One bucket of the new snapshot.
    async fn build_bucket(
        &self,
        job: Job,
        old: &OldIndex,
        touched: &HashSet<&str>,
        n: usize,
        snapshot: &str,
    ) -> Result<Built> {
        let (output, layout, prev) = (self.output, &self.layout, self.previous_id());
        let (bucket, source, entries, arriving) = match job {
            Job::Copy(bucket, info) => {
                if let Some(part) = &info.part {
                    output
                        .copy(
                            &format!("{}{part}", layout.results_prefix(&prev)),
                            &format!("{}{part}", layout.results_prefix(snapshot)),
                        )
                        .await?;
                }
                if info.entries > 0 {
                    output
                        .copy(
                            &layout.state_shard(&prev, bucket),
                            &layout.state_shard(snapshot, bucket),
                        )
                        .await?;
                }
                return Ok(Built {
                    bucket,
                    info,
                    gone: Vec::new(),
                    rewritten: false,
                });
            }
            Job::Rewrite {
                bucket,
                source,
                entries,
                arriving,
            } => (bucket, source, entries, arriving),
        };
        let (mut shard, rows) = match source {
            Source::Empty => (IndexShard::new(), Vec::new()),
            Source::Given(shard, rows) => (shard, rows),
            Source::Bucket(ob, shard) => {
                let manifest = old.manifest.as_ref().ok_or_else(|| {
                    Error::Invariant("a bucket to read without a manifest".into())
                })?;
                let info = &manifest.buckets[ob];
                let shard = match shard {
                    Some(shard) => shard,
                    None => read_shard(output, layout, &prev, ob, info).await?,
                };
                let rows = match &info.part {
                    Some(part) => parquet_io::read_rows(
                        Dataset::Features,
                        output
                            .get(&format!("{}{part}", layout.results_prefix(&prev)))
                            .await?,
                    )?,
                    None => Vec::new(),
                };
                let mine = |p: &str| n == manifest.buckets.len() || bucket_of(p, n) == bucket;
                (
                    shard.into_iter().filter(|(p, _)| mine(p)).collect(),
                    rows.into_iter().filter(|r| mine(&r.path)).collect(),
                )
            }
        };
        shard.retain(|p, _| !touched.contains(p.as_str()));
        let (gone, mut kept): (Vec<VectorRow>, Vec<VectorRow>) = rows
            .into_iter()
            .partition(|r| touched.contains(r.path.as_str()));
        shard.extend(entries);
        kept.extend(arriving);
        kept.sort_by(|a, b| a.path.cmp(&b.path));
        let part = (!kept.is_empty()).then(|| format!("b{bucket:05}-{snapshot}.parquet"));
        let mut live = 0;
        for entry in shard.values_mut().filter(|e| e.error.is_none()) {
            entry.part = part.clone();
            live += 1;
        }
        if live != kept.len() {
            return Err(Error::Invariant(format!(
                "collection {} bucket {bucket}: {live} live paths but {} rows",
                self.collection,
                kept.len()
            )));
        }
        if let Some(part) = &part {
            output
                .put(
                    &format!("{}{part}", layout.results_prefix(snapshot)),
                    parquet_io::write_rows(Dataset::Features, &kept)?,
                )
                .await?;
        }
        if !shard.is_empty() {
            output
                .put(
                    &layout.state_shard(snapshot, bucket),
                    serde_json::to_vec(&shard)?.into(),
                )
                .await?;
        }
        Ok(Built {
            bucket,
            info: BucketInfo {
                entries: shard.len(),
                rows: kept.len(),
                part,
            },
            gone,
            rewritten: true,
        })
    }
}

/// The changed paths, each with the delta entries that mention it.
fn group_by_path(deltas: &[Delta]) -> ByPath<'_> {
    let mut by_path: ByPath<'_> = BTreeMap::new();
    for (d, delta) in deltas.iter().enumerate() {
        for entry in &delta.entries {
            by_path.entry(entry.path()).or_default().push((d, entry));
        }
    }
    by_path
}

/// The built buckets as the new index's bucket list (in bucket order), with how many were
/// rewritten; the rows they dropped are removed from `sums`.
fn collect_buckets(
    built: Vec<Built>,
    n: usize,
    sums: &mut RunningSums,
) -> Result<(Vec<BucketInfo>, usize)> {
    let mut buckets = vec![BucketInfo::default(); n];
    let mut rewritten = 0;
    for b in built {
        let gone: Vec<&[f32]> = b.gone.iter().map(|r| r.values.as_slice()).collect();
        sums.remove(&gone)?;
        rewritten += usize::from(b.rewritten);
        buckets[b.bucket] = b.info;
    }
    Ok((buckets, rewritten))
}
