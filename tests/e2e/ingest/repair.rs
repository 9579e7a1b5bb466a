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
    let stack = Stack::new(name).await;
    let ingest_queue = stack.make_queue("ingest").await;
    let refit_queue = stack.make_queue("refit").await;
    stack
        .notify(
            &ingest_queue,
            INBOX,
            None,
            &[
                Event::from("s3:ObjectCreated:*"),
                Event::from("s3:ObjectRemoved:*"),
            ],
        )
        .await;
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
    let refitter = Refitter {
        store: store.clone(),
        inbox: INBOX.into(),
        quiet_ms: 1000,
        options: RefitOptions {
            pca: PcaOptions {
                k: K,
                ..Default::default()
            },
            ..Default::default()
        },
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    stack
        .pump_queue(refit_queue, 10, |event| {
            let (reducer, refitter) = (&reducer, &refitter);
            async move { handle_reducer_batch(reducer, Some(refitter), event, "it").await }
        })
        .await
}

/// The collection's view against a batch run over its live objects.
async fn assert_exact(store: &S3Store, collection: &str) -> View {
    let view = read_view(store, collection).await;
    let dir = tempfile::tempdir().unwrap();
    download_collection(store, collection, dir.path()).await;
    let folder = dir.path().join(collection);
    tokio::task::spawn_blocking(move || {
        assert_view_matches_batch(&view, &folder);
        drop(dir);
        view
    })
    .await
    .unwrap()
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

/// 100 records in one invocation, one of which panics when read: 99 featurized, the poison
/// is its path's error (with the reason), and no record is reported failed. A throttled
/// record in the next batch is the only one reported failed. Once the cause is gone, a
/// reconcile retries the failed entry and the view is exact.
#[test]
fn one_poison_record_in_a_batch_of_100_fails_alone() {
    runtime().block_on(async {
        let (stack, ingest_queue, refit_queue) = inbox_stack("poison").await;
        let store = stack.store();
        let armed = Arc::new(AtomicBool::new(true));
        let hostile = Hostile {
            inner: store.clone(),
            armed: armed.clone(),
        };
        let featurizer = stack.featurizer(store.clone());
        let ingestor = Ingestor::new(
            hostile,
            store.clone(),
            SqsQueue::new(stack.sqs.clone(), &refit_queue),
            Engine::Model(model()),
            settings(1),
        );
        let images = fruit_images(10, 12);
        let mut files: Vec<(String, Vec<u8>)> = images[..99]
            .iter()
            .map(|(p, b)| (format!("{INBOX}fruits/{p}"), b.clone()))
            .collect();
        let poison = format!(
            "{INBOX}fruits/{}",
            images[99].0.replace(".jpg", "-poison.jpg")
        );
        files.push((poison.clone(), images[99].1.clone()));
        upload_all(&store, &files).await;
        let batch = take(&stack, &ingest_queue, 100).await;
        let event = stack.sqs_event(&batch, &ingest_queue).await;
        assert_eq!(event.records.len(), 100);
        let response =
            handle_featurizer_batch(&featurizer, Some(&ingestor), event, "it", None).await;
        assert!(
            response.batch_item_failures.is_empty(),
            "the poison is an error entry, not a failed record: {:?}",
            response.batch_item_failures
        );
        for m in &batch {
            stack
                .delete(&ingest_queue, m.receipt_handle().unwrap())
                .await;
        }

        // A throttled key in the next batch: its record alone is retried.
        let throttled = format!(
            "{INBOX}fruits/{}",
            images[100].0.replace(".jpg", "-throttled.jpg")
        );
        let more: Vec<(String, Vec<u8>)> = images[101..110]
            .iter()
            .map(|(p, b)| (format!("{INBOX}fruits/{p}"), b.clone()))
            .chain([(throttled.clone(), images[100].1.clone())])
            .collect();
        upload_all(&store, &more).await;
        let batch = take(&stack, &ingest_queue, 10).await;
        let event = stack.sqs_event(&batch, &ingest_queue).await;
        let response =
            handle_featurizer_batch(&featurizer, Some(&ingestor), event, "it", None).await;
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
                stack
                    .delete(&ingest_queue, m.receipt_handle().unwrap())
                    .await;
            }
        }
        // SQS delivers the failed record again; the throttling is over by then.
        armed.store(false, Ordering::SeqCst);
        let event = stack
            .sqs_event(std::slice::from_ref(throttled_record), &ingest_queue)
            .await;
        let response =
            handle_featurizer_batch(&featurizer, Some(&ingestor), event, "it", None).await;
        assert!(response.batch_item_failures.is_empty());
        stack
            .delete(&ingest_queue, throttled_record.receipt_handle().unwrap())
            .await;
        assert!(pump_refits(&stack, &refit_queue, &store).await >= 1);

        let view = read_view(&store, "fruits").await;
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
        let shown = cli_reconcile(&stack, "fruits");
        assert!(shown.contains("retried 1"), "{shown}");
        let record = last_reconcile(&store, "fruits").await.unwrap().unwrap();
        assert_eq!(
            (
                record.missing.count,
                record.stale.count,
                record.retried.count
            ),
            (0, 0, 1)
        );
        let view = assert_exact(&store, "fruits").await;
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
        let healthy = Ingestor::new(
            store.clone(),
            store.clone(),
            SqsQueue::new(stack.sqs.clone(), &refit_queue),
            Engine::Model(model()),
            settings(1),
        );
        let images = fruit_images(6, 5);
        let (first, later) = images.split_at(20);
        let keyed = |files: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
            files
                .iter()
                .map(|(p, b)| (format!("{INBOX}fruits/{p}"), b.clone()))
                .collect()
        };
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
        let broken = Ingestor::new(
            outage.store(store.clone()),
            store.clone(),
            SqsQueue::new(stack.sqs.clone(), &refit_queue),
            Engine::Model(model()),
            settings(1),
        );
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
        let old: Vec<(String, Vec<u8>)> = fruit_images(5, 6)
            .into_iter()
            .map(|(p, b)| (format!("{INBOX}orchard/{p}"), b))
            .collect();
        upload_all(&store, &old).await;
        // The deploy: notifications from now on.
        let ingest_queue = stack.make_queue("ingest").await;
        let refit_queue = stack.make_queue("refit").await;
        stack
            .notify(
                &ingest_queue,
                INBOX,
                None,
                &[Event::from("s3:ObjectCreated:*")],
            )
            .await;
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
        let ingestor = Ingestor::new(
            store.clone(),
            store.clone(),
            SqsQueue::new(stack.sqs.clone(), &refit_queue),
            Engine::Model(model()),
            settings(1),
        );
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
