//! Reconcile: a collection's inbox against its index. Events can be lost for good — a batch
//! dead-lettered after its retries, objects uploaded before the notifications existed, an
//! object that failed for a cause since fixed — and nothing else would ever bring those
//! paths into the view. A reconcile lists the inbox folder and the published index (with
//! the deltas waiting for a refit) and repairs every difference:
//!
//! - **missing**: an image in the inbox with no entry and no pending change (never
//!   ingested: a lost create, or there before the first deploy — the backfill);
//! - **changed**: an image whose content is not the one the index has (a lost overwrite);
//! - **stale**: an index entry whose object is gone (a lost delete);
//! - **retried**: a failed entry whose cause may be gone (not in the bytes: access denied,
//!   an archived object, too large for the limit then in force, the model failing, a
//!   decoder crash).
//!
//! Each difference is repaired through the ingest path, as if its event had arrived: by a
//! [`Repair`] — in process ([`InProcessRepair`], with the model) or by sending S3-shaped
//! notifications to the ingest queue of a deployed stack ([`QueueRepair`]). When anything
//! changed (or deltas were waiting), a refit is asked for. The reconcile then records what
//! it did in `collections/<c>/reconcile.json` ([`last_reconcile`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::batch::listing::ImageFilter;
use crate::continuous::collection::{
    inbox_key, list_deltas, read_current, read_index, refit, split_inbox_key, valid_collection,
    CollectionIndex, CollectionLayout, Delta, DeltaEntry, RefitMessage, RefitOptions, RefitOutcome,
};
use crate::continuous::ingest::{Ingestor, REFIT_REQUEST_NAME};
use crate::error::{Error, Result};
use crate::ports::queue::Queue;
use crate::ports::store::{ObjectStore, StoreError};
use engine::preprocess::ImageErrorKind;

/// Paths kept as examples of each kind of repair in the record.
pub const RECONCILE_EXAMPLES: usize = 5;
/// Keys handed to the ingestor at once by [`InProcessRepair`] (one delta each): bounds the
/// features held in memory during a large backfill.
pub const REPAIR_CHUNK: usize = 256;
/// Attempts of [`InProcessRepair`] at a key that keeps failing transiently.
pub const REPAIR_ATTEMPTS: usize = 3;

/// Where a collection's last reconcile is recorded: `collections/<c>/reconcile.json`.
pub fn reconcile_key(collection: &str) -> String {
    format!(
        "{}reconcile.json",
        CollectionLayout::new(collection).prefix()
    )
}

/// One kind of repair: how many paths, and a few of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fixed {
    /// How many.
    pub count: usize,
    /// The first few paths (at most [`RECONCILE_EXAMPLES`]).
    pub examples: Vec<String>,
}

impl Fixed {
    fn add(&mut self, path: &str) {
        self.count += 1;
        if self.examples.len() < RECONCILE_EXAMPLES {
            self.examples.push(path.to_string());
        }
    }
}

/// What a [`Repair`] did with the keys it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairOutcome {
    /// Keys handed over.
    pub keys: usize,
    /// Featurized (in process).
    pub upserts: usize,
    /// Recorded as failed (in process).
    pub failed: usize,
    /// Recorded as gone (in process).
    pub removed: usize,
    /// Sent to the ingest queue (a deployed stack's featurizer ingests them).
    pub queued: usize,
    /// Still failing transiently after the attempts: the next reconcile takes them again.
    pub left: Fixed,
}

/// What a reconcile found and repaired, in `collections/<c>/reconcile.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconcileRecord {
    /// The collection.
    pub collection: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// When it finished (Unix ms).
    pub finished_at_ms: u64,
    /// Images in the inbox folder.
    pub listed: usize,
    /// Paths in the published index (live and failed).
    pub indexed: usize,
    /// Deltas waiting for a refit when it started.
    pub pending_deltas: usize,
    /// In the inbox, never ingested (a lost create, or there before the notifications).
    pub missing: Fixed,
    /// In the inbox with another content than the index's (a lost overwrite).
    pub changed: Fixed,
    /// In the index, gone from the inbox (a lost delete).
    pub stale: Fixed,
    /// Failed entries tried again: their cause may be gone.
    pub retried: Fixed,
    /// What the repair did.
    pub repair: RepairOutcome,
    /// The refit asked for (when something was repaired or deltas were waiting), and what
    /// became of it.
    pub refit: Option<String>,
}

impl ReconcileRecord {
    /// Paths repaired (missing, changed, stale and retried).
    pub fn repaired(&self) -> usize {
        self.missing.count + self.changed.count + self.stale.count + self.retried.count
    }
}

/// How a reconcile brings keys into a collection: the ingest path, here or on a stack.
/// (The futures are not declared `Send`: an implementation's own are, when its stores' are,
/// and callers that know it see that.)
pub trait Repair: Send + Sync {
    /// Brings these inbox keys into the collection in their current state (featurized,
    /// failed or gone), as their events would have.
    fn repair(&self, keys: Vec<String>) -> impl Future<Output = Result<RepairOutcome>>;
    /// Asks for a refit of `collection`; says what became of it.
    fn refit(&self, collection: &str) -> impl Future<Output = Result<String>>;
}

/// Repairs in this process: the ingestor featurizes the keys (a delta per
/// [`REPAIR_CHUNK`] keys; transient failures tried [`REPAIR_ATTEMPTS`] times), and the
/// refit runs here at once.
pub struct InProcessRepair<'a, I, S, Q> {
    /// The ingestor (its stores are the inbox and the collections).
    pub ingestor: &'a Ingestor<I, S, Q>,
    /// How to refit (its `quiet_ms` is ignored: a reconcile refits now).
    pub options: RefitOptions,
}

impl<I: ObjectStore, S: ObjectStore, Q: Queue> Repair for InProcessRepair<'_, I, S, Q> {
    async fn repair(&self, keys: Vec<String>) -> Result<RepairOutcome> {
        let mut outcome = RepairOutcome {
            keys: keys.len(),
            ..Default::default()
        };
        let mut todo = keys;
        for attempt in 1..=REPAIR_ATTEMPTS {
            let mut again = Vec::new();
            for chunk in todo.chunks(REPAIR_CHUNK) {
                let report = self.ingestor.ingest_each(chunk).await;
                outcome.upserts += report.outcome.upserts;
                outcome.failed += report.outcome.failed;
                outcome.removed += report.outcome.removed;
                again.extend(report.outcome.retry);
            }
            todo = again;
            if todo.is_empty() {
                break;
            }
            if attempt < REPAIR_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
        }
        for key in &todo {
            outcome.left.add(key);
        }
        Ok(outcome)
    }

    async fn refit(&self, collection: &str) -> Result<String> {
        let options = RefitOptions {
            quiet_ms: None,
            ..self.options.clone()
        };
        let (output, input) = (self.ingestor.output(), self.ingestor.input());
        let inbox = &self.ingestor.settings().inbox;
        Ok(
            match refit(output, input, inbox, collection, &options).await? {
                RefitOutcome::Published(s) => {
                    format!("published snapshot {} (refit {})", s.snapshot, s.seq)
                }
                RefitOutcome::NothingToDo => "nothing to publish".into(),
                other => format!("not published: {other:?}"),
            },
        )
    }
}

/// Repairs on a deployed stack: each key is sent to the ingest queue as an S3 notification
/// of its own (the featurizer ingests it, record by record, and asks for the refit); the
/// refit is asked for with a refit message subject to the quiet time and the staleness
/// bound (it is due at once when the waiting deltas are stale, e.g. after a refit was
/// dead-lettered).
pub struct QueueRepair<Q, R> {
    /// The ingest queue.
    pub ingest_queue: Q,
    /// The refit queue (`None`: the ingest path asks for the refit).
    pub refit_queue: Option<R>,
}

impl<Q: Queue, R: Queue> Repair for QueueRepair<Q, R> {
    async fn repair(&self, keys: Vec<String>) -> Result<RepairOutcome> {
        let bodies: Vec<String> = keys.iter().map(|k| notification_body(k)).collect();
        let n = bodies.len();
        self.ingest_queue.send_all(bodies).await?;
        Ok(RepairOutcome {
            keys: n,
            queued: n,
            ..Default::default()
        })
    }

    async fn refit(&self, collection: &str) -> Result<String> {
        let Some(queue) = &self.refit_queue else {
            return Ok("asked for by the ingest of the repaired keys".into());
        };
        let message = serde_json::to_string(&RefitMessage {
            collection: collection.to_string(),
            force: false,
        })?;
        queue.send_all(vec![message]).await?;
        Ok("requested (refit queue)".into())
    }
}

/// The body of an S3 `ObjectCreated` notification for `key` (percent-encoded as S3 does),
/// marked as coming from a reconcile. The ingest reads the key's current state whatever the
/// event says, so a stale key's notification works as well.
pub fn notification_body(key: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    serde_json::json!({
        "Records": [{
            "eventSource": "featurize:reconcile",
            "eventName": "ObjectCreated:Reconcile",
            "s3": {"object": {"key": utf8_percent_encode(key, KEEP).to_string()}}
        }]
    })
    .to_string()
}

/// What the index and the waiting deltas say about the paths.
struct Known {
    index: CollectionIndex,
    /// Path → the contents (ETag; `None`: gone) the waiting deltas recorded for it.
    pending: HashMap<String, Vec<Option<String>>>,
    pending_deltas: usize,
}

/// Reconciles `collection`: lists its inbox folder (`inbox` + collection + `/`) in `input`
/// and its index in `output`, repairs every difference through `repair`, asks for a refit
/// when anything was repaired or deltas were waiting, and records what it did
/// ([`reconcile_key`]). `filter` says which keys are images (as the ingest's).
pub async fn reconcile<I: ObjectStore, S: ObjectStore, R: Repair>(
    input: &I,
    output: &S,
    inbox: &str,
    collection: &str,
    filter: &ImageFilter,
    repair: &R,
) -> Result<ReconcileRecord> {
    if !valid_collection(collection) {
        return Err(Error::InvalidRequest(format!(
            "{collection:?} is not a collection name"
        )));
    }
    let mut record = ReconcileRecord {
        collection: collection.to_string(),
        started_at: crate::manifest::now_rfc3339(),
        ..Default::default()
    };
    let listed = list_images(input, inbox, collection, filter).await?;
    record.listed = listed.len();
    let known = read_known(output, collection).await?;
    record.indexed = known.index.entries.len();
    record.pending_deltas = known.pending_deltas;
    let etags = current_etags(input, listed).await?;

    let mut keys = Vec::new();
    for (path, etag) in &etags {
        let entry = known.index.entries.get(path);
        let pending = known.pending.get(path.as_str());
        let coming = pending.is_some_and(|p| p.iter().any(|e| e.as_deref() == Some(etag)));
        let fixed = match entry {
            Some(e) if &e.etag == etag => match &e.error {
                Some((kind, reason)) if !coming && cause_may_be_gone(*kind, reason) => {
                    &mut record.retried
                }
                _ => continue,
            },
            _ if coming => continue,
            Some(_) => &mut record.changed,
            None => &mut record.missing,
        };
        fixed.add(path);
        keys.push(inbox_key(inbox, collection, path));
    }
    for path in known.index.entries.keys() {
        let going = known
            .pending
            .get(path.as_str())
            .is_some_and(|p| p.iter().any(Option::is_none));
        if !etags.contains_key(path) && !going {
            record.stale.add(path);
            keys.push(inbox_key(inbox, collection, path));
        }
    }
    info!(
        collection,
        listed = record.listed,
        indexed = record.indexed,
        missing = record.missing.count,
        changed = record.changed.count,
        stale = record.stale.count,
        retried = record.retried.count,
        "reconcile: differences found"
    );
    if !keys.is_empty() {
        record.repair = repair.repair(keys).await?;
    }
    if record.repaired() > 0 || record.pending_deltas > 0 {
        record.refit = Some(repair.refit(collection).await?);
    }
    if record.repair.left.count > 0 {
        warn!(collection, left = ?record.repair.left, "reconcile: keys still failing");
    }
    record.finished_at = crate::manifest::now_rfc3339();
    record.finished_at_ms = crate::manifest::unix_now_ms();
    output
        .put(
            &reconcile_key(collection),
            serde_json::to_vec_pretty(&record)?.into(),
        )
        .await?;
    Ok(record)
}

/// Forgets a collection's view before a rebuild (`featurize reconcile --rebuild`): deletes
/// its pointer, snapshots, states and waiting deltas, so that the reconcile that follows
/// finds every image of the inbox missing and ingests it again with the current model (the
/// remedy for a collection whose features come from two models). Its reconcile and refit
/// records stay. Returns how many objects were deleted.
pub async fn forget_view<S: ObjectStore>(output: &S, collection: &str) -> Result<usize> {
    if !valid_collection(collection) {
        return Err(Error::InvalidRequest(format!(
            "{collection:?} is not a collection name"
        )));
    }
    let layout = CollectionLayout::new(collection);
    output.delete(&layout.current()).await?;
    let mut deleted = 1;
    for prefix in [
        layout.deltas_prefix(),
        layout.snapshots_prefix(),
        layout.states_prefix(),
    ] {
        for object in output.list(&prefix).await? {
            output.delete(&object.key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The collections of an inbox: the first folder of every key under it.
pub async fn inbox_collections<I: ObjectStore>(input: &I, inbox: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = input
        .list(inbox)
        .await?
        .into_iter()
        .filter_map(|o| split_inbox_key(inbox, &o.key).map(|(c, ..)| c))
        .collect();
    names.dedup();
    Ok(names)
}

/// The last reconcile of a collection, if any ran.
pub async fn last_reconcile<S: ObjectStore>(
    store: &S,
    collection: &str,
) -> Result<Option<ReconcileRecord>> {
    match store.get(&reconcile_key(collection)).await {
        Ok(body) => Ok(Some(serde_json::from_slice(&body)?)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a failure of this content may go away on another attempt: its cause was not in
/// the bytes (access denied, archived, unreadable, too large for the limit then in force,
/// the model failing, a decoder crash). Empty, unsupported and undecodable images fail the
/// same way every time.
fn cause_may_be_gone(kind: ImageErrorKind, reason: &str) -> bool {
    match kind {
        ImageErrorKind::Empty | ImageErrorKind::Unsupported => false,
        ImageErrorKind::Decode => reason.contains("panic"),
        _ => true,
    }
}

/// The images of the inbox folder: path in the collection → the listed version.
async fn list_images<I: ObjectStore>(
    input: &I,
    inbox: &str,
    collection: &str,
    filter: &ImageFilter,
) -> Result<BTreeMap<String, (String, String)>> {
    let prefix = inbox_key(inbox, collection, "");
    Ok(input
        .list(&prefix)
        .await?
        .into_iter()
        .filter(|o| filter.matches(&o.key))
        .filter_map(|o| {
            let (c, path, _) = split_inbox_key(inbox, &o.key)?;
            (c == collection && path != REFIT_REQUEST_NAME).then_some((path, (o.key, o.version)))
        })
        .collect())
}

/// The published index (empty without a view) and the contents the waiting deltas hold.
async fn read_known<S: ObjectStore>(output: &S, collection: &str) -> Result<Known> {
    let layout = CollectionLayout::new(collection);
    let index = match read_current(output, &layout).await? {
        Some((pointer, _)) => read_index(output, &layout, &pointer.snapshot).await?,
        None => CollectionIndex::default(),
    };
    let ids = list_deltas(output, &layout).await?;
    let mut pending: HashMap<String, Vec<Option<String>>> = HashMap::new();
    let deltas: Vec<Option<Delta>> = stream::iter(ids.iter().map(|id| {
        let key = layout.delta_doc(id);
        async move {
            match output.get(&key).await {
                Ok(body) => Ok(Some(serde_json::from_slice::<Delta>(&body)?)),
                Err(StoreError::NotFound(_)) => Ok(None), // consumed meanwhile
                Err(e) => Err(Error::from(e)),
            }
        }
    }))
    .buffered(16)
    .try_collect()
    .await?;
    for entry in deltas.iter().flatten().flat_map(|d| &d.entries) {
        let content = match entry {
            DeltaEntry::Removed { .. } => None,
            other => other.etag().map(String::from),
        };
        pending
            .entry(entry.path().to_string())
            .or_default()
            .push(content);
    }
    Ok(Known {
        index,
        pending,
        pending_deltas: ids.len(),
    })
}

/// The current ETag of every listed image. A listing that gives ETags (S3) is taken as it
/// is; otherwise (a local folder lists size and modification time) each object is HEADed.
/// An object gone meanwhile is left out.
async fn current_etags<I: ObjectStore>(
    input: &I,
    listed: BTreeMap<String, (String, String)>,
) -> Result<BTreeMap<String, String>> {
    let listing_has_etags = match listed.values().next() {
        Some((key, version)) => match input.head(key).await {
            Ok(etag) => &etag == version,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(_) => false, // gone or unreadable: HEAD them all
        },
        None => true,
    };
    if listing_has_etags {
        return Ok(listed.into_iter().map(|(p, (_, v))| (p, v)).collect());
    }
    let heads: Vec<Option<(String, String)>> =
        stream::iter(listed.into_iter().map(|(path, (key, _))| async move {
            match input.head(&key).await {
                Ok(etag) => Ok(Some((path, etag))),
                Err(StoreError::NotFound(_)) => Ok(None),
                // Unreadable for good: compared with an empty ETag (what the ingest records
                // when it cannot HEAD a key either).
                Err(e) if !e.is_transient() => Ok(Some((path, String::new()))),
                Err(e) => Err(Error::from(e)),
            }
        }))
        .buffer_unordered(16)
        .try_collect()
        .await?;
    Ok(heads.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::inference::Engine;
    use crate::continuous::ingest::{parse_ingest_body, IngestBody, IngestSettings};
    use crate::ports::queue::{Drain, InProcessQueue};
    use crate::ports::store::FsStore;
    use crate::test_util::block;
    use bytes::Bytes;

    fn ingestor<'q>(
        store: &FsStore,
        queue: &'q InProcessQueue,
    ) -> Ingestor<FsStore, FsStore, &'q InProcessQueue> {
        Ingestor::new(
            store.clone(),
            store.clone(),
            queue,
            Engine::Synthetic { dim: 4 },
            IngestSettings {
                inbox: "inbox/".into(),
                filter: ImageFilter::new("*.jpg").unwrap(),
                max_pixels: 1 << 20,
                threads: 1,
                fetch_concurrency: 4,
                quiet_s: 0,
            },
        )
    }

    fn options() -> RefitOptions {
        RefitOptions {
            pca: engine::pca::PcaOptions {
                k: 2,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Every kind of difference, found and repaired in process; changes already waiting in
    /// a delta are not repaired twice; a second reconcile finds nothing.
    #[test]
    fn differences_are_found_and_repaired() {
        block(async {
            let dir = tempfile::tempdir().unwrap();
            let store = FsStore::new(dir.path());
            let queue = InProcessQueue::new();
            let ingestor = ingestor(&store, &queue);
            let repair = InProcessRepair {
                ingestor: &ingestor,
                options: options(),
            };
            let filter = ImageFilter::new("*.jpg").unwrap();
            let key = |i: usize| format!("inbox/c/l{}/{i}.jpg", i % 2);
            for i in 0..6 {
                store.put(&key(i), Bytes::from(key(i))).await.unwrap();
            }
            store.put("inbox/c/notes.txt", Bytes::new()).await.unwrap();
            store.put("inbox/c/_refit", Bytes::new()).await.unwrap();
            // The backfill: nothing ingested yet.
            let first = reconcile(&store, &store, "inbox/", "c", &filter, &repair)
                .await
                .unwrap();
            assert_eq!(
                (first.listed, first.indexed, first.missing.count),
                (6, 0, 6)
            );
            assert_eq!(first.repair.upserts, 6);
            assert!(first.refit.as_deref().unwrap().starts_with("published"));

            // Lost events: a new image, a delete, an overwrite; a failure whose cause is
            // gone (a denied read, folded by a refit); a change already waiting in a delta.
            store.put(&key(6), Bytes::from(key(6))).await.unwrap();
            store.delete(&key(0)).await.unwrap();
            store
                .put(&key(1), Bytes::from_static(b"new"))
                .await
                .unwrap();
            store.put(&key(8), Bytes::from(key(8))).await.unwrap();
            let denied = Delta {
                collection: "c".into(),
                id: crate::continuous::collection::new_delta_id(),
                written_at_ms: 0,
                entries: vec![DeltaEntry::Failed {
                    path: "l0/8.jpg".into(),
                    label: "l0".into(),
                    etag: store.head(&key(8)).await.unwrap(),
                    kind: ImageErrorKind::AccessDenied,
                    reason: "access denied".into(),
                }],
                model_sha256: None,
            };
            crate::continuous::collection::write_delta(&store, &denied, &[])
                .await
                .unwrap();
            let RefitOutcome::Published(s) = refit(&store, &store, "inbox/", "c", &options())
                .await
                .unwrap()
            else {
                panic!("not published")
            };
            assert_eq!((s.rows, s.errors), (6, 1));
            store.put(&key(7), Bytes::from(key(7))).await.unwrap();
            ingestor.ingest(&[key(7)]).await.unwrap();

            let second = reconcile(&store, &store, "inbox/", "c", &filter, &repair)
                .await
                .unwrap();
            assert_eq!(second.missing.examples, ["l0/6.jpg"]);
            assert_eq!(second.stale.examples, ["l0/0.jpg"]);
            assert_eq!(second.changed.examples, ["l1/1.jpg"]);
            assert_eq!(second.retried.examples, ["l0/8.jpg"]);
            assert_eq!(second.pending_deltas, 1, "key 7's delta");
            assert_eq!(
                (second.repair.upserts, second.repair.removed),
                (3, 1),
                "{second:?}"
            );
            let status = crate::continuous::collection::collection_status(&store, "c")
                .await
                .unwrap();
            assert_eq!(status.pending_deltas, 0, "the refit folded everything");
            let summary = status.summary.unwrap();
            assert_eq!((summary.rows, summary.errors), (8, 0), "{summary:?}");
            assert_eq!(last_reconcile(&store, "c").await.unwrap(), Some(second));

            let third = reconcile(&store, &store, "inbox/", "c", &filter, &repair)
                .await
                .unwrap();
            assert_eq!((third.repaired(), third.refit.as_deref()), (0, None));
        });
    }

    /// Through a queue: one S3-shaped notification per key, which the ingest parses back
    /// to the key, and a refit message (not forced: the quiet time and the staleness bound
    /// decide).
    #[test]
    fn repairs_sent_to_the_queues_are_notifications_the_ingest_reads() {
        block(async {
            let (ingest, refits) = (InProcessQueue::new(), InProcessQueue::new());
            let repair = QueueRepair {
                ingest_queue: &ingest,
                refit_queue: Some(&refits),
            };
            let keys = vec!["inbox/c/a b/x+1 é.jpg".to_string(), "inbox/c/y.jpg".into()];
            let outcome = repair.repair(keys.clone()).await.unwrap();
            assert_eq!((outcome.keys, outcome.queued), (2, 2));
            let parsed: Vec<String> = ingest
                .drain()
                .await
                .unwrap()
                .iter()
                .flat_map(|body| match parse_ingest_body(body).unwrap().unwrap() {
                    IngestBody::S3(keys) => keys,
                    IngestBody::S3Test => Vec::new(),
                })
                .collect();
            assert_eq!(parsed, keys);
            repair.refit("c").await.unwrap();
            let message: RefitMessage = serde_json::from_str(&refits.pop().unwrap()).unwrap();
            assert_eq!(
                message,
                RefitMessage {
                    collection: "c".into(),
                    force: false
                }
            );
        });
    }
}
