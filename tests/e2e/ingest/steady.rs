//! Bounded staleness (issue 27): with uploads every 0.5 s and a quiet time longer than that
//! gap, a refit that waits for quiet would never come; the staleness bound publishes anyway,
//! so that no change waits longer than the bound plus one refit. Short settings: quiet 3 s,
//! max staleness 5 s, an upload every 0.5 s for 25 s (watch) or 20 s (the Lambdas on moto).
//! And, without timing: a refit message that is not due yet comes back at the bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use aws::lambda::{handle_reducer_batch_requeuing, requeue_delay_s};
use aws_lambda_events::event::sqs::SqsEvent;
use pipeline::batch::reducer::{Reducer, ReducerSettings};
use pipeline::continuous::collection::{RefitMessage, RefitOutcome};
use pipeline::ports::queue::{Queue, QueueError};

use super::*;

const QUIET_S: u64 = 3;
const STALENESS_S: u64 = 5;
const GAP: Duration = Duration::from_millis(500);
/// What a change may wait on top of the bound here: the debounce or the queue's polling,
/// the ingest, the delay rounded up to a second, the poll of the test (the refit's own
/// time is added from its summary).
const SLACK: Duration = Duration::from_millis(4000);
/// The same through S3 notifications and SQS on moto, on a machine that runs the other tests
/// at once: the ingest message's receive, the delayed refit message's delivery (SQS delays
/// are whole seconds, and moto serves them late under load) and the test's polling.
const SLACK_SQS: Duration = Duration::from_millis(20_000);

/// What the test saw published: each path's first appearance, and the publications.
#[derive(Default)]
struct Seen {
    first: BTreeMap<String, Instant>,
    publications: Vec<(Instant, u64)>,
    /// The longest refit (its summary's `total_s`).
    longest_refit_s: f64,
}

impl Seen {
    /// Reads the published view if it changed since the last look.
    async fn look<S: ObjectStore>(&mut self, store: &S, collection: &str) {
        let layout = CollectionLayout::new(collection);
        let Ok(Some((pointer, _))) = read_current(store, &layout).await else {
            return;
        };
        if self.publications.last().map(|(_, s)| *s) == Some(pointer.seq) {
            return;
        }
        let now = Instant::now();
        let mut rows = Vec::new();
        for object in store.list(&pointer.results).await.unwrap_or_default() {
            match store.get(&object.key).await {
                Ok(body) => rows.extend(read_rows(Dataset::Features, body).unwrap()),
                Err(_) => return, // expired meanwhile: look again
            }
        }
        if let Ok(body) = store.get(&pointer.summary).await {
            let summary: pipeline::continuous::collection::RefitSummary =
                serde_json::from_slice(&body).unwrap();
            self.longest_refit_s = self.longest_refit_s.max(summary.total_s);
        }
        self.publications.push((now, pointer.seq));
        for row in rows {
            self.first.entry(row.path).or_insert(now);
        }
    }

    /// Checks the bound: several publications while uploading, and every uploaded path
    /// visible within the staleness bound plus one refit (and the slack).
    fn check(&self, written: &[(String, Instant)], load: (Instant, Instant), slack: Duration) {
        let during = self
            .publications
            .iter()
            .filter(|(t, _)| *t > load.0 && *t <= load.1)
            .count();
        let bound = Duration::from_secs(STALENESS_S)
            + slack
            + Duration::from_secs_f64(self.longest_refit_s);
        let mut worst = Duration::ZERO;
        for (path, at) in written {
            let seen = self
                .first
                .get(path)
                .unwrap_or_else(|| panic!("{path} was never published"));
            worst = worst.max(seen.saturating_duration_since(*at));
        }
        println!(
            "{} uploads every {GAP:?} over {:.1} s: {during} publications during the load, \
             longest wait {worst:?} (bound {STALENESS_S} s + one refit, longest {:.2} s)",
            written.len(),
            (load.1 - load.0).as_secs_f64(),
            self.longest_refit_s
        );
        // One publication per staleness bound plus a refit (and a second of ingest and
        // polling): at least 3 on an idle machine, never fewer than 2.
        let cycle = STALENESS_S as f64 + self.longest_refit_s + 1.0;
        let expected = (((load.1 - load.0).as_secs_f64() / cycle).floor() as usize).max(2);
        assert!(
            during >= expected,
            "only {during} publications during the load (expected {expected}): {:?}",
            self.publications
        );
        assert!(worst <= bound, "a change waited {worst:?} > {bound:?}");
    }
}

#[test]
fn watch_publishes_under_steady_uploads_within_max_staleness() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("in/steady");
    let out = dir.path().join("out");
    let images = fruit_images(10, 6);
    let (initial, later) = images.split_at(4);
    let uploads = &later[..50];
    write_tree(&folder, initial);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args(["watch", "--quiet", &QUIET_S.to_string()])
        .args(["--max-staleness", &STALENESS_S.to_string()])
        .args(["--debounce-ms", "300", "-j", "2", "--k", &K.to_string()])
        .arg("--input")
        .arg(&folder)
        .arg("--output")
        .arg(&out)
        .arg("--model")
        .arg(shared_dir().join("models/mobilenet_v2_features.onnx"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let store = FsStore::new(&out);
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !out.join("collections/steady/current.json").is_file() {
        assert!(Instant::now() < deadline, "no first view");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = Mutex::new(Seen::default());
    let done = AtomicBool::new(false);
    let mut written = Vec::new();
    let load = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                rt.block_on(seen.lock().unwrap().look(&store, "steady"));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let start = Instant::now();
        for (path, bytes) in uploads {
            write_tree(&folder, &[(path.clone(), bytes.clone())]);
            written.push((path.clone(), Instant::now()));
            std::thread::sleep(GAP);
        }
        let end = Instant::now();
        let all = Instant::now() + Duration::from_secs(60);
        while Instant::now() < all
            && !written
                .iter()
                .all(|(p, _)| seen.lock().unwrap().first.contains_key(p))
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        done.store(true, Ordering::SeqCst);
        (start, end)
    });
    seen.into_inner().unwrap().check(&written, load, SLACK);

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "watch did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let view = rt.block_on(read_view(&store, "steady"));
    assert_eq!(view.features.len(), initial.len() + uploads.len());
    assert_view_matches_batch(&view, &folder);
}

/// The Lambdas' handlers on moto for the steady load: the featurizer's on the ingest
/// queue, the reducer's (re-sending refits that are not due) on the refit queue.
struct SteadyLambdas {
    stack: Stack,
    ingest_queue: String,
    refit_queue: String,
    store: S3Store,
    featurizer: ShardFeaturizer<S3Store, SqsQueue>,
    refit_sender: SqsQueue,
    ingestor: Ingestor<S3Store, S3Store, SqsQueue>,
    reducer: Reducer<S3Store>,
    refitter: Refitter<S3Store>,
}

impl SteadyLambdas {
    async fn new() -> Self {
        let (stack, ingest_queue, refit_queue) = notified_stack("steady").await;
        let store = stack.store();
        let options = RefitOptions {
            max_staleness_ms: Some(STALENESS_S * 1000),
            ..Default::default()
        };
        Self {
            featurizer: stack.featurizer(store.clone()),
            refit_sender: SqsQueue::new(stack.sqs.clone(), &refit_queue),
            ingestor: model_ingestor(&stack, store.clone(), &refit_queue, QUIET_S as u32),
            reducer: stack.reducer(store.clone()),
            refitter: refitter(&store, QUIET_S * 1000, options),
            stack,
            ingest_queue,
            refit_queue,
            store,
        }
    }

    /// An event-source mapping until `done`: the ingest (or refit) queue polled, a batch
    /// handled, the rest deleted.
    async fn mapping(&self, ingest: bool, done: &AtomicBool) {
        let queue = if ingest {
            &self.ingest_queue
        } else {
            &self.refit_queue
        };
        while !done.load(Ordering::SeqCst) {
            let messages = self.stack.receive(queue, 10).await;
            if messages.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let event = self.stack.sqs_event(&messages, queue).await;
            let response = if ingest {
                handle_featurizer_batch(&self.featurizer, Some(&self.ingestor), event, "it", None)
                    .await
            } else {
                handle_reducer_batch_requeuing(
                    &self.reducer,
                    Some(&self.refitter),
                    Some(&self.refit_sender),
                    event,
                    "it",
                )
                .await
            };
            assert!(response.batch_item_failures.is_empty());
            for m in &messages {
                self.stack.delete(queue, m.receipt_handle().unwrap()).await;
            }
        }
    }

    /// The uploads, one every [`GAP`], into `written`; then a wait (up to 60 s) until all
    /// are seen, and `done`. Returns when the load started and ended.
    async fn upload_steadily(
        &self,
        uploads: &[(String, Vec<u8>)],
        seen: &tokio::sync::Mutex<Seen>,
        written: &mut Vec<(String, Instant)>,
        done: &AtomicBool,
    ) -> (Instant, Instant) {
        let start = Instant::now();
        for (path, bytes) in uploads {
            let key = format!("{INBOX}fruits/{path}");
            self.store
                .put(&key, Bytes::from(bytes.clone()))
                .await
                .unwrap();
            written.push((path.clone(), Instant::now()));
            tokio::time::sleep(GAP).await;
        }
        let end = Instant::now();
        let all = Instant::now() + Duration::from_secs(60);
        while Instant::now() < all {
            let seen = seen.lock().await;
            if written.iter().all(|(p, _)| seen.first.contains_key(p)) {
                break;
            }
            drop(seen);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done.store(true, Ordering::SeqCst);
        (start, end)
    }

    /// Once the uploads stop, the quiet time publishes the rest: the final view is a
    /// batch run's over the live objects.
    async fn publish_the_rest(&self, uploads: usize) {
        tokio::time::sleep(Duration::from_secs(QUIET_S)).await;
        let forced = serde_json::to_string(&RefitMessage {
            collection: "fruits".into(),
            force: true,
        })
        .unwrap();
        self.refit_sender.send_all(vec![forced]).await.unwrap();
        pump_reducer(
            &self.stack,
            &self.refit_queue,
            &self.reducer,
            &self.refitter,
        )
        .await;
        let view = read_view(&self.store, "fruits").await;
        assert_eq!(view.features.len(), uploads);
        assert_matches_live(&self.store, "fruits", view, &[]).await;
    }
}

/// The same steady load on the Lambdas' handlers over moto: S3 notifications into the
/// ingest queue, the featurizer's handler on it, the reducer's handler on the refit queue
/// (re-sending refits that are not due, with SQS delays).
#[test]
fn steady_uploads_to_the_bucket_are_published_within_max_staleness() {
    runtime().block_on(async {
        let lambdas = SteadyLambdas::new().await;
        let uploads = fruit_images(8, 5);
        let done = AtomicBool::new(false);
        let seen = tokio::sync::Mutex::new(Seen::default());
        let mut written = Vec::new();
        let watcher = async {
            while !done.load(Ordering::SeqCst) {
                seen.lock().await.look(&lambdas.store, "fruits").await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let ((start, end), (), (), ()) = tokio::join!(
            lambdas.upload_steadily(&uploads, &seen, &mut written, &done),
            lambdas.mapping(true, &done),
            lambdas.mapping(false, &done),
            watcher
        );
        seen.into_inner().check(&written, (start, end), SLACK_SQS);
        lambdas.publish_the_rest(uploads.len()).await;
    });
}

/// A queue that records what is sent, with the delays.
#[derive(Default)]
struct Recording {
    sent: Mutex<Vec<(String, u32)>>,
}

impl Queue for Recording {
    async fn send_all(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        self.send_delayed(bodies, 0).await
    }
    async fn send_delayed(&self, bodies: Vec<String>, delay_s: u32) -> Result<(), QueueError> {
        let mut sent = self.sent.lock().unwrap();
        sent.extend(bodies.into_iter().map(|b| (b, delay_s)));
        Ok(())
    }
}

fn refit_event(body: &str) -> SqsEvent {
    serde_json::from_value(serde_json::json!({"Records": [{
        "messageId": "m-1", "body": body, "eventSource": "aws:sqs",
        "attributes": {}, "messageAttributes": {}
    }]}))
    .unwrap()
}

/// A refit message that arrives before its collection is quiet is not dropped: when the
/// staleness bound comes before the newest change's own message (due once quiet), it is
/// re-sent with a delay of the time left until the bound, and then refits although the
/// collection is still not quiet. Without a queue to re-send it, its record fails (SQS
/// delivers it again after the visibility timeout).
#[test]
fn a_refit_not_due_yet_comes_back_at_the_staleness_bound() {
    block(async {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let sink = pipeline::ports::queue::InProcessQueue::new();
        let ingestor = Ingestor::new(
            store.clone(),
            store.clone(),
            &sink,
            Engine::Synthetic { dim: 6 },
            IngestSettings {
                filter: ImageFilter::new("*.jpg").unwrap(),
                threads: 1,
                ..settings(60)
            },
        );
        let keys: Vec<String> = (0..4)
            .map(|i| format!("{INBOX}c/l{}/{i}.jpg", i % 2))
            .collect();
        for k in &keys {
            store.put(k, Bytes::from(k.clone())).await.unwrap();
        }
        ingestor.ingest(&keys).await.unwrap();
        let reducer = Reducer::new(store.clone(), ReducerSettings::default());
        let refitter = |staleness_ms: u64| Refitter {
            store: store.clone(),
            inbox: INBOX.into(),
            quiet_ms: 60_000,
            options: RefitOptions {
                pca: PcaOptions {
                    k: 2,
                    ..Default::default()
                },
                max_staleness_ms: Some(staleness_ms),
                ..Default::default()
            },
        };
        let body = serde_json::to_string(&RefitMessage {
            collection: "c".into(),
            force: false,
        })
        .unwrap();
        let layout = CollectionLayout::new("c");

        // Quiet in ~60 s, stale in 10 min: the newest change's own message comes first.
        let patient = refitter(600_000);
        let queue = Recording::default();
        let response = handle_reducer_batch_requeuing(
            &reducer,
            Some(&patient),
            Some(&queue),
            refit_event(&body),
            "it",
        )
        .await;
        assert!(response.batch_item_failures.is_empty());
        assert!(queue.sent.lock().unwrap().is_empty(), "nothing re-sent");

        // Stale in 2 s, before quiet: re-sent to arrive then, and acknowledged.
        let bounded = refitter(2_000);
        let outcome = bounded
            .process(&serde_json::from_str(&body).unwrap())
            .await
            .unwrap();
        assert!(
            matches!(outcome, RefitOutcome::NotQuiet { staleness_left_ms: Some(l), .. } if l <= 2_000),
            "{outcome:?}"
        );
        assert!(matches!(requeue_delay_s(&outcome), Some(1..=2)));
        let response = handle_reducer_batch_requeuing(
            &reducer,
            Some(&bounded),
            Some(&queue),
            refit_event(&body),
            "it",
        )
        .await;
        assert!(response.batch_item_failures.is_empty());
        let sent = queue.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, body, "the same message");
        assert!(
            (1..=2).contains(&sent[0].1),
            "delayed to the bound: {sent:?}"
        );
        assert!(read_current(&store, &layout).await.unwrap().is_none());
        // Without a queue to re-send it: the record fails, to be delivered again.
        let response =
            handle_reducer_batch(&reducer, Some(&bounded), refit_event(&body), "it").await;
        assert_eq!(response.batch_item_failures.len(), 1);

        // When it arrives, the oldest change is stale: it refits, still not quiet.
        tokio::time::sleep(Duration::from_millis(u64::from(sent[0].1) * 1000)).await;
        let response = handle_reducer_batch_requeuing(
            &reducer,
            Some(&bounded),
            Some(&queue),
            refit_event(&sent[0].0),
            "it",
        )
        .await;
        assert!(response.batch_item_failures.is_empty());
        let (pointer, _) = read_current(&store, &layout)
            .await
            .unwrap()
            .expect("published");
        assert_eq!(pointer.seq, 1);
        assert_eq!(queue.sent.lock().unwrap().len(), 1, "not re-sent again");
    });
}
