//! The refit: folds a collection's deltas into its state, fits the PCA, publishes a new
//! snapshot and points `current.json` at it. One attempt is a [`Refit`], run phase by phase
//! ([`Refit::run`]); the store calls happen in the same order whatever the phases' split.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
// Every future run in a stream below is boxed (`.boxed()`) and collected before it is
// streamed: the refit's future must be `Send` for callers that need it (reconcile), which
// rustc cannot prove for a stream that keeps closures over borrowed items
// (rust-lang/rust#110338).
use futures::FutureExt;
use tracing::{info, warn};

use super::decide::{
    apply_decisions, decide, decide_unreadable, refit_due, Decision, Decisions, Due,
};
use super::fit::{fit_statistics, Fit};
use super::snapshots::{
    delete_prefix, expire, part_name, publish_part, read_back_pointer, PointerWrite, Retention,
};
use super::{
    delta_time_ms, inbox_key, list_deltas, read_current, valid_collection, CollectionIndex,
    CollectionLayout, CurrentPointer, Delta, DeltaEntry, IndexEntry, RefitOptions, RefitOutcome,
    RefitSummary, PART_ROWS,
};
use crate::error::{Error, Result};
use crate::manifest::ImageError;
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::ports::store::{ObjectStore, StoreError};
use engine::pca::PcaModel;
use engine::stats::RunningSums;

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
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<RefitOutcome>> + Send + 'a>> {
    Box::pin(async move {
        for attempt in 1..=REFIT_ATTEMPTS {
            match refit_once(output, input, inbox, collection, options).await? {
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

async fn refit_once<S: ObjectStore, I: ObjectStore>(
    output: &S,
    input: &I,
    inbox: &str,
    collection: &str,
    options: &RefitOptions,
) -> Result<RefitOutcome> {
    Refit::new(output, input, inbox, collection, options)?
        .run()
        .await
}

/// Changed paths, each with the delta entries that mention it: (delta index, entry).
type ByPath<'d> = BTreeMap<&'d str, Vec<(usize, &'d DeltaEntry)>>;
/// The current content of each changed key: its ETag (`None`: gone), or why it cannot be
/// read for good.
type Heads<'d> = HashMap<&'d str, Result<Option<String>, String>>;
/// The previous snapshot's parts that lose rows: (the rows they keep, the rows leaving).
pub(super) type SplitParts = HashMap<String, (Vec<VectorRow>, Vec<VectorRow>)>;

/// One attempt at a refit: the stores, the collection and the options, and the pointer it
/// started from. [`Refit::run`] calls the phases in order.
struct Refit<'a, S, I> {
    output: &'a S,
    input: &'a I,
    inbox: &'a str,
    collection: &'a str,
    options: &'a RefitOptions,
    layout: CollectionLayout,
    /// Parts read, projected and written at once (at least 1).
    concurrency: usize,
    started: Instant,
    /// The published pointer and its entity tag, read first.
    current: Option<(CurrentPointer, String)>,
}

/// The state the previous snapshot left.
struct Previous {
    index: CollectionIndex,
    sums: Option<RunningSums>,
    seq: u64,
}

impl<'a, S: ObjectStore, I: ObjectStore> Refit<'a, S, I> {
    fn new(
        output: &'a S,
        input: &'a I,
        inbox: &'a str,
        collection: &'a str,
        options: &'a RefitOptions,
    ) -> Result<Self> {
        let started = Instant::now();
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
            layout: CollectionLayout::new(collection),
            concurrency: options.concurrency.max(1),
            started,
            current: None,
        })
    }

    /// The refit, phase by phase.
    async fn run(mut self) -> Result<RefitOutcome> {
        let delta_ids = match self.read_pointer().await? {
            ControlFlow::Continue(ids) => ids,
            ControlFlow::Break(outcome) => return Ok(outcome),
        };
        let Previous {
            mut index,
            sums,
            seq,
        } = self.read_state().await?;
        let deltas = self.read_deltas(&delta_ids).await?;
        let by_path = group_by_path(&deltas);
        let heads = self.head_changed(&by_path).await?;
        let resolve_s = self.started.elapsed().as_secs_f64();

        let fit_start = Instant::now();
        let (decisions, pending) = self.decide_paths(&index, &by_path, &heads);
        let mut split = self.split_leaving_parts(&index, &decisions).await?;
        let delta_rows = self.read_winning_rows(&deltas, &decisions).await?;
        let changes = apply_decisions(&mut index, &decisions, &delta_rows, &deltas)?;
        let mut fit = fit_statistics(sums, &split, &changes.arriving, &self.options.pca)?;
        let fit_s = fit_start.elapsed().as_secs_f64();

        // Publish: a new snapshot folder, complete with _SUCCESS, then the pointer.
        let publish_start = Instant::now();
        let seq = seq + 1;
        let snapshot = format!("{seq:08}-{:08x}", fastrand::u32(..));
        let model = fit.model.as_ref();
        let mut parts = self
            .carry_parts(&mut index, &mut split, &snapshot, seq, model)
            .await?;
        self.write_new_parts(&mut index, &mut parts, &changes.arriving, &snapshot, model)
            .await?;
        index.parts = parts;

        let errors = error_list(&index);
        let rows = self.live_rows(&index, &fit.sums)?;
        let published_at = crate::manifest::now_rfc3339();
        let mut summary = RefitSummary {
            collection: self.collection.to_string(),
            snapshot: snapshot.clone(),
            seq,
            rows,
            errors: errors.len(),
            deltas: deltas.len(),
            changed_paths: by_path.len(),
            added: changes.added,
            replaced: changes.replaced,
            removed: changes.removed,
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
        };
        self.write_documents(
            &snapshot,
            &fit,
            &errors,
            &index,
            &mut summary,
            publish_start,
        )
        .await?;
        let pointer = self.pointer(&snapshot, seq, fit.model.is_some(), published_at);
        match self.publish_pointer(&pointer).await? {
            PointerWrite::Ours => {}
            PointerWrite::Lost => {
                self.discard(&snapshot).await?;
                return Ok(RefitOutcome::LostRace);
            }
            // Never deleted when in doubt: retention removes it if no pointer names it.
            PointerWrite::NotLanded | PointerWrite::Unknown => return Ok(RefitOutcome::LostRace),
        }
        info!(
            collection = self.collection, %snapshot, seq, rows, errors = errors.len(),
            added = changes.added, replaced = changes.replaced, removed = changes.removed,
            pending, fit_s, publish_s = summary.publish_s, "collection published"
        );
        self.clean_up(&deltas, &snapshot).await?;
        Ok(RefitOutcome::Published(Box::new(summary)))
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

    /// The state the previous snapshot left (its index and running sums), if any.
    async fn read_state(&self) -> Result<Previous> {
        let output = self.output;
        Ok(match &self.current {
            Some((pointer, _)) => {
                let index: CollectionIndex = serde_json::from_slice(
                    &output
                        .get(&self.layout.state_index(&pointer.snapshot))
                        .await?,
                )?;
                let key = self.layout.state_sums(&pointer.snapshot);
                let sums = RunningSums::from_bytes(&output.get(&key).await?, &key)?;
                Previous {
                    index,
                    sums: Some(sums),
                    seq: pointer.seq,
                }
            }
            None => Previous {
                index: CollectionIndex::default(),
                sums: None,
                seq: 0,
            },
        })
    }

    /// The published snapshot's id (empty: none).
    fn previous_id(&self) -> String {
        self.current
            .as_ref()
            .map(|(p, _)| p.snapshot.clone())
            .unwrap_or_default()
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
        index: &CollectionIndex,
        by_path: &ByPath<'d>,
        heads: &Heads<'d>,
    ) -> (Decisions<'d>, usize) {
        let mut decisions: Decisions<'d> = Vec::new();
        let mut pending = 0;
        for (path, entries) in by_path {
            let previous = index.entries.get(*path);
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

    /// Rows leaving the live set: each part of the previous snapshot holding one is read
    /// once and split into the rows it keeps and the rows leaving (to subtract them).
    async fn split_leaving_parts(
        &self,
        index: &CollectionIndex,
        decisions: &Decisions<'_>,
    ) -> Result<SplitParts> {
        let mut leaving: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (path, decision) in decisions {
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
        let output = self.output;
        let prev_id = self.previous_id();
        stream::iter(
            leaving
                .iter()
                .map(|(part, paths)| {
                    let key = format!("{}{part}", self.layout.results_prefix(&prev_id));
                    async move {
                        let rows =
                            parquet_io::read_rows(Dataset::Features, output.get(&key).await?)?;
                        let (gone, kept): (Vec<VectorRow>, Vec<VectorRow>) =
                            rows.into_iter().partition(|r| paths.contains(&r.path));
                        Ok::<_, Error>((part.clone(), (kept, gone)))
                    }
                    .boxed()
                })
                .collect::<Vec<_>>(),
        )
        .buffered(self.concurrency)
        .try_collect()
        .await
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

    /// Carries the previous snapshot's parts into the new one: those that lose rows are
    /// rewritten without them (renamed `…-r<seq>`), the others are copied as they are; each
    /// with its projection. Renames the index's parts accordingly; returns the parts kept,
    /// with their row counts.
    async fn carry_parts(
        &self,
        index: &mut CollectionIndex,
        split: &mut SplitParts,
        snapshot: &str,
        seq: u64,
        model: Option<&PcaModel>,
    ) -> Result<BTreeMap<String, usize>> {
        let output = self.output;
        let old_parts: Vec<(String, usize)> =
            index.parts.iter().map(|(p, n)| (p.clone(), *n)).collect();
        let layout_ref = &self.layout;
        let prev_id = self.previous_id();
        let prev_ref = &prev_id;
        let carried: Vec<(String, String, usize)> = stream::iter(
            old_parts
                .into_iter()
                .map(|(part, _)| {
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
                                let name = format!("{}-r{seq}", part.trim_end_matches(".parquet"))
                                    + ".parquet";
                                let bytes = parquet_io::write_rows(Dataset::Features, &kept)?;
                                (name, kept, bytes)
                            }
                        };
                        if !rows.is_empty() {
                            publish_part(output, layout_ref, snapshot, &name, bytes, &rows, model)
                                .await?;
                        }
                        Ok::<_, Error>((part, name, rows.len()))
                    }
                    .boxed()
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(self.concurrency)
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
        Ok(parts)
    }

    /// Writes the arriving rows in new parts (with their projections) and points their index
    /// entries at them. A collection left empty still gets one (empty) part, so that its
    /// datasets are readable.
    async fn write_new_parts(
        &self,
        index: &mut CollectionIndex,
        parts: &mut BTreeMap<String, usize>,
        arriving: &[VectorRow],
        snapshot: &str,
        model: Option<&PcaModel>,
    ) -> Result<()> {
        let output = self.output;
        let layout_ref = &self.layout;
        let chunks: Vec<(String, &[VectorRow])> = arriving
            .chunks(PART_ROWS)
            .enumerate()
            .map(|(i, chunk)| (part_name(snapshot, i), chunk))
            .collect();
        for (name, chunk) in &chunks {
            for row in chunk.iter() {
                if let Some(entry) = index.entries.get_mut(&row.path) {
                    entry.part = Some(name.clone());
                }
            }
            parts.insert(name.clone(), chunk.len());
        }
        stream::iter(
            chunks
                .iter()
                .map(|(name, chunk)| {
                    async move {
                        let bytes = parquet_io::write_rows(Dataset::Features, chunk)?;
                        publish_part(output, layout_ref, snapshot, name, bytes, chunk, model).await
                    }
                    .boxed()
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(self.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
        parts.retain(|_, n| *n > 0);
        if parts.is_empty() {
            // An empty collection still publishes readable (empty) datasets.
            let name = part_name(snapshot, 0);
            let bytes = parquet_io::write_rows(Dataset::Features, &[])?;
            publish_part(output, &self.layout, snapshot, &name, bytes, &[], model).await?;
        }
        Ok(())
    }

    /// The live rows of the new index, checked against the statistics.
    fn live_rows(&self, index: &CollectionIndex, sums: &RunningSums) -> Result<usize> {
        let rows = index.entries.values().filter(|e| e.part.is_some()).count();
        if rows as u64 != sums.count {
            return Err(Error::Invariant(format!(
                "collection {}: {rows} live rows but statistics of {}",
                self.collection, sums.count
            )));
        }
        Ok(rows)
    }

    /// Completes the snapshot: its model, error list, state (index and sums), summary (with
    /// the publish and total times) and `_SUCCESS`, in that order.
    async fn write_documents(
        &self,
        snapshot: &str,
        fit: &Fit,
        errors: &[ImageError],
        index: &CollectionIndex,
        summary: &mut RefitSummary,
        publish_start: Instant,
    ) -> Result<()> {
        let (output, layout) = (self.output, &self.layout);
        if let Some(model) = &fit.model {
            output
                .put(
                    &layout.pca_model(snapshot),
                    serde_json::to_vec(model)?.into(),
                )
                .await?;
        }
        output
            .put(
                &layout.errors(snapshot),
                serde_json::to_vec_pretty(&errors)?.into(),
            )
            .await?;
        output
            .put(
                &layout.state_index(snapshot),
                serde_json::to_vec(index)?.into(),
            )
            .await?;
        output
            .put(&layout.state_sums(snapshot), fit.sums.to_bytes().into())
            .await?;
        summary.publish_s = publish_start.elapsed().as_secs_f64();
        summary.total_s = self.started.elapsed().as_secs_f64();
        output
            .put(
                &layout.summary(snapshot),
                serde_json::to_vec_pretty(&summary)?.into(),
            )
            .await?;
        output.put(&layout.success(snapshot), Bytes::new()).await?;
        Ok(())
    }

    /// The pointer to the new snapshot.
    fn pointer(
        &self,
        snapshot: &str,
        seq: u64,
        has_model: bool,
        published_at: String,
    ) -> CurrentPointer {
        let layout = &self.layout;
        CurrentPointer {
            collection: self.collection.to_string(),
            snapshot: snapshot.to_string(),
            seq,
            results: layout.results_prefix(snapshot),
            results_pca: layout.pca_prefix(snapshot),
            pca_model: has_model.then(|| layout.pca_model(snapshot)),
            summary: layout.summary(snapshot),
            errors: layout.errors(snapshot),
            published_at,
            published_at_ms: crate::manifest::unix_now_ms(),
        }
    }

    /// Points `current.json` at the new snapshot if it is still the pointer the refit started
    /// from (absent if there was none). An answer "changed" / "exists" or a transient error
    /// is read back: S3 may have applied the write and lost its response (then a retry finds
    /// the pointer already ours), so only the stored pointer and the published chain say who
    /// won. A write that did not land and failed is an error (the refit is retried).
    async fn publish_pointer(&self, pointer: &CurrentPointer) -> Result<PointerWrite> {
        let body: Bytes = serde_json::to_vec_pretty(pointer)?.into();
        let current = self.layout.current();
        let written = match &self.current {
            Some((_, etag)) => self.output.put_if_match(&current, body, etag).await,
            None => self.output.put_if_absent(&current, body).await,
        };
        let doubt = match written {
            Ok(true) => return Ok(PointerWrite::Ours),
            Ok(false) => None,
            Err(e) if e.is_transient() => Some(e),
            Err(e) => return Err(e.into()),
        };
        let read_back = read_back_pointer(self.output, &self.layout, pointer).await?;
        match (read_back, doubt) {
            (PointerWrite::NotLanded, Some(e)) => Err(e.into()),
            (PointerWrite::NotLanded, None) => Ok(PointerWrite::Unknown),
            (PointerWrite::Ours, _) => {
                info!(collection = self.collection, snapshot = %pointer.snapshot,
                    "the pointer write had landed (its answer was lost): published");
                Ok(PointerWrite::Ours)
            }
            (other, _) => Ok(other),
        }
    }

    /// Deletes the snapshot (and its state) of a refit that lost the race.
    async fn discard(&self, snapshot: &str) -> Result<()> {
        let collection = self.collection;
        info!(collection, %snapshot, "another refit published first: this snapshot is discarded");
        let (output, layout) = (self.output, &self.layout);
        delete_prefix(output, &layout.snapshot_prefix(snapshot), self.concurrency).await?;
        delete_prefix(
            output,
            &format!("{}{snapshot}/", layout.states_prefix()),
            self.concurrency,
        )
        .await?;
        Ok(())
    }

    /// After publishing: deletes the consumed deltas (documents first: they are the commit
    /// points), then what retention lets go (orphan snapshots first, then published ones
    /// past their time, and orphan delta parts).
    async fn clean_up(&self, deltas: &[Delta], _snapshot: &str) -> Result<()> {
        let (output, layout) = (self.output, &self.layout);
        for delta in deltas {
            output.delete(&layout.delta_doc(&delta.id)).await?;
            output.delete(&layout.delta_part(&delta.id)).await?;
        }
        let retention = Retention {
            keep: self.options.keep_snapshots.max(1),
            min_reader_ms: self.options.min_reader_ms,
            orphan_delta_grace_ms: self.options.orphan_delta_grace_ms,
            now_ms: crate::manifest::unix_now_ms(),
        };
        expire(output, layout, &retention, self.concurrency).await?;
        Ok(())
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

/// The error list of an index: its failed paths.
fn error_list(index: &CollectionIndex) -> Vec<ImageError> {
    index
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
        .collect()
}
