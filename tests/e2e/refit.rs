//! Collections' refits with injected faults and the reducer's refitter: unreadable inbox
//! keys, racing refits, and refit request objects (moved from the core crate's unit tests,
//! which cannot use the test kit or the Lambda glue).

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

fn synthetic_ingestor<I: ObjectStore, Q: pipeline::ports::queue::Queue>(
    input: I,
    output: pipeline::ports::store::FsStore,
    queue: Q,
) -> pipeline::continuous::ingest::Ingestor<I, pipeline::ports::store::FsStore, Q> {
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

async fn view_paths(output: &pipeline::ports::store::FsStore, collection: &str) -> Vec<String> {
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
        assert_eq!(errors[0].kind, ImageErrorKind::Fetch);
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
