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

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::batch::inference::{Engine, ImageOutcome};
use crate::batch::listing::ImageFilter;
use crate::continuous::collection::{
    split_inbox_key, write_delta, Delta, DeltaEntry, RefitMessage,
};
use crate::error::Result;
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
}

/// The ingest handler, generic over the stores and the refit queue.
pub struct Ingestor<I, S, Q> {
    input: I,
    output: S,
    refit_queue: Q,
    engine: Engine,
    settings: IngestSettings,
}

struct Item {
    collection: String,
    path: String,
    label: String,
    state: State,
}

/// What a batch key to read is: (key, collection, path in the collection, label).
type Wanted = (String, String, String, String);

/// One delta per collection: its entries and the rows of its part.
type PerCollection = BTreeMap<String, (Vec<DeltaEntry>, Vec<VectorRow>)>;

enum State {
    /// Its bytes and ETag.
    Read(Bytes, String),
    /// A permanent read failure: its ETag if a HEAD gave one, and why.
    Unreadable(Option<String>, String),
    /// Deleted.
    Gone,
}

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

    /// Processes a batch of changed keys (in any order, duplicates allowed). Errors only on
    /// transient failures (the batch is then retried whole; it is idempotent); a key that
    /// cannot be read for good (access denied) becomes a failed entry, like a corrupt image.
    pub async fn ingest(&self, keys: &[String]) -> Result<IngestOutcome> {
        let mut outcome = IngestOutcome::default();
        let (wanted, refits) = self.sort_keys(keys, &mut outcome);
        let items = self.read_items(wanted).await?;
        let (outcomes, slots) = self.featurize(&items, &mut outcome).await?;
        let per_collection = group_deltas(items, slots, &outcomes, &mut outcome);
        self.write_deltas(per_collection, &mut outcome).await?;
        self.request_refits(refits, &mut outcome).await?;
        info!(?outcome, "ingest batch done");
        Ok(outcome)
    }

    /// The distinct keys of a batch: the images to read (key, collection, path, label) and
    /// the collections whose refit is asked for (`_refit`); the others are counted ignored.
    fn sort_keys(
        &self,
        keys: &[String],
        outcome: &mut IngestOutcome,
    ) -> (Vec<Wanted>, Vec<String>) {
        let mut distinct: Vec<&String> = keys.iter().collect();
        distinct.sort();
        distinct.dedup();
        outcome.keys = distinct.len();
        let mut wanted = Vec::new();
        let mut refits: Vec<String> = Vec::new();
        for key in distinct {
            let Some((collection, path, label)) = split_inbox_key(&self.settings.inbox, key) else {
                info!(key, "not in a collection of the inbox: ignored");
                outcome.ignored += 1;
                continue;
            };
            if path == REFIT_REQUEST_NAME {
                refits.push(collection);
                continue;
            }
            if !self.settings.filter.matches(key) {
                info!(key, "not an image (by its name): ignored");
                outcome.ignored += 1;
                continue;
            }
            wanted.push((key.clone(), collection, path, label));
        }
        (wanted, refits)
    }

    /// The current state of every key (order-free: whatever the events said).
    async fn read_items(&self, wanted: Vec<Wanted>) -> Result<Vec<Item>> {
        let items: Vec<Result<Item>> = stream::iter(wanted.into_iter().map(
            |(key, collection, path, label)| async move {
                let state = match self.input.get_versioned(&key).await {
                    Ok(v) => State::Read(v.body, v.etag),
                    Err(StoreError::NotFound(_)) => State::Gone,
                    // Throttling, 5xx, timeouts: the batch fails and SQS delivers it again
                    // (it is idempotent), dead-lettering it after maxReceiveCount.
                    Err(e) if e.is_transient() => return Err(e.into()),
                    // Access denied and the like: this object's fault, not the batch's. It
                    // goes to the collection's error list, under its ETag when a HEAD still
                    // gives one (e.g. a KMS key that refuses only the body).
                    Err(e) => match self.input.head(&key).await {
                        Ok(etag) => State::Unreadable(Some(etag), e.to_string()),
                        Err(StoreError::NotFound(_)) => State::Gone,
                        Err(h) if h.is_transient() => return Err(h.into()),
                        Err(_) => State::Unreadable(None, e.to_string()),
                    },
                };
                Ok(Item {
                    collection,
                    path,
                    label,
                    state,
                })
            },
        ))
        .buffered(self.settings.fetch_concurrency.max(1))
        .collect()
        .await;
        items.into_iter().collect::<Result<_>>()
    }

    /// Featurizes each distinct content once: the outcomes of the distinct contents, and
    /// each item's slot among them (`None`: not read).
    async fn featurize(
        &self,
        items: &[Item],
        outcome: &mut IngestOutcome,
    ) -> Result<(Vec<ImageOutcome>, Vec<Option<usize>>)> {
        let mut unique: Vec<(String, Result<Bytes, String>)> = Vec::new();
        let mut slot_of: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut slots: Vec<Option<usize>> = Vec::with_capacity(items.len());
        for item in items {
            slots.push(match &item.state {
                State::Read(body, _) => {
                    use sha2::{Digest, Sha256};
                    let digest = Sha256::digest(body).to_vec();
                    Some(*slot_of.entry(digest).or_insert_with(|| {
                        unique.push((item.path.clone(), Ok(body.clone())));
                        unique.len() - 1
                    }))
                }
                _ => None,
            });
        }
        outcome.inferred = unique.len();
        let outcomes = if unique.is_empty() {
            Vec::new()
        } else {
            let engine = self.engine.clone();
            let threads = if self.settings.threads > 0 {
                self.settings.threads
            } else {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            };
            let max_pixels = self.settings.max_pixels;
            let (paths, images): (Vec<String>, Vec<Result<Bytes, String>>) =
                unique.into_iter().unzip();
            tokio::task::spawn_blocking(move || {
                engine.featurize(&paths, &images, threads, max_pixels)
            })
            .await??
        };
        Ok((outcomes, slots))
    }

    /// Writes one delta per collection, then sends one delayed refit message per collection.
    async fn write_deltas(
        &self,
        per_collection: PerCollection,
        outcome: &mut IngestOutcome,
    ) -> Result<()> {
        let mut messages = Vec::new();
        for (collection, (entries, rows)) in per_collection {
            let delta = Delta {
                collection: collection.clone(),
                id: crate::continuous::collection::new_delta_id(),
                written_at_ms: crate::manifest::unix_now_ms(),
                entries,
            };
            write_delta(&self.output, &delta, &rows).await?;
            messages.push(serde_json::to_string(&RefitMessage {
                collection: collection.clone(),
                force: false,
            })?);
            outcome.collections.push(collection);
        }
        if !messages.is_empty() {
            self.refit_queue
                .send_delayed(messages, self.settings.quiet_s)
                .await?;
        }
        Ok(())
    }

    /// Sends a refit message (now, forced) per collection whose refit was asked for.
    async fn request_refits(
        &self,
        mut refits: Vec<String>,
        outcome: &mut IngestOutcome,
    ) -> Result<()> {
        refits.sort();
        refits.dedup();
        if !refits.is_empty() {
            let forced = refits
                .iter()
                .map(|c| {
                    serde_json::to_string(&RefitMessage {
                        collection: c.clone(),
                        force: true,
                    })
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            self.refit_queue.send_all(forced).await?;
            outcome.refit_requests = refits;
        }
        Ok(())
    }
}

/// One delta per collection: its entries and its part's rows, from the items and their
/// featurization outcomes.
fn group_deltas(
    items: Vec<Item>,
    slots: Vec<Option<usize>>,
    outcomes: &[ImageOutcome],
    outcome: &mut IngestOutcome,
) -> PerCollection {
    let mut per_collection: PerCollection = BTreeMap::new();
    for (item, slot) in items.into_iter().zip(slots) {
        let (entries, rows) = per_collection.entry(item.collection.clone()).or_default();
        let entry = match (item.state, slot.map(|s| &outcomes[s])) {
            (State::Read(_, etag), Some(ImageOutcome::Features(values))) => {
                outcome.upserts += 1;
                rows.push(VectorRow {
                    path: item.path.clone(),
                    label: item.label.clone(),
                    values: values.clone(),
                });
                DeltaEntry::Upsert {
                    path: item.path,
                    label: item.label,
                    etag,
                    row: rows.len() - 1,
                }
            }
            (State::Read(_, etag), Some(ImageOutcome::Failed(kind, reason))) => {
                outcome.failed += 1;
                DeltaEntry::Failed {
                    path: item.path,
                    label: item.label,
                    etag,
                    kind: *kind,
                    reason: reason.clone(),
                }
            }
            (State::Unreadable(etag, reason), _) => {
                outcome.failed += 1;
                DeltaEntry::Failed {
                    path: item.path,
                    label: item.label,
                    // No ETag: the refit, which cannot HEAD it either, takes this entry.
                    etag: etag.unwrap_or_default(),
                    kind: ImageErrorKind::Fetch,
                    reason,
                }
            }
            _ => {
                outcome.removed += 1;
                DeltaEntry::Removed { path: item.path }
            }
        };
        entries.push(entry);
    }
    per_collection
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_notification_bodies_parse() {
        let created = r#"{"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "inbox%2Fc%2Fa%2Fx+1.jpg", "size": 5}}},
            {"eventName": "ObjectRemoved:Delete", "s3": {"object": {"key": "inbox/c/a/y.jpg"}}},
            {"eventName": "ObjectRestore:Post", "s3": {"object": {"key": "inbox/c/a/z.jpg"}}}]}"#;
        assert_eq!(
            parse_ingest_body(created).unwrap().unwrap(),
            IngestBody::S3(vec!["inbox/c/a/x 1.jpg".into(), "inbox/c/a/y.jpg".into()])
        );
        let test = r#"{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}"#;
        assert_eq!(
            parse_ingest_body(test).unwrap().unwrap(),
            IngestBody::S3Test
        );
        assert!(parse_ingest_body(r#"{"run_id": "r", "shard": 1}"#).is_none());
        assert!(parse_ingest_body("not json").is_none());
        assert!(parse_ingest_body(r#"{"Records": [{"s3": {}}]}"#)
            .unwrap()
            .is_err());
    }
}
