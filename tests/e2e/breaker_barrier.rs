//! A breaker's review of issue 30's barrier, verification and request ceilings: hostile or
//! unlucky states the other modules do not build. Each test names what it attacks; the ones
//! that fail demonstrate a break (see the report), the others pin down what holds.

use std::collections::BTreeSet;

use pipeline::batch::splitter::Splitter;
use pipeline::batch::status::{run_status_at, run_status_with, StallPolicy, StuckKind};
use pipeline::error::Error;
use pipeline::layout::RunLayout;
use pipeline::limits::RequestLimits;
use pipeline::manifest::{DoneMarker, ReduceMessage, RunOptions, RunRequest};
use pipeline::ports::queue::InProcessQueue;
use pipeline::ports::store::{FsStore, ObjectStore};
use pipeline::stuck::FixedClock;
use testkit::faults::Faults;

use crate::aws::{local_reference, small_request, summary_of};
use crate::common::*;
use crate::faults::{before_last_shard_unbound, setup, Local};

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

/// 40 fake images under `images/`, and one planted under every internal prefix.
fn bucket() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("images/a/{i:02}.jpg"), vec![0xff, 0xd8, i]))
        .collect();
    for planted in [
        "runs/p/a.jpg",
        "staging/p/a.jpg",
        "collections/p/a.jpg",
        "Results/p/a.jpg",
        "Results_PCA/p/a.jpg",
        "inbox/p/a.jpg",
    ] {
        files.push((planted.to_string(), b"\xff\xd8planted".to_vec()));
    }
    write_tree(dir.path(), &files);
    let store = FsStore::new(dir.path());
    (dir, store)
}

fn bucket_splitter<'a>(
    store: &FsStore,
    queues: &'a (InProcessQueue, InProcessQueue),
    limits: RequestLimits,
) -> Splitter<FsStore, &'a InProcessQueue, &'a InProcessQueue> {
    Splitter::new(
        store.clone(),
        store.clone(),
        &queues.0,
        &queues.1,
        RunOptions::default(),
        1280,
    )
    .with_input_bucket("bucket")
    .with_reserved_prefix("inbox/")
    .with_limits(limits)
}

/// BREAK: `shard_count` skips both shard-size bounds. With MaxShardSize 20, `shard_count: 1`
/// over 40 images makes one shard of 40 (a shard the featurizer may never finish in its
/// timeout); MinShardSize is skipped the same way.
#[tokio::test]
async fn shard_count_cannot_make_shards_above_max_shard_size() {
    let (_dir, store) = bucket();
    let queues = (InProcessQueue::new(), InProcessQueue::new());
    let limits = RequestLimits {
        max_shard_size: 20,
        ..RequestLimits::stack_defaults()
    };
    let splitter = bucket_splitter(&store, &queues, limits);
    let request = RunRequest {
        input_prefix: "images/".into(),
        shard_count: Some(1),
        ..RunRequest::default()
    };
    match splitter.handle(&request).await {
        Err(Error::InvalidRequest(message)) => {
            assert!(message.contains("MaxShardSize"), "{message}")
        }
        Ok(outcome) => {
            let largest = outcome.images.div_ceil(outcome.shards);
            assert!(
                largest <= 20,
                "accepted: {} images in {} shard(s) of up to {largest}, above MaxShardSize 20",
                outcome.images,
                outcome.shards
            );
        }
        Err(other) => panic!("{other:?}"),
    }
}

/// BREAK: MaxPcaK bounds `k` only when `variance` is unset; a request with `variance` fits
/// as many components as the data has, whatever the stack's MaxPcaK.
#[test]
fn a_variance_request_cannot_fit_more_components_than_max_pca_k() {
    let (files, request, _) = setup();
    let request = RunRequest {
        k: Some(2),
        variance: Some(0.999_999),
        ..request
    };
    runtime().block_on(async {
        let local = Local::new(&files);
        let limits = RequestLimits {
            max_pca_k: 2,
            ..RequestLimits::local()
        };
        let split = local
            .splitter(&Faults::new())
            .with_limits(limits)
            .handle(&request)
            .await;
        let run = match split {
            Err(Error::InvalidRequest(message)) => {
                assert!(message.contains("maximum 2"), "{message}");
                return;
            }
            other => other.unwrap(),
        };
        local.drain().await;
        let summary = summary_of(&local.output_store(), &run.run_id).await;
        assert!(
            summary.k <= 2,
            "MaxPcaK 2, but the run fitted k = {} components",
            summary.k
        );
    });
}

/// HOLDS: every bound is inclusive (no off-by-one): a request exactly at each ceiling is
/// accepted, and one past it refused.
#[tokio::test]
async fn requests_exactly_at_each_ceiling_are_accepted_and_one_past_refused() {
    let limits = RequestLimits {
        min_shard_size: 8,
        max_shard_size: 20,
        max_shards_per_run: 5,
        max_pca_k: 64,
        max_pixels: 1_000_000,
        max_image_bytes: 1 << 20,
        ..RequestLimits::stack_defaults()
    };
    let base = RunRequest {
        input_prefix: "images/".into(),
        shard_size: Some(10),
        max_pixels: Some(1_000),
        max_image_bytes: Some(1_000),
        ..RunRequest::default()
    };
    let at = |f: &dyn Fn(&mut RunRequest)| {
        let mut r = base.clone();
        f(&mut r);
        r
    };
    let accepted = [
        at(&|r| r.shard_size = Some(8)), // 40 / 8 = 5 shards: both bounds at once
        at(&|r| r.shard_size = Some(20)),
        at(&|r| r.shard_count = Some(5)),
        at(&|r| r.k = Some(64)),
        at(&|r| r.max_pixels = Some(1_000_000)),
        at(&|r| r.max_image_bytes = Some(1 << 20)),
    ];
    let refused = [
        at(&|r| r.shard_size = Some(7)),
        at(&|r| r.shard_size = Some(21)),
        at(&|r| r.shard_count = Some(6)),
        at(&|r| r.k = Some(65)),
        at(&|r| r.max_pixels = Some(1_000_001)),
        at(&|r| r.max_image_bytes = Some((1 << 20) + 1)),
    ];
    for request in accepted {
        let (_dir, store) = bucket();
        let queues = (InProcessQueue::new(), InProcessQueue::new());
        let outcome = bucket_splitter(&store, &queues, limits.clone())
            .handle(&request)
            .await;
        assert!(outcome.is_ok(), "{request:?}: {outcome:?}");
    }
    for request in refused {
        let (_dir, store) = bucket();
        let before = keys(&store).await;
        let queues = (InProcessQueue::new(), InProcessQueue::new());
        let outcome = bucket_splitter(&store, &queues, limits.clone())
            .handle(&request)
            .await;
        assert!(
            matches!(outcome, Err(Error::InvalidRequest(_))),
            "{request:?}: {outcome:?}"
        );
        assert_eq!(keys(&store).await, before, "{request:?}: nothing written");
        assert!(queues.0.messages().is_empty());
    }
}

/// HOLDS: spellings of an internal prefix never list an internal key. `runs` and `runs//x`
/// are refused; `./runs/`, `Runs/`, a full-width `ｒuns/` and `/runs/` are other S3 keys
/// (the folder store lists nothing under them), so they find no images.
#[tokio::test]
async fn spellings_of_internal_prefixes_never_list_internal_keys() {
    let internal = ["runs/", "staging/", "collections/", "Results", "inbox/"];
    for prefix in [
        "runs",
        "runs//x",
        "./runs/",
        "Runs/",
        "\u{ff52}uns/",
        "/runs/",
        "staging",
        "Results_PCA",
        "Results_PCA//",
        "inbox",
        "",
    ] {
        let (_dir, store) = bucket();
        let queues = (InProcessQueue::new(), InProcessQueue::new());
        let splitter = bucket_splitter(&store, &queues, RequestLimits::stack_defaults());
        let request = RunRequest {
            input_prefix: prefix.into(),
            shard_size: Some(20),
            ..RunRequest::default()
        };
        match splitter.handle(&request).await {
            Err(Error::InvalidRequest(_)) => assert!(queues.0.messages().is_empty()),
            Err(other) => panic!("{prefix:?}: {other:?}"),
            Ok(outcome) => {
                // Only the whole bucket is accepted: its 40 images and none of the planted.
                assert_eq!(prefix, "", "{prefix:?} accepted");
                assert_eq!(outcome.images, 40, "{prefix:?}: a planted key was listed");
                let listed = keys(&store).await;
                for key in listed.iter().filter(|k| k.contains("/shards/")) {
                    let body = String::from_utf8(store.get(key).await.unwrap().to_vec()).unwrap();
                    for i in internal {
                        assert!(!body.contains(&format!("{i}p/a.jpg")), "{key}: {body}");
                    }
                }
            }
        }
    }
}

/// HOLDS (safety), with a liveness cost: a tree node forged before its shards finish lets
/// the barrier reach the root early, so a reduce is claimed and sent while shards 0-1 are
/// not done. The reducer checks every done marker and publishes nothing; the claim is then
/// spent, so the real last shard sends no reduce: `status` says stuck and names
/// `featurize resume`, which completes the run exactly once.
#[test]
fn a_forged_tree_node_reduces_early_publishes_nothing_and_resume_recovers() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let local = Local::new(&files);
        let run = local.split(&Faults::new(), &request).await.unwrap();
        assert_eq!(run.shards, 4);
        while local.shards.pop().is_some() {}
        let layout = RunLayout::new(&run.run_id);
        let store = local.output_store();
        // The attacker's node: "shards 0 and 1 are done".
        store
            .put(
                &layout.barrier_node(1, 0),
                pipeline::ports::store::Bytes::from_static(b"{}"),
            )
            .await
            .unwrap();
        let clean = Faults::new();
        local.featurize(&clean, &run.run_id, 2).await.unwrap();
        let early = local.featurize(&clean, &run.run_id, 3).await.unwrap();
        assert!(early.sent_reduce, "the forged node reached the root early");
        let message: ReduceMessage = serde_json::from_str(&local.reduces.pop().unwrap()).unwrap();
        let refused = local
            .reducer(&clean, std::time::Duration::ZERO)
            .process(&message, "early")
            .await;
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains("not done")),
            "{refused:?}"
        );
        assert!(!store.exists(&layout.pca_success()).await.unwrap());
        assert!(store.list(&layout.pca_prefix()).await.unwrap().is_empty());
        // The real last shards: the claim is spent, no reduce is sent.
        for shard in [0, 1] {
            let outcome = local.featurize(&clean, &run.run_id, shard).await.unwrap();
            assert!(!outcome.sent_reduce, "shard {shard}");
        }
        assert!(local.reduces.is_empty());
        let status = run_status_with(&store, &run.run_id, StallPolicy::default())
            .await
            .unwrap();
        let stuck = status.stuck.expect("stuck, with a remedy");
        assert!(stuck.remedy.contains("featurize resume"), "{stuck:?}");
        let resumed = local
            .splitter(&Faults::new())
            .resume(&layout)
            .await
            .unwrap();
        assert!(resumed.reduce_sent);
        local.drain().await;
        local
            .assert_clean(&run.run_id, &reference, "forged tree node")
            .await;
    });
}

/// HOLDS: 6 shards (not a power of two, the last of one image). A *middle* shard crashes
/// right after its done marker, before its tree node, and its message is never delivered
/// again. No later shard can reach the root (the subtree over shards 2-3 is never marked),
/// so nobody claims: `status` calls the run stuck with `featurize resume` once the stall
/// time has passed, and the resume reduces it exactly once.
#[test]
fn a_middle_shard_lost_between_its_marker_and_its_tree_node_is_stuck_then_resumed() {
    let files = fruit_images(4, 4);
    let request = RunRequest {
        input_prefix: String::new(),
        ..small_request(3, 5)
    };
    let reference = local_reference(&files, &request);
    runtime().block_on(async {
        let local = Local::new(&files);
        let run = local.split(&Faults::new(), &request).await.unwrap();
        assert_eq!(run.shards, 6);
        while local.shards.pop().is_some() {}
        let layout = RunLayout::new(&run.run_id);
        for shard in [0, 1, 2] {
            local
                .featurize(&Faults::new(), &run.run_id, shard)
                .await
                .unwrap();
        }
        let crash = Faults::crash_after(5);
        assert!(local.featurize(&crash, &run.run_id, 3).await.is_err());
        let log = crash.log();
        assert!(
            log.last().unwrap().contains(&layout.done_marker(3)),
            "crashed right after the commit: {log:?}"
        );
        for shard in [4, 5] {
            let outcome = local
                .featurize(&Faults::new(), &run.run_id, shard)
                .await
                .unwrap();
            assert!(!outcome.sent_reduce, "shard {shard}");
        }
        assert!(local.reduces.is_empty());
        let store = local.output_store();
        let later = FixedClock::at_unix(pipeline::manifest::unix_now() + 24 * 3600);
        let status = run_status_at(&store, &run.run_id, &StallPolicy::default(), &later)
            .await
            .unwrap();
        assert_eq!(status.done.len(), 6);
        let stuck = status.stuck.expect("stuck");
        assert_eq!(stuck.kind, StuckKind::NoClaim, "{stuck:?}");
        assert!(stuck.remedy.contains("featurize resume"), "{stuck:?}");
        let resumed = local
            .splitter(&Faults::new())
            .resume(&layout)
            .await
            .unwrap();
        assert!(resumed.reduce_sent);
        assert_eq!(local.reduces.len(), 1, "one reduce");
        local.drain().await;
        local
            .assert_clean(&run.run_id, &reference, "lost between marker and node")
            .await;
    });
}

/// HOLDS: the statistics checksum is bound to the committed attempt. A losing attempt's
/// own, well-formed `stats.bin` of the same shard (here a synthetic featurizer's) copied
/// over the committed attempt's: "tampered or corrupt", nothing published.
#[test]
fn another_attempts_statistics_swapped_in_are_refused() {
    let (files, request, _) = setup();
    runtime().block_on(async {
        let (base, run) = before_last_shard_unbound(&files, &request).await;
        let last = run.shards - 1;
        let layout = RunLayout::new(&run.run_id);
        // The other attempt, in a copy of the deployment.
        let other = base.fork();
        other
            .synthetic_featurizer(&Faults::new())
            .process(
                &pipeline::manifest::ShardMessage {
                    run_id: run.run_id.clone(),
                    shard: last,
                },
                None,
                None,
            )
            .await
            .unwrap();
        let marker_of = |local: &Local| -> DoneMarker {
            serde_json::from_slice(
                &std::fs::read(local.output.join(layout.done_marker(last))).unwrap(),
            )
            .unwrap()
        };
        let theirs = marker_of(&other);
        let their_stats = std::fs::read(
            other
                .output
                .join(layout.attempt_stats(last, &theirs.attempt)),
        )
        .unwrap();
        base.featurize(&Faults::new(), &run.run_id, last)
            .await
            .unwrap();
        let ours = marker_of(&base);
        assert_ne!(ours.attempt, theirs.attempt);
        let key = layout.attempt_stats(last, &ours.attempt);
        assert_ne!(std::fs::read(base.output.join(&key)).unwrap(), their_stats);
        std::fs::write(base.output.join(&key), &their_stats).unwrap();
        let message: ReduceMessage = serde_json::from_str(&base.reduces.pop().unwrap()).unwrap();
        let refused = base
            .reducer(&Faults::new(), std::time::Duration::ZERO)
            .process(&message, "m")
            .await;
        let Err(Error::Invariant(why)) = &refused else {
            panic!("{refused:?}")
        };
        assert!(
            why.contains(&format!("tampered or corrupt: {key}")),
            "{why}"
        );
        let store = base.output_store();
        assert!(!store.exists(&layout.pca_success()).await.unwrap());
        assert!(store.list(&layout.pca_prefix()).await.unwrap().is_empty());
    });
}

/// HOLDS: the checksum of the error list covers the staging file too. A marker that does
/// not carry its list inline (as an old or trimmed one) with `errors.json` edited in
/// staging: refused, naming the file.
#[test]
fn an_edited_error_list_in_staging_is_refused_when_the_marker_names_its_checksum() {
    let mut files = fruit_images(4, 4);
    files.push(("images/apple/broken.jpg".into(), b"not a jpeg".to_vec()));
    let request = RunRequest {
        input_prefix: String::new(),
        ..small_request(4, 5)
    };
    runtime().block_on(async {
        let local = Local::new(&files);
        let run = local.split(&Faults::new(), &request).await.unwrap();
        while local.shards.pop().is_some() {}
        for shard in 0..run.shards {
            local
                .featurize(&Faults::new(), &run.run_id, shard)
                .await
                .unwrap();
        }
        let layout = RunLayout::new(&run.run_id);
        let (shard, mut marker) = (0..run.shards)
            .map(|s| {
                let m: DoneMarker = serde_json::from_slice(
                    &std::fs::read(local.output.join(layout.done_marker(s))).unwrap(),
                )
                .unwrap();
                (s, m)
            })
            .find(|(_, m)| m.errors > 0)
            .expect("a shard with the broken image");
        assert!(marker.errors_sha256.is_some());
        marker.error_list.clear();
        std::fs::write(
            local.output.join(layout.done_marker(shard)),
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();
        let key = layout.attempt_errors(shard, &marker.attempt);
        std::fs::write(local.output.join(&key), b"[]").unwrap();
        let message: ReduceMessage = serde_json::from_str(&local.reduces.pop().unwrap()).unwrap();
        let refused = local
            .reducer(&Faults::new(), std::time::Duration::ZERO)
            .process(&message, "m")
            .await;
        let Err(Error::Invariant(why)) = &refused else {
            panic!("{refused:?}")
        };
        assert!(
            why.contains(&format!("tampered or corrupt: {key}")),
            "{why}"
        );
        assert!(!local
            .output_store()
            .exists(&layout.pca_success())
            .await
            .unwrap());
    });
}
