//! Continuous ingestion: objects created or removed under the inbox prefix are featurized as
//! they land. A batch of keys (S3 event notifications through SQS on AWS, file-system events
//! locally) is read in its *current* state — its bytes and ETag, or gone — so the order of
//! the events does not matter; the images are featurized on the batch code path (identical
//! features); each collection touched gets one delta ([`crate::continuous::collection::Delta`]) and a
//! delayed refit message, so the PCA is refitted once the collection is quiet.
//!
//! An object named `_refit` in a collection's folder (`inbox/<c>/_refit`) asks for a refit
//! now instead of featurizing anything.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::batch::guard::classify_fetch_error;
use crate::batch::inference::{Engine, ImageOutcome};
use crate::batch::listing::ImageFilter;
use crate::continuous::collection::{
    split_inbox_key, write_delta, Delta, DeltaEntry, RefitMessage,
};
use crate::error::{Error, Result};
use crate::notification::decode_s3_key;
use crate::notification::S3Notification;
use crate::parquet_io::VectorRow;
use crate::ports::queue::Queue;
use crate::ports::store::{ObjectStore, StoreError};
use engine::preprocess::ImageErrorKind;

/// The file name that asks for a refit of its collection.
pub const REFIT_REQUEST_NAME: &str = "_refit";

/// How the ingestor works.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// The inbox prefix (`inbox/`; empty: the store's root holds the collections).
    pub inbox: String,
    /// Which keys are images.
    pub filter: ImageFilter,
    /// The decompression-bomb guard.
    pub max_pixels: u64,
    /// Inference threads (0: all cores).
    pub threads: usize,
    /// Concurrent reads.
    pub fetch_concurrency: usize,
    /// Quiet time before a refit (s); the refit message is delayed by it (SQS: at most 900).
    pub quiet_s: u32,
}

/// What the body of an ingest-queue message is.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestBody {
    /// S3 notifications: the keys created or removed (decoded).
    S3(Vec<String>),
    /// The `s3:TestEvent` S3 sends when the notification is configured.
    S3Test,
}

/// Parses an S3 event notification body; `None` when the body is not one (a shard message).
pub fn parse_ingest_body(body: &str) -> Option<Result<IngestBody>> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    if value.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Some(Ok(IngestBody::S3Test));
    }
    value.get("Records")?;
    Some(
        serde_json::from_value::<S3Notification>(value)
            .map(|n| {
                IngestBody::S3(
                    n.records
                        .iter()
                        .filter(|r| {
                            r.event_name.as_deref().is_some_and(|e| {
                                e.starts_with("ObjectCreated") || e.starts_with("ObjectRemoved")
                            })
                        })
                        .map(|r| decode_s3_key(&r.s3.object.key))
                        .collect(),
                )
            })
            .map_err(Into::into),
    )
}

/// What one ingest batch did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestOutcome {
    /// Distinct keys in the batch.
    pub keys: usize,
    /// Featurized (one row each in the next view).
    pub upserts: usize,
    /// Permanent failures, unreadable or not featurizable (the collection's error list).
    pub failed: usize,
    /// Gone when read.
    pub removed: usize,
    /// Not under the inbox, or not an image: ignored.
    pub ignored: usize,
    /// Images run through the model (identical bytes in a batch are featurized once).
    pub inferred: usize,
    /// Collections that got a delta.
    pub collections: Vec<String>,
    /// Collections whose refit was asked for (`_refit`).
    pub refit_requests: Vec<String>,
    /// Keys left for a later attempt after a transient failure (throttling, 5xx, a dropped
    /// connection, a full disk): nothing was recorded for them; the caller tries them again
    /// (on SQS, their records are reported as batch item failures).
    #[serde(default)]
    pub retry: Vec<String>,
}

/// What [`Ingestor::ingest_each`] did, key by key: the outcome, and the keys to try again
/// with the error that stopped each.
#[derive(Debug, Default)]
pub struct IngestReport {
    /// The counts (its `retry` lists the keys of `errors`).
    pub outcome: IngestOutcome,
    /// Each key left for a later attempt, with why.
    pub errors: Vec<(String, Error)>,
}

impl IngestReport {
    fn retry(&mut self, key: String, error: Error) {
        warn!(key, error = %error, "left for a later attempt");
        self.outcome.retry.push(key.clone());
        self.errors.push((key, error));
    }
}

/// The ingest handler, generic over the stores and the refit queue.
pub struct Ingestor<I, S, Q> {
    input: I,
    output: S,
    refit_queue: Q,
    engine: Engine,
    settings: IngestSettings,
}

/// A key to read.
struct Wanted {
    key: String,
    collection: String,
    /// Its path in the collection.
    path: String,
    label: String,
}

/// A key as it was read.
struct Item {
    wanted: Wanted,
    state: State,
}

enum State {
    /// Its bytes and ETag.
    Read(Bytes, String),
    /// A permanent read failure: its ETag if a HEAD gave one, its kind and why.
    Unreadable(Option<String>, ImageErrorKind, String),
    /// Deleted.
    Gone,
}

/// One collection's part of a batch: its delta's entries, the rows of its part, the keys
/// it covers and their counts.
#[derive(Default)]
struct Pending {
    entries: Vec<DeltaEntry>,
    rows: Vec<VectorRow>,
    keys: Vec<String>,
    upserts: usize,
    failed: usize,
    removed: usize,
}

/// The featurization outcomes of the contents seen so far in a batch, by SHA-256.
type Seen = HashMap<[u8; 32], ImageOutcome>;

impl<I: ObjectStore, S: ObjectStore, Q: Queue> Ingestor<I, S, Q> {
    /// An ingestor reading the inbox in `input` and writing collections to `output`.
    pub fn new(
        input: I,
        output: S,
        refit_queue: Q,
        engine: Engine,
        settings: IngestSettings,
    ) -> Self {
        Self {
            input,
            output,
            refit_queue,
            engine,
            settings,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &IngestSettings {
        &self.settings
    }

    /// The output store.
    pub fn output(&self) -> &S {
        &self.output
    }

    /// The input store.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// Processes a batch of changed keys (in any order, duplicates allowed), as one unit:
    /// like [`Ingestor::ingest_each`], but any key left for a later attempt makes it an
    /// error (the first one's), after the others were recorded. Retrying the whole batch is
    /// safe: it is idempotent.
    pub async fn ingest(&self, keys: &[String]) -> Result<IngestOutcome> {
        let report = self.ingest_each(keys).await;
        match report.errors.into_iter().next() {
            Some((_, error)) => Err(error),
            None => Ok(report.outcome),
        }
    }

    /// Processes a batch of changed keys (in any order, duplicates allowed), each on its
    /// own: a key is featurized, recorded as failed (a permanent cause: undecodable, access
    /// denied, archived, or an image that crashes the decoder) or as gone, or left for a
    /// later attempt (a transient cause), without affecting the others. Each collection
    /// touched gets one delta and one delayed refit message.
    ///
    /// Memory is bounded: the keys are read `fetch_concurrency` at a time and featurized in
    /// chunks of that size, so at most about twice that many bodies are held at once.
    pub async fn ingest_each(&self, keys: &[String]) -> IngestReport {
        let mut report = IngestReport::default();
        let (wanted, refits) = self.sort_keys(keys, &mut report.outcome);
        let width = self.settings.fetch_concurrency.max(1);
        let mut reads = stream::iter(wanted)
            .map(|w| self.read_guarded(w))
            .buffered(width)
            .chunks(width);
        let mut per_collection: BTreeMap<String, Pending> = BTreeMap::new();
        let mut seen = Seen::new();
        while let Some(chunk) = reads.next().await {
            let mut items = Vec::with_capacity(chunk.len());
            for read in chunk {
                match read {
                    Ok(item) => items.push(item),
                    Err((key, error)) => report.retry(key, error),
                }
            }
            match self.featurize(&items, &mut seen, &mut report.outcome).await {
                Ok(outcomes) => {
                    for (item, image) in items.into_iter().zip(outcomes) {
                        let pending = per_collection
                            .entry(item.wanted.collection.clone())
                            .or_default();
                        pending.add(item, image.as_ref());
                    }
                }
                // The engine itself failed (not one image): these keys are tried again.
                Err(error) => {
                    let reason = error.to_string();
                    for item in items {
                        report.retry(item.wanted.key, Error::RunState(reason.clone()));
                    }
                }
            }
        }
        self.write_deltas(per_collection, &mut report).await;
        self.request_refits(refits, &mut report).await;
        info!(outcome = ?report.outcome, "ingest batch done");
        report
    }

    /// The distinct keys of a batch: the images to read and the `_refit` requests (key,
    /// collection); the others are counted ignored.
    fn sort_keys(
        &self,
        keys: &[String],
        outcome: &mut IngestOutcome,
    ) -> (Vec<Wanted>, Vec<(String, String)>) {
        let mut distinct: Vec<&String> = keys.iter().collect();
        distinct.sort();
        distinct.dedup();
        outcome.keys = distinct.len();
        let mut wanted = Vec::new();
        let mut refits = Vec::new();
        for key in distinct {
            let Some((collection, path, label)) = split_inbox_key(&self.settings.inbox, key) else {
                info!(key, "not in a collection of the inbox: ignored");
                outcome.ignored += 1;
                continue;
            };
            if path == REFIT_REQUEST_NAME {
                refits.push((key.clone(), collection));
                continue;
            }
            if !self.settings.filter.matches(key) {
                info!(key, "not an image (by its name): ignored");
                outcome.ignored += 1;
                continue;
            }
            wanted.push(Wanted {
                key: key.clone(),
                collection,
                path,
                label,
            });
        }
        (wanted, refits)
    }

    /// Reads one key in its current state (order-free: whatever the events said). A panic
    /// while reading it (a bug in a store adapter, say) is this key's permanent failure,
    /// recorded with its ETag when a HEAD still gives one; a transient failure leaves it
    /// for a later attempt.
    async fn read_guarded(&self, wanted: Wanted) -> std::result::Result<Item, (String, Error)> {
        let read = AssertUnwindSafe(self.read_state(&wanted.key))
            .catch_unwind()
            .await;
        let state = match read {
            Ok(Ok(state)) => state,
            Ok(Err(error)) => return Err((wanted.key, error)),
            Err(payload) => {
                let reason = format!("reading it panicked: {}", panic_message(&*payload));
                let head = AssertUnwindSafe(self.input.head(&wanted.key))
                    .catch_unwind()
                    .await;
                let etag = head.ok().and_then(|h| h.ok());
                State::Unreadable(etag, ImageErrorKind::Fetch, reason)
            }
        };
        Ok(Item { wanted, state })
    }

    /// The current state of one key. A cause that is permanent for this object (access
    /// denied, archived: [`classify_fetch_error`]) is its failure, recorded under its ETag
    /// when a HEAD still gives one (e.g. a KMS key that refuses only the body); a transient
    /// cause, or one that is not the object's own (bad credentials), is returned: the key is
    /// tried again later (on SQS its record is delivered again, and dead-lettered after
    /// maxReceiveCount).
    async fn read_state(&self, key: &str) -> Result<State> {
        // An object over the byte limit is refused before its body is read (`too_large`).
        let limit = crate::manifest::DEFAULT_MAX_IMAGE_BYTES;
        let error = match self.input.get_bounded(key, "", limit).await {
            Ok(v) => return Ok(State::Read(v.body, v.etag)),
            Err(StoreError::NotFound(_)) => return Ok(State::Gone),
            Err(e) => e,
        };
        let failure = classify_fetch_error(error)?;
        Ok(match self.input.head(key).await {
            Ok(etag) => State::Unreadable(Some(etag), failure.kind, failure.reason),
            Err(StoreError::NotFound(_)) => State::Gone,
            Err(h) if h.is_transient() => return Err(h.into()),
            Err(_) => State::Unreadable(None, failure.kind, failure.reason),
        })
    }

    /// Featurizes the read items of a chunk, each distinct content once in the batch: one
    /// outcome per item (`None`: not read).
    async fn featurize(
        &self,
        items: &[Item],
        seen: &mut Seen,
        outcome: &mut IngestOutcome,
    ) -> Result<Vec<Option<ImageOutcome>>> {
        use sha2::{Digest, Sha256};
        let digests: Vec<Option<[u8; 32]>> = items
            .iter()
            .map(|item| match &item.state {
                State::Read(body, _) => Some(Sha256::digest(body).into()),
                _ => None,
            })
            .collect();
        let mut new: Vec<[u8; 32]> = Vec::new();
        let (mut paths, mut images) = (Vec::new(), Vec::new());
        for (item, digest) in items.iter().zip(&digests) {
            if let (State::Read(body, _), Some(d)) = (&item.state, digest) {
                if !seen.contains_key(d) && !new.contains(d) {
                    new.push(*d);
                    paths.push(item.wanted.path.clone());
                    images.push(Ok(body.clone()));
                }
            }
        }
        if !new.is_empty() {
            outcome.inferred += new.len();
            let engine = self.engine.clone();
            let threads = match self.settings.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            };
            let max_pixels = self.settings.max_pixels;
            let outcomes = tokio::task::spawn_blocking(move || {
                featurize_isolated(
                    |p, i, t| engine.featurize(p, i, t, max_pixels),
                    &paths,
                    &images,
                    threads,
                )
            })
            .await??;
            seen.extend(new.into_iter().zip(outcomes));
        }
        Ok(digests
            .iter()
            .map(|d| d.and_then(|d| seen.get(&d).cloned()))
            .collect())
    }

    /// Writes one delta per collection, then sends its delayed refit message. A collection
    /// whose delta or message could not be written leaves its keys for a later attempt (the
    /// delta, if written, is harmless: a later one records the same contents again).
    async fn write_deltas(
        &self,
        per_collection: BTreeMap<String, Pending>,
        report: &mut IngestReport,
    ) {
        for (collection, pending) in per_collection {
            let delta = Delta {
                collection: collection.clone(),
                id: crate::continuous::collection::new_delta_id(),
                written_at_ms: crate::manifest::unix_now_ms(),
                entries: pending.entries,
                model_sha256: Some(self.engine.sha256().to_string()),
            };
            let written = async {
                write_delta(&self.output, &delta, &pending.rows).await?;
                let message = serde_json::to_string(&RefitMessage {
                    collection: collection.clone(),
                    force: false,
                })?;
                self.refit_queue
                    .send_delayed(vec![message], self.settings.quiet_s)
                    .await?;
                Ok::<_, Error>(())
            }
            .await;
            match written {
                Ok(()) => {
                    let outcome = &mut report.outcome;
                    outcome.upserts += pending.upserts;
                    outcome.failed += pending.failed;
                    outcome.removed += pending.removed;
                    outcome.collections.push(collection);
                }
                Err(error) => {
                    let reason = error.to_string();
                    for key in pending.keys {
                        report.retry(key, Error::RunState(reason.clone()));
                    }
                }
            }
        }
    }

    /// Sends a refit message (now, forced) per collection whose refit was asked for.
    async fn request_refits(&self, refits: Vec<(String, String)>, report: &mut IngestReport) {
        let mut collections: Vec<String> = refits.iter().map(|(_, c)| c.clone()).collect();
        collections.sort();
        collections.dedup();
        if collections.is_empty() {
            return;
        }
        let forced = collections
            .iter()
            .map(|c| {
                serde_json::to_string(&RefitMessage {
                    collection: c.clone(),
                    force: true,
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>();
        let sent = match forced {
            Ok(bodies) => self.refit_queue.send_all(bodies).await.map_err(Error::from),
            Err(e) => Err(e.into()),
        };
        match sent {
            Ok(()) => report.outcome.refit_requests = collections,
            Err(error) => {
                let reason = error.to_string();
                for (key, _) in refits {
                    report.retry(key, Error::RunState(reason.clone()));
                }
            }
        }
    }
}

impl Pending {
    /// Adds what one item is to the delta: its features, its failure, or gone.
    fn add(&mut self, item: Item, image: Option<&ImageOutcome>) {
        let Wanted {
            key, path, label, ..
        } = item.wanted;
        self.keys.push(key);
        let entry = match (item.state, image) {
            (State::Read(_, etag), Some(ImageOutcome::Features(values))) => {
                self.upserts += 1;
                self.rows.push(VectorRow {
                    path: path.clone(),
                    label: label.clone(),
                    values: values.clone(),
                });
                DeltaEntry::Upsert {
                    path,
                    label,
                    etag,
                    row: self.rows.len() - 1,
                }
            }
            (State::Read(_, etag), Some(ImageOutcome::Failed(kind, reason))) => {
                self.failed += 1;
                DeltaEntry::Failed {
                    path,
                    label,
                    etag,
                    kind: *kind,
                    reason: reason.clone(),
                }
            }
            (State::Unreadable(etag, kind, reason), _) => {
                self.failed += 1;
                DeltaEntry::Failed {
                    path,
                    label,
                    // No ETag: the refit, which cannot HEAD it either, takes this entry.
                    etag: etag.unwrap_or_default(),
                    kind,
                    reason,
                }
            }
            _ => {
                self.removed += 1;
                DeltaEntry::Removed { path }
            }
        };
        self.entries.push(entry);
    }
}

/// Featurizes a chunk of images with `run` (paths, images, threads), so that an image that
/// panics the engine is that image's failure, not the chunk's: when the chunk panics, its
/// images are run again one by one and the one that panics gets a `decode` failure with the
/// panic's message. Any other error of the engine is returned.
///
/// Decoding and resizing already run under the per-image guard of the batch path
/// ([`crate::batch::guard::catch_panic`]), inside the engine; this is the second line, for a
/// panic anywhere else on an inference thread (the model itself), which would otherwise
/// fail the whole chunk on every delivery.
fn featurize_isolated(
    run: impl Fn(&[String], &[Result<Bytes, String>], usize) -> Result<Vec<ImageOutcome>>,
    paths: &[String],
    images: &[Result<Bytes, String>],
    threads: usize,
) -> Result<Vec<ImageOutcome>> {
    // A panic on an inference thread reaches us as the engine's "thread panicked" error.
    let panicked = |e: &Error| matches!(e, Error::RunState(m) if m.contains("panicked"));
    let guarded =
        |p: &[String], i: &[Result<Bytes, String>], t: usize| match std::panic::catch_unwind(
            AssertUnwindSafe(|| run(p, i, t)),
        ) {
            Ok(Err(e)) if panicked(&e) => Err(Ok(e.to_string())),
            Ok(result) => result.map_err(Err),
            Err(payload) => Err(Ok(panic_message(&*payload))),
        };
    match guarded(paths, images, threads) {
        Ok(outcomes) => return Ok(outcomes),
        Err(Err(error)) => return Err(error),
        Err(Ok(message)) => warn!(message, "an image of the chunk panicked: isolating it"),
    }
    paths
        .iter()
        .zip(images)
        .map(|(path, image)| {
            match guarded(std::slice::from_ref(path), std::slice::from_ref(image), 1) {
                Ok(mut outcomes) => Ok(outcomes
                    .pop()
                    .ok_or_else(|| Error::RunState(format!("no outcome for {path}")))?),
                Err(Err(error)) => Err(error),
                Err(Ok(message)) => Ok(ImageOutcome::Failed(
                    ImageErrorKind::Decode,
                    format!("the decoder crashed on this image (a panic): {message}"),
                )),
            }
        })
        .collect()
}

/// The message of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
#[path = "ingest_tests.rs"]
mod tests;
