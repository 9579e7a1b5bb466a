//! The three Lambdas' handlers against a real S3 + SQS emulator (moto, started by
//! `infra/test.sh`): S3 → SQS notifications start the splitter, an event-source-mapping loop
//! feeds real `SqsEvent`s to the featurizer and deletes only the successful messages (so
//! visibility-timeout redelivery and the dead-letter queue behave as on AWS), then the
//! reducer. Fault tests check that nothing is lost and outputs equal a clean run.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws::lambda::{
    handle_reduce_batch, handle_shard_batch, handle_splitter_event, parse_splitter_event,
};
use aws::sdk::{S3Store, SqsQueue};
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_s3::types::Event;
use aws_sdk_sqs::types::QueueAttributeName;
use pipeline::batch::featurizer::{FeaturizerSettings, ShardFeaturizer};
use pipeline::batch::reducer::{Reducer, ReducerSettings};
use pipeline::batch::splitter::{SplitOutcome, Splitter};
use pipeline::batch::summary::Summary;
use pipeline::layout::RunLayout;
use pipeline::manifest::{ImageError, RunOptions, RunRequest, ShardMessage};
use pipeline::parquet_io::{read_rows, Dataset, VectorRow};
use pipeline::ports::store::{Bytes, ObjectInfo, ObjectStore, StoreError, Versioned};
use testkit::moto::{self, sqs_event, Moto, Notification, Redrive};

use crate::common::*;

/// Max deliveries before SQS moves a message to the dead-letter queue (as the template's
/// MaxReceiveCount, smaller to keep tests short).
const MAX_RECEIVE_COUNT: u32 = 2;
/// Visibility timeout of the test queues: how long a failed message waits to be redelivered.
const VISIBILITY_S: i32 = 2;

/// moto's URL (kept for the modules that read it here: [`testkit::moto::endpoint`]).
pub(crate) fn endpoint() -> String {
    moto::endpoint()
}

/// One isolated "stack" on the emulator: a bucket, the shard and reduce queues with their
/// dead-letter queues, and a queue receiving the bucket's run-request notifications.
pub(crate) struct Stack {
    max_receive: u32,
    moto: Moto,
    pub(crate) s3: aws_sdk_s3::Client,
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) bucket: String,
    pub(crate) shard_queue: String,
    pub(crate) shard_dlq: String,
    pub(crate) reduce_queue: String,
    requests_queue: String,
}

impl Stack {
    pub(crate) async fn new(name: &str) -> Self {
        Self::with_max_receive(name, MAX_RECEIVE_COUNT).await
    }

    /// A stack whose queues dead-letter a message after `max_receive` deliveries.
    pub(crate) async fn with_max_receive(name: &str, max_receive: u32) -> Self {
        let moto = Moto::connect().await;
        let unique = moto::unique(name);
        let bucket = format!("it-{unique}");
        moto.create_bucket(&bucket).await;
        let mut stack = Stack {
            max_receive,
            s3: moto.s3.clone(),
            sqs: moto.sqs.clone(),
            moto,
            bucket,
            shard_queue: String::new(),
            shard_dlq: String::new(),
            reduce_queue: String::new(),
            requests_queue: String::new(),
        };
        stack.shard_dlq = stack.queue(&format!("{unique}-shards-dlq"), None).await;
        stack.shard_queue = stack
            .queue(&format!("{unique}-shards"), Some(&stack.shard_dlq.clone()))
            .await;
        let reduce_dlq = stack.queue(&format!("{unique}-reduce-dlq"), None).await;
        stack.reduce_queue = stack
            .queue(&format!("{unique}-reduce"), Some(&reduce_dlq))
            .await;
        stack.requests_queue = stack.queue(&format!("{unique}-requests"), None).await;
        let requests_queue = stack.requests_queue.clone();
        stack
            .notify(
                &requests_queue,
                "runs/requests/",
                Some(".json"),
                &[Event::S3ObjectCreated],
            )
            .await;
        stack
    }

    /// Has the bucket send S3 event notifications for `events` on keys under `prefix` (and
    /// ending with `suffix`) to a queue, as the template's notification configuration does.
    /// It replaces the bucket's notification configuration.
    pub(crate) async fn notify(
        &self,
        queue_url: &str,
        prefix: &str,
        suffix: Option<&str>,
        events: &[Event],
    ) {
        let notification = Notification {
            queue_arn: self.arn(queue_url).await,
            events: events.to_vec(),
            prefix: prefix.to_string(),
            suffix: suffix.map(str::to_string),
        };
        self.moto.notify(&self.bucket, &[notification]).await;
    }

    async fn queue(&self, name: &str, dlq: Option<&str>) -> String {
        let redrive = match dlq {
            Some(dlq) => Some(Redrive {
                dlq_arn: self.arn(dlq).await,
                max_receive_count: self.max_receive,
            }),
            None => None,
        };
        self.moto
            .create_queue(name, Some(VISIBILITY_S), redrive.as_ref())
            .await
    }

    /// A queue's ARN.
    async fn arn(&self, url: &str) -> String {
        self.moto.queue_arn(url).await
    }

    pub(crate) async fn depth(&self, url: &str) -> (usize, usize) {
        self.moto.depth(url).await
    }

    pub(crate) fn store(&self) -> S3Store {
        S3Store::new(self.s3.clone(), &self.bucket)
    }

    pub(crate) fn splitter(&self) -> Splitter<S3Store, SqsQueue, SqsQueue> {
        Splitter::new(
            self.store(),
            self.store(),
            SqsQueue::new(self.sqs.clone(), &self.shard_queue),
            SqsQueue::new(self.sqs.clone(), &self.reduce_queue),
            RunOptions::default(),
            1280,
        )
        .with_input_bucket(&self.bucket)
        .with_model_sha256(model().sha256())
    }

    pub(crate) fn featurizer<S: ObjectStore + Clone>(
        &self,
        store: S,
    ) -> ShardFeaturizer<S, SqsQueue> {
        ShardFeaturizer::new(
            store.clone(),
            store,
            SqsQueue::new(self.sqs.clone(), &self.reduce_queue),
            model(),
            FeaturizerSettings {
                worker_threads: 2,
                fetch_concurrency: 8,
                ..Default::default()
            },
        )
    }

    pub(crate) fn reducer<S: ObjectStore>(&self, store: S) -> Reducer<S> {
        Reducer::new(
            store,
            ReducerSettings {
                lock_stale_after: Duration::from_secs(60),
                ..Default::default()
            },
        )
    }

    pub(crate) async fn upload(&self, prefix: &str, files: &[(String, Vec<u8>)]) {
        for (path, bytes) in files {
            self.store()
                .put(&format!("{prefix}{path}"), Bytes::from(bytes.clone()))
                .await
                .unwrap();
        }
    }

    /// Drops a run request in the bucket and runs the splitter on the S3 events that arrive
    /// in the notification queue (the first may be an `s3:TestEvent`), as the Lambda would.
    pub(crate) async fn submit(&self, name: &str, body: &str) -> Vec<SplitOutcome> {
        let key = format!("runs/requests/{name}.json");
        self.store()
            .put(&key, Bytes::from(body.to_string()))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let splitter = self.splitter();
        let mut outcomes = Vec::new();
        let mut saw_request = false;
        while !saw_request {
            assert!(Instant::now() < deadline, "no S3 notification for {key}");
            for message in self.receive(&self.requests_queue, 10).await {
                let event: serde_json::Value =
                    serde_json::from_str(message.body().unwrap()).unwrap();
                saw_request |= event
                    .to_string()
                    .contains(&format!("{name}.json").replace(' ', "+"));
                let parsed = parse_splitter_event(event).expect("an S3 event");
                outcomes.extend(
                    handle_splitter_event(
                        &splitter,
                        &self.store(),
                        parsed,
                        message.message_id().unwrap_or("moto"),
                    )
                    .await
                    .expect("splitter"),
                );
                self.delete(&self.requests_queue, message.receipt_handle().unwrap())
                    .await;
            }
        }
        outcomes
    }

    pub(crate) async fn receive(&self, url: &str, max: i32) -> Vec<aws_sdk_sqs::types::Message> {
        self.moto.receive(url, max).await
    }

    pub(crate) async fn delete(&self, url: &str, receipt: &str) {
        self.moto.delete(url, receipt).await
    }

    /// The Lambda event-source mapping: receive up to `batch` messages, hand them to the
    /// handler as a real `SqsEvent`, delete the ones it did not report as failed. Runs until
    /// the queue is empty, waiting out visibility timeouts of failed messages.
    pub(crate) async fn pump_queue<F, Fut>(&self, url: &str, batch: i32, handler: F) -> usize
    where
        F: FnMut(SqsEvent) -> Fut,
        Fut: std::future::Future<Output = aws_lambda_events::event::sqs::SqsBatchResponse>,
    {
        self.pump(url, batch, handler).await
    }

    /// A queue of this stack (with a dead-letter queue), named after `name`.
    pub(crate) async fn make_queue(&self, name: &str) -> String {
        let unique = format!("{}-{name}", self.bucket);
        let dlq = self.queue(&format!("{unique}-dlq"), None).await;
        let url = self.queue(&unique, Some(&dlq)).await;
        // Batches of 100 inbox records take longer than the shard tests' 2 s to featurize.
        self.moto
            .set_attribute(&url, QueueAttributeName::VisibilityTimeout, "300")
            .await;
        url
    }

    /// The `SqsEvent` Lambda would deliver for these messages of queue `url`.
    pub(crate) async fn sqs_event(
        &self,
        messages: &[aws_sdk_sqs::types::Message],
        url: &str,
    ) -> SqsEvent {
        sqs_event(messages, &self.arn(url).await)
    }

    async fn pump<F, Fut>(&self, url: &str, batch: i32, mut handler: F) -> usize
    where
        F: FnMut(SqsEvent) -> Fut,
        Fut: std::future::Future<Output = aws_lambda_events::event::sqs::SqsBatchResponse>,
    {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut delivered = 0;
        loop {
            assert!(Instant::now() < deadline, "queue {url} did not drain");
            let messages = self.receive(url, batch).await;
            if messages.is_empty() {
                if self.depth(url).await == (0, 0) {
                    return delivered;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            delivered += messages.len();
            let event = sqs_event(&messages, &self.arn(url).await);
            let response = handler(event).await;
            let failed: BTreeSet<String> = response
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.clone())
                .collect();
            for message in &messages {
                if !failed.contains(message.message_id().unwrap()) {
                    self.delete(url, message.receipt_handle().unwrap()).await;
                }
            }
        }
    }

    pub(crate) async fn pump_shards<S: ObjectStore + Clone>(&self, store: S, batch: i32) -> usize {
        let featurizer = self.featurizer(store);
        self.pump(&self.shard_queue.clone(), batch, |event| {
            let featurizer = &featurizer;
            async move { handle_shard_batch(featurizer, event, "test-request", None).await }
        })
        .await
    }

    /// The reduce as the reducer Lambda runs it: the report's thumbnails read from the bucket.
    pub(crate) async fn pump_reduce_with_images(&self) -> usize {
        let reducer = self.reducer(self.store()).with_input(self.store());
        self.pump(&self.reduce_queue.clone(), 1, |event| {
            let reducer = &reducer;
            async move { handle_reduce_batch(reducer, event, "test-request").await }
        })
        .await
    }

    pub(crate) async fn pump_reduce<S: ObjectStore>(&self, store: S) -> usize {
        let reducer = self.reducer(store);
        self.pump(&self.reduce_queue.clone(), 1, |event| {
            let reducer = &reducer;
            async move { handle_reduce_batch(reducer, event, "test-request").await }
        })
        .await
    }
}

/// Whether `key` matches `pattern`, where `*` stands for any run of characters.
fn key_matches(pattern: &str, key: &str) -> bool {
    let mut rest = key;
    let parts: Vec<&str> = pattern.split('*').collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// A store that injects failures into chosen writes and counts writes, around S3.
#[derive(Clone)]
struct FaultyStore {
    inner: S3Store,
    /// (key pattern, failures left)
    failures: Arc<Mutex<Vec<(String, usize)>>>,
    puts: Arc<Mutex<HashMap<String, usize>>>,
    /// Makes two featurizers reach the barrier's listing together.
    barrier: Option<Arc<tokio::sync::Barrier>>,
}

impl FaultyStore {
    fn new(inner: S3Store) -> Self {
        Self {
            inner,
            failures: Default::default(),
            puts: Default::default(),
            barrier: None,
        }
    }
    /// Fails the next `times` writes whose key matches `pattern` (`*`: any characters).
    fn fail(self, pattern: &str, times: usize) -> Self {
        self.failures
            .lock()
            .unwrap()
            .push((pattern.to_string(), times));
        self
    }
    /// Writes whose key matches `pattern` (`*`: any characters; the pattern is anchored at
    /// the key's end).
    fn puts_matching(&self, pattern: &str) -> usize {
        self.puts
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| key_matches(pattern, k))
            .map(|(_, n)| n)
            .sum()
    }
}

impl ObjectStore for FaultyStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let injected = {
            let mut failures = self.failures.lock().unwrap();
            failures
                .iter_mut()
                .find(|(pattern, left)| key_matches(pattern, key) && *left > 0)
                .map(|(_, left)| *left -= 1)
                .is_some()
        };
        if injected {
            return Err(StoreError::Remote {
                op: "PutObject",
                key: key.to_string(),
                transient: true,
                source: "injected failure".into(),
            });
        }
        *self
            .puts
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default() += 1;
        self.inner.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        self.inner.put_if_absent(key, body).await
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        self.inner.get_versioned(key).await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        self.inner.put_if_match(key, body, etag).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.exists(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        if let Some(barrier) = &self.barrier {
            if prefix.ends_with("/done/") {
                barrier.wait().await;
            }
        }
        self.inner.list(prefix).await
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

/// Both datasets of a run, rows sorted by path.
pub(crate) async fn datasets<S: ObjectStore>(
    store: &S,
    run_id: &str,
) -> (Vec<VectorRow>, Vec<VectorRow>) {
    let layout = RunLayout::new(run_id);
    let mut out = Vec::new();
    for (prefix, dataset) in [
        (layout.results_prefix(), Dataset::Features),
        (layout.pca_prefix(), Dataset::Pca),
    ] {
        let mut rows = Vec::new();
        for object in store.list(&prefix).await.unwrap() {
            if object.key.ends_with(".parquet") {
                rows.extend(read_rows(dataset, store.get(&object.key).await.unwrap()).unwrap());
            }
        }
        assert!(
            store.exists(&format!("{prefix}_SUCCESS")).await.unwrap(),
            "{prefix}_SUCCESS"
        );
        rows.sort_by(|a, b| a.path.cmp(&b.path));
        out.push(rows);
    }
    let pca = out.pop().unwrap();
    (out.pop().unwrap(), pca)
}

/// Both datasets and the summary of a clean run.
pub(crate) type Reference = (Vec<VectorRow>, Vec<VectorRow>, Summary);

/// The embedded (local) run of the same files: the reference outputs.
pub(crate) fn local_reference(files: &[(String, Vec<u8>)], request: &RunRequest) -> Reference {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    write_tree(input.path(), files);
    let report = run_local_blocking(input.path(), output.path(), request.clone());
    let rt = runtime();
    let store = pipeline::ports::store::FsStore::new(output.path());
    let (features, pca) = rt.block_on(datasets(&store, &report.summary.run_id));
    (features, pca, report.summary)
}

/// Features bit-identical, projections within 1e-6 (relative to their scale).
pub(crate) fn assert_same_outputs(got: &(Vec<VectorRow>, Vec<VectorRow>), want: &Reference) {
    assert_eq!(got.0.len(), want.0.len(), "Results rows");
    for (a, b) in got.0.iter().zip(&want.0) {
        assert_eq!((&a.path, &a.label), (&b.path, &b.label));
        assert!(a.values == b.values, "features of {} differ", a.path);
    }
    assert_eq!(got.1.len(), want.1.len(), "Results_PCA rows");
    for (a, b) in got.1.iter().zip(&want.1) {
        assert_eq!((&a.path, &a.label), (&b.path, &b.label));
        for (x, y) in a.values.iter().zip(&b.values) {
            assert!(
                (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                "{}: pca {x} vs {y}",
                a.path
            );
        }
    }
}

pub(crate) fn small_request(shard_size: usize, k: usize) -> RunRequest {
    RunRequest {
        input_prefix: "images/".into(),
        shard_size: Some(shard_size),
        k: Some(k),
        ..Default::default()
    }
}

pub(crate) fn request_json(request: &RunRequest) -> String {
    serde_json::to_string(request).unwrap()
}

pub(crate) async fn summary_of<S: ObjectStore>(store: &S, run_id: &str) -> Summary {
    serde_json::from_slice(&store.get(&RunLayout::new(run_id).summary()).await.unwrap()).unwrap()
}

#[test]
fn lambda_pipeline_equals_the_local_mode_on_300_images() {
    let files = fruit_images(10, 31);
    assert!(files.len() >= 300);
    let request = small_request(50, 20);
    let reference = local_reference(&files, &request);
    runtime().block_on(async {
        let stack = Stack::new("equal").await;
        stack.upload("images/", &files).await;
        let outcomes = stack.submit("fruits", &request_json(&request)).await;
        assert_eq!(outcomes.len(), 1);
        let run = &outcomes[0];
        assert!(run.created && run.shards >= 6, "{run:?}");
        assert_eq!(run.images, files.len());
        let delivered = stack.pump_shards(stack.store(), 3).await;
        assert_eq!(delivered, run.shards);
        assert_eq!(
            stack.pump_reduce(stack.store()).await,
            1,
            "exactly one reduce message"
        );
        let got = datasets(&stack.store(), &run.run_id).await;
        assert_same_outputs(&got, &reference);
        let summary = summary_of(&stack.store(), &run.run_id).await;
        assert_eq!(
            (summary.images, summary.rows, summary.errors),
            (files.len(), files.len(), 0)
        );
        assert_eq!(summary.explained_variance_ratio.len(), 20);
        for (a, b) in summary
            .explained_variance_ratio
            .iter()
            .zip(&reference.2.explained_variance_ratio)
        {
            assert!((a - b).abs() < 1e-9);
        }
        let status = pipeline::batch::status::run_status(&stack.store(), &run.run_id)
            .await
            .unwrap();
        assert_eq!(
            (status.done.len(), status.pending.len(), status.failed.len()),
            (run.shards, 0, 0)
        );
        assert!(status.reduced && status.state() == "complete");

        // The same request again is the same run: nothing is recomputed.
        let again = stack.submit("fruits-again", &request_json(&request)).await;
        assert_eq!(again[0].run_id, run.run_id);
        assert!(!again[0].created && again[0].already_complete);
    });
}

/// The fault tests' images (16, in 4 shards of 4), request (k = 5), and the local run of
/// the same images: the clean outputs every fault test must end with.
fn fault_setup() -> (Vec<(String, Vec<u8>)>, RunRequest, Reference) {
    let files = fruit_images(4, 4);
    let request = small_request(4, 5);
    let reference = local_reference(&files, &request);
    (files, request, reference)
}

/// A fresh stack with `files` under `images/` and the run submitted through an S3 event.
async fn start_run(
    name: &str,
    files: &[(String, Vec<u8>)],
    request: &RunRequest,
) -> (Stack, SplitOutcome) {
    let stack = Stack::new(name).await;
    stack.upload("images/", files).await;
    let run = stack.submit(name, &request_json(request)).await.remove(0);
    (stack, run)
}

#[test]
fn every_shard_message_delivered_twice() {
    let (files, request, reference) = fault_setup();
    runtime().block_on(async {
        let (stack, run) = start_run("twice", &files, &request).await;
        let duplicates: Vec<String> = (0..run.shards)
            .map(|shard| {
                serde_json::to_string(&ShardMessage {
                    run_id: run.run_id.clone(),
                    shard,
                })
                .unwrap()
            })
            .collect();
        pipeline::ports::queue::Queue::send_all(
            &SqsQueue::new(stack.sqs.clone(), &stack.shard_queue),
            duplicates,
        )
        .await
        .unwrap();
        let store = FaultyStore::new(stack.store());
        assert_eq!(stack.pump_shards(store.clone(), 1).await, 2 * run.shards);
        assert_eq!(
            store.puts_matching("staging/*.parquet"),
            run.shards,
            "each shard featurized once: redeliveries skip committed shards"
        );
        assert_eq!(
            store.puts_matching("Results/*.parquet"),
            run.shards,
            "each part published once"
        );
        stack.pump_reduce(store.clone()).await;
        assert_eq!(
            store.puts_matching(&RunLayout::new(&run.run_id).pca_model()),
            1,
            "one reduce published"
        );
        assert_same_outputs(&datasets(&stack.store(), &run.run_id).await, &reference);
    });
}

#[test]
fn a_featurizer_failing_mid_shard_is_retried() {
    let (files, request, reference) = fault_setup();
    runtime().block_on(async {
        let (stack, run) = start_run("midshard", &files, &request).await;
        // Shard 1's part is written, then writing its statistics fails once.
        let store = FaultyStore::new(stack.store()).fail("staging/*shard-00001/*stats.bin", 1);
        let delivered = stack.pump_shards(store.clone(), 2).await;
        assert_eq!(delivered, run.shards + 1, "shard 1 was delivered again");
        assert_eq!(
            store.puts_matching("staging/*shard-00001/*part.parquet"),
            2,
            "the retry featurized the shard again, under its own attempt"
        );
        assert_eq!(
            store.puts_matching("Results/*part-00001.parquet"),
            1,
            "only the committed attempt was published"
        );
        stack.pump_reduce(stack.store()).await;
        let got = datasets(&stack.store(), &run.run_id).await;
        assert_same_outputs(&got, &reference);
        assert_eq!(got.0.len(), files.len(), "no duplicated rows");
    });
}

#[test]
fn a_poison_shard_reaches_the_dlq_then_the_run_resumes() {
    let (files, request, reference) = fault_setup();
    runtime().block_on(async {
        let (stack, run) = start_run("poison", &files, &request).await;
        let store =
            FaultyStore::new(stack.store()).fail("staging/*shard-00002/*part.parquet", usize::MAX);
        stack.pump_shards(store, 1).await;
        let (dead, _) = stack.depth(&stack.shard_dlq).await;
        assert_eq!(dead, 1, "the poison shard is in the dead-letter queue");
        let status = pipeline::batch::status::run_status(&stack.store(), &run.run_id)
            .await
            .unwrap();
        assert_eq!(status.failed.len(), 1, "{status:?}");
        assert_eq!(status.failed[0].shard, 2);
        assert_eq!(status.failed[0].attempt, Some(MAX_RECEIVE_COUNT));
        assert!(
            status.failed[0].error.contains("injected failure"),
            "{}",
            status.failed[0].error
        );
        assert_eq!(status.done.len(), run.shards - 1);
        assert!(!status.reduce_claimed && !status.reduced);
        assert_eq!(status.state(), "shards failing");

        // Fixed: re-submitting the same request resumes, sending only the missing shard.
        let resumed = stack
            .submit("poison-retry", &request_json(&request))
            .await
            .remove(0);
        assert_eq!(resumed.run_id, run.run_id);
        assert!(!resumed.created);
        assert_eq!(resumed.shards_sent, 1);
        assert_eq!(stack.pump_shards(stack.store(), 1).await, 1);
        assert_eq!(stack.pump_reduce(stack.store()).await, 1);
        assert_same_outputs(&datasets(&stack.store(), &run.run_id).await, &reference);
        let status = pipeline::batch::status::run_status(&stack.store(), &run.run_id)
            .await
            .unwrap();
        assert!(status.reduced && status.failed.is_empty());
    });
}

#[test]
fn the_barrier_raced_by_two_featurizers_claims_the_reduce_once() {
    let (files, request, reference) = fault_setup();
    runtime().block_on(async {
        let (stack, run) = start_run("race", &files, &request).await;
        // Take the shard messages off the queue and run them by hand: all but the last two,
        // then the last two at once, meeting at the barrier's listing.
        while !stack.receive(&stack.shard_queue, 10).await.is_empty() {}
        let plain = stack.featurizer(stack.store());
        for shard in 0..run.shards - 2 {
            plain
                .process(
                    &ShardMessage {
                        run_id: run.run_id.clone(),
                        shard,
                    },
                    None,
                    None,
                )
                .await
                .unwrap();
        }
        let mut racing = FaultyStore::new(stack.store());
        racing.barrier = Some(Arc::new(tokio::sync::Barrier::new(2)));
        let (a, b) = (
            stack.featurizer(racing.clone()),
            stack.featurizer(racing.clone()),
        );
        let last_two = [run.shards - 2, run.shards - 1].map(|shard| ShardMessage {
            run_id: run.run_id.clone(),
            shard,
        });
        let (first, second) = tokio::join!(
            a.process(&last_two[0], None, None),
            b.process(&last_two[1], None, None)
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        assert!(
            first.sent_reduce ^ second.sent_reduce,
            "exactly one of the two claimed: {first:?} {second:?}"
        );
        assert_eq!(
            stack.pump_reduce(stack.store()).await,
            1,
            "one reduce message"
        );
        assert_same_outputs(&datasets(&stack.store(), &run.run_id).await, &reference);
    });
}

#[test]
fn the_reduce_message_delivered_twice_reduces_once() {
    let (files, request, reference) = fault_setup();
    runtime().block_on(async {
        let (stack, run) = start_run("reduce2", &files, &request).await;
        stack.pump_shards(stack.store(), 2).await;
        let body = stack.receive(&stack.reduce_queue, 1).await.remove(0);
        stack
            .delete(&stack.reduce_queue, body.receipt_handle().unwrap())
            .await;
        let reduce_queue = SqsQueue::new(stack.sqs.clone(), &stack.reduce_queue);
        let body = body.body().unwrap().to_string();
        pipeline::ports::queue::Queue::send_all(&reduce_queue, vec![body.clone(), body])
            .await
            .unwrap();
        // Both deliveries handled at once by two reducers, then whatever is left.
        let store = FaultyStore::new(stack.store());
        let messages = stack.receive(&stack.reduce_queue, 10).await;
        let arn = stack.arn(&stack.reduce_queue).await;
        let (r1, r2) = (stack.reducer(store.clone()), stack.reducer(store.clone()));
        let mut events = messages.chunks(1).map(|m| sqs_event(m, &arn));
        let (e1, e2) = (events.next().unwrap(), events.next());
        let second = async {
            match e2 {
                Some(e) => Some(handle_reduce_batch(&r2, e, "b").await),
                None => None,
            }
        };
        let (_, _) = tokio::join!(handle_reduce_batch(&r1, e1, "a"), second);
        // Let visibility expire for any failed delivery, then drain.
        stack.pump_reduce(store.clone()).await;
        assert_eq!(
            store.puts_matching(&RunLayout::new(&run.run_id).pca_model()),
            1,
            "exactly one reduce published"
        );
        assert_eq!(
            store.puts_matching(&RunLayout::new(&run.run_id).pca_success()),
            1
        );
        assert_same_outputs(&datasets(&stack.store(), &run.run_id).await, &reference);
    });
}

#[test]
fn bad_objects_in_the_bucket_end_in_the_error_list() {
    let mut files = fruit_images(2, 3);
    let real = files[0].1.clone();
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for (name, bytes, _) in bad_files(&real) {
        files.push((name.to_string(), bytes));
        expected.insert(name.to_string());
    }
    files.push(("Pommé rouge/photo ü 1.jpg".into(), real.clone()));
    files.push(("with space/a+b (1).jpg".into(), real));
    runtime().block_on(async {
        let stack = Stack::new("badinput").await;
        stack.upload("images/", &files).await;
        let request = RunRequest {
            max_pixels: Some(50_000),
            max_error_rate: Some(0.6),
            ..small_request(4, 3)
        };
        let run = stack
            .submit("bad input", &request_json(&request))
            .await
            .remove(0);
        assert_eq!(run.images, files.len());
        stack.pump_shards(stack.store(), 10).await;
        stack.pump_reduce(stack.store()).await;
        let summary = summary_of(&stack.store(), &run.run_id).await;
        assert_eq!(summary.status, "succeeded");
        assert_eq!(summary.rows + summary.errors, files.len());
        let errors: Vec<ImageError> = serde_json::from_slice(
            &stack
                .store()
                .get(&RunLayout::new(&run.run_id).errors())
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            errors
                .iter()
                .map(|e| e.path.clone())
                .collect::<BTreeSet<_>>(),
            expected
        );
        let (features, _) = datasets(&stack.store(), &run.run_id).await;
        let paths: BTreeSet<&str> = features.iter().map(|r| r.path.as_str()).collect();
        assert!(
            paths.contains("Pommé rouge/photo ü 1.jpg") && paths.contains("with space/a+b (1).jpg"),
            "{paths:?}"
        );
    });
}

#[test]
fn malformed_run_requests_are_rejected_without_a_partial_run() {
    let files = fruit_images(1, 3);
    runtime().block_on(async {
        let stack = Stack::new("malformed").await;
        stack.upload("images/", &files).await;
        let cases = [
            (
                "bad-json",
                "{ this is not json".to_string(),
                "not a valid run request",
            ),
            (
                "unknown-prefix",
                r#"{"input_prefix": "nothing/here/"}"#.to_string(),
                "no images under s3://",
            ),
            (
                "k-too-large",
                r#"{"input_prefix": "images/", "k": 5000}"#.to_string(),
                "larger than the feature dimension 1280",
            ),
            (
                "typo",
                r#"{"input_prefix": "images/", "kk": 5}"#.to_string(),
                "unknown field `kk`",
            ),
        ];
        for (name, body, expected) in cases {
            let outcomes = stack.submit(name, &body).await;
            assert!(outcomes.is_empty(), "{name}: no run");
            let result: serde_json::Value = serde_json::from_slice(
                &stack
                    .store()
                    .get(&format!("runs/request-results/{name}.json"))
                    .await
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(result["ok"], false);
            assert!(
                result["error"].as_str().unwrap().contains(expected),
                "{name}: {result}"
            );
        }
        let written: Vec<String> = stack
            .store()
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert!(
            written.iter().all(|k| k.starts_with("images/")
                || k.starts_with("runs/requests/")
                || k.starts_with("runs/request-results/")),
            "nothing of a run was written: {written:?}"
        );
        assert_eq!(
            stack.depth(&stack.shard_queue).await,
            (0, 0),
            "no shard message sent"
        );
    });
}

#[test]
fn cli_submit_and_status_drive_a_stack() {
    let files = fruit_images(2, 4);
    runtime().block_on(async {
        let stack = Stack::new("cli").await;
        stack.upload("images/", &files).await;
        let cli = |args: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
                .args(args)
                .args(["--bucket", &stack.bucket, "--endpoint-url", &endpoint()])
                .envs([
                    ("AWS_ACCESS_KEY_ID", "test"),
                    ("AWS_SECRET_ACCESS_KEY", "test"),
                    ("AWS_REGION", "us-east-1"),
                ])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            text
        };
        let submitted: SplitOutcome = serde_json::from_str(&cli(&[
            "submit",
            "--input-prefix",
            "images/",
            "--shard-queue-url",
            &stack.shard_queue,
            "--reduce-queue-url",
            &stack.reduce_queue,
            "--k",
            "3",
            "--shard-size",
            "4",
        ]))
        .unwrap();
        assert!(submitted.created);
        assert_eq!((submitted.images, submitted.shards), (8, 2));
        let pending: serde_json::Value =
            serde_json::from_str(&cli(&["status", "--run", &submitted.run_id, "--json"])).unwrap();
        assert_eq!(pending["pending"].as_array().unwrap().len(), 2);
        stack.pump_shards(stack.store(), 1).await;
        stack.pump_reduce(stack.store()).await;
        let done = cli(&["status", "--run", &submitted.run_id]);
        assert!(
            done.contains(": complete") && done.contains("shards 2 done / 0 pending / 0 failed"),
            "{done}"
        );
    });
}
