//! Unit tests of the ingestor: S3 notification bodies, and keys that succeed or fail on
//! their own.

use super::*;
use crate::ports::queue::InProcessQueue;
use crate::ports::store::{FsStore, ObjectInfo, Versioned};
use crate::test_util::block;

/// A local store whose reads panic on keys containing `poison` and fail transiently
/// (503) on keys containing `throttled`.
#[derive(Clone)]
struct Hostile {
    inner: FsStore,
}

impl Hostile {
    fn check(key: &str) -> std::result::Result<(), StoreError> {
        if key.contains("poison") {
            panic!("injected panic reading {key}");
        }
        if key.contains("throttled") {
            return Err(StoreError::Remote {
                op: "GetObject",
                key: key.into(),
                transient: true,
                source: "503 SlowDown".into(),
            });
        }
        Ok(())
    }
}

impl ObjectStore for Hostile {
    async fn get(&self, key: &str) -> std::result::Result<Bytes, StoreError> {
        Self::check(key)?;
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Bytes) -> std::result::Result<(), StoreError> {
        self.inner.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> std::result::Result<bool, StoreError> {
        self.inner.put_if_absent(key, body).await
    }
    async fn get_versioned(&self, key: &str) -> std::result::Result<Versioned, StoreError> {
        Self::check(key)?;
        self.inner.get_versioned(key).await
    }
    async fn head(&self, key: &str) -> std::result::Result<String, StoreError> {
        self.inner.head(key).await
    }
    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        etag: &str,
    ) -> std::result::Result<bool, StoreError> {
        self.inner.put_if_match(key, body, etag).await
    }
    async fn exists(&self, key: &str) -> std::result::Result<bool, StoreError> {
        self.inner.exists(key).await
    }
    async fn delete(&self, key: &str) -> std::result::Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> std::result::Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

/// One key that panics the read and one that is throttled, among 30: the 28 others are
/// recorded, the panicking one as a failure with its reason, the throttled one is left
/// for a later attempt; a chunk of the engine that panics on one image loses only it.
#[test]
fn each_key_succeeds_or_fails_on_its_own() {
    block(async {
        let dir = tempfile::tempdir().unwrap();
        let raw = FsStore::new(dir.path());
        let mut keys: Vec<String> = (0..28).map(|i| format!("inbox/c/l/{i:02}.jpg")).collect();
        keys.push("inbox/c/l/poison.jpg".into());
        keys.push("inbox/c/l/throttled.jpg".into());
        for k in &keys {
            raw.put(k, Bytes::from(k.clone())).await.unwrap();
        }
        let queue = InProcessQueue::new();
        let ingestor = Ingestor::new(
            Hostile { inner: raw.clone() },
            raw.clone(),
            &queue,
            Engine::Synthetic { dim: 4 },
            IngestSettings {
                inbox: "inbox/".into(),
                filter: ImageFilter::new("*.jpg").unwrap(),
                max_pixels: 1 << 20,
                threads: 1,
                fetch_concurrency: 4,
                quiet_s: 0,
            },
        );
        let report = ingestor.ingest_each(&keys).await;
        let o = &report.outcome;
        assert_eq!((o.upserts, o.failed, o.removed), (28, 1, 0), "{o:?}");
        assert_eq!(o.retry, ["inbox/c/l/throttled.jpg"]);
        assert!(report.errors[0].1.to_string().contains("503"));
        assert_eq!(queue.len(), 1, "one refit message for the collection");
        let layout = crate::continuous::collection::CollectionLayout::new("c");
        let ids = crate::continuous::collection::list_deltas(&raw, &layout)
            .await
            .unwrap();
        let delta: Delta =
            serde_json::from_slice(&raw.get(&layout.delta_doc(&ids[0])).await.unwrap()).unwrap();
        assert_eq!(delta.entries.len(), 29, "every key but the throttled one");
        let poison = delta
            .entries
            .iter()
            .find(|e| e.path() == "l/poison.jpg")
            .unwrap();
        match poison {
            DeltaEntry::Failed {
                etag, kind, reason, ..
            } => {
                assert_eq!(*kind, ImageErrorKind::Fetch);
                assert!(reason.contains("injected panic"), "{reason}");
                assert!(!etag.is_empty(), "recorded under its ETag (from a HEAD)");
            }
            other => panic!("{other:?}"),
        }
        // As one unit, the same batch is an error (the throttled key's).
        let e = ingestor.ingest(&keys).await.unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");
    });
}

#[test]
fn an_image_that_panics_the_engine_fails_alone() {
    let run = |paths: &[String], _: &[Result<Bytes, String>], _: usize| {
        if paths.iter().any(|p| p.contains("bomb")) {
            panic!("decoder bug on {}", paths.join(","));
        }
        Ok(paths
            .iter()
            .map(|p| ImageOutcome::Features(vec![p.len() as f32]))
            .collect())
    };
    let paths: Vec<String> = ["a.jpg", "bomb.jpg", "ccc.jpg"].map(String::from).to_vec();
    let images = vec![Ok(Bytes::new()); 3];
    let outcomes = featurize_isolated(run, &paths, &images, 2).unwrap();
    assert!(matches!(&outcomes[0], ImageOutcome::Features(v) if v == &[5.0]));
    assert!(matches!(&outcomes[2], ImageOutcome::Features(v) if v == &[7.0]));
    match &outcomes[1] {
        ImageOutcome::Failed(ImageErrorKind::Decode, reason) => {
            assert!(reason.contains("decoder bug on bomb.jpg"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // The engine's own error for an inference thread that panicked, too.
    let threads = |paths: &[String], _: &[Result<Bytes, String>], _: usize| {
        if paths.iter().any(|p| p.contains("bomb")) {
            return Err(Error::RunState("an inference thread panicked".into()));
        }
        Ok(vec![ImageOutcome::Features(vec![1.0]); paths.len()])
    };
    let outcomes = featurize_isolated(threads, &paths, &images, 2).unwrap();
    assert!(matches!(
        outcomes[1],
        ImageOutcome::Failed(ImageErrorKind::Decode, _)
    ));
    assert!(matches!(outcomes[2], ImageOutcome::Features(_)));
    // Any other error of the engine is the chunk's.
    let broken =
        |_: &[String], _: &[Result<Bytes, String>], _: usize| Err(Error::Config("no model".into()));
    assert!(featurize_isolated(broken, &paths, &images, 2).is_err());
}

#[test]
fn s3_notification_bodies_parse() {
    let created = r#"{"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "b"}, "object": {"key": "inbox%2Fc%2Fa%2Fx+1.jpg", "size": 5}}},
        {"eventName": "ObjectRemoved:Delete", "s3": {"object": {"key": "inbox/c/a/y.jpg"}}},
        {"eventName": "ObjectRestore:Post", "s3": {"object": {"key": "inbox/c/a/z.jpg"}}}]}"#;
    assert_eq!(
        parse_ingest_body(created).unwrap().unwrap(),
        IngestBody::S3(vec!["inbox/c/a/x 1.jpg".into(), "inbox/c/a/y.jpg".into()])
    );
    let test = r#"{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}"#;
    assert_eq!(
        parse_ingest_body(test).unwrap().unwrap(),
        IngestBody::S3Test
    );
    assert!(parse_ingest_body(r#"{"run_id": "r", "shard": 1}"#).is_none());
    assert!(parse_ingest_body("not json").is_none());
    assert!(parse_ingest_body(r#"{"Records": [{"s3": {}}]}"#)
        .unwrap()
        .is_err());
}
