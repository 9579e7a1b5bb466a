//! A run request is bound to its run before the run's manifest: a splitter retried after a
//! crash lands on the same run even when the input listing changed in between, and a new
//! request over the same input still derives the run id from the listing.

use std::path::Path;

use pipeline::batch::splitter::{RequestBinding, Splitter};
use pipeline::layout::{request_binding, RunLayout};
use pipeline::manifest::{RunOptions, RunRequest};
use pipeline::ports::queue::InProcessQueue;
use pipeline::ports::store::{FsStore, ObjectStore};
use testkit::faults::Faults;

fn write_images(dir: &Path, names: &[&str]) {
    for name in names {
        let path = dir.join("apple").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // The splitter only lists: the bytes need not decode.
        std::fs::write(path, name.as_bytes()).unwrap();
    }
}

fn options() -> RunOptions {
    RunOptions {
        shard_size: 2,
        ..RunOptions::default()
    }
}

fn request() -> RunRequest {
    RunRequest {
        input_prefix: String::new(),
        ..RunRequest::default()
    }
}

/// The run ids with a manifest under `runs/`.
async fn runs_with_manifest(store: &FsStore) -> Vec<String> {
    let mut runs: Vec<String> = store
        .list("runs/")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|o| {
            let rest = o.key.strip_prefix("runs/")?;
            let (run, file) = rest.split_once('/')?;
            (file == "manifest.json").then(|| run.to_string())
        })
        .collect();
    runs.sort();
    runs
}

async fn bound_run(store: &FsStore, identity: &str) -> RequestBinding {
    serde_json::from_slice(&store.get(&request_binding(identity)).await.unwrap()).unwrap()
}

#[tokio::test]
async fn a_retry_after_a_crash_past_the_manifest_resumes_the_bound_run() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    write_images(input.path(), &["1.jpg", "2.jpg", "3.jpg"]);
    let out = FsStore::new(output.path());
    let (shards, reduces) = (InProcessQueue::new(), InProcessQueue::new());
    let identity = "s3:runs/requests/fruits.json#0001";

    // The splitter dies at its first send: binding, shard lists and manifest are written.
    let crash = Faults::crash_after(0);
    let splitter = Splitter::new(
        FsStore::new(input.path()),
        out.clone(),
        crash.queue(&shards),
        &reduces,
        options(),
        1280,
    );
    splitter
        .handle_bound(&request(), Some(identity))
        .await
        .expect_err("crashed before sending");
    assert!(crash.crashed());
    let first = bound_run(&out, identity).await.run_id;
    assert_eq!(runs_with_manifest(&out).await, vec![first.clone()]);
    assert!(shards.is_empty(), "nothing was sent");

    // One more image lands before the retry of the same event.
    write_images(input.path(), &["4.jpg"]);
    let splitter = Splitter::new(
        FsStore::new(input.path()),
        out.clone(),
        &shards,
        &reduces,
        options(),
        1280,
    );
    let retried = splitter
        .handle_bound(&request(), Some(identity))
        .await
        .unwrap();
    assert_eq!(retried.run_id, first, "the retry resumes the bound run");
    assert!(!retried.created);
    assert_eq!(retried.images, 3, "the bound run keeps its listing");
    assert_eq!(retried.shards_sent, 2);
    assert_eq!(shards.len(), 2);
    assert_eq!(
        runs_with_manifest(&out).await,
        vec![first.clone()],
        "no orphan run"
    );

    // A new request (another event) lists again: the new image makes a new run, and the
    // same listing without an identity derives that same run id.
    let again = splitter
        .handle_bound(&request(), Some("s3:runs/requests/fruits.json#0002"))
        .await
        .unwrap();
    assert_ne!(again.run_id, first);
    assert_eq!(again.images, 4);
    assert!(again.created);
    let unbound = splitter.handle(&request()).await.unwrap();
    assert_eq!(unbound.run_id, again.run_id);
    assert!(
        !unbound.created,
        "the same request again resumes the same run"
    );
}

#[tokio::test]
async fn a_retry_after_a_crash_before_the_manifest_keeps_the_bound_run_id() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    write_images(input.path(), &["1.jpg", "2.jpg", "3.jpg"]);
    let out = FsStore::new(output.path());
    let (shards, reduces) = (InProcessQueue::new(), InProcessQueue::new());
    let identity = "invoke:req-1";

    // The binding lands, then the splitter dies at its next write (a shard list).
    let crash = Faults::crash_after(1);
    let splitter = Splitter::new(
        crash.store(FsStore::new(input.path())),
        crash.store(out.clone()),
        &shards,
        &reduces,
        options(),
        1280,
    );
    splitter
        .handle_bound(&request(), Some(identity))
        .await
        .expect_err("crashed after the binding");
    let bound = bound_run(&out, identity).await;
    assert!(runs_with_manifest(&out).await.is_empty());

    write_images(input.path(), &["4.jpg"]);
    let splitter = Splitter::new(
        FsStore::new(input.path()),
        out.clone(),
        &shards,
        &reduces,
        options(),
        1280,
    );
    let retried = splitter
        .handle_bound(&request(), Some(identity))
        .await
        .unwrap();
    assert_eq!(
        retried.run_id, bound.run_id,
        "the run id bound first is kept"
    );
    assert!(retried.created);
    assert_eq!(
        retried.images, 4,
        "nothing was committed: the retry lists again"
    );
    assert_eq!(runs_with_manifest(&out).await, vec![bound.run_id.clone()]);
    let manifest = out
        .get(&RunLayout::new(&bound.run_id).manifest())
        .await
        .unwrap();
    assert!(!manifest.is_empty());
}

/// In the pipeline's own bucket, requests may not read its internal prefixes, and a request
/// for the whole bucket lists only the images outside them.
#[tokio::test]
async fn requests_never_read_the_pipelines_own_prefixes() {
    let bucket = tempfile::tempdir().unwrap();
    let store = FsStore::new(bucket.path());
    for key in [
        "images/apple/1.jpg",
        "images/apple/2.jpg",
        "runs/r1/x.jpg",
        "staging/r1/y.jpg",
        "Results/r1/z.jpg",
        "Results_PCA/r1/z.jpg",
        "collections/c/a.jpg",
        "inbox/c/b.jpg",
    ] {
        store
            .put(key, key.as_bytes().to_vec().into())
            .await
            .unwrap();
    }
    let (shards, reduces) = (InProcessQueue::new(), InProcessQueue::new());
    let splitter = Splitter::new(
        store.clone(),
        store.clone(),
        &shards,
        &reduces,
        options(),
        1280,
    )
    .with_input_bucket("bucket")
    .with_reserved_prefix("inbox/");
    for prefix in [
        "runs/",
        "staging/r1",
        "Results/",
        "Results_PCA/r1/",
        "collections/",
        "inbox/c/",
    ] {
        let request = RunRequest {
            input_prefix: prefix.to_string(),
            ..RunRequest::default()
        };
        let err = splitter.handle(&request).await.unwrap_err().to_string();
        assert!(
            err.contains("input_prefix") && err.contains("requests may not read it"),
            "{prefix}: {err}"
        );
    }
    assert!(
        store
            .list("runs/")
            .await
            .unwrap()
            .iter()
            .all(|o| o.key == "runs/r1/x.jpg"),
        "nothing written"
    );
    let whole = splitter.handle(&request()).await.unwrap();
    assert_eq!(whole.images, 2, "only images/ is input");
}
