//! Forgotten events (issue 27): one poison record in an ingest batch of 100 fails alone;
//! a dead-lettered batch (creates and deletes) is repaired by `featurize reconcile`;
//! objects in the bucket before the notifications existed are backfilled by a reconcile
//! through the ingest queue (as the scheduled checker does); a local folder is reconciled
//! too. Every final view equals a batch run over the live objects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aws_sdk_sqs::types::QueueAttributeName;
use pipeline::continuous::reconcile::{last_reconcile, reconcile, QueueRepair, ReconcileRecord};
use pipeline::ports::store::{StoreError, Versioned};

use super::*;

/// The bucket as a featurizer reads it, with two hostile objects while armed: reading the
/// one named `poison` panics (a bug in a decoder or an adapter), the one named `throttled`
/// fails with 503 SlowDown.
#[derive(Clone)]
struct Hostile {
    inner: S3Store,
    armed: Arc<AtomicBool>,
}

impl Hostile {
    fn check(&self, key: &str) -> Result<(), StoreError> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if key.contains("poison") {
            panic!("injected panic reading {key}");
        }
        if key.contains("throttled") {
            return Err(StoreError::Remote {
                op: "GetObject",
                key: key.into(),
                transient: true,
                source: "injected 503 SlowDown".into(),
            });
        }
        Ok(())
    }
}

impl ObjectStore for Hostile {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.check(key)?;
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.inner.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        self.inner.put_if_absent(key, body).await
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        self.check(key)?;
        self.inner.get_versioned(key).await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        self.inner.put_if_match(key, body, etag).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.exists(key).await
    }
    async fn head(&self, key: &str) -> Result<String, StoreError> {
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<pipeline::ports::store::ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

/// A stack with an ingest queue fed by the inbox's notifications and a refit queue.
async fn inbox_stack(name: &str) -> (Stack, String, String) {
    let (stack, ingest_queue, refit_queue) = notified_stack(name).await;
    // The `s3:TestEvent` S3 sends when the notification is configured: not an upload.
    for m in stack.receive(&ingest_queue, 10).await {
        assert!(m.body().unwrap().contains("s3:TestEvent"), "{m:?}");
        stack
            .delete(&ingest_queue, m.receipt_handle().unwrap())
            .await;
    }
    (stack, ingest_queue, refit_queue)
}

/// Takes exactly `n` messages off a queue (they stay invisible for its visibility timeout).
async fn take(stack: &Stack, queue: &str, n: usize) -> Vec<aws_sdk_sqs::types::Message> {
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while messages.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages",
            messages.len()
        );
        let want = (n - messages.len()).min(10) as i32;
        messages.extend(stack.receive(queue, want).await);
    }
    messages
}

/// The reducer's refits, once the quiet time (1 s) has passed.
async fn pump_refits(stack: &Stack, refit_queue: &str, store: &S3Store) -> usize {
    let reducer = stack.reducer(store.clone());
    let refitter = refitter(store, 1000, RefitOptions::default());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    pump_reducer(stack, refit_queue, &reducer, &refitter).await
}

/// `featurize reconcile` on the stack (in this process, with the model): its output.
fn cli_reconcile(stack: &Stack, collection: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args([
            "reconcile",
            "--collection",
            collection,
            "--bucket",
            &stack.bucket,
        ])
        .args([
            "--endpoint-url",
            &crate::aws::endpoint(),
            "--k",
            &K.to_string(),
        ])
        .args(["-j", "2", "--model"])
        .arg(shared_dir().join("models/mobilenet_v2_features.onnx"))
        .envs([
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ])
        .env_remove("INGEST_QUEUE_URL")
        .env_remove("REFIT_QUEUE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "reconcile: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("featurize reconcile --collection {collection}:\n{text}");
    text
}

/// The featurizer's handler with an ingestor that reads through [`Hostile`].
struct HostileLambda {
    stack: Stack,
    ingest_queue: String,
    refit_queue: String,
    store: S3Store,
    armed: Arc<AtomicBool>,
    featurizer: ShardFeaturizer<S3Store, SqsQueue>,
    ingestor: Ingestor<Hostile, S3Store, SqsQueue>,
}

impl HostileLambda {
    async fn new(name: &str) -> Self {
        let (stack, ingest_queue, refit_queue) = inbox_stack(name).await;
        let store = stack.store();
        let armed = Arc::new(AtomicBool::new(true));
        let hostile = Hostile {
            inner: store.clone(),
            armed: armed.clone(),
        };
        Self {
            featurizer: stack.featurizer(store.clone()),
            ingestor: model_ingestor(&stack, hostile, &refit_queue, 1),
            stack,
            ingest_queue,
            refit_queue,
            store,
            armed,
        }
    }

    /// One invocation of the featurizer's handler on `batch`.
    async fn handle(
        &self,
        batch: &[aws_sdk_sqs::types::Message],
    ) -> aws_lambda_events::event::sqs::SqsBatchResponse {
        let event = self.stack.sqs_event(batch, &self.ingest_queue).await;
        self.handle_event(event).await
    }

    async fn handle_event(
        &self,
        event: aws_lambda_events::event::sqs::SqsEvent,
    ) -> aws_lambda_events::event::sqs::SqsBatchResponse {
        handle_featurizer_batch(&self.featurizer, Some(&self.ingestor), event, "it", None).await
    }

    async fn delete(&self, message: &aws_sdk_sqs::types::Message) {
        self.stack
            .delete(&self.ingest_queue, message.receipt_handle().unwrap())
            .await;
    }
}

/// 100 records in one invocation (99 images and one that panics when read): no record
/// is reported failed. Returns the poison's key.
async fn poison_batch(lambda: &HostileLambda, images: &[(String, Vec<u8>)]) -> String {
    let mut files = inbox_keys("fruits", &images[..99]);
    let poison = format!(
        "{INBOX}fruits/{}",
        images[99].0.replace(".jpg", "-poison.jpg")
    );
    files.push((poison.clone(), images[99].1.clone()));
    upload_all(&lambda.store, &files).await;
    let batch = take(&lambda.stack, &lambda.ingest_queue, 100).await;
    let event = lambda.stack.sqs_event(&batch, &lambda.ingest_queue).await;
    assert_eq!(event.records.len(), 100);
    let response = lambda.handle_event(event).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "the poison is an error entry, not a failed record: {:?}",
        response.batch_item_failures
    );
    for m in &batch {
        lambda.delete(m).await;
    }
    poison
}

/// A throttled key in the next batch: its record alone is retried, and succeeds once SQS
/// delivers it again (the throttling is over by then).
async fn throttled_batch(lambda: &HostileLambda, images: &[(String, Vec<u8>)]) {
    let throttled = format!(
        "{INBOX}fruits/{}",
        images[100].0.replace(".jpg", "-throttled.jpg")
    );
    let mut more = inbox_keys("fruits", &images[101..110]);
    more.push((throttled.clone(), images[100].1.clone()));
    upload_all(&lambda.store, &more).await;
    let batch = take(&lambda.stack, &lambda.ingest_queue, 10).await;
    let response = lambda.handle(&batch).await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    let throttled_record = batch
        .iter()
        .find(|m| m.body().unwrap().contains("throttled"))
        .unwrap();
    assert_eq!(failed, [throttled_record.message_id().unwrap()]);
    for m in &batch {
        if Some(m.message_id().unwrap()) != failed.first().copied() {
            lambda.delete(m).await;
        }
    }
    // SQS delivers the failed record again; the throttling is over by then.
    lambda.armed.store(false, Ordering::SeqCst);
    let response = lambda.handle(std::slice::from_ref(throttled_record)).await;
    assert!(response.batch_item_failures.is_empty());
    lambda.delete(throttled_record).await;
}

/// 100 records in one invocation, one of which panics when read: 99 featurized, the poison
/// is its path's error (with the reason), and no record is reported failed. A throttled
/// record in the next batch is the only one reported failed. Once the cause is gone, a
/// reconcile retries the failed entry and the view is exact.
#[test]
fn one_poison_record_in_a_batch_of_100_fails_alone() {
    runtime().block_on(async {
        let lambda = HostileLambda::new("poison").await;
        let (stack, store) = (&lambda.stack, &lambda.store);
        let images = fruit_images(10, 12);
        let poison = poison_batch(&lambda, &images).await;
        throttled_batch(&lambda, &images).await;
        assert!(pump_refits(stack, &lambda.refit_queue, store).await >= 1);

        let view = read_view(store, "fruits").await;
        assert_eq!(
            view.features.len(),
            109,
            "99 + 10: every record but the poison"
        );
        assert_eq!(view.errors.len(), 1, "{:?}", view.errors);
        let error = &view.errors[0];
        assert_eq!(format!("{INBOX}fruits/{}", error.path), poison);
        assert!(
            error.reason.contains("panicked") && error.reason.contains("injected panic"),
            "{}",
            error.reason
        );

        // The panic's cause is gone (disarmed): a reconcile retries the failed entry.
        let shown = cli_reconcile(stack, "fruits");
        assert!(shown.contains("retried 1"), "{shown}");
        let record = last_reconcile(store, "fruits").await.unwrap().unwrap();
        assert_eq!(
            (
                record.missing.count,
                record.stale.count,
                record.retried.count
            ),
            (0, 0, 1)
        );
        let view = assert_exact(store, "fruits").await;
        assert!(view.errors.is_empty(), "{:?}", view.errors);
        assert_eq!(view.features.len(), 110);
    });
}

/// Creates and deletes whose ingest batches were dead-lettered (every read throttled until
/// SQS gave up) never reach the view; `featurize reconcile` finds them (missing and stale),
/// repairs them and refits, and the view is exact.
#[test]
fn a_dead_lettered_batch_is_repaired_by_reconcile() {
    runtime().block_on(async {
        let (stack, ingest_queue, refit_queue) = inbox_stack("dlq").await;
        let store = stack.store();
        let featurizer = stack.featurizer(store.clone());
        let healthy = model_ingestor(&stack, store.clone(), &refit_queue, 1);
        let images = fruit_images(6, 5);
        let (first, later) = images.split_at(20);
        let keyed = |files: &[(String, Vec<u8>)]| inbox_keys("fruits", files);
        upload_all(&store, &keyed(first)).await;
        pump_ingest(&stack, &ingest_queue, &featurizer, &healthy).await;
        pump_refits(&stack, &refit_queue, &store).await;
        assert_eq!(read_view(&store, "fruits").await.features.len(), 20);

        // An outage: every read is throttled, each record is delivered twice
        // (maxReceiveCount), then dead-lettered. Failed deliveries come back after 1 s
        // (the helper's queues wait 300 s).
        stack
            .sqs
            .set_queue_attributes()
            .queue_url(&ingest_queue)
            .attributes(QueueAttributeName::VisibilityTimeout, "1")
            .send()
            .await
            .unwrap();
        let outage = testkit::faults::Faults::transient(1.0, Duration::ZERO, 7);
        let broken = model_ingestor(&stack, outage.store(store.clone()), &refit_queue, 1);
        upload_all(&store, &keyed(later)).await;
        let deleted: Vec<String> = keyed(&first[..5]).into_iter().map(|(k, _)| k).collect();
        for key in &deleted {
            store.delete(key).await.unwrap();
        }
        let delivered = stack
            .pump_queue(&ingest_queue, 10, |event| {
                let (featurizer, broken) = (&featurizer, &broken);
                async move {
                    let response =
                        handle_featurizer_batch(featurizer, Some(broken), event, "it", None).await;
                    assert!(!response.batch_item_failures.is_empty());
                    response
                }
            })
            .await;
        let dead = stack.depth(&format!("{ingest_queue}-dlq")).await.0;
        println!("{delivered} deliveries, {dead} records dead-lettered");
        assert_eq!(
            dead,
            later.len() + deleted.len(),
            "every record dead-lettered"
        );
        pump_refits(&stack, &refit_queue, &store).await;
        let stale_view = read_view(&store, "fruits").await;
        assert_eq!(stale_view.features.len(), 20, "the view missed all of them");

        let shown = cli_reconcile(&stack, "fruits");
        assert!(
            shown.contains(&format!("missing {}", later.len()))
                && shown.contains(&format!("stale {}", deleted.len())),
            "{shown}"
        );
        let record: ReconcileRecord = last_reconcile(&store, "fruits").await.unwrap().unwrap();
        assert_eq!(record.missing.count, later.len());
        assert_eq!(record.stale.count, deleted.len());
        assert_eq!(record.repair.upserts, later.len());
        assert_eq!(record.repair.removed, deleted.len());
        assert!(
            record.refit.as_deref().unwrap().starts_with("published"),
            "{record:?}"
        );
        assert!(!record.missing.examples.is_empty() && record.missing.examples.len() <= 5);
        let view = assert_exact(&store, "fruits").await;
        assert_eq!(view.features.len(), 20 - deleted.len() + later.len());
    });
}

/// Objects uploaded before the notifications existed (before the first deploy) are never
/// ingested; a reconcile through the ingest queue (the scheduled checker's way) backfills
/// them, and a second reconcile finds nothing to do.
#[test]
fn objects_present_before_the_first_deploy_are_backfilled() {
    runtime().block_on(async {
        let stack = Stack::new("backfill").await;
        let store = stack.store();
        let old = inbox_keys("orchard", &fruit_images(5, 6));
        upload_all(&store, &old).await;
        // The deploy: notifications from now on.
        let ingest_queue = stack.make_queue("ingest").await;
        let refit_queue = stack.make_queue("refit").await;
        notify_inbox(&stack, &ingest_queue, &["s3:ObjectCreated:*"]).await;
        let filter = ImageFilter::new("*.{jpg,jpeg,png}").unwrap();
        let repair = QueueRepair {
            ingest_queue: SqsQueue::new(stack.sqs.clone(), &ingest_queue),
            refit_queue: Some(SqsQueue::new(stack.sqs.clone(), &refit_queue)),
        };
        let record = reconcile(&store, &store, INBOX, "orchard", &filter, &repair)
            .await
            .unwrap();
        assert_eq!((record.listed, record.indexed), (old.len(), 0));
        assert_eq!(record.missing.count, old.len());
        assert_eq!(record.repair.queued, old.len());
        let featurizer = stack.featurizer(store.clone());
        let ingestor = model_ingestor(&stack, store.clone(), &refit_queue, 1);
        pump_ingest(&stack, &ingest_queue, &featurizer, &ingestor).await;
        pump_refits(&stack, &refit_queue, &store).await;
        let view = assert_exact(&store, "orchard").await;
        assert_eq!(view.features.len(), old.len());

        let again = reconcile(&store, &store, INBOX, "orchard", &filter, &repair)
            .await
            .unwrap();
        assert_eq!(again.repaired(), 0, "{again:?}");
        assert_eq!((again.repair.keys, again.refit.as_deref()), (0, None));
        assert_eq!(
            last_reconcile(&store, "orchard").await.unwrap(),
            Some(again)
        );
    });
}

/// `featurize reconcile` on a local folder: the first one backfills a folder never
/// watched; after changes made while nothing watched (a new file, a deleted one, an
/// overwritten one), the next one repairs exactly those.
#[test]
fn a_local_folder_is_reconciled() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("in/album");
    let out = dir.path().join("out");
    let images = fruit_images(3, 4);
    write_tree(&folder, &images[..9]);
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
            .args([
                "reconcile",
                "--collection",
                "album",
                "--k",
                &K.to_string(),
                "-j",
                "2",
            ])
            .arg("--input")
            .arg(&folder)
            .arg("--output")
            .arg(&out)
            .arg("--model")
            .arg(shared_dir().join("models/mobilenet_v2_features.onnx"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let first = run();
    assert!(first.contains("missing 9"), "{first}");
    let store = FsStore::new(&out);
    let view = runtime().block_on(read_view(&store, "album"));
    assert_view_matches_batch(&view, &folder);

    write_tree(&folder, &images[9..10]);
    std::fs::remove_file(folder.join(&images[0].0)).unwrap();
    std::fs::write(folder.join(&images[1].0), &images[11].1).unwrap();
    let second = run();
    assert!(
        second.contains("missing 1") && second.contains("stale 1") && second.contains("changed 1"),
        "{second}"
    );
    let view = runtime().block_on(read_view(&store, "album"));
    assert_eq!(view.features.len(), 9);
    assert_view_matches_batch(&view, &folder);
    let third = run();
    assert!(third.contains("nothing to repair"), "{third}");
    // `status --collection` shows the last reconcile and what it fixed.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args(["status", "--collection", "album", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("last reconcile") && text.contains("repaired 0 (missing 0"),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
}
