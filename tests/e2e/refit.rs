//! Collections' refits with injected faults and the reducer's refitter: unreadable inbox
//! keys, racing refits (on the local store and on S3), the pointer's write answered with an
//! error after S3 applied it (ack loss) or applied twice, retention (orphan snapshots of
//! crashed losers first, the snapshot readers are on kept, orphan delta parts expired), and
//! refit request objects (moved from the core crate's unit tests, which cannot use the test
//! kit or the Lambda glue).

use std::collections::BTreeSet;

use engine::pca::PcaOptions;
use engine::preprocess::ImageErrorKind;
use pipeline::continuous::collection::{
    list_deltas, read_current, refit, CollectionLayout, RefitMessage, RefitOptions, RefitOutcome,
};
use pipeline::manifest::ImageError;
use pipeline::parquet_io::{self, Dataset};
use pipeline::ports::store::{Bytes, ObjectStore};

use crate::common::block;

fn synthetic_ingestor<I: ObjectStore, O: ObjectStore, Q: pipeline::ports::queue::Queue>(
    input: I,
    output: O,
    queue: Q,
) -> pipeline::continuous::ingest::Ingestor<I, O, Q> {
    pipeline::continuous::ingest::Ingestor::new(
        input,
        output,
        queue,
        pipeline::batch::inference::Engine::Synthetic { dim: 6 },
        pipeline::continuous::ingest::IngestSettings {
            inbox: "inbox/".into(),
            filter: pipeline::batch::listing::ImageFilter::new("*.jpg").unwrap(),
            max_pixels: 1 << 20,
            threads: 1,
            fetch_concurrency: 4,
            quiet_s: 0,
        },
    )
}

async fn view_paths<S: ObjectStore>(output: &S, collection: &str) -> Vec<String> {
    let (pointer, _) = read_current(output, &CollectionLayout::new(collection))
        .await
        .unwrap()
        .unwrap();
    let mut paths = Vec::new();
    for o in output.list(&pointer.results).await.unwrap() {
        let rows =
            parquet_io::read_rows(Dataset::Features, output.get(&o.key).await.unwrap()).unwrap();
        paths.extend(rows.into_iter().map(|r| r.path));
    }
    paths.sort();
    paths
}

fn k2() -> RefitOptions {
    RefitOptions {
        pca: PcaOptions {
            k: 2,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A key that cannot be read for good (403 AccessDenied on GET and HEAD) does not fail
/// the ingest batch (which SQS would dead-letter with every other key in it): it lands
/// in the collection's error list, with the reason, and the other keys are published.
#[test]
fn an_unreadable_file_goes_to_the_error_list_and_the_batch_succeeds() {
    use pipeline::ports::queue::InProcessQueue;
    use pipeline::ports::store::FsStore;
    use testkit::faults::Faults;
    block(async {
        let dir = tempfile::tempdir().unwrap();
        let raw = FsStore::new(dir.path().join("in"));
        let output = FsStore::new(dir.path().join("out"));
        let faults = Faults::deny("secret");
        let input = faults.store(raw.clone());
        let queue = InProcessQueue::new();
        let ingestor = synthetic_ingestor(input.clone(), output.clone(), &queue);
        let keys = [
            "inbox/c/l0/a.jpg",
            "inbox/c/l0/b.jpg",
            "inbox/c/l1/secret.jpg",
        ];
        for k in keys {
            raw.put(k, Bytes::from(k)).await.unwrap();
        }
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let outcome = ingestor
            .ingest(&keys)
            .await
            .expect("a denied key does not fail the batch");
        assert_eq!((outcome.upserts, outcome.failed), (2, 1), "{outcome:?}");
        assert_eq!(faults.injected(), 2, "one GET and one HEAD were denied");
        let RefitOutcome::Published(s) =
            refit(&output, &input, "inbox/", "c", &k2()).await.unwrap()
        else {
            panic!("not published")
        };
        assert_eq!((s.rows, s.errors), (2, 1), "{s:?}");
        assert_eq!(view_paths(&output, "c").await, ["l0/a.jpg", "l0/b.jpg"]);
        let (pointer, _) = read_current(&output, &CollectionLayout::new("c"))
            .await
            .unwrap()
            .unwrap();
        let errors: Vec<ImageError> =
            serde_json::from_slice(&output.get(&pointer.errors).await.unwrap()).unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].path.as_str(), errors[0].label.as_str()),
            ("l1/secret.jpg", "l1")
        );
        assert_eq!(errors[0].kind, ImageErrorKind::AccessDenied);
        assert!(
            errors[0].reason.contains("AccessDenied"),
            "{}",
            errors[0].reason
        );

        // A transient failure, by contrast, fails the batch (SQS delivers it again).
        let flaky = Faults::transient(1.0, std::time::Duration::ZERO, 1);
        let flaky_ingestor = synthetic_ingestor(flaky.store(raw.clone()), output.clone(), &queue);
        let e = flaky_ingestor.ingest(&keys[..1]).await.unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");
    });
}

/// Two refits of one collection at once, each stopped just before it publishes the
/// pointer: the first publishes; the second, which had also seen a later delta, loses the
/// pointer, discards its snapshot and starts over from the winner's, so that the later
/// change is published now and no delta is left behind.
#[test]
fn a_refit_that_loses_the_race_folds_what_the_winner_missed() {
    use pipeline::ports::queue::InProcessQueue;
    use pipeline::ports::store::FsStore;
    use testkit::faults::Faults;
    block(async {
        let dir = tempfile::tempdir().unwrap();
        let input = FsStore::new(dir.path().join("in"));
        let output = FsStore::new(dir.path().join("out"));
        let queue = InProcessQueue::new();
        let ingestor = synthetic_ingestor(input.clone(), output.clone(), &queue);
        let first: Vec<String> = (0..3).map(|i| format!("inbox/c/l0/{i}.jpg")).collect();
        for k in &first {
            input.put(k, Bytes::from(k.clone())).await.unwrap();
        }
        ingestor.ingest(&first).await.unwrap();

        let (wf, lf) = (
            Faults::pause_before_key("current.json"),
            Faults::pause_before_key("current.json"),
        );
        let (winner_store, loser_store) = (wf.store(output.clone()), lf.store(output.clone()));
        let winner_done = tokio::sync::Notify::new();
        let layout = CollectionLayout::new("c");
        let options = k2();
        let (won, lost) = tokio::join!(
            async {
                let r = refit(&winner_store, &input, "inbox/", "c", &options).await;
                winner_done.notify_one();
                r
            },
            async {
                wf.wait_paused().await;
                // While the winner waits to publish: a new file, and a delete.
                input
                    .put("inbox/c/l1/late.jpg", Bytes::from_static(b"late"))
                    .await
                    .unwrap();
                input.delete(&first[0]).await.unwrap();
                ingestor
                    .ingest(&["inbox/c/l1/late.jpg".into(), first[0].clone()])
                    .await
                    .unwrap();
                assert_eq!(list_deltas(&output, &layout).await.unwrap().len(), 2);
                let (lost, ()) = tokio::join!(
                    refit(&loser_store, &input, "inbox/", "c", &options),
                    async {
                        lf.wait_paused().await;
                        wf.resume();
                        winner_done.notified().await;
                        lf.resume();
                    }
                );
                lost
            }
        );
        let RefitOutcome::Published(won) = won.unwrap() else {
            panic!("the first refit publishes")
        };
        assert_eq!((won.seq, won.rows), (1, 3), "{won:?}");
        let RefitOutcome::Published(lost) = lost.unwrap() else {
            panic!("the second starts over and publishes")
        };
        assert_eq!(
            (lost.seq, lost.rows, lost.added, lost.removed),
            (2, 3, 1, 1),
            "{lost:?}"
        );
        assert_eq!(
            view_paths(&output, "c").await,
            ["l0/1.jpg", "l0/2.jpg", "l1/late.jpg"]
        );
        assert!(
            list_deltas(&output, &layout).await.unwrap().is_empty(),
            "no delta left behind"
        );
        // The discarded snapshot is gone: only the two published ones remain.
        let snapshots: BTreeSet<String> = output
            .list(&layout.snapshots_prefix())
            .await
            .unwrap()
            .iter()
            .map(|o| o.key.split('/').nth(3).unwrap().to_string())
            .collect();
        assert_eq!(snapshots.len(), 2, "{snapshots:?}");
        assert_eq!(
            refit(&output, &input, "inbox/", "c", &k2()).await.unwrap(),
            RefitOutcome::NothingToDo
        );
    });
}

/// `inbox/<c>/_refit` asks for a refit now: the ingest sends a forced refit message,
/// which the reducer's refitter carries out even inside the quiet time.
#[test]
fn a_refit_request_object_refits_now() {
    use pipeline::ports::queue::{Drain, InProcessQueue};
    use pipeline::ports::store::FsStore;
    block(async {
        let dir = tempfile::tempdir().unwrap();
        // One bucket holds the inbox and the collections, as on AWS (the refitter's store).
        let output = FsStore::new(dir.path());
        let input = output.clone();
        let queue = InProcessQueue::new();
        let ingestor = synthetic_ingestor(input.clone(), output.clone(), &queue);
        let keys: Vec<String> = (0..4).map(|i| format!("inbox/c/l0/{i}.jpg")).collect();
        for k in &keys {
            input.put(k, Bytes::from(k.clone())).await.unwrap();
        }
        ingestor.ingest(&keys).await.unwrap();
        let refitter = aws::lambda::Refitter {
            store: output.clone(),
            inbox: "inbox/".into(),
            quiet_ms: 3_600_000,
            options: k2(),
        };
        // The delayed message of the change: not quiet for an hour.
        let delayed: Vec<RefitMessage> = queue
            .drain()
            .await
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        assert_eq!(
            delayed,
            [RefitMessage {
                collection: "c".into(),
                force: false
            }]
        );
        assert!(matches!(
            refitter.process(&delayed[0]).await.unwrap(),
            RefitOutcome::NotQuiet { .. }
        ));
        // The request object.
        input.put("inbox/c/_refit", Bytes::new()).await.unwrap();
        let outcome = ingestor.ingest(&["inbox/c/_refit".into()]).await.unwrap();
        assert_eq!(outcome.refit_requests, ["c"]);
        assert_eq!(
            (outcome.upserts, outcome.ignored, outcome.collections.len()),
            (0, 0, 0)
        );
        let forced: Vec<RefitMessage> = queue
            .drain()
            .await
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        assert_eq!(
            forced,
            [RefitMessage {
                collection: "c".into(),
                force: true
            }]
        );
        let RefitOutcome::Published(s) = refitter.process(&forced[0]).await.unwrap() else {
            panic!("a forced refit publishes inside the quiet time")
        };
        assert_eq!(s.rows, 4);
    });
}

/// Publishes a first view of `c` (3 files), then a second (one more file), through
/// `store` (over `output`), and checks that each refit published its own snapshot, whole,
/// with the pointer on it; then that a clean refit finds nothing to do (no dangling
/// pointer). Returns the two snapshots.
async fn two_publications<S: ObjectStore, O: ObjectStore + Clone, I: ObjectStore + Clone>(
    store: &S,
    output: &O,
    input: &I,
    what: &str,
) -> (String, String) {
    use pipeline::ports::queue::InProcessQueue;
    let queue = InProcessQueue::new();
    let ingestor = synthetic_ingestor(input.clone(), output.clone(), &queue);
    let layout = CollectionLayout::new("c");
    let mut keys: Vec<String> = (0..3).map(|i| format!("inbox/c/l0/{i}.jpg")).collect();
    let mut snapshots = Vec::new();
    for round in 0..2 {
        if round == 1 {
            keys.push("inbox/c/l1/late.jpg".into());
        }
        for k in &keys {
            input.put(k, Bytes::from(k.clone())).await.unwrap();
        }
        ingestor.ingest(&keys).await.unwrap();
        let outcome = refit(store, input, "inbox/", "c", &k2()).await;
        let Ok(RefitOutcome::Published(s)) = outcome else {
            panic!("{what}, refit {}: {outcome:?}", round + 1)
        };
        assert_eq!((s.seq, s.rows), (round + 1, keys.len()), "{what}: {s:?}");
        let (pointer, _) = read_current(output, &layout).await.unwrap().unwrap();
        assert_eq!(pointer.snapshot, s.snapshot, "{what}: the pointer is on it");
        assert!(
            output.exists(&layout.success(&s.snapshot)).await.unwrap()
                && output
                    .exists(&layout.state_buckets(&s.snapshot))
                    .await
                    .unwrap(),
            "{what}: its snapshot was kept, not discarded as a loser's"
        );
        snapshots.push(s.snapshot.clone());
    }
    assert_eq!(
        view_paths(output, "c").await,
        ["l0/0.jpg", "l0/1.jpg", "l0/2.jpg", "l1/late.jpg"],
        "{what}"
    );
    assert_eq!(
        refit(output, input, "inbox/", "c", &k2()).await.unwrap(),
        RefitOutcome::NothingToDo,
        "{what}: the next refit reads the published state"
    );
    (snapshots.remove(0), snapshots.remove(0))
}

/// The pointer's write is applied and its answer lost (then, without a retry layer, the
/// refit sees an error; with one, the retry gets "exists" for the first publication and
/// "changed" for a later one), or applied twice. Each time the refit reads the pointer back,
/// finds its own snapshot there, and reports it published: it never deletes the snapshot the
/// pointer names.
#[test]
fn the_pointer_write_answered_wrongly_is_read_back_for_the_first_and_a_later_publication() {
    use aws::retry::{RetryPolicy, Retrying};
    use pipeline::ports::store::FsStore;
    use testkit::faults::{Faults, Selector};
    let pointer_writes = || Selector::conditional().on_key("current.json");
    block(async {
        for variant in ["ack loss", "ack loss, retried", "applied twice"] {
            let dir = tempfile::tempdir().unwrap();
            let input = FsStore::new(dir.path().join("in"));
            let output = FsStore::new(dir.path().join("out"));
            let faults = match variant {
                "applied twice" => Faults::duplicate_apply(pointer_writes()),
                _ => Faults::ack_loss(pointer_writes().once_per_request()),
            };
            if variant == "ack loss, retried" {
                let policy = RetryPolicy {
                    attempts: 3,
                    base_delay: std::time::Duration::from_millis(1),
                    max_delay: std::time::Duration::from_millis(2),
                };
                let store = Retrying::new(faults.store(output.clone()), policy);
                two_publications(&store, &output, &input, variant).await;
            } else {
                two_publications(&faults.store(output.clone()), &output, &input, variant).await;
            }
            assert_eq!(
                faults.acks_lost() + faults.duplicated(),
                2,
                "{variant}: both pointer writes were hit"
            );
        }
    });
}

/// The same on S3 (moto), under the production retry layer: the retried pointer write gets
/// 412 from S3 (`If-None-Match: *` the first time, `If-Match` the second) and is read back.
#[test]
fn on_s3_the_pointer_write_whose_answer_is_lost_is_read_back() {
    use aws::retry::{RetryPolicy, Retrying};
    use testkit::faults::{Faults, Selector};
    crate::common::runtime().block_on(async {
        let stack = crate::aws::Stack::new("pointer-ack").await;
        let bucket = stack.store();
        let faults = Faults::ack_loss(
            Selector::conditional()
                .on_key("current.json")
                .once_per_request(),
        );
        let store = Retrying::new(faults.store(bucket.clone()), RetryPolicy::default());
        two_publications(&store, &bucket, &bucket, "S3").await;
        assert_eq!(faults.acks_lost(), 2);
    });
}

/// Two refits race on S3 (moto), each stopped just before it publishes the pointer: the
/// first publishes; the second, which had also seen a later delta, gets 412 on its
/// `If-Match`, reads the pointer back (another's, at its refit number: lost), discards its
/// snapshot and starts over from the winner's, so that the later change is published now.
#[test]
fn on_s3_racing_refits_publish_once_each_and_leave_no_delta_behind() {
    use pipeline::ports::queue::InProcessQueue;
    use testkit::faults::Faults;
    crate::common::runtime().block_on(async {
        let stack = crate::aws::Stack::new("refit-race").await;
        let bucket = stack.store();
        let queue = InProcessQueue::new();
        let ingestor = synthetic_ingestor(bucket.clone(), bucket.clone(), &queue);
        let first: Vec<String> = (0..3).map(|i| format!("inbox/c/l0/{i}.jpg")).collect();
        for k in &first {
            bucket.put(k, Bytes::from(k.clone())).await.unwrap();
        }
        ingestor.ingest(&first).await.unwrap();
        let (wf, lf) = (
            Faults::pause_before_key("current.json"),
            Faults::pause_before_key("current.json"),
        );
        let (winner_store, loser_store) = (wf.store(bucket.clone()), lf.store(bucket.clone()));
        let winner_done = tokio::sync::Notify::new();
        let layout = CollectionLayout::new("c");
        let options = k2();
        let (won, lost) = tokio::join!(
            async {
                let r = refit(&winner_store, &bucket, "inbox/", "c", &options).await;
                winner_done.notify_one();
                r
            },
            async {
                wf.wait_paused().await;
                bucket
                    .put("inbox/c/l1/late.jpg", Bytes::from_static(b"late"))
                    .await
                    .unwrap();
                bucket.delete(&first[0]).await.unwrap();
                ingestor
                    .ingest(&["inbox/c/l1/late.jpg".into(), first[0].clone()])
                    .await
                    .unwrap();
                let (lost, ()) = tokio::join!(
                    refit(&loser_store, &bucket, "inbox/", "c", &options),
                    async {
                        lf.wait_paused().await;
                        wf.resume();
                        winner_done.notified().await;
                        lf.resume();
                    }
                );
                lost
            }
        );
        let RefitOutcome::Published(won) = won.unwrap() else {
            panic!("the first refit publishes")
        };
        assert_eq!((won.seq, won.rows), (1, 3), "{won:?}");
        let RefitOutcome::Published(lost) = lost.unwrap() else {
            panic!("the second starts over and publishes")
        };
        assert_eq!(
            (lost.seq, lost.rows, lost.added, lost.removed),
            (2, 3, 1, 1),
            "{lost:?}"
        );
        assert_eq!(
            view_paths(&bucket, "c").await,
            ["l0/1.jpg", "l0/2.jpg", "l1/late.jpg"]
        );
        assert!(list_deltas(&bucket, &layout).await.unwrap().is_empty());
        let snapshots: BTreeSet<String> = bucket
            .list(&layout.snapshots_prefix())
            .await
            .unwrap()
            .iter()
            .map(|o| o.key.split('/').nth(3).unwrap().to_string())
            .collect();
        assert_eq!(
            snapshots,
            BTreeSet::from([won.snapshot.clone(), lost.snapshot.clone()]),
            "the loser's discarded snapshot is gone"
        );
    });
}

/// Retention after a publication: a crashed loser's snapshot (written whole, its refit
/// killed before the pointer) is removed first, whatever its id sorts as, and never counts
/// as one of the kept ones: the snapshot readers are on stays. A superseded snapshot is kept
/// while it was current less than `min_reader_ms` ago, then expires. A delta part whose
/// document was never written expires after the grace time; a fresh one stays.
#[test]
fn retention_removes_orphans_first_and_keeps_the_snapshot_readers_are_on() {
    use pipeline::ports::queue::InProcessQueue;
    use pipeline::ports::store::FsStore;
    use testkit::faults::Faults;
    block(async {
        let dir = tempfile::tempdir().unwrap();
        let input = FsStore::new(dir.path().join("in"));
        let output = FsStore::new(dir.path().join("out"));
        let queue = InProcessQueue::new();
        let ingestor = synthetic_ingestor(input.clone(), output.clone(), &queue);
        let layout = CollectionLayout::new("c");
        let mut n = 0;
        let mut change = || {
            n += 1;
            let key = format!("inbox/c/l0/{n}.jpg");
            let (input, ingestor) = (&input, &ingestor);
            async move {
                input.put(&key, Bytes::from(key.clone())).await.unwrap();
                ingestor.ingest(&[key]).await.unwrap();
            }
        };
        let published = |options: RefitOptions| {
            let (output, input) = (&output, &input);
            async move {
                match refit(output, input, "inbox/", "c", &options).await.unwrap() {
                    RefitOutcome::Published(s) => s.snapshot.clone(),
                    other => panic!("{other:?}"),
                }
            }
        };
        let ids = |prefix: String| {
            let output = &output;
            async move {
                output
                    .list(&prefix)
                    .await
                    .unwrap()
                    .iter()
                    .map(|o| o.key[prefix.len()..].split('/').next().unwrap().to_string())
                    .collect::<BTreeSet<String>>()
            }
        };
        change().await;
        change().await;
        let s1 = published(k2()).await;
        // A refit killed right before it publishes: its snapshot is whole, and no pointer
        // names it.
        change().await;
        let paused = Faults::pause_before_key("current.json");
        let crashed_store = paused.store(output.clone());
        let options = k2();
        {
            let killed = refit(&crashed_store, &input, "inbox/", "c", &options);
            tokio::pin!(killed);
            tokio::select! {
                r = &mut killed => panic!("published: {r:?}"),
                _ = paused.wait_paused() => {}
            }
        }
        let orphans: BTreeSet<String> = ids(layout.snapshots_prefix())
            .await
            .into_iter()
            .filter(|id| *id != s1)
            .collect();
        assert_eq!(orphans.len(), 1, "the crashed refit's snapshot");
        // Orphan delta parts: one from an ingest that died 2 hours ago, one just now.
        let now = pipeline::manifest::unix_now_ms();
        let old_part = format!("{:013}-{:016x}", now - 7_200_000, 1);
        let new_part = format!("{:013}-{:016x}", now, 2);
        for id in [&old_part, &new_part] {
            output
                .put(&layout.delta_part(id), Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        change().await;
        let s2 = published(k2()).await;
        assert_eq!(
            ids(layout.snapshots_prefix()).await,
            BTreeSet::from([s1.clone(), s2.clone()]),
            "the orphan is removed first; the snapshot readers were on (s1) stays"
        );
        assert_eq!(
            ids(layout.states_prefix()).await,
            BTreeSet::from([s1.clone(), s2.clone()])
        );
        assert!(!output.exists(&layout.delta_part(&old_part)).await.unwrap());
        assert!(output.exists(&layout.delta_part(&new_part)).await.unwrap());
        // Keep only the current one, but readers for an hour: everything superseded within
        // the hour stays.
        change().await;
        let s3 = published(RefitOptions {
            keep_snapshots: 1,
            min_reader_ms: 3_600_000,
            ..k2()
        })
        .await;
        assert_eq!(
            ids(layout.snapshots_prefix()).await,
            BTreeSet::from([s1.clone(), s2.clone(), s3.clone()])
        );
        // No reader to wait for: only the current one stays.
        change().await;
        let s4 = published(RefitOptions {
            keep_snapshots: 1,
            min_reader_ms: 0,
            ..k2()
        })
        .await;
        assert_eq!(ids(layout.snapshots_prefix()).await, BTreeSet::from([s4]));
        assert_eq!(view_paths(&output, "c").await.len(), 6);
    });
}

/// The SQS event of these bodies on the refit queue (ids `m0`, `m1`, …).
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

/// On the reducer, a refit of a collection of many parts writes its snapshot and sends its
/// projection to the refit queue as "project parts" messages; the reducer handles them (one
/// delivered twice, one first stopped by its invocation's deadline and delivered again) and
/// the last publishes. The view: every live file once, features bit-identical to the
/// synthetic engine's, the PCA within 1e-6 of a fit from scratch over the live rows.
#[test]
fn the_reducer_fans_out_a_large_projection_and_publishes_it_once_complete() {
    use pipeline::ports::queue::{Drain, InProcessQueue};
    use pipeline::ports::store::FsStore;
    block(async {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        ingest_files(&store, 300).await;
        let refitter = fanning_out_refitter(&store);
        let reducer = pipeline::batch::reducer::Reducer::new(
            store.clone(),
            pipeline::batch::reducer::ReducerSettings::default(),
        );
        let refit_queue = InProcessQueue::new();
        let forced = serde_json::to_string(&RefitMessage {
            collection: "c".into(),
            force: true,
        })
        .unwrap();
        let response = aws::lambda::handle_reducer_invocation(
            &reducer,
            Some(&refitter),
            Some(&refit_queue),
            refit_queue_event(&[forced]),
            "t",
            None,
        )
        .await;
        assert!(response.batch_item_failures.is_empty());
        let layout = CollectionLayout::new("c");
        assert!(
            read_current(&store, &layout).await.unwrap().is_none(),
            "not yet published"
        );
        let projections = refit_queue.drain().await.unwrap();
        assert!(projections.len() >= 4, "{projections:?}");
        assert!(projections.iter().all(|b| b.contains("\"project\"")));
        // The first, within a deadline already reached: one part, then it stops and fails
        // (SQS delivers it again).
        let stopped = aws::lambda::handle_reducer_invocation(
            &reducer,
            Some(&refitter),
            Some(&refit_queue),
            refit_queue_event(&projections[..1]),
            "t",
            Some(std::time::Instant::now()),
        )
        .await;
        assert_eq!(stopped.batch_item_failures.len(), 1);
        // Every message again, the second one twice.
        let mut again = projections.clone();
        again.push(projections[1].clone());
        let response = aws::lambda::handle_reducer_invocation(
            &reducer,
            Some(&refitter),
            Some(&refit_queue),
            refit_queue_event(&again),
            "t",
            None,
        )
        .await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        assert!(
            refit_queue.drain().await.unwrap().is_empty(),
            "no refit asked again"
        );
        let (pointer, _) = read_current(&store, &layout).await.unwrap().unwrap();
        assert!(list_deltas(&store, &layout).await.unwrap().is_empty());
        // The view against the live files.
        assert_view_is_exact(&store, &pointer, 300).await;
    });
}

/// Puts `files` images (four labels) into the inbox of collection `c` and ingests them
/// (synthetic features); the refit messages of the ingest are dropped.
async fn ingest_files(store: &pipeline::ports::store::FsStore, files: usize) {
    use pipeline::ports::queue::{Drain, InProcessQueue};
    let queue = InProcessQueue::new();
    let ingestor = synthetic_ingestor(store.clone(), store.clone(), &queue);
    let keys: Vec<String> = (0..files)
        .map(|i| format!("inbox/c/l{}/{i:04}.jpg", i % 4))
        .collect();
    for k in &keys {
        store.put(k, Bytes::from(k.clone())).await.unwrap();
    }
    ingestor.ingest(&keys).await.unwrap();
    queue.drain().await.unwrap();
}

/// The reducer's refitter of `store`, with parts of 16 rows, fanned out past 4 parts, 5 per
/// message.
fn fanning_out_refitter(
    store: &pipeline::ports::store::FsStore,
) -> aws::lambda::Refitter<pipeline::ports::store::FsStore> {
    aws::lambda::Refitter {
        store: store.clone(),
        inbox: "inbox/".into(),
        quiet_ms: 0,
        options: RefitOptions {
            part_rows: 16,
            fanout_parts: 4,
            parts_per_message: 5,
            concurrency: 1,
            deadline_margin_ms: 60_000,
            ..k2()
        },
    }
}

/// Asserts that the snapshot `pointer` points at holds every one of the `files` live files
/// once, features bit-identical to the synthetic engine's, a PCA within 1e-6 of a fit from
/// scratch over the live rows, and every row projected as that fit projects it.
async fn assert_view_is_exact(
    store: &pipeline::ports::store::FsStore,
    pointer: &pipeline::continuous::collection::CurrentPointer,
    files: usize,
) {
    let mut features = std::collections::BTreeMap::new();
    for o in store.list(&pointer.results).await.unwrap() {
        for r in parquet_io::read_rows(Dataset::Features, store.get(&o.key).await.unwrap()).unwrap()
        {
            features.insert(r.path.clone(), r);
        }
    }
    assert_eq!(features.len(), files);
    assert_rows_and_pca_exact(store, pointer, &features).await;
}

/// Asserts that `features` (the snapshot's `Results` rows by path) are bit-identical to the
/// synthetic engine's, that the snapshot's PCA is within 1e-6 of a fit from scratch over them,
/// and that `Results_PCA` holds every row, projected as that fit projects it. Shared by the
/// refit and breaker_refit tests.
pub(crate) async fn assert_rows_and_pca_exact(
    store: &pipeline::ports::store::FsStore,
    pointer: &pipeline::continuous::collection::CurrentPointer,
    features: &std::collections::BTreeMap<String, pipeline::parquet_io::VectorRow>,
) {
    use pipeline::batch::inference::synthetic_features;
    for (path, row) in features {
        let expected = synthetic_features(path, 6);
        assert!(
            row.values
                .iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{path}"
        );
    }
    let refs: Vec<&[f32]> = features.values().map(|r| r.values.as_slice()).collect();
    let direct =
        engine::pca::fit(&engine::stats::ShardStats::from_rows(&refs, 6), &k2().pca).unwrap();
    let model: engine::pca::PcaModel = serde_json::from_slice(
        &store
            .get(pointer.pca_model.as_ref().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    for (a, b) in model.components.iter().zip(&direct.components) {
        let sign: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>().signum();
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - sign * y).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "component differs by {worst:e}");
    }
    let mut projected = 0;
    for o in store.list(&pointer.results_pca).await.unwrap() {
        for r in parquet_io::read_rows(Dataset::Pca, store.get(&o.key).await.unwrap()).unwrap() {
            let expected = direct.project(&features[&r.path].values);
            for (a, b) in r.values.iter().zip(&expected) {
                assert!(
                    (a.abs() - b.abs()).abs() <= 1e-5 * b.abs().max(1.0),
                    "{}",
                    r.path
                );
            }
            projected += 1;
        }
    }
    assert_eq!(projected, features.len());
}
