//! Issue 30, end to end: the stack's settings are ceilings for run requests (refused with the
//! field and the bound named, nothing written), every intermediate is verified before the
//! reducer uses it ("tampered or corrupt", nothing published), and a featurizer whose model
//! is not the stack's `ModelSha256` makes its runs stuck with the remedy. Locally (a folder
//! as the bucket) and on moto.

use std::collections::BTreeSet;

use aws::lambda::{handle_splitter_event, SplitterEvent};
use aws::sdk::{S3Store, SqsQueue};
use pipeline::batch::local::{run_local, LocalRun};
use pipeline::batch::splitter::Splitter;
use pipeline::batch::status::{run_status_with, StallPolicy, StuckKind};
use pipeline::error::Error;
use pipeline::health::{read_model_health, verify_model_at_cold_start, ModelHealth};
use pipeline::layout::RunLayout;
use pipeline::limits::RequestLimits;
use pipeline::manifest::{DoneMarker, RunOptions, RunRequest};
use pipeline::ports::queue::{InProcessQueue, Queue};
use pipeline::ports::store::{FsStore, ObjectStore};
use testkit::faults::Faults;

use crate::aws::Stack;
use crate::common::*;
use crate::faults::{ready_to_reduce, setup, Local};

/// The ceilings of the tests' stack: requests read under `images/` only, at most 2 shards
/// per run and 64 components (the rest are the stack's defaults).
fn stack_limits() -> RequestLimits {
    RequestLimits {
        input_prefixes: vec!["images/".into()],
        max_shards_per_run: 2,
        max_pca_k: 64,
        ..RequestLimits::stack_defaults()
    }
}

/// The bucket's objects: 40 "images" under `images/`, and one under each prefix a request
/// must not read (so a refusal is never "no images there").
fn bucket_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("images/apple/{i:02}.jpg"), vec![0xff, 0xd8, i]))
        .collect();
    for planted in [
        "runs/planted/a.jpg",
        "staging/planted/a.jpg",
        "collections/planted/a.jpg",
        "Results/planted/a.jpg",
        "Results_PCA/planted/a.jpg",
        "inbox/planted/a.jpg",
        "other/planted/a.jpg",
    ] {
        files.push((planted.to_string(), b"\xff\xd8planted".to_vec()));
    }
    files
}

/// Each refused request, and what its refusal must say (the field and the bound).
fn refused_requests() -> Vec<(&'static str, RunRequest, &'static str)> {
    let ok = RunRequest {
        input_prefix: "images/".into(),
        shard_size: Some(20),
        ..RunRequest::default()
    };
    let at = |prefix: &str| RunRequest {
        input_prefix: prefix.to_string(),
        ..ok.clone()
    };
    let reserved = "where the pipeline keeps its own objects";
    vec![
        (
            "the whole bucket",
            at(""),
            "input_prefix \"\" is not under one of the allowed input prefixes [\"images/\"]",
        ),
        ("runs/", at("runs/"), reserved),
        ("runs/requests/", at("runs/requests"), reserved),
        ("staging/", at("staging/"), reserved),
        ("collections/", at("collections/"), reserved),
        ("Results/", at("Results/"), reserved),
        ("Results_PCA/", at("Results_PCA/planted/"), reserved),
        ("the inbox", at("inbox/"), reserved),
        (
            "another prefix",
            at("other/"),
            "is not under one of the allowed input prefixes",
        ),
        (
            "shard_size below",
            RunRequest {
                shard_size: Some(1),
                ..ok.clone()
            },
            "shard_size = 1 is below the minimum 16 (the stack's MinShardSize)",
        ),
        (
            "shard_size above",
            RunRequest {
                shard_size: Some(20_000),
                ..ok.clone()
            },
            "shard_size = 20000 is above the maximum 16384 (the stack's MaxShardSize)",
        ),
        (
            "shard_count above",
            RunRequest {
                shard_count: Some(3),
                ..ok.clone()
            },
            "shard_count = 3 is above the maximum 2 shards per run (the stack's MaxShardsPerRun)",
        ),
        (
            "k above",
            RunRequest {
                k: Some(65),
                ..ok.clone()
            },
            "k = 65 is above the maximum 64 (the stack's MaxPcaK)",
        ),
        (
            "max_pixels above",
            RunRequest {
                max_pixels: Some(1_000_000_000_000),
                ..ok.clone()
            },
            "max_pixels = 1000000000000 is above the maximum 50000000 (the stack's MaxPixels)",
        ),
        (
            "max_image_bytes above",
            RunRequest {
                max_image_bytes: Some(1 << 40),
                ..ok.clone()
            },
            "max_image_bytes = 1099511627776 is above the maximum 67108864 (the stack's \
             MaxImageBytes)",
        ),
        (
            "too many shards",
            RunRequest {
                shard_size: Some(16),
                ..ok
            },
            "40 images in shards of 16 make 3 shards, above the maximum 2 shards per run (the \
             stack's MaxShardsPerRun): ask for shard_size >= 20",
        ),
    ]
}

/// Every key of the store, sorted.
async fn keys<S: ObjectStore>(store: &S) -> BTreeSet<String> {
    store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// Each refused request is refused with its message and writes nothing.
async fn refuses_all<S: ObjectStore + Clone, Q: Queue>(splitter: &Splitter<S, Q, Q>, store: &S) {
    let before = keys(store).await;
    for (what, request, expected) in refused_requests() {
        let refused =
            handle_splitter_event(splitter, store, SplitterEvent::Direct(request), "req-1").await;
        match refused {
            Err(Error::InvalidRequest(message)) => {
                assert!(message.contains(expected), "{what}: {message}")
            }
            other => panic!("{what}: not refused: {other:?}"),
        }
        assert_eq!(keys(store).await, before, "{what}: nothing written");
    }
}

/// A request inside every bound starts its run (the refusals were the ceilings' doing).
async fn accepts_one<S: ObjectStore + Clone, Q: Queue>(splitter: &Splitter<S, Q, Q>, store: &S) {
    let ok = RunRequest {
        input_prefix: "images/".into(),
        shard_size: Some(20),
        ..RunRequest::default()
    };
    let outcomes = handle_splitter_event(splitter, store, SplitterEvent::Direct(ok), "req-2")
        .await
        .unwrap();
    assert_eq!((outcomes[0].images, outcomes[0].shards), (40, 2));
}

#[tokio::test]
async fn requests_outside_the_ceilings_are_refused_locally_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), &bucket_files());
    let store = FsStore::new(dir.path());
    let (shards, reduces) = (InProcessQueue::new(), InProcessQueue::new());
    let splitter = Splitter::new(
        store.clone(),
        store.clone(),
        &shards,
        &reduces,
        RunOptions::default(),
        1280,
    )
    .with_input_bucket("bucket")
    .with_reserved_prefix("inbox/")
    .with_limits(stack_limits());
    refuses_all(&splitter, &store).await;
    assert!(shards.messages().is_empty(), "nothing sent");
    accepts_one(&splitter, &store).await;
    assert_eq!(shards.messages().len(), 2);
}

#[test]
fn requests_outside_the_ceilings_are_refused_on_moto_and_nothing_is_written() {
    runtime().block_on(async {
        let stack = Stack::new("ceilings").await;
        stack.upload("", &bucket_files()).await;
        let splitter: Splitter<S3Store, SqsQueue, SqsQueue> = stack
            .splitter()
            .with_reserved_prefix("inbox/")
            .with_limits(stack_limits());
        refuses_all(&splitter, &stack.store()).await;
        assert_eq!(
            stack.depth(&stack.shard_queue).await,
            (0, 0),
            "nothing sent"
        );
        accepts_one(&splitter, &stack.store()).await;
        assert_eq!(
            stack.depth(&stack.shard_queue).await.0,
            2,
            "the accepted run's shards"
        );
    });
}

/// Local runs are held to the local ceilings, with the field and the bound named.
#[test]
fn local_runs_use_the_same_validation_with_local_bounds() {
    let input = tempfile::tempdir().unwrap();
    write_tree(input.path(), &fruit_images(1, 2));
    for (request, expected) in [
        (
            RunRequest {
                max_pixels: Some(1_000_000_000_000),
                ..RunRequest::default()
            },
            "max_pixels = 1000000000000 is above the maximum 250000000 (local runs)",
        ),
        (
            RunRequest {
                max_image_bytes: Some(1 << 40),
                ..RunRequest::default()
            },
            "max_image_bytes = 1099511627776 is above the maximum 1073741824 (local runs)",
        ),
    ] {
        let output = tempfile::tempdir().unwrap();
        let refused = runtime().block_on(run_local(
            LocalRun {
                input: input.path().to_path_buf(),
                output: output.path().to_path_buf(),
                request,
                featurizer: Default::default(),
                on_start: None,
                progress: None,
            },
            model(),
        ));
        let Err(error) = refused else {
            panic!("not refused: {expected}")
        };
        let message = error.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(
            !output.path().join("runs").exists() || walk_files(&output.path().join("runs")) == 0,
            "no run written"
        );
    }
}

fn walk_files(dir: &std::path::Path) -> usize {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .count()
}

fn marker_of(local: &Local, layout: &RunLayout, shard: usize) -> DoneMarker {
    serde_json::from_slice(&std::fs::read(local.output.join(layout.done_marker(shard))).unwrap())
        .unwrap()
}

/// Nothing of the PCA is published, and `status` says why.
async fn assert_refused_and_unpublished(local: &Local, run_id: &str, key: &str) {
    let layout = RunLayout::new(run_id);
    let store = local.output_store();
    let reduce = pipeline::manifest::ReduceMessage {
        run_id: run_id.to_string(),
        claimed_by_shard: 0,
    };
    let refused = local
        .reducer(&Faults::new(), std::time::Duration::from_secs(900))
        .process(&reduce, "m1")
        .await;
    let Err(Error::Invariant(why)) = &refused else {
        panic!("{refused:?}")
    };
    assert!(
        why.contains(&format!("tampered or corrupt: {key}")),
        "{why}"
    );
    assert!(
        !store.exists(&layout.pca_success()).await.unwrap(),
        "no _SUCCESS"
    );
    assert!(
        store.list(&layout.pca_prefix()).await.unwrap().is_empty(),
        "nothing under Results_PCA"
    );
    assert!(
        !store.exists(&layout.pca_model()).await.unwrap(),
        "no model"
    );
    let status = run_status_with(&store, run_id, StallPolicy::default())
        .await
        .unwrap();
    let stuck = status.stuck.expect("stuck");
    assert_eq!(stuck.kind, StuckKind::ReduceFailed);
    assert!(stuck.reason.contains("tampered or corrupt"), "{stuck:?}");
    assert!(stuck.remedy.contains("another run_id"), "{stuck:?}");
}

/// A `stats.bin` edited after its shard committed it — the count and the mean kept, so that
/// only its checksum tells — and one with a NaN: the reducer refuses, naming the file.
#[test]
fn edited_or_non_finite_statistics_stop_the_reduce_and_nothing_is_published() {
    let (files, request, _) = setup();
    runtime().block_on(async {
        let (base, run, _message) = ready_to_reduce(&files, &request).await;
        let layout = RunLayout::new(&run.run_id);
        for nan in [false, true] {
            let local = base.fork();
            let marker = marker_of(&local, &layout, 1);
            assert!(marker.stats_sha256.is_some() && marker.errors_sha256.is_some());
            let key = layout.attempt_stats(1, &marker.attempt);
            let path = local.output.join(&key);
            let mut stats =
                engine::stats::ShardStats::from_bytes(&std::fs::read(&path).unwrap(), &key)
                    .unwrap();
            if nan {
                stats.comoment[1] = f64::NAN;
            } else {
                // A larger variance in column 0: a different PCA, same count and mean.
                stats.comoment[0] *= 4.0;
            }
            std::fs::write(&path, stats.to_bytes()).unwrap();
            assert_refused_and_unpublished(&local, &run.run_id, &key).await;
        }
    });
}

/// A marker written before the checksums were kept is accepted: its statistics file is not
/// trusted, the statistics are recomputed from its part (which `part_sha256` verifies).
#[test]
fn markers_without_checksums_are_reduced_from_their_verified_parts() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let (local, run, message) = ready_to_reduce(&files, &request).await;
        let layout = RunLayout::new(&run.run_id);
        for shard in 0..run.shards {
            let mut marker = marker_of(&local, &layout, shard);
            // An old marker, and its statistics edited: unused, so harmless.
            marker.stats_sha256 = None;
            marker.errors_sha256 = None;
            std::fs::write(
                local.output.join(layout.done_marker(shard)),
                serde_json::to_vec(&marker).unwrap(),
            )
            .unwrap();
            std::fs::write(
                local
                    .output
                    .join(layout.attempt_stats(shard, &marker.attempt)),
                b"garbage",
            )
            .unwrap();
        }
        local.reduces.push(serde_json::to_string(&message).unwrap());
        local.drain().await;
        local
            .assert_clean(&run.run_id, &reference, "old markers")
            .await;
    });
}

/// The featurizer's cold-start check against `ModelSha256`: a mismatch is recorded, every
/// run with shards left is stuck naming both hashes and the remedy, and a good cold start
/// clears it.
async fn model_mismatch_makes_runs_stuck<S: ObjectStore>(store: &S, run_id: &str) {
    let expected = model().sha256().to_string();
    let other = "0".repeat(64);
    let failed = verify_model_at_cold_start(store, &expected, &other, "/opt/model/m.onnx")
        .await
        .unwrap_err();
    assert!(failed.message().contains(&expected) && failed.message().contains(&other));
    let status = run_status_with(store, run_id, StallPolicy::default())
        .await
        .unwrap();
    assert_eq!(status.state(), "stuck", "{status:?}");
    let stuck = status.stuck.unwrap();
    assert_eq!(stuck.kind, StuckKind::ModelMismatch);
    assert!(
        stuck.reason.contains(&expected) && stuck.reason.contains(&other),
        "{stuck:?}"
    );
    assert!(stuck.remedy.contains(ModelHealth::REMEDY), "{stuck:?}");
    verify_model_at_cold_start(store, &expected, &expected, "/opt/model/m.onnx")
        .await
        .unwrap();
    assert!(read_model_health(store).await.unwrap().unwrap().ok);
    let status = run_status_with(store, run_id, StallPolicy::default())
        .await
        .unwrap();
    assert!(status.stuck.is_none(), "{status:?}");
}

#[test]
fn a_model_mismatch_at_cold_start_makes_runs_stuck_locally() {
    let (files, request, _) = setup();
    runtime().block_on(async {
        let local = Local::new(&files);
        let run = local.split(&Faults::new(), &request).await.unwrap();
        model_mismatch_makes_runs_stuck(&local.output_store(), &run.run_id).await;
    });
}

#[test]
fn a_model_mismatch_at_cold_start_makes_runs_stuck_on_moto() {
    let files = fruit_images(2, 2);
    runtime().block_on(async {
        let stack = Stack::new("model-health").await;
        stack.upload("images/", &files).await;
        let run = stack
            .splitter()
            .handle(&crate::aws::small_request(2, 1))
            .await
            .unwrap();
        model_mismatch_makes_runs_stuck(&stack.store(), &run.run_id).await;
        let record = stack
            .store()
            .get(&pipeline::health::featurizer_health_key())
            .await
            .unwrap();
        let record: ModelHealth = serde_json::from_slice(&record).unwrap();
        assert!(record.ok, "cleared by the good cold start");
    });
}
