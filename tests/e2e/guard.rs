//! The per-image guard end to end: poison files beside good images in a local folder, and
//! archived, overwritten and refused objects in a bucket (moto). Each run completes; every
//! good image is in `Results`, every poison one in the error list with its own kind and
//! reason; the shards commit (none is dead-lettered), while a transient failure still fails
//! the attempt so that it is retried.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::StorageClass;
use pipeline::batch::featurizer::{FeaturizerSettings, ShardFeaturizer};
use pipeline::batch::reducer::{Reducer, ReducerSettings};
use pipeline::batch::splitter::Splitter;
use pipeline::layout::RunLayout;
use pipeline::manifest::{
    DoneMarker, ImageError, ReduceMessage, RunOptions, RunRequest, ShardMessage,
};
use pipeline::parquet_io::{read_rows, Dataset};
use pipeline::ports::queue::InProcessQueue;
use pipeline::ports::store::{Bytes, FsStore, ObjectStore};
use testkit::faults::Faults;

use crate::aws::{request_json, small_request, summary_of, Stack};
use crate::common::*;

/// The kind of each error, by path, as `errors.json` spells it.
fn kinds(errors: &[ImageError]) -> BTreeMap<String, String> {
    errors
        .iter()
        .map(|e| {
            let kind = serde_json::to_value(e.kind).unwrap();
            (e.path.clone(), kind.as_str().unwrap().to_string())
        })
        .collect()
}

/// The reason of the error of `path`.
fn reason<'a>(errors: &'a [ImageError], path: &str) -> &'a str {
    &errors
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} is not in the error list: {errors:#?}"))
        .reason
}

/// Runs `f` on a thread of its own and fails the test if it takes longer than `limit` (a
/// named pipe opened for reading would block it forever).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(f());
    });
    receive
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the run did not finish within {limit:?}: it hangs"))
}

/// A local folder with good JPEGs (copied from Fruits-360 at test time) and, beside them, a
/// dangling symbolic link, a symbolic-link loop, a named pipe and a socket named like images,
/// a folder named like an image, a link back to the root, a truncated JPEG and a file its
/// owner cannot read: the run completes, every image is in `Results` or in `errors.json` with
/// its kind and reason, and nothing hangs.
#[cfg(unix)]
#[test]
fn poison_files_beside_good_images_do_not_fail_a_local_run() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let good = fruit_images(2, 2);
    let real = good[0].1.clone();
    write_tree(input.path(), &good);
    let poison = input.path().join("poison");
    std::fs::create_dir_all(poison.join("folder.jpg")).unwrap();
    // A folder named like an image is walked, not read: the image in it is an input.
    std::fs::write(poison.join("folder.jpg/inside.jpg"), &real).unwrap();
    symlink(
        poison.join("missing-target.jpg"),
        poison.join("dangling.jpg"),
    )
    .unwrap();
    symlink("loop.jpg", poison.join("loop.jpg")).unwrap();
    symlink("..", poison.join("back-to-root")).unwrap();
    symlink(
        input.path().join(&good[1].0),
        poison.join("link-to-good.jpg"),
    )
    .unwrap();
    let fifo = poison.join("fifo.jpg");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", fifo.display());
    let _socket = std::os::unix::net::UnixListener::bind(poison.join("socket.jpg")).unwrap();
    std::fs::write(poison.join("truncated.jpg"), &real[..real.len() / 2]).unwrap();
    let locked = poison.join("no-permission.jpg");
    std::fs::write(&locked, &real).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    // As root, permissions do not stop a read: then it is a good image.
    let unreadable = std::fs::read(&locked).is_err();

    let mut expected: BTreeMap<String, (&str, &str)> = [
        (
            "poison/dangling.jpg",
            ("unreadable", "dangling symbolic link"),
        ),
        ("poison/loop.jpg", ("unreadable", "cannot be followed")),
        ("poison/fifo.jpg", ("unreadable", "named pipe")),
        ("poison/socket.jpg", ("unreadable", "socket")),
        ("poison/truncated.jpg", ("decode", "truncated")),
    ]
    .into_iter()
    .map(|(p, e)| (p.to_string(), e))
    .collect();
    let mut good_paths: Vec<String> = good.iter().map(|(p, _)| p.clone()).collect();
    good_paths.push("poison/folder.jpg/inside.jpg".into());
    good_paths.push("poison/link-to-good.jpg".into());
    if unreadable {
        expected.insert(
            "poison/no-permission.jpg".into(),
            ("access_denied", "ermission denied"),
        );
    } else {
        good_paths.push("poison/no-permission.jpg".into());
    }
    good_paths.sort();

    let request = RunRequest {
        k: Some(2),
        shard_size: Some(4),
        max_error_rate: Some(1.0),
        ..Default::default()
    };
    let (input_dir, output_dir) = (input.path().to_path_buf(), output.path().to_path_buf());
    let report = within(Duration::from_secs(300), move || {
        run_local_blocking(&input_dir, &output_dir, request)
    });
    let summary = &report.summary;
    assert_eq!(summary.status, "succeeded", "{summary:?}");
    assert_eq!(
        summary.images,
        good_paths.len() + expected.len(),
        "{summary:?}"
    );
    assert_eq!(summary.rows, good_paths.len());
    let run = &summary.run_id;
    let errors: Vec<ImageError> = serde_json::from_slice(
        &std::fs::read(output.path().join(RunLayout::new(run).errors())).unwrap(),
    )
    .unwrap();
    let want_kinds: BTreeMap<String, String> = expected
        .iter()
        .map(|(p, (k, _))| (p.clone(), k.to_string()))
        .collect();
    assert_eq!(kinds(&errors), want_kinds, "{errors:#?}");
    for (path, (_, part)) in &expected {
        let why = reason(&errors, path);
        assert!(why.contains(part), "{path}: {why}");
    }
    let mut rows = Vec::new();
    for shard in 0..summary.shards {
        let part = output.path().join(RunLayout::new(run).results_part(shard));
        rows.extend(read_rows(Dataset::Features, std::fs::read(part).unwrap().into()).unwrap());
    }
    let mut paths: Vec<String> = rows.iter().map(|r| r.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, good_paths, "every good image is in Results, once");
    let inside = rows
        .iter()
        .find(|r| r.path == "poison/folder.jpg/inside.jpg")
        .unwrap();
    assert_eq!(inside.label, "folder.jpg");
    let linked = rows
        .iter()
        .find(|r| r.path == "poison/link-to-good.jpg")
        .unwrap();
    let original = rows.iter().find(|r| r.path == good[1].0).unwrap();
    assert!(linked.values == original.values, "a link reads its target");
}

/// The CLI on a folder with a dangling symbolic link: the run completes (exit 2: some images
/// failed) instead of failing at listing; a failure's cause is printed once.
#[cfg(unix)]
#[test]
fn the_cli_lists_past_a_dangling_link_and_prints_each_cause_once() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    write_tree(input.path(), &fruit_images(1, 3));
    std::os::unix::fs::symlink("/nonexistent/x.jpg", input.path().join("x.jpg")).unwrap();
    let model = shared_dir().join("models/mobilenet_v2_features.onnx");
    let run = |output: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
            .args(["run", "--input", input.path().to_str().unwrap()])
            .args(["--output", output.to_str().unwrap()])
            .args(["--model", model.to_str().unwrap(), "-q", "--k", "2"])
            .args(["--max-error-rate", "0.5"])
            .env("CI", "true")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(output.path());
    assert_eq!(code, Some(2), "some images failed: exit 2\n{text}");
    assert!(text.contains("images 4  rows 3  errors 1"), "{text}");
    let errors: Vec<ImageError> = serde_json::from_slice(
        &std::fs::read(
            walkdir::WalkDir::new(output.path().join("runs"))
                .into_iter()
                .filter_map(|e| e.ok())
                .find(|e| e.file_name() == "errors.json")
                .expect("errors.json")
                .path(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(kinds(&errors)["x.jpg"], "unreadable");
    assert!(
        reason(&errors, "x.jpg").contains("/nonexistent/x.jpg"),
        "{errors:?}"
    );

    // An output "folder" that is a file: the OS error is printed once, not once per link of
    // the error chain.
    let file = output.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let (code, text) = run(&file);
    assert_eq!(code, Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("error: "))
        .expect(&text);
    let cause = line.rsplit(": ").next().unwrap();
    assert!(cause.contains("os error"), "{line}");
    assert_eq!(text.matches(cause).count(), 1, "{text}");
}

/// A local image rewritten between the listing and the featurizer: that image is a
/// `changed` error (its size and modification time no longer match the listing's); the others
/// are featurized and the run completes.
#[test]
fn an_image_rewritten_after_listing_is_a_changed_error_locally() {
    let files = fruit_images(2, 3);
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    write_tree(input.path(), &files);
    let (shards, reduces) = (InProcessQueue::new(), InProcessQueue::new());
    let (input_store, output_store) = (FsStore::new(input.path()), FsStore::new(output.path()));
    runtime().block_on(async {
        let splitter = Splitter::new(
            input_store.clone(),
            output_store.clone(),
            &shards,
            &reduces,
            RunOptions::default(),
            1280,
        )
        .with_model_sha256(model().sha256());
        let request = RunRequest {
            k: Some(2),
            shard_size: Some(2),
            max_error_rate: Some(0.5),
            ..Default::default()
        };
        let run = splitter.handle(&request).await.unwrap();
        // Rewritten with other content (another size), after the listing.
        let rewritten = &files[3].0;
        std::fs::write(
            input.path().join(rewritten),
            &files[0].1[..files[0].1.len() - 7],
        )
        .unwrap();
        let featurizer = ShardFeaturizer::new(
            input_store.clone(),
            output_store.clone(),
            &reduces,
            model(),
            FeaturizerSettings {
                worker_threads: 2,
                ..Default::default()
            },
        );
        while let Some(body) = shards.pop() {
            let message: ShardMessage = serde_json::from_str(&body).unwrap();
            featurizer.process(&message, None, Some(1)).await.unwrap();
        }
        let reducer = Reducer::new(output_store.clone(), ReducerSettings::default());
        let message: ReduceMessage = serde_json::from_str(&reduces.pop().unwrap()).unwrap();
        reducer.process(&message, "local").await.unwrap();
        let summary = summary_of(&output_store, &run.run_id).await;
        assert_eq!((summary.rows, summary.errors), (files.len() - 1, 1));
        let errors: Vec<ImageError> = serde_json::from_slice(
            &output_store
                .get(&RunLayout::new(&run.run_id).errors())
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(kinds(&errors)[rewritten], "changed", "{errors:?}");
        assert!(
            reason(&errors, rewritten).contains("changed after listing"),
            "{errors:?}"
        );
        // The error list is in the committing shard's done marker too.
        let shard = files.iter().position(|(p, _)| p == rewritten).unwrap() / 2;
        let marker: DoneMarker = serde_json::from_slice(
            &output_store
                .get(&RunLayout::new(&run.run_id).done_marker(shard))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(marker.error_list, errors);
        // And each delivery recorded its start.
        let started = pipeline::batch::attempts::started_key(&RunLayout::new(&run.run_id), shard);
        let start: pipeline::batch::attempts::ShardStart =
            serde_json::from_slice(&output_store.get(&started).await.unwrap()).unwrap();
        assert_eq!((start.shard, start.receive_count), (shard, 1));
        assert_eq!(
            start.attempt, marker.attempt,
            "the committed attempt's start"
        );
    });
}

/// Puts `bytes` at `key` in the stack's bucket in the Glacier storage class.
async fn put_archived(stack: &Stack, key: &str, bytes: Vec<u8>) {
    stack
        .s3
        .put_object()
        .bucket(&stack.bucket)
        .key(key)
        .storage_class(StorageClass::Glacier)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .expect("put an archived object");
}

/// On S3 (moto): an archived object (GET answers `InvalidObjectState`), an object overwritten
/// between the listing and the featurizer (`If-Match` answers 412 `PreconditionFailed`) and an
/// object whose reads are refused (403 `AccessDenied`) are image errors with their kinds; every
/// shard commits on its first delivery and nothing is dead-lettered.
#[test]
fn archived_overwritten_and_denied_objects_are_image_errors_on_s3() {
    let files = fruit_images(2, 3);
    runtime().block_on(async {
        let stack = Stack::new("guard").await;
        stack.upload("images/", &files).await;
        put_archived(&stack, "images/cold/archived.jpg", files[0].1.clone()).await;
        stack
            .upload(
                "images/",
                &[("vault/secret.jpg".into(), files[1].1.clone())],
            )
            .await;
        let request = RunRequest {
            max_error_rate: Some(0.6),
            ..small_request(3, 2)
        };
        let run = stack
            .submit("guard", &request_json(&request))
            .await
            .remove(0);
        assert_eq!(run.images, files.len() + 2);
        // Overwritten after the listing, with other content.
        let overwritten = files[4].0.clone();
        stack
            .upload("images/", &[(overwritten.clone(), files[2].1.clone())])
            .await;
        let faults = Faults::deny("vault/secret");
        let delivered = stack.pump_shards(faults.store(stack.store()), 10).await;
        assert_eq!(
            delivered, run.shards,
            "each shard committed on its first delivery"
        );
        assert_eq!(
            stack.depth(&stack.shard_dlq).await,
            (0, 0),
            "nothing dead-lettered"
        );
        assert!(faults.injected() >= 1, "the secret's read was refused");
        stack.pump_reduce(stack.store()).await;
        let summary = summary_of(&stack.store(), &run.run_id).await;
        assert_eq!(summary.status, "succeeded", "{summary:?}");
        assert_eq!((summary.rows, summary.errors), (files.len() - 1, 3));
        let layout = RunLayout::new(&run.run_id);
        let errors: Vec<ImageError> =
            serde_json::from_slice(&stack.store().get(&layout.errors()).await.unwrap()).unwrap();
        let want: BTreeMap<String, String> = [
            ("cold/archived.jpg", "archived"),
            (overwritten.as_str(), "changed"),
            ("vault/secret.jpg", "access_denied"),
        ]
        .into_iter()
        .map(|(p, k)| (p.to_string(), k.to_string()))
        .collect();
        assert_eq!(kinds(&errors), want, "{errors:#?}");
        assert!(reason(&errors, "cold/archived.jpg").contains("InvalidObjectState"));
        assert!(reason(&errors, &overwritten).contains("changed after listing"));
        assert!(reason(&errors, "vault/secret.jpg").contains("AccessDenied"));
        // Each committed shard's done marker keeps its errors.
        let mut in_markers = Vec::new();
        for shard in 0..run.shards {
            let marker: DoneMarker = serde_json::from_slice(
                &stack.store().get(&layout.done_marker(shard)).await.unwrap(),
            )
            .unwrap();
            assert_eq!(marker.errors, marker.error_list.len());
            in_markers.extend(marker.error_list);
        }
        in_markers.sort_by(|a, b| a.path.cmp(&b.path));
        let mut sorted = errors.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(in_markers, sorted);
    });
}

/// On S3 (moto): a transient failure (503 SlowDown on every read of the input) still fails
/// the attempt: nothing is committed and no image error is recorded; the retry commits the
/// shard with no errors.
#[test]
fn a_transient_read_failure_still_fails_the_shard_on_s3() {
    let files = fruit_images(1, 4);
    runtime().block_on(async {
        let stack = Stack::new("guard503").await;
        stack.upload("images/", &files).await;
        let run = stack
            .submit("guard503", &request_json(&small_request(4, 2)))
            .await
            .remove(0);
        assert_eq!(run.shards, 1);
        while !stack.receive(&stack.shard_queue, 10).await.is_empty() {}
        let featurizer = |input: &Faults| {
            ShardFeaturizer::new(
                input.store(stack.store()),
                Faults::new().store(stack.store()),
                pipeline::ports::queue::InProcessQueue::new(),
                model(),
                FeaturizerSettings {
                    worker_threads: 2,
                    ..Default::default()
                },
            )
        };
        let message = ShardMessage {
            run_id: run.run_id.clone(),
            shard: 0,
        };
        let flaky = Faults::transient(1.0, Duration::ZERO, 7);
        let failed = featurizer(&flaky).process(&message, None, Some(1)).await;
        let error = failed.expect_err("the attempt fails");
        assert!(error.to_string().contains("503 SlowDown"), "{error}");
        let layout = RunLayout::new(&run.run_id);
        assert!(
            !stack.store().exists(&layout.done_marker(0)).await.unwrap(),
            "nothing committed: the message is retried"
        );
        let retried = featurizer(&Faults::new())
            .process(&message, None, Some(2))
            .await
            .unwrap();
        assert_eq!((retried.rows, retried.errors), (files.len(), 0));
        let start: pipeline::batch::attempts::ShardStart = serde_json::from_slice(
            &stack
                .store()
                .get(&pipeline::batch::attempts::started_key(&layout, 0))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(start.receive_count, 2, "the last delivery's start");
        let direct = stack
            .store()
            .get_if_match(&format!("images/{}", files[0].0), "\"not-the-etag\"")
            .await;
        assert!(
            matches!(
                direct,
                Err(pipeline::ports::store::StoreError::Changed { .. })
            ),
            "{direct:?}"
        );
        let archived = "images/cold.jpg";
        put_archived(&stack, archived, files[0].1.clone()).await;
        let cold = stack.store().get(archived).await;
        assert!(
            matches!(
                cold,
                Err(pipeline::ports::store::StoreError::Archived { .. })
            ),
            "{cold:?}"
        );
        let body = Bytes::from(files[0].1.clone());
        let etag = stack
            .store()
            .head(&format!("images/{}", files[0].0))
            .await
            .unwrap();
        assert_eq!(
            stack
                .store()
                .get_if_match(&format!("images/{}", files[0].0), &etag)
                .await
                .unwrap(),
            body
        );
    });
}

/// `featurize watch` over a folder with two symbolic links to itself (`a -> .`, `b -> .`):
/// the first pass finishes (each image once), the view is published, and SIGTERM ends it.
#[test]
fn watch_finishes_its_first_pass_over_a_symbolic_link_loop() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("in/photos");
    let out = dir.path().join("out");
    let images = fruit_images(2, 2);
    write_tree(&folder, &images);
    std::os::unix::fs::symlink(".", folder.join("a")).unwrap();
    std::os::unix::fs::symlink(".", folder.join("b")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args(["watch", "--quiet", "0.5", "--debounce-ms", "200", "-j", "2"])
        .args(["--k", "2"])
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
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !current.is_file() {
        if let Some(exit) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "watch exited early ({exit:?}): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first pass did not finish (a symbolic-link loop walked for ever?)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = within(Duration::from_secs(120), move || {
        child.wait_with_output().unwrap()
    });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Each image once: the links to the folder itself are not walked into.
    let store = FsStore::new(&out);
    let paths = runtime().block_on(published_paths(&store, "photos"));
    let mut want: Vec<String> = images.iter().map(|(p, _)| p.clone()).collect();
    want.sort();
    assert_eq!(paths, want);
}

/// The `path` column of a collection's published features, sorted.
async fn published_paths(store: &FsStore, collection: &str) -> Vec<String> {
    use pipeline::continuous::collection::{read_current, CollectionLayout};
    let layout = CollectionLayout::new(collection);
    let (pointer, _) = read_current(store, &layout)
        .await
        .unwrap()
        .expect("a published view");
    let mut paths = Vec::new();
    for object in store.list(&pointer.results).await.unwrap() {
        if object.key.ends_with(".parquet") {
            let rows = read_rows(Dataset::Features, store.get(&object.key).await.unwrap());
            paths.extend(rows.unwrap().into_iter().map(|r| r.path));
        }
    }
    paths.sort();
    paths
}
