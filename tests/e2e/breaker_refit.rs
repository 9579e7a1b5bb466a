//! Breaker tests for the bucketed refit and the fanned-out projection: overlapping
//! fanned-out refits, late and duplicate projection messages. Each scenario ends with the
//! view compared to a batch over the live objects (features bit-identical, PCA within 1e-6).

use std::collections::BTreeMap;

use pipeline::continuous::collection::{
    list_deltas, read_current, CollectionLayout, RefitMessage, RefitOptions,
};
use pipeline::parquet_io::{self, Dataset, VectorRow};
use pipeline::ports::queue::{Drain, InProcessQueue};
use pipeline::ports::store::{Bytes, FsStore, ObjectStore};

use crate::common::block;

fn k2() -> RefitOptions {
    RefitOptions {
        pca: engine::pca::PcaOptions {
            k: 2,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A collection on a local folder, its ingestor's queue, the reducer and its refit queue.
/// The reducer sees the folder through `S` (a faulty store, say); uploads, ingests and the
/// checks go to the folder itself.
struct Rig<S: ObjectStore + Clone = FsStore> {
    store: FsStore,
    ingest_queue: InProcessQueue,
    refit_queue: InProcessQueue,
    refitter: aws::lambda::Refitter<S>,
    reducer: pipeline::batch::reducer::Reducer<S>,
    _dir: tempfile::TempDir,
}

fn fanout_options() -> RefitOptions {
    RefitOptions {
        part_rows: 16,
        fanout_parts: 4,
        parts_per_message: 5,
        concurrency: 1,
        keep_snapshots: 2,
        ..k2()
    }
}

impl Rig<FsStore> {
    fn new() -> Self {
        Rig::with(|s| s, fanout_options())
    }
}

impl<S: ObjectStore + Clone> Rig<S> {
    /// The reducer's store is `wrap` of the folder.
    fn with(wrap: impl FnOnce(FsStore) -> S, options: RefitOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let seen = wrap(store.clone());
        Self {
            refitter: aws::lambda::Refitter {
                store: seen.clone(),
                inbox: "inbox/".into(),
                quiet_ms: 0,
                options,
            },
            reducer: pipeline::batch::reducer::Reducer::new(
                seen,
                pipeline::batch::reducer::ReducerSettings::default(),
            ),
            store,
            ingest_queue: InProcessQueue::new(),
            refit_queue: InProcessQueue::new(),
            _dir: dir,
        }
    }

    /// Uploads and ingests these keys; returns the refit messages the ingest sent.
    async fn upload(&self, keys: &[String]) -> Vec<String> {
        for k in keys {
            self.store.put(k, Bytes::from(k.clone())).await.unwrap();
        }
        let ingestor = pipeline::continuous::ingest::Ingestor::new(
            self.store.clone(),
            self.store.clone(),
            &self.ingest_queue,
            pipeline::batch::inference::Engine::Synthetic { dim: 6 },
            pipeline::continuous::ingest::IngestSettings {
                inbox: "inbox/".into(),
                filter: pipeline::batch::listing::ImageFilter::new("*.jpg").unwrap(),
                max_pixels: 1 << 20,
                threads: 1,
                fetch_concurrency: 4,
                quiet_s: 0,
            },
        );
        ingestor.ingest(keys).await.unwrap();
        self.ingest_queue.drain().await.unwrap()
    }

    /// The reducer (and its refitter) see the folder through `wrap` from now on (a new
    /// fault plan, say).
    fn rewire(&mut self, wrap: impl FnOnce(FsStore) -> S) {
        let seen = wrap(self.store.clone());
        self.refitter.store = seen.clone();
        self.reducer = pipeline::batch::reducer::Reducer::new(
            seen,
            pipeline::batch::reducer::ReducerSettings::default(),
        );
    }

    /// Delivers these refit-queue bodies to the reducer in one invocation.
    async fn invoke(&self, bodies: &[String]) -> aws_lambda_events::event::sqs::SqsBatchResponse {
        aws::lambda::handle_reducer_invocation(
            &self.reducer,
            Some(&self.refitter),
            Some(&self.refit_queue),
            refit_queue_event(bodies),
            "t",
            None,
        )
        .await
    }

    /// Delivers these refit-queue bodies to the reducer; asserts none failed.
    async fn deliver(&self, bodies: &[String]) {
        let response = self.invoke(bodies).await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
    }

    /// Delivers these bodies; returns those reported failed (SQS delivers them again).
    async fn deliver_failing(&self, bodies: &[String]) -> Vec<String> {
        let response = self.invoke(bodies).await;
        response
            .batch_item_failures
            .iter()
            .map(|f| {
                let i: usize = f
                    .item_identifier
                    .strip_prefix('m')
                    .unwrap()
                    .parse()
                    .unwrap();
                bodies[i].clone()
            })
            .collect()
    }

    /// What the reducer sent to the refit queue since the last call.
    async fn sent(&self) -> Vec<String> {
        self.refit_queue.drain().await.unwrap()
    }

    /// Delivers everything on the refit queue until it stays empty (as SQS would).
    async fn settle(&self) {
        for _ in 0..20 {
            let bodies = self.sent().await;
            if bodies.is_empty() {
                return;
            }
            self.deliver(&bodies).await;
        }
        panic!("the refit queue never settled");
    }
}

fn forced() -> String {
    serde_json::to_string(&RefitMessage {
        collection: "c".into(),
        force: true,
    })
    .unwrap()
}

fn keys(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("inbox/c/l{}/{i:04}.jpg", i % 4))
        .collect()
}

/// The SQS event of these bodies on the refit queue.
fn refit_queue_event(bodies: &[String]) -> aws_lambda_events::event::sqs::SqsEvent {
    let records: Vec<serde_json::Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            serde_json::json!({
                "messageId": format!("m{i}"),
                "receiptHandle": format!("r{i}"),
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:refit",
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
}

/// The published view equals a batch over `live` (inbox keys): every live path once,
/// features bit-identical to the synthetic engine's, PCA within 1e-6 of a fit from scratch;
/// and no delta left waiting.
async fn assert_view_exact(store: &FsStore, live: &[String]) {
    let layout = CollectionLayout::new("c");
    let (pointer, _) = read_current(store, &layout).await.unwrap().unwrap();
    let mut features: BTreeMap<String, VectorRow> = BTreeMap::new();
    for o in store.list(&pointer.results).await.unwrap() {
        for r in parquet_io::read_rows(Dataset::Features, store.get(&o.key).await.unwrap()).unwrap()
        {
            assert!(features.insert(r.path.clone(), r).is_none(), "a path twice");
        }
    }
    let expected: Vec<String> = live
        .iter()
        .map(|k| k.strip_prefix("inbox/c/").unwrap().to_string())
        .collect();
    let got: Vec<String> = features.keys().cloned().collect();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(
        got.len(),
        want.len(),
        "view has {} rows, live objects {} (missing: {:?}); deltas waiting: {:?}",
        got.len(),
        want.len(),
        want.iter()
            .filter(|p| !features.contains_key(*p))
            .collect::<Vec<_>>(),
        list_deltas(store, &layout).await.unwrap()
    );
    assert_eq!(got, want);
    crate::refit::assert_rows_and_pca_exact(store, &pointer, &features).await;
    assert!(
        list_deltas(store, &layout).await.unwrap().is_empty(),
        "deltas left waiting with nothing on the refit queue"
    );
}

/// BREAK. Two refits overlap on a fanned-out collection (steady uploads on a collection of
/// more than `fanout_parts` parts: the projection of refit 1 is still on the queue when the
/// next upload's refit message arrives). Refit 1 (S1, folds the first 300) and refit 2 (S1b,
/// same refit number, folds the 300 and one more upload) both fan out. S1's projection
/// finishes first and publishes; its retention then removes S1b as an orphan (same refit
/// number, not in the chain) — publication document included. S1b's projection messages
/// find no publication document and end as `Nothing`: no forced refit is sent, so the one
/// upload only S1b had folded waits in staging with no message to refit it (until another
/// upload or the daily reconcile), past any staleness bound.
#[test]
fn overlapping_fanned_out_refits_lose_no_change() {
    block(async {
        let rig = Rig::new();
        let first = keys(0..300);
        rig.upload(&first).await;
        // Refit 1 fans out.
        rig.deliver(&[forced()]).await;
        let projections_1 = rig.sent().await;
        assert!(projections_1.iter().all(|b| b.contains("\"project\"")));
        // An upload lands while refit 1 is projecting; its own refit message arrives.
        let late = keys(300..301);
        let messages = rig.upload(&late).await;
        assert!(!messages.is_empty(), "the ingest asks for a refit");
        rig.deliver(&messages).await;
        let projections_2 = rig.sent().await;
        assert!(
            projections_2.iter().all(|b| b.contains("\"project\"")),
            "refit 2 fans out too: {projections_2:?}"
        );
        // Refit 1's projection completes first and publishes; its retention removes S1b
        // (same refit number, never published) with its publication document.
        rig.deliver(&projections_1).await;
        let layout = CollectionLayout::new("c");
        let s1b = snapshot_of(&projections_2[0]);
        let left = rig
            .store
            .list(&format!("{}{s1b}/", layout.states_prefix()))
            .await
            .unwrap();
        assert!(left.is_empty(), "S1b's state was kept: {left:?}");
        // Then refit 2's projection messages, and whatever the reducer asks for after.
        rig.deliver(&projections_2).await;
        rig.settle().await;
        let live: Vec<String> = first.iter().chain(&late).cloned().collect();
        assert_view_exact(&rig.store, &live).await;
    });
}

/// HOLDS (pointer): a late duplicate of a published snapshot's projection messages, after a
/// later refit published on top of it, never moves the pointer back (If-Match on the ETag
/// the old refit replaced, and the read-back finds it in the chain) and asks no refit.
#[test]
fn a_late_projection_message_never_moves_the_pointer_back() {
    block(async {
        let rig = Rig::new();
        let first = keys(0..300);
        rig.upload(&first).await;
        rig.deliver(&[forced()]).await;
        let projections_1 = rig.sent().await;
        rig.deliver(&projections_1).await;
        rig.settle().await;
        let layout = CollectionLayout::new("c");
        let (p1, _) = read_current(&rig.store, &layout).await.unwrap().unwrap();
        let more = keys(300..310);
        rig.deliver(&rig.upload(&more).await).await;
        rig.settle().await;
        let (p2, _) = read_current(&rig.store, &layout).await.unwrap().unwrap();
        assert!(p2.seq > p1.seq);
        // S1's projection messages again, twice, late.
        let mut late = projections_1.clone();
        late.extend(projections_1.iter().cloned());
        rig.deliver(&late).await;
        assert!(rig.sent().await.is_empty(), "no refit asked");
        let (now, _) = read_current(&rig.store, &layout).await.unwrap().unwrap();
        assert_eq!(now.snapshot, p2.snapshot, "the pointer moved");
        let live: Vec<String> = first.iter().chain(&more).cloned().collect();
        assert_view_exact(&rig.store, &live).await;
    });
}

/// BREAK (minor). "A reader reads the pointer and then only that snapshot, which never
/// changes": a late duplicate projection message of a published snapshot publishes it again
/// and rewrites its `summary.json` (new `publish_s` / `total_s`) — a published snapshot's
/// document changes under its readers.
#[test]
fn a_late_projection_message_leaves_a_published_snapshot_unchanged() {
    block(async {
        let rig = Rig::new();
        rig.upload(&keys(0..300)).await;
        rig.deliver(&[forced()]).await;
        let projections = rig.sent().await;
        rig.deliver(&projections).await;
        rig.settle().await;
        let layout = CollectionLayout::new("c");
        let (pointer, _) = read_current(&rig.store, &layout).await.unwrap().unwrap();
        let before = rig.store.get(&pointer.summary).await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        rig.deliver(&projections[..1]).await;
        let after = rig.store.get(&pointer.summary).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&before),
            String::from_utf8_lossy(&after),
            "a published snapshot's summary was rewritten"
        );
    });
}

/// HOLDS (no resurrection). The reverse order of the overlap above: refit 2's projection
/// (the superset) publishes first; refit 1's messages then lose (read back: another snapshot
/// at their refit number), discard S1 and ask a forced refit; a late duplicate of S1's
/// messages after the discard finds no publication document and does nothing. S1 leaves
/// no file behind and the view is exact.
#[test]
fn a_projection_that_lost_the_race_is_discarded_and_never_resurrected() {
    block(async {
        let rig = Rig::new();
        let first = keys(0..300);
        rig.upload(&first).await;
        rig.deliver(&[forced()]).await;
        let projections_1 = rig.sent().await;
        let s1 = snapshot_of(&projections_1[0]);
        let late = keys(300..301);
        let messages = rig.upload(&late).await;
        rig.deliver(&messages).await;
        let projections_2 = rig.sent().await;
        rig.deliver(&projections_2).await;
        let layout = CollectionLayout::new("c");
        let (p2, _) = read_current(&rig.store, &layout).await.unwrap().unwrap();
        assert_eq!(p2.snapshot, snapshot_of(&projections_2[0]));
        rig.deliver(&projections_1).await;
        rig.settle().await;
        rig.deliver(&projections_1).await;
        rig.settle().await;
        let (now, _) = read_current(&rig.store, &layout).await.unwrap().unwrap();
        assert_ne!(now.snapshot, s1);
        for prefix in [layout.snapshots_prefix(), layout.states_prefix()] {
            let left: Vec<String> = rig
                .store
                .list(&format!("{prefix}{s1}/"))
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect();
            assert!(left.is_empty(), "the discarded snapshot left {left:?}");
        }
        let live: Vec<String> = first.iter().chain(&late).cloned().collect();
        assert_view_exact(&rig.store, &live).await;
    });
}

fn snapshot_of(project_body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(project_body).unwrap();
    v["project"]["snapshot"].as_str().unwrap().to_string()
}

/// HOLDS (ack loss and duplicates on every write of the refit and projection path). Every
/// write under the collection's folder — the copies carrying unchanged buckets, the
/// documents, `publish.json`, the projected parts, `_SUCCESS`, the pointer (first and later
/// publication), the deletes of consumed deltas and retention — loses its first answer
/// (under the production retry layer) or is applied twice; two fanned-out refits, the second
/// with one change (so it copies 31 of 32 buckets), then a third after the bucket count
/// doubles. With `keep_snapshots` 1 and no reader time, retention deletes the older
/// snapshots: hard-linked parts the new snapshot carried must survive. The view is exact.
#[test]
fn every_write_of_a_fanned_out_refit_survives_ack_loss_and_duplicates() {
    use aws::retry::{RetryPolicy, Retrying};
    use testkit::faults::{Faults, Selector};
    block(async {
        for variant in ["ack loss", "applied twice"] {
            let faults = match variant {
                "ack loss" => Faults::ack_loss(
                    Selector::every_write()
                        .on_key("collections/c/")
                        .once_per_request(),
                ),
                _ => Faults::duplicate_apply(Selector::every_write().on_key("collections/c/")),
            };
            let policy = RetryPolicy {
                attempts: 4,
                base_delay: std::time::Duration::from_millis(1),
                max_delay: std::time::Duration::from_millis(2),
            };
            let rig = Rig::with(
                |s| Retrying::new(faults.store(s), policy),
                RefitOptions {
                    keep_snapshots: 1,
                    min_reader_ms: 0,
                    ..fanout_options()
                },
            );
            let mut live = keys(0..300);
            rig.upload(&live).await;
            rig.deliver(&[forced()]).await;
            rig.settle().await;
            assert_view_exact(&rig.store, &live).await;
            let one = keys(300..301);
            rig.deliver(&rig.upload(&one).await).await;
            rig.settle().await;
            live.extend(one);
            assert_view_exact(&rig.store, &live).await;
            let one_change = current_summary(&rig.store).await;
            assert_eq!(one_change["buckets"], 32, "{variant}: {one_change}");
            assert_eq!(
                one_change["buckets_rewritten"], 1,
                "{variant}: {one_change}"
            );
            // Past twice the target per bucket: the bucket count doubles.
            let many = keys(301..1400);
            rig.deliver(&rig.upload(&many).await).await;
            rig.settle().await;
            live.extend(many);
            assert_view_exact(&rig.store, &live).await;
            let doubled = current_summary(&rig.store).await;
            assert!(
                doubled["buckets"].as_u64().unwrap() > 32,
                "{variant}: {doubled}"
            );
            assert!(
                faults.acks_lost() + faults.duplicated() > 100,
                "{variant}: faults hit {} writes",
                faults.acks_lost() + faults.duplicated()
            );
            let layout = CollectionLayout::new("c");
            let snapshots: std::collections::BTreeSet<String> = rig
                .store
                .list(&layout.snapshots_prefix())
                .await
                .unwrap()
                .into_iter()
                .filter_map(|o| {
                    o.key
                        .strip_prefix(&layout.snapshots_prefix())?
                        .split('/')
                        .next()
                        .map(String::from)
                })
                .collect();
            assert_eq!(snapshots.len(), 1, "{variant}: {snapshots:?}");
        }
    });
}

/// The published snapshot's `summary.json`.
async fn current_summary(store: &FsStore) -> serde_json::Value {
    let layout = CollectionLayout::new("c");
    let (pointer, _) = read_current(store, &layout).await.unwrap().unwrap();
    serde_json::from_slice(&store.get(&pointer.summary).await.unwrap()).unwrap()
}

/// The reducer's store in the tests of a refused pointer write: the production retry layer
/// over a fault plan.
type Flaky = aws::retry::Retrying<testkit::faults::FaultyStore<FsStore>>;

/// HOLDS (liveness: a pointer write refused without landing is retried). The store answers
/// the conditional write of `current.json` "precondition failed" once without applying it
/// (as S3 answers 409 `ConditionalRequestConflict` to a write that raced another conditional
/// write in progress, which then failed too), and the read-back finds the pointer still the
/// one the refit started from. Acked as "in doubt", the folded deltas would wait with no
/// message pending; instead the publishing message fails, SQS delivers it again and the
/// publication is retried: the first publication (`If-None-Match`) and a later one
/// (`If-Match`), fanned out (the last projection message publishes; its redelivery publishes
/// the same snapshot) and in process (the refit message; its redelivery refits again and
/// retention removes the abandoned snapshot), with and without the retry's pointer write
/// losing its answer (ack loss under the retry layer). Between the failure and the
/// redelivery an upload lands that the refit did not fold: the retried publication deletes
/// only the deltas it folded. Each publication takes exactly one refit number, a late
/// duplicate of the failed message moves nothing, and the view is exact.
#[test]
fn a_refused_pointer_write_fails_the_message_and_its_redelivery_publishes() {
    block(async {
        for fanned_out in [true, false] {
            for ack_loss in [false, true] {
                let variant = format!(
                    "{}, {}",
                    if fanned_out {
                        "fanned out"
                    } else {
                        "in process"
                    },
                    if ack_loss {
                        "ack lost on the retry"
                    } else {
                        "retry answered"
                    }
                );
                let options = if fanned_out {
                    fanout_options()
                } else {
                    RefitOptions {
                        fanout_parts: usize::MAX,
                        ..fanout_options()
                    }
                };
                let faults = refusing_plan(ack_loss);
                let mut rig = Rig::with(|s| flaky(&faults, s), options);
                let first = keys(0..300);
                rig.upload(&first).await;
                let publishing = if fanned_out {
                    rig.deliver(&[forced()]).await;
                    rig.sent().await
                } else {
                    vec![forced()]
                };
                let mut live = first.clone();
                let foreign = keys(300..302);
                refused_then_retried(&rig, &faults, &publishing, &foreign, ack_loss, &variant)
                    .await;
                live.extend(foreign);
                assert_view_exact(&rig.store, &live).await;
                // A later publication (`If-Match` on the pointer), with a fresh plan.
                let faults = refusing_plan(ack_loss);
                rig.rewire(|s| flaky(&faults, s));
                let one = keys(302..303);
                let messages = rig.upload(&one).await;
                let publishing = if fanned_out {
                    rig.deliver(&messages).await;
                    let projections = rig.sent().await;
                    assert!(
                        projections.iter().all(|b| b.contains("\"project\"")),
                        "{variant}: {projections:?}"
                    );
                    projections
                } else {
                    messages
                };
                live.extend(one);
                let foreign = keys(303..304);
                refused_then_retried(&rig, &faults, &publishing, &foreign, ack_loss, &variant)
                    .await;
                live.extend(foreign);
                assert_view_exact(&rig.store, &live).await;
            }
        }
    });
}

/// Refuses the first conditional write of the pointer without applying it; with `ack_loss`,
/// the first one that lands (the retry's) loses its answer too.
fn refusing_plan(ack_loss: bool) -> testkit::faults::Faults {
    use testkit::faults::{Faults, Selector};
    let pointer = || {
        Selector::conditional()
            .on_key("collections/c/current.json")
            .times(1)
    };
    let faults = Faults::spurious_precondition_failures(pointer());
    if ack_loss {
        faults.and_ack_loss(pointer())
    } else {
        faults
    }
}

/// `faults` over the folder, under the production retry layer.
fn flaky(faults: &testkit::faults::Faults, store: FsStore) -> Flaky {
    let policy = aws::retry::RetryPolicy {
        attempts: 4,
        base_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(2),
    };
    aws::retry::Retrying::new(faults.store(store), policy)
}

/// Delivers `publishing` (the messages whose handling publishes: projection messages, or a
/// refit message) with the pointer write refused once: exactly one fails, leaving the
/// pointer and the deltas as they were and nothing on the refit queue. Then `foreign` is
/// uploaded (its refit messages held back) and the failed message delivered again: it
/// publishes at the next refit number (fanned out: the very snapshot of the projection,
/// keeping the foreign deltas and asking a refit for them), and no other snapshot of that
/// number is left. The held messages and whatever was asked are then delivered until the
/// queue is empty, and a late duplicate of the failed message moves nothing.
async fn refused_then_retried(
    rig: &Rig<Flaky>,
    faults: &testkit::faults::Faults,
    publishing: &[String],
    foreign: &[String],
    ack_loss: bool,
    variant: &str,
) {
    let layout = CollectionLayout::new("c");
    let before = read_current(&rig.store, &layout).await.unwrap();
    let seq = before.as_ref().map_or(0, |(p, _)| p.seq) + 1;
    let folded = list_deltas(&rig.store, &layout).await.unwrap();
    assert!(!folded.is_empty(), "{variant}");
    let failed = rig.deliver_failing(publishing).await;
    assert_eq!(failed.len(), 1, "{variant}: the publishing message fails");
    assert_eq!(faults.spurious_failures(), 1, "{variant}");
    let after = read_current(&rig.store, &layout).await.unwrap();
    assert_eq!(
        after.map(|(p, etag)| (p.snapshot, etag)),
        before.map(|(p, etag)| (p.snapshot, etag)),
        "{variant}: the refused write moved the pointer"
    );
    assert_eq!(
        list_deltas(&rig.store, &layout).await.unwrap(),
        folded,
        "{variant}: a failed publication deleted deltas"
    );
    assert!(
        rig.sent().await.is_empty(),
        "{variant}: only the redelivery carries the publication"
    );
    let held = rig.upload(foreign).await;
    let waiting = list_deltas(&rig.store, &layout).await.unwrap();
    let foreign_ids: Vec<&String> = waiting.iter().filter(|d| !folded.contains(d)).collect();
    // One ingest batch is one delta, however many files it holds.
    assert!(
        !foreign_ids.is_empty() && foreign_ids.len() <= foreign.len(),
        "{variant}: the foreign upload left no delta waiting"
    );
    // The redelivery.
    rig.deliver(&failed).await;
    assert_eq!(faults.acks_lost(), usize::from(ack_loss), "{variant}");
    let (now, _) = read_current(&rig.store, &layout).await.unwrap().unwrap();
    assert_eq!(now.seq, seq, "{variant}: one refit number per publication");
    let left = list_deltas(&rig.store, &layout).await.unwrap();
    if failed[0].contains("\"project\"") {
        assert_eq!(now.snapshot, snapshot_of(&failed[0]), "{variant}");
        let kept: Vec<&String> = left.iter().collect();
        assert_eq!(
            kept, foreign_ids,
            "{variant}: folded deltas kept or foreign ones deleted"
        );
        assert!(
            !rig.refit_queue.is_empty(),
            "{variant}: no refit asked for the changes waiting"
        );
    } else {
        assert!(
            left.is_empty(),
            "{variant}: the new refit folds everything: {left:?}"
        );
    }
    let at_seq: Vec<String> = rig
        .store
        .list(&layout.snapshots_prefix())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|o| {
            let id = o
                .key
                .strip_prefix(&layout.snapshots_prefix())?
                .split('/')
                .next()?;
            (id.split('-').next()?.parse::<u64>().ok()? == seq).then(|| id.to_string())
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        at_seq,
        std::slice::from_ref(&now.snapshot),
        "{variant}: abandoned snapshots left"
    );
    rig.deliver(&held).await;
    rig.settle().await;
    let (settled, _) = read_current(&rig.store, &layout).await.unwrap().unwrap();
    rig.deliver(&failed).await;
    rig.settle().await;
    let (late, _) = read_current(&rig.store, &layout).await.unwrap().unwrap();
    assert_eq!(
        late.snapshot, settled.snapshot,
        "{variant}: a late duplicate moved the pointer"
    );
}
