//! Byte limits wherever an object is read, and the store's server-side copy.
//!
//! - Locally: a sparse 3 GB `big.jpg` beside 20 good images is one `too_large` error, read
//!   never, and the `featurize run` process's peak memory (its own `VmHWM`, which it
//!   prints) stays under the bound stated in docs/limits.md; so does a run of large images
//!   within the limits.
//! - On moto: objects over a run's `max_image_bytes` are image errors, refused from the
//!   listing's size or from `Content-Length`; the shard completes and the run publishes.
//! - On moto: `ObjectStore::copy` is a server-side `CopyObject` that overwrites its target,
//!   names a missing source, and is counted apart from gets and puts.

use std::path::Path;
use std::sync::Arc;

use aws::sdk::S3Store;
use pipeline::manifest::{ImageError, RunRequest};
use pipeline::ports::counting::{Counters, CountingStore};
use pipeline::ports::store::{Bytes, ObjectInfo, ObjectStore, StoreError, Versioned};

use crate::aws::{datasets, summary_of, Stack};
use crate::common::*;

/// The README's promise for a local run with the default settings, whatever the input.
const LOCAL_PEAK_BOUND_BYTES: u64 = 1536 << 20;

/// Runs `featurize run` on `input` and returns (exit code, output, peak resident memory in
/// bytes of that process alone). The peak is the `peak memory` the run prints (`VmHWM` of
/// its own `/proc/self/status`): `wait4`'s `ru_maxrss` would also count the test process,
/// whose memory the child holds between its fork and its exec.
fn run_measured(input: &Path, output: &Path, extra: &[&str]) -> (Option<i32>, String, u64) {
    let model = shared_dir().join("models/mobilenet_v2_features.onnx");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args(["run", "--input", input.to_str().unwrap()])
        .args(["--output", output.to_str().unwrap()])
        .args(["--model", model.to_str().unwrap(), "-q"])
        .args(extra)
        .env("CI", "true")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mib: f64 = text
        .split("peak memory ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in the run's output: {text}"));
    (out.status.code(), text, (mib * (1 << 20) as f64) as u64)
}

#[test]
fn a_sparse_3_gb_image_is_one_too_large_error_and_memory_stays_bounded() {
    let input = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("out");
    let files = fruit_images(4, 5);
    assert_eq!(files.len(), 20);
    write_tree(input.path(), &files);
    let class = files[0].0.split('/').next().unwrap();
    let big = input.path().join(class).join("big.jpg");
    // Sparse: 3 GB long, no disk blocks; reading it would take 3 GB of memory.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();

    let (code, text, peak) = run_measured(
        input.path(),
        &output,
        &["--max-error-rate", "0.1", "--k", "5"],
    );
    eprintln!(
        "featurize run: peak RSS {:.1} MiB (bound {} MiB)",
        peak as f64 / (1 << 20) as f64,
        LOCAL_PEAK_BOUND_BYTES >> 20
    );
    // 2: the run succeeded with image errors.
    assert_eq!(code, Some(2), "{text}");
    assert!(
        peak < LOCAL_PEAK_BOUND_BYTES,
        "peak RSS {peak} bytes is over the bound {LOCAL_PEAK_BOUND_BYTES}"
    );
    let store = pipeline::ports::store::FsStore::new(&output);
    let rt = runtime();
    let runs = rt.block_on(store.list("runs/")).unwrap();
    let summary_key = runs
        .iter()
        .find(|o| o.key.ends_with("/summary.json"))
        .expect("a summary");
    let run_id = summary_key.key.split('/').nth(1).unwrap().to_string();
    let summary = rt.block_on(summary_of(&store, &run_id));
    assert_eq!((summary.images, summary.rows, summary.errors), (21, 20, 1));
    assert_eq!(summary.errors_by_kind.get("too_large"), Some(&1));
    let errors: Vec<ImageError> = serde_json::from_slice(
        &rt.block_on(store.get(&format!("runs/{run_id}/errors.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].path.ends_with("big.jpg"), "{errors:?}");
    assert_eq!(
        errors[0].reason,
        format!(
            "too large: {} bytes, limit {}",
            3u64 << 30,
            pipeline::manifest::DEFAULT_MAX_IMAGE_BYTES
        )
    );
    let (features, pca) = rt.block_on(datasets(&store, &run_id));
    assert_eq!((features.len(), pca.len()), (20, 20));
}

/// An S3 store whose listing lies about some sizes (as a listing taken before an overwrite
/// would): the featurizer must still stop at the limit from `Content-Length`.
#[derive(Clone)]
struct ListedSizes {
    inner: S3Store,
    sizes: Arc<Vec<(&'static str, u64)>>,
}

impl ObjectStore for ListedSizes {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
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
        let mut listed = self.inner.list(prefix).await?;
        for object in &mut listed {
            if let Some((_, size)) = self.sizes.iter().find(|(k, _)| object.key.ends_with(k)) {
                object.size = *size;
            }
        }
        Ok(listed)
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

#[test]
fn objects_over_the_limit_on_s3_are_image_errors_and_the_shard_completes() {
    const LIMIT: u64 = 200_000;
    runtime().block_on(async {
        let stack = Stack::new("bytes").await;
        let mut files = fruit_images(2, 4);
        let junk = |n: usize| {
            let mut body = vec![0xFF, 0xD8, 0xFF, 0xE0];
            body.resize(n, 0x5A);
            body
        };
        // Over the limit, listed as it is: refused from the listing, never read.
        files.push(("big/big.jpg".into(), junk(300_000)));
        // Over the limit, listed as small: refused from Content-Length.
        files.push(("big/liar.jpg".into(), junk(300_000)));
        // Small, listed as 6 GB: refused from the listing.
        files.push(("big/huge.jpg".into(), files[0].1.clone()));
        stack.upload("images/", &files).await;

        let lister = ListedSizes {
            inner: stack.store(),
            sizes: Arc::new(vec![("big/liar.jpg", 1_000), ("big/huge.jpg", 6 << 30)]),
        };
        let splitter = pipeline::batch::splitter::Splitter::new(
            lister.clone(),
            lister,
            aws::sdk::SqsQueue::new(stack.sqs.clone(), &stack.shard_queue),
            aws::sdk::SqsQueue::new(stack.sqs.clone(), &stack.reduce_queue),
            pipeline::manifest::RunOptions::default(),
            1280,
        )
        .with_input_bucket(&stack.bucket)
        .with_model_sha256(model().sha256());
        let request = RunRequest {
            input_prefix: "images/".into(),
            shard_size: Some(16),
            k: Some(3),
            max_error_rate: Some(0.5),
            max_image_bytes: Some(LIMIT),
            ..Default::default()
        };
        let split = splitter.handle(&request).await.expect("split");
        assert_eq!(split.shards, 1);

        let counters = Counters::new();
        let counted = CountingStore::new(stack.store(), counters.clone());
        assert_eq!(
            stack.pump_shards(counted, 1).await,
            1,
            "one delivery: no retry"
        );
        let (shard_msgs, in_flight) = stack.depth(&stack.shard_dlq).await;
        assert_eq!((shard_msgs, in_flight), (0, 0), "nothing dead-lettered");
        // The two refused from the listing were never read: their bytes are not counted.
        let read = counters.usage().bytes_read;
        let images: u64 = files[..8].iter().map(|(_, b)| b.len() as u64).sum();
        assert!(
            read < images + LIMIT,
            "bytes read {read}: the refused objects were not downloaded"
        );
        stack.pump_reduce(stack.store()).await;

        let summary = summary_of(&stack.store(), &split.run_id).await;
        assert_eq!(summary.status, "succeeded", "{summary:?}");
        assert_eq!((summary.rows, summary.errors), (8, 3));
        assert_eq!(summary.errors_by_kind.get("too_large"), Some(&3));
        let errors: Vec<ImageError> = serde_json::from_slice(
            &stack
                .store()
                .get(&format!("runs/{}/errors.json", split.run_id))
                .await
                .unwrap(),
        )
        .unwrap();
        let reason = |name: &str| {
            errors
                .iter()
                .find(|e| e.path.ends_with(name))
                .map(|e| e.reason.clone())
                .unwrap_or_else(|| panic!("no error for {name}: {errors:?}"))
        };
        assert_eq!(reason("big.jpg"), "too large: 300000 bytes, limit 200000");
        assert_eq!(reason("liar.jpg"), "too large: 300000 bytes, limit 200000");
        assert_eq!(
            reason("huge.jpg"),
            format!("too large: {} bytes, limit 200000", 6u64 << 30)
        );
    });
}

#[test]
fn copies_on_s3_are_server_side_overwrite_their_target_and_are_counted_apart() {
    runtime().block_on(async {
        let stack = Stack::new("copy").await;
        let counters = Counters::new();
        let store = CountingStore::new(stack.store(), counters.clone());
        let source = "collections/c/parts/part 1+ü.parquet";
        store
            .put(source, Bytes::from_static(b"feature part"))
            .await
            .unwrap();
        store
            .put(
                "collections/c/snap/part.parquet",
                Bytes::from_static(b"old"),
            )
            .await
            .unwrap();
        let before = counters.usage();
        let size = store
            .copy(source, "collections/c/snap/part.parquet")
            .await
            .unwrap();
        assert_eq!(size, 12);
        let after = counters.usage();
        assert_eq!(after.s3_copy - before.s3_copy, 1);
        assert_eq!(after.bytes_copied - before.bytes_copied, 12);
        assert_eq!(
            (after.s3_put, after.bytes_read),
            (before.s3_put, before.bytes_read),
            "a copy is neither a put nor a read"
        );
        assert_eq!(
            stack
                .store()
                .get("collections/c/snap/part.parquet")
                .await
                .unwrap(),
            Bytes::from_static(b"feature part")
        );
        // A new key, then a missing source: NotFound names the source.
        store.copy(source, "elsewhere/x").await.unwrap();
        assert!(stack.store().exists("elsewhere/x").await.unwrap());
        match store.copy("collections/c/none", "elsewhere/x").await {
            Err(StoreError::NotFound(key)) => assert_eq!(key, "collections/c/none"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            stack.store().get("elsewhere/x").await.unwrap(),
            Bytes::from_static(b"feature part"),
            "a failed copy leaves the target as it was"
        );
    });
}

/// The continuous mode's read of an inbox object is bounded too: a sparse 3 GB `big.jpg`
/// is recorded as that key's `too_large` failure (never read), beside an image that is
/// featurized.
#[test]
fn an_inbox_object_over_the_limit_is_a_too_large_failure() {
    use pipeline::continuous::collection::{list_deltas, CollectionLayout, Delta, DeltaEntry};
    use pipeline::continuous::ingest::{IngestSettings, Ingestor};
    let dir = tempfile::tempdir().unwrap();
    let store = pipeline::ports::store::FsStore::new(dir.path());
    let image = fruit_images(1, 1).remove(0).1;
    std::fs::create_dir_all(dir.path().join("inbox/c/l")).unwrap();
    std::fs::write(dir.path().join("inbox/c/l/ok.jpg"), image).unwrap();
    std::fs::File::create(dir.path().join("inbox/c/l/big.jpg"))
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let queue = pipeline::ports::queue::InProcessQueue::new();
    let ingestor = Ingestor::new(
        store.clone(),
        store.clone(),
        &queue,
        pipeline::batch::inference::Engine::Model(model()),
        IngestSettings {
            inbox: "inbox/".into(),
            filter: pipeline::batch::listing::ImageFilter::new("*.jpg").unwrap(),
            max_pixels: 50_000_000,
            threads: 1,
            fetch_concurrency: 2,
            quiet_s: 0,
        },
    );
    runtime().block_on(async {
        let keys = ["inbox/c/l/big.jpg".to_string(), "inbox/c/l/ok.jpg".into()];
        let report = ingestor.ingest_each(&keys).await;
        let o = &report.outcome;
        assert_eq!((o.upserts, o.failed), (1, 1), "{o:?}");
        let layout = CollectionLayout::new("c");
        let ids = list_deltas(&store, &layout).await.unwrap();
        let delta: Delta =
            serde_json::from_slice(&store.get(&layout.delta_doc(&ids[0])).await.unwrap()).unwrap();
        let big = delta
            .entries
            .iter()
            .find(|e| e.path() == "l/big.jpg")
            .expect("the big file's entry");
        match big {
            DeltaEntry::Failed { kind, reason, .. } => {
                assert_eq!(*kind, engine::preprocess::ImageErrorKind::TooLarge);
                assert_eq!(
                    reason,
                    &format!(
                        "too large: {} bytes, limit {}",
                        3u64 << 30,
                        pipeline::manifest::DEFAULT_MAX_IMAGE_BYTES
                    )
                );
            }
            other => panic!("{other:?}"),
        }
    });
}

/// Large images within the limits (48-megapixel JPEGs, a few MB each): the prefetch's byte
/// budget and the decoders' pixel budget keep the local run's peak under the bound, with
/// two inference threads.
#[test]
fn large_images_within_the_limits_keep_the_peak_under_the_bound() {
    let input = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("out");
    let photo = {
        let image = synthetic_photo(8000, 6000, 7);
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
            .encode_image(&image)
            .unwrap();
        out
    };
    let mut files = fruit_images(2, 3);
    for i in 0..4 {
        files.push((format!("big/photo-{i}.jpg"), photo.clone()));
    }
    write_tree(input.path(), &files);
    let (code, text, peak) = run_measured(input.path(), &output, &["--k", "3", "-j", "2"]);
    eprintln!(
        "featurize run, 4 x 48 Mpx JPEGs ({} kB each): peak RSS {:.1} MiB (bound {} MiB)",
        photo.len() / 1024,
        peak as f64 / (1 << 20) as f64,
        LOCAL_PEAK_BOUND_BYTES >> 20
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("rows 10") || text.contains("10 rows"),
        "{text}"
    );
    assert!(
        peak < LOCAL_PEAK_BOUND_BYTES,
        "peak RSS {peak} bytes is over the bound {LOCAL_PEAK_BOUND_BYTES}"
    );
}
