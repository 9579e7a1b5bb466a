//! Continuous ingestion (issue 11): images dropped into the bucket's inbox are featurized as
//! they land and the collection's view is kept current; `featurize watch` does the same on a
//! local folder. Each is checked against a batch run over the same final set of images:
//! exactly the live images, one row each, bit-identical features, the same PCA (1e-6).
//!
//! On moto, the bucket's real S3 → SQS notifications (ObjectCreated / ObjectRemoved on the
//! inbox prefix; moto's carry no `sequencer`) feed the featurizer's handler through an
//! event-source-mapping loop (batches of up to 100 records); the refit queue is pumped into
//! the reducer's handler, which refits once the collection has been quiet.
//!
//! Under real traffic (issue 27): [`steady`] — the staleness bound under steady uploads;
//! [`repair`] — per-record isolation in ingest batches, and reconciles (a dead-lettered
//! batch, a backfill, a local folder).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use aws::lambda::{handle_featurizer_batch, handle_reducer_batch, Refitter};
use aws::sdk::{S3Store, SqsQueue};
use aws_sdk_s3::types::Event;
use engine::pca::PcaModel;
use engine::pca::PcaOptions;
use futures::stream::{self, StreamExt};
use pipeline::batch::featurizer::ShardFeaturizer;
use pipeline::batch::inference::Engine;
use pipeline::batch::listing::ImageFilter;
use pipeline::batch::reducer::Reducer;
use pipeline::continuous::collection::{
    collection_status, read_current, CollectionLayout, CurrentPointer, RefitOptions,
};
use pipeline::continuous::ingest::{IngestSettings, Ingestor};
use pipeline::manifest::{ImageError, RunRequest};
use pipeline::parquet_io::{read_rows, Dataset, VectorRow};
use pipeline::ports::store::{Bytes, FsStore, ObjectStore};

use crate::aws::Stack;
use crate::common::*;

mod repair;
mod steady;

const K: usize = 4;
const INBOX: &str = "inbox/";

/// The ingest settings of these tests, with this quiet time.
fn settings(quiet_s: u32) -> IngestSettings {
    IngestSettings {
        inbox: INBOX.into(),
        filter: ImageFilter::new("*.{jpg,jpeg,png}").unwrap(),
        max_pixels: 50_000_000,
        threads: 2,
        fetch_concurrency: 16,
        quiet_s,
    }
}

/// Rows of every part of a Parquet folder in a store.
async fn read_folder<S: ObjectStore>(store: &S, prefix: &str, dataset: Dataset) -> Vec<VectorRow> {
    let mut rows = Vec::new();
    for object in store.list(prefix).await.unwrap() {
        if object.key.ends_with(".parquet") {
            rows.extend(read_rows(dataset, store.get(&object.key).await.unwrap()).unwrap());
        }
    }
    rows
}

/// The published view of a collection: pointer, Results, Results_PCA, model, errors.
struct View {
    pointer: CurrentPointer,
    features: BTreeMap<String, VectorRow>,
    pca: BTreeMap<String, VectorRow>,
    model: PcaModel,
    errors: Vec<ImageError>,
}

async fn read_view<S: ObjectStore>(store: &S, collection: &str) -> View {
    let layout = CollectionLayout::new(collection);
    let (pointer, _) = read_current(store, &layout)
        .await
        .unwrap()
        .expect("a published view");
    assert!(
        store
            .exists(&layout.success(&pointer.snapshot))
            .await
            .unwrap(),
        "the pointed-at snapshot is complete"
    );
    let by_path = |rows: Vec<VectorRow>| {
        let n = rows.len();
        let map: BTreeMap<String, VectorRow> =
            rows.into_iter().map(|r| (r.path.clone(), r)).collect();
        assert_eq!(map.len(), n, "one row per path");
        map
    };
    let features = by_path(read_folder(store, &pointer.results, Dataset::Features).await);
    let pca = by_path(read_folder(store, &pointer.results_pca, Dataset::Pca).await);
    let model = serde_json::from_slice(
        &store
            .get(pointer.pca_model.as_ref().expect("a PCA"))
            .await
            .unwrap(),
    )
    .unwrap();
    let errors = serde_json::from_slice(&store.get(&pointer.errors).await.unwrap()).unwrap();
    View {
        pointer,
        features,
        pca,
        model,
        errors,
    }
}

/// A batch run (`featurize run`'s embedded pipeline) over `folder`: its features, PCA rows and model.
fn batch_run(
    folder: &Path,
    k: usize,
) -> (
    BTreeMap<String, VectorRow>,
    BTreeMap<String, VectorRow>,
    PcaModel,
) {
    let out = tempfile::tempdir().unwrap();
    let request = RunRequest {
        k: Some(k),
        // The empty image is an error in both; it must not fail the batch run.
        max_error_rate: Some(1.0),
        ..serde_json::from_value(serde_json::json!({"input_prefix": ""})).unwrap()
    };
    let report = run_local_blocking(folder, out.path(), request);
    let run = report.split.run_id.clone();
    let store = FsStore::new(out.path());
    runtime().block_on(async {
        let features = read_folder(&store, &format!("Results/{run}/"), Dataset::Features).await;
        let pca = read_folder(&store, &format!("Results_PCA/{run}/"), Dataset::Pca).await;
        let model: PcaModel = serde_json::from_slice(
            &store
                .get(&format!("runs/{run}/pca_model.json"))
                .await
                .unwrap(),
        )
        .unwrap();
        (
            features.into_iter().map(|r| (r.path.clone(), r)).collect(),
            pca.into_iter().map(|r| (r.path.clone(), r)).collect(),
            model,
        )
    })
}

/// The view equals the batch run: same paths and labels, bit-identical features, the PCA
/// within 1e-6 (explained variance, components up to sign) and projections to match.
fn assert_view_matches_batch(view: &View, folder: &Path) {
    let (features, pca, model) = batch_run(folder, K);
    assert_eq!(
        view.features.keys().collect::<Vec<_>>(),
        features.keys().collect::<Vec<_>>(),
        "the view holds exactly the batch run's images"
    );
    for (path, row) in &features {
        let ours = &view.features[path];
        assert_eq!(ours.label, row.label, "{path}");
        assert!(
            ours.values.len() == row.values.len()
                && ours
                    .values
                    .iter()
                    .zip(&row.values)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{path}: features are not bit-identical to the batch run's"
        );
    }
    assert_eq!(view.model.k, model.k);
    assert_eq!(view.model.n, model.n);
    for (a, b) in view
        .model
        .explained_variance_ratio
        .iter()
        .zip(&model.explained_variance_ratio)
    {
        assert!((a - b).abs() < 1e-6, "explained variance ratio {a} vs {b}");
    }
    for (a, b) in view
        .model
        .explained_variance
        .iter()
        .zip(&model.explained_variance)
    {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "explained variance {a} vs {b}"
        );
    }
    let mut signs = Vec::new();
    for (i, (a, b)) in view
        .model
        .components
        .iter()
        .zip(&model.components)
        .enumerate()
    {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let sign = dot.signum();
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - sign * y).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-6,
            "component {i} differs by {worst:e} (up to sign)"
        );
        signs.push(sign as f32);
    }
    for (a, b) in view.model.mean.iter().zip(&model.mean) {
        assert!((a - b).abs() < 1e-6, "mean {a} vs {b}");
    }
    let scale = model.explained_variance[0].sqrt() as f32;
    for (path, row) in &pca {
        let ours = &view.pca[path];
        assert_eq!(ours.values.len(), row.values.len(), "{path}");
        for ((a, b), s) in ours.values.iter().zip(&row.values).zip(&signs) {
            assert!((a - s * b).abs() <= 1e-5 * scale, "{path}: pca {a} vs {b}");
        }
    }
}

/// The featurizer's event-source mapping on the ingest queue: up to 100 records per
/// invocation (10 per receive, as SQS; gathered as the batching window would), failures left
/// for redelivery. Returns the bodies processed.
async fn pump_ingest(
    stack: &Stack,
    queue: &str,
    featurizer: &ShardFeaturizer<S3Store, SqsQueue>,
    ingestor: &Ingestor<S3Store, S3Store, SqsQueue>,
) -> Vec<String> {
    let mut bodies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "the ingest queue did not drain");
        let mut messages = Vec::new();
        while messages.len() < 100 {
            let got = stack.receive(queue, 10).await;
            if got.is_empty() {
                break;
            }
            messages.extend(got);
        }
        if messages.is_empty() {
            if stack.depth(queue).await == (0, 0) {
                return bodies;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let event = stack.sqs_event(&messages, queue).await;
        let response = handle_featurizer_batch(featurizer, Some(ingestor), event, "it", None).await;
        assert!(
            response.batch_item_failures.is_empty(),
            "no record fails: {:?}",
            response.batch_item_failures
        );
        for m in &messages {
            bodies.push(m.body().unwrap().to_string());
            stack.delete(queue, m.receipt_handle().unwrap()).await;
        }
    }
}

async fn upload_all(store: &S3Store, files: &[(String, Vec<u8>)]) {
    stream::iter(files.iter().map(|(key, bytes)| async move {
        store.put(key, Bytes::from(bytes.clone())).await.unwrap();
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;
}

/// `files` (paths under a collection) as keys in its inbox.
fn inbox_keys(collection: &str, files: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|(p, b)| (format!("{INBOX}{collection}/{p}"), b.clone()))
        .collect()
}

/// Downloads the live images of a collection into `<dir>/<collection>/…` (for the batch run).
async fn download_collection(store: &S3Store, collection: &str, dir: &Path) -> usize {
    let prefix = format!("{INBOX}{collection}/");
    let objects = store.list(&prefix).await.unwrap();
    for o in &objects {
        let path = dir
            .join(collection)
            .join(o.key.strip_prefix(&prefix).unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, store.get(&o.key).await.unwrap()).unwrap();
    }
    objects.len()
}

/// `view` against a batch run over the collection's live objects, less the files in
/// `skip` (paths in the collection the batch run is not to see).
async fn assert_matches_live(store: &S3Store, collection: &str, view: View, skip: &[&str]) -> View {
    let dir = tempfile::tempdir().unwrap();
    download_collection(store, collection, dir.path()).await;
    let folder = dir.path().join(collection);
    for path in skip {
        std::fs::remove_file(folder.join(path)).unwrap();
    }
    tokio::task::spawn_blocking(move || {
        assert_view_matches_batch(&view, &folder);
        drop(dir);
        view
    })
    .await
    .unwrap()
}

/// The collection's view against a batch run over its live objects.
async fn assert_exact(store: &S3Store, collection: &str) -> View {
    let view = read_view(store, collection).await;
    assert_matches_live(store, collection, view, &[]).await
}

/// The template's wiring: `events` under the inbox → `queue`.
async fn notify_inbox(stack: &Stack, queue: &str, events: &[&str]) {
    let events: Vec<Event> = events.iter().map(|e| Event::from(*e)).collect();
    stack.notify(queue, INBOX, None, &events).await;
}

/// A stack whose inbox's ObjectCreated and ObjectRemoved notify a new ingest queue, and a
/// refit queue: `(stack, ingest queue, refit queue)`.
async fn notified_stack(name: &str) -> (Stack, String, String) {
    let stack = Stack::new(name).await;
    let ingest_queue = stack.make_queue("ingest").await;
    let refit_queue = stack.make_queue("refit").await;
    notify_inbox(
        &stack,
        &ingest_queue,
        &["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
    )
    .await;
    (stack, ingest_queue, refit_queue)
}

/// The model's ingestor reading the inbox in `input`, writing the stack's bucket and
/// asking for refits on `refit_queue`.
fn model_ingestor<I: ObjectStore>(
    stack: &Stack,
    input: I,
    refit_queue: &str,
    quiet_s: u32,
) -> Ingestor<I, S3Store, SqsQueue> {
    Ingestor::new(
        input,
        stack.store(),
        SqsQueue::new(stack.sqs.clone(), refit_queue),
        Engine::Model(model()),
        settings(quiet_s),
    )
}

/// The reducer's refitter on the bucket: `quiet_ms`, a PCA of `K` components, and
/// `options` otherwise.
fn refitter(store: &S3Store, quiet_ms: u64, options: RefitOptions) -> Refitter<S3Store> {
    Refitter {
        store: store.clone(),
        inbox: INBOX.into(),
        quiet_ms,
        options: RefitOptions {
            pca: PcaOptions {
                k: K,
                ..Default::default()
            },
            ..options
        },
    }
}

/// The reducer's event-source mapping on the refit queue until it is empty: the number of
/// deliveries.
async fn pump_reducer(
    stack: &Stack,
    refit_queue: &str,
    reducer: &Reducer<S3Store>,
    refitter: &Refitter<S3Store>,
) -> usize {
    stack
        .pump_queue(refit_queue, 10, |event| async move {
            handle_reducer_batch(reducer, Some(refitter), event, "it").await
        })
        .await
}

/// The featurizer and the reducer of a stack whose inbox notifies the ingest queue, with
/// a quiet time of 1 s and no reader to wait for.
struct Lambdas {
    stack: Stack,
    ingest_queue: String,
    refit_queue: String,
    store: S3Store,
    featurizer: ShardFeaturizer<S3Store, SqsQueue>,
    ingestor: Ingestor<S3Store, S3Store, SqsQueue>,
    reducer: Reducer<S3Store>,
    refitter: Refitter<S3Store>,
}

impl Lambdas {
    async fn new(name: &str) -> Self {
        let (stack, ingest_queue, refit_queue) = notified_stack(name).await;
        let store = stack.store();
        Self {
            featurizer: stack.featurizer(store.clone()),
            ingestor: model_ingestor(&stack, store.clone(), &refit_queue, 1),
            reducer: stack.reducer(store.clone()),
            // No reader to wait for: only the KEEP_SNAPSHOTS newest stay (checked below).
            refitter: refitter(
                &store,
                1000,
                RefitOptions {
                    min_reader_ms: 0,
                    ..Default::default()
                },
            ),
            stack,
            ingest_queue,
            refit_queue,
            store,
        }
    }

    /// The featurizer's mapping until the ingest queue is empty: the bodies processed.
    async fn ingest(&self) -> Vec<String> {
        pump_ingest(
            &self.stack,
            &self.ingest_queue,
            &self.featurizer,
            &self.ingestor,
        )
        .await
    }

    /// Delayed refit messages arrive after the quiet time; the reducer refits once.
    async fn refits(&self) -> usize {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        pump_reducer(
            &self.stack,
            &self.refit_queue,
            &self.reducer,
            &self.refitter,
        )
        .await
    }

    /// `featurize <args> --collection fruits` on the stack: its output.
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
            .args(args)
            .args([
                "--collection",
                "fruits",
                "--bucket",
                &self.stack.bucket,
                "--endpoint-url",
                &crate::aws::endpoint(),
            ])
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
    }
}

/// The first burst: what was uploaded and the ingest queue's bodies.
struct FirstBurst {
    /// 20 distinct images under their own names.
    distinct: Vec<(String, Vec<u8>)>,
    /// Every key of the bulk upload.
    keys: Vec<(String, Vec<u8>)>,
    bodies: Vec<String>,
}

/// Burst 1, one bulk upload of 1,020 keys: 20 distinct images under their own names, and
/// 1,000 more keys holding copies of them. Every key has its row.
async fn first_burst(lambdas: &Lambdas) -> FirstBurst {
    let distinct = fruit_images(4, 5);
    let mut keys = inbox_keys("fruits", &distinct);
    for i in 0..1000 {
        let (p, b) = &distinct[i % distinct.len()];
        let label = p.split('/').next().unwrap();
        keys.push((format!("{INBOX}fruits/{label}/bulk-{i:04}.jpg"), b.clone()));
    }
    let started = Instant::now();
    upload_all(&lambdas.store, &keys).await;
    let bodies = lambdas.ingest().await;
    assert!(lambdas.refits().await >= 1, "refit messages were sent");
    let view = read_view(&lambdas.store, "fruits").await;
    println!(
        "burst of {} keys: published in {:.1} s",
        keys.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        view.features.len(),
        1020,
        "every key of the bulk upload has its row"
    );
    assert_eq!(view.pca.len(), 1020);
    assert!(view.errors.is_empty(), "{:?}", view.errors);
    FirstBurst {
        distinct,
        keys,
        bodies,
    }
}

/// What the second burst changed.
struct SecondBurst {
    /// The key uploaded twice, and its second content.
    twice: String,
    new_image: (String, Vec<u8>),
    deleted: Vec<String>,
}

/// Burst 2: a key uploaded twice with different content, deletes, a non-image, an empty
/// object, and a `_refit`-free quiet refit; then every event of burst 1 delivered again
/// (late and out of order): they change nothing.
async fn second_burst(lambdas: &Lambdas, first: &FirstBurst) -> SecondBurst {
    let (store, distinct) = (&lambdas.store, &first.distinct);
    let twice = format!(
        "{INBOX}fruits/{}",
        distinct[0].0.replace(".jpg", "-twice.jpg")
    );
    store
        .put(&twice, Bytes::from(distinct[1].1.clone()))
        .await
        .unwrap();
    let new_image = fruit_images(5, 1).pop().unwrap();
    store
        .put(&twice, Bytes::from(new_image.1.clone()))
        .await
        .unwrap();
    let deleted: Vec<String> = (0..1000)
        .step_by(10)
        .map(|i| first.keys[20 + i].0.clone())
        .collect();
    for key in &deleted {
        store.delete(key).await.unwrap();
    }
    store
        .put(
            &format!("{INBOX}fruits/notes.txt"),
            Bytes::from_static(b"not an image"),
        )
        .await
        .unwrap();
    let empty = format!(
        "{INBOX}fruits/{}/empty.jpg",
        distinct[0].0.split('/').next().unwrap()
    );
    store.put(&empty, Bytes::new()).await.unwrap();
    lambdas.ingest().await;
    let sender = SqsQueue::new(lambdas.stack.sqs.clone(), &lambdas.ingest_queue);
    use pipeline::ports::queue::Queue;
    let mut again = first.bodies.clone();
    again.reverse();
    sender.send_all(again).await.unwrap();
    lambdas.ingest().await;
    assert!(lambdas.refits().await >= 1);
    SecondBurst {
        twice,
        new_image,
        deleted,
    }
}

/// The view holds exactly the live images, the empty object is its one error, and the
/// status shows it with nothing pending. Returns the view and the number of live images.
async fn check_live_view(store: &S3Store, second: &SecondBurst) -> (View, usize) {
    let view = read_view(store, "fruits").await;
    let live: BTreeSet<String> = store
        .list(&format!("{INBOX}fruits/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| {
            o.key
                .strip_prefix(&format!("{INBOX}fruits/"))
                .unwrap()
                .to_string()
        })
        .filter(|p| p.ends_with(".jpg") && !p.ends_with("empty.jpg"))
        .collect();
    assert_eq!(
        view.features.keys().cloned().collect::<BTreeSet<_>>(),
        live,
        "the view holds exactly the live images"
    );
    assert_eq!(live.len(), 1020 - second.deleted.len() + 1);
    assert_eq!(view.errors.len(), 1, "{:?}", view.errors);
    assert!(
        view.errors[0].path.ends_with("empty.jpg"),
        "{:?}",
        view.errors
    );
    assert_eq!(serde_json::to_value(view.errors[0].kind).unwrap(), "empty");
    assert!(view.pointer.seq >= 2);

    // The status shows it, with nothing pending.
    let status = collection_status(store, "fruits").await.unwrap();
    assert_eq!(status.pending_deltas, 0);
    assert_eq!(status.summary.as_ref().unwrap().rows, live.len());
    (view, live.len())
}

/// The CLI on the stack: `refit --refit-queue-url` asks the reducer for a refit (a forced
/// message: no quiet time), `status --collection` shows the published view.
async fn check_cli(lambdas: &Lambdas, view: &View, live: usize) {
    let (stack, refit_queue) = (&lambdas.stack, &lambdas.refit_queue);
    let requested = lambdas.cli(&["refit", "--refit-queue-url", refit_queue]);
    assert!(
        requested.contains("refit of fruits requested"),
        "{requested}"
    );
    let messages = stack.receive(refit_queue, 10).await;
    assert_eq!(messages.len(), 1, "one refit message");
    let message: pipeline::continuous::collection::RefitMessage =
        serde_json::from_str(messages[0].body().unwrap()).unwrap();
    assert_eq!(
        message,
        pipeline::continuous::collection::RefitMessage {
            collection: "fruits".into(),
            force: true
        }
    );
    // Handled as the reducer would: nothing changed since the last refit.
    let event = stack.sqs_event(&messages, refit_queue).await;
    let response =
        handle_reducer_batch(&lambdas.reducer, Some(&lambdas.refitter), event, "it").await;
    assert!(response.batch_item_failures.is_empty());
    stack
        .delete(refit_queue, messages[0].receipt_handle().unwrap())
        .await;
    let shown = lambdas.cli(&["status"]);
    println!("featurize status --collection fruits:\n{shown}");
    assert!(shown.contains(&format!("rows {live}  errors 1")), "{shown}");
    assert!(
        shown.contains("pending    nothing: the view is current"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("(refit {})", view.pointer.seq)),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "Results      s3://{}/collections/fruits/snapshots/",
            stack.bucket
        )),
        "{shown}"
    );
}

/// Old snapshots expire: at most KEEP_SNAPSHOTS folders remain.
async fn check_snapshots_expire(store: &S3Store) {
    let snapshots: BTreeSet<String> = store
        .list(&CollectionLayout::new("fruits").snapshots_prefix())
        .await
        .unwrap()
        .iter()
        .map(|o| o.key.split('/').nth(3).unwrap().to_string())
        .collect();
    assert!(
        snapshots.len() <= pipeline::continuous::collection::KEEP_SNAPSHOTS,
        "{snapshots:?}"
    );
}

/// Against a batch run over the same final set; the key uploaded twice holds the second
/// content's features.
async fn check_against_batch(store: &S3Store, view: View, second: SecondBurst) {
    let twice_path = second
        .twice
        .strip_prefix(&format!("{INBOX}fruits/"))
        .unwrap();
    let twice_row = view.features[twice_path].values.clone();
    assert_matches_live(store, "fruits", view, &["notes.txt"]).await;
    let expected = Engine::Model(model())
        .featurize(
            &["x".into()],
            &[Ok(Bytes::from(second.new_image.1))],
            1,
            50_000_000,
        )
        .unwrap();
    match &expected[0] {
        pipeline::batch::inference::ImageOutcome::Features(f) => assert_eq!(f, &twice_row),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bucket_drops_are_featurized_and_the_view_matches_a_batch_run() {
    runtime().block_on(async {
        let lambdas = Lambdas::new("ingest").await;
        let first = first_burst(&lambdas).await;
        let second = second_burst(&lambdas, &first).await;
        let (view, live) = check_live_view(&lambdas.store, &second).await;
        check_cli(&lambdas, &view, live).await;
        check_snapshots_expire(&lambdas.store).await;
        check_against_batch(&lambdas.store, view, second).await;
    });
}

#[test]
fn watch_follows_a_folder_and_finishes_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("in/photos");
    let out = dir.path().join("out");
    let images = fruit_images(3, 3);
    let (initial, later) = images.split_at(6);
    write_tree(&folder, initial);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args([
            "watch",
            "--quiet",
            "1",
            "--debounce-ms",
            "300",
            "-j",
            "2",
            "--k",
            &K.to_string(),
        ])
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
    let current = out.join("collections/photos/current.json");
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("the first view", &|| current.is_file());
    let seq = |p: &Path| -> u64 {
        serde_json::from_slice::<CurrentPointer>(&std::fs::read(p).unwrap())
            .unwrap()
            .seq
    };
    let first = seq(&current);

    // Changes: new files, one replaced, one deleted, a non-image, an empty file, and a file
    // written in two halves (the debouncer waits for it).
    write_tree(&folder, later);
    std::fs::write(folder.join(&initial[0].0), &later[0].1).unwrap();
    std::fs::remove_file(folder.join(&initial[1].0)).unwrap();
    std::fs::write(folder.join("notes.txt"), b"not an image").unwrap();
    std::fs::write(folder.join(initial[2].0.replace(".jpg", "-empty.jpg")), b"").unwrap();
    let half = folder.join(initial[3].0.replace(".jpg", "-slow.jpg"));
    let bytes = &initial[4].1;
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&half)
            .unwrap();
        f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(800));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(180);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "watch did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        exit.success(),
        "exit {exit:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Results_PCA") && stdout.contains("collections/photos/snapshots/"),
        "{stdout}"
    );
    assert!(seq(&current) > first, "a refit published the changes");

    let store = FsStore::new(&out);
    let view = runtime().block_on(read_view(&store, "photos"));
    assert_eq!(view.errors.len(), 1, "the empty file: {:?}", view.errors);
    assert!(view.errors[0].path.ends_with("-empty.jpg"));
    assert!(view
        .features
        .contains_key(&initial[3].0.replace(".jpg", "-slow.jpg")));
    assert!(
        !view.features.contains_key(&initial[1].0),
        "the deleted file is gone"
    );
    std::fs::remove_file(folder.join("notes.txt")).unwrap();
    assert_view_matches_batch(&view, &folder);
}
