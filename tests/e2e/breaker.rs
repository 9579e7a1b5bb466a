//! Adversarial tests of the batch protocol (written by a reviewer trying to break it).

use std::path::Path;

use pipeline::batch::splitter::Splitter;
use pipeline::layout::request_binding;
use pipeline::manifest::{RunOptions, RunRequest};
use pipeline::ports::queue::InProcessQueue;
use pipeline::ports::store::{FsStore, ObjectStore};

fn write_images(dir: &Path, names: &[&str]) {
    for name in names {
        let path = dir.join("apple").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, name.as_bytes()).unwrap();
    }
}

fn named(run_id: &str) -> RunRequest {
    RunRequest {
        input_prefix: String::new(),
        run_id: Some(run_id.to_string()),
        ..RunRequest::default()
    }
}

/// A request naming a run id that another request's run already holds (other images) is
/// rejected. A duplicate delivery of that same rejected request (S3 delivers events at least
/// once; an async invoke is retried on error) must be rejected again, not "resume" the other
/// request's run as if it were its own.
fn first_identity() -> &'static str {
    "s3:runs/requests/a.json#0001"
}

#[tokio::test]
async fn a_duplicate_of_a_rejected_request_does_not_adopt_another_requests_run() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    write_images(input.path(), &["1.jpg", "2.jpg", "3.jpg"]);
    let out = FsStore::new(output.path());
    let (shards, reduces) = (InProcessQueue::new(), InProcessQueue::new());
    let options = RunOptions {
        shard_size: 2,
        ..RunOptions::default()
    };
    let splitter = Splitter::new(
        FsStore::new(input.path()),
        out.clone(),
        &shards,
        &reduces,
        options,
        1280,
    );
    let first = splitter
        .handle_bound(&named("shared"), Some(first_identity()))
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.images, 3);

    // Another request, over other images, asks for the same run id: rejected.
    write_images(input.path(), &["4.jpg"]);
    let other = "s3:runs/requests/b.json#0001";
    let err = splitter
        .handle_bound(&named("shared"), Some(other))
        .await
        .expect_err("run id taken by other images");
    assert!(err.to_string().contains("already exists"), "{err}");

    // The same event delivered again must be rejected again.
    let again = splitter.handle_bound(&named("shared"), Some(other)).await;
    assert!(
        again.is_err(),
        "the duplicate of a rejected request was accepted as run {:?} (another request's run)",
        again.map(|o| (o.run_id, o.images))
    );
    let err = again.unwrap_err().to_string();
    assert!(err.contains("already exists"), "the same reason: {err}");
    // Its binding may stay (it is written before the manifest), but it never adopts the run:
    // the run records the request that created it, and its listing differs.
    if out.exists(&request_binding(other)).await.unwrap() {
        let third = splitter.handle_bound(&named("shared"), Some(other)).await;
        assert!(third.is_err(), "a third delivery is refused too");
    }
    // The request that created the run still resumes it.
    let resumed = splitter
        .handle_bound(&named("shared"), Some(first_identity()))
        .await
        .unwrap();
    assert_eq!((resumed.run_id.as_str(), resumed.images), ("shared", 3));
}

/// Two deliveries of one request race: the second finds the run its twin created from an
/// older listing (here: the binding it would have read is not there yet). It resumes that
/// run instead of being refused as "another request's run".
#[tokio::test]
async fn a_delivery_racing_its_twin_resumes_the_run_the_twin_created() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    write_images(input.path(), &["1.jpg", "2.jpg", "3.jpg"]);
    let out = FsStore::new(output.path());
    let (shards, reduces) = (InProcessQueue::new(), InProcessQueue::new());
    let options = RunOptions {
        shard_size: 2,
        ..RunOptions::default()
    };
    let splitter = Splitter::new(
        FsStore::new(input.path()),
        out.clone(),
        &shards,
        &reduces,
        options,
        1280,
    );
    let twin = splitter
        .handle_bound(&named("shared"), Some(first_identity()))
        .await
        .unwrap();
    assert!(twin.created);
    // As this delivery saw the store: no binding yet, and one more image listed.
    out.delete(&request_binding(first_identity()))
        .await
        .unwrap();
    write_images(input.path(), &["4.jpg"]);
    let racer = splitter
        .handle_bound(&named("shared"), Some(first_identity()))
        .await
        .expect("the run its own request created is resumed");
    assert_eq!((racer.run_id.as_str(), racer.images), ("shared", 3));
    assert!(!racer.created);
}
