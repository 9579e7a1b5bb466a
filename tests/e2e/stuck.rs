//! No silent stall (issue 26 item 3, issue 27 item 7): each fault that stops a run or a
//! collection for good is reported as stuck — with its reason and remedy — once its bound
//! (`pipeline::stuck::StallPolicy`) has passed, and not before. The run and collection
//! documents are written as the pipeline leaves them after the fault, on the local store;
//! time is a fixed clock, never a sleep. Then the same through the CLI (`status`, `status
//! --watch` ending with exit code 5), the scheduled checker's scan and metrics line (local
//! store, and S3 on moto with the delimited listing), and the bounds the docs state.

use std::time::{Duration, Instant};

use aws::checker::{check, emf_line, CheckerSettings, ListedFolders, S3Folders};
use pipeline::batch::attempts::{started_key, ShardStart};
use pipeline::batch::featurizer::ReduceClaim;
use pipeline::batch::reducer::ReduceLock;
use pipeline::batch::status::{run_status_at, RunStatus};
use pipeline::continuous::collection::{
    collection_status_at, record_refit_start, CollectionLayout, CollectionStatus, CurrentPointer,
    Delta,
};
use pipeline::layout::RunLayout;
use pipeline::manifest::{
    DoneMarker, InputLocation, InvocationCost, Manifest, RunOptions, Shard, StageTimings,
};
use pipeline::ports::store::{FsStore, ObjectStore};
use pipeline::stuck::{rfc3339_of, FixedClock, StallPolicy, StuckKind};

use crate::common::*;

/// A time well in the past (2023-11-14), so that the CLI's system clock is past every bound.
const T0: u64 = 1_700_000_000;
const SHARDS: usize = 3;

fn policy() -> StallPolicy {
    StallPolicy::default()
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

async fn put_json<S: ObjectStore, T: serde::Serialize>(store: &S, key: &str, value: &T) {
    store
        .put(key, serde_json::to_vec(value).unwrap().into())
        .await
        .unwrap();
}

/// A run's manifest as the splitter writes it, created at `created`.
async fn write_run<S: ObjectStore>(store: &S, run_id: &str, created: u64) -> RunLayout {
    let layout = RunLayout::new(run_id);
    let manifest = Manifest {
        run_id: run_id.into(),
        created_at: rfc3339_of(created),
        input: InputLocation {
            uri: "s3://b/images/".into(),
            bucket: Some("b".into()),
            prefix: "images/".into(),
        },
        options: RunOptions::default(),
        total_images: SHARDS * 2,
        shards: (0..SHARDS)
            .map(|id| Shard {
                id,
                count: 2,
                images: Vec::new(),
            })
            .collect(),
        splitter: None,
        model_sha256: String::new(),
        fingerprint: "f".repeat(64),
        request: None,
    };
    put_json(store, &layout.manifest(), &manifest).await;
    layout
}

/// A delivery of a shard's message starting (what the featurizer records first).
async fn start<S: ObjectStore>(store: &S, layout: &RunLayout, shard: usize, count: u32, at: u64) {
    let record = ShardStart {
        shard,
        receive_count: count,
        attempt: format!("a{count}"),
        at_unix: at,
    };
    put_json(store, &started_key(layout, shard), &record).await;
}

/// A shard's done marker, finished at `at`.
async fn done<S: ObjectStore>(store: &S, layout: &RunLayout, shard: usize, at: u64) {
    let marker = serde_json::json!({
        "shard": shard,
        "attempt": "a1",
        "part_sha256": "0".repeat(64),
        "images": 2,
        "rows": 2,
        "errors": 0,
        "timings": StageTimings::default(),
        "cost": InvocationCost::since(Instant::now()),
        "finished_at_ms": at * 1000,
    });
    let _: DoneMarker = serde_json::from_value(marker.clone()).expect("a done marker");
    put_json(store, &layout.done_marker(shard), &marker).await;
}

async fn status_at(store: &FsStore, run_id: &str, now: u64) -> RunStatus {
    run_status_at(store, run_id, &policy(), &FixedClock::at_unix(now))
        .await
        .unwrap()
}

/// Not stuck one second before `bound` after `from`, stuck (by `kind`) at it.
async fn stuck_exactly_at(store: &FsStore, run_id: &str, from: u64, bound: u64, kind: StuckKind) {
    let before = status_at(store, run_id, from + bound - 1).await;
    assert!(
        before.stuck.is_none() && !before.is_settled(),
        "stuck before the bound: {before:?}"
    );
    let at = status_at(store, run_id, from + bound).await;
    let stuck = at
        .stuck
        .clone()
        .unwrap_or_else(|| panic!("not stuck at the bound: {at:?}"));
    assert_eq!(stuck.kind, kind, "{stuck:?}");
    assert_eq!(at.state(), "stuck");
    assert!(at.is_settled(), "status --watch ends here");
    assert!(
        stuck
            .remedy
            .contains(&format!("featurize resume --run {run_id}")),
        "the remedy is the command: {stuck:?}"
    );
    assert!(!stuck.reason.is_empty());
}

fn temp_store() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    (dir, store)
}

#[test]
fn a_shard_lost_without_a_failure_record_is_stuck_within_the_bound() {
    block(async {
        let (_dir, store) = temp_store();
        let layout = write_run(&store, "lost", T0).await;
        done(&store, &layout, 0, T0 + 30).await;
        done(&store, &layout, 1, T0 + 31).await;
        // Shard 2 dies five times without a word (out of memory): each delivery writes its
        // start record, none a failure record; the fifth goes to the DLQ.
        let visibility = secs(policy().shard_visibility);
        for count in 1..=5u32 {
            start(
                &store,
                &layout,
                2,
                count,
                T0 + u64::from(count - 1) * visibility,
            )
            .await;
            let last = T0 + u64::from(count - 1) * visibility;
            if count < 5 {
                // Between deliveries: waiting for the next one, not stuck.
                let s = status_at(&store, "lost", last + visibility).await;
                assert!(s.stuck.is_none(), "delivery {count}: {s:?}");
            }
        }
        let last_start = T0 + 4 * visibility;
        let bound = secs(policy().shard_lost_after(5));
        assert_eq!(
            bound, 240,
            "the featurizer's timeout (180 s) plus the margin (60 s)"
        );
        stuck_exactly_at(&store, "lost", last_start, bound, StuckKind::ShardsLost).await;
        let s = status_at(&store, "lost", last_start + bound).await;
        assert_eq!(s.lost, vec![2]);
        assert_eq!(s.pending, vec![2], "no failure record: not in `failed`");
        let stuck = s.stuck.unwrap();
        assert!(stuck.reason.contains("shard 2"), "{stuck:?}");
        assert!(stuck.reason.contains("no failure record"), "{stuck:?}");
        assert!(stuck.reason.contains("5 of 5"), "{stuck:?}");
        assert_eq!(stuck.since, rfc3339_of(last_start));
        // Done after all (a late redelivery): nothing is lost or stuck.
        done(&store, &layout, 2, last_start + 100).await;
        let s = status_at(&store, "lost", last_start + 101).await;
        assert!(s.stuck.is_none() && s.lost.is_empty(), "{s:?}");
    });
}

#[test]
fn a_shard_whose_message_vanished_after_one_delivery_is_stuck_after_the_remaining_retries() {
    block(async {
        let (_dir, store) = temp_store();
        let layout = write_run(&store, "vanished", T0).await;
        start(&store, &layout, 0, 1, T0 + 5).await;
        for shard in 1..SHARDS {
            done(&store, &layout, shard, T0 + 20).await;
        }
        // Four more deliveries were due, each within a visibility timeout: none came.
        let bound = secs(policy().shard_lost_after(1));
        assert_eq!(bound, 4 * 1080 + 180 + 60);
        stuck_exactly_at(&store, "vanished", T0 + 5, bound, StuckKind::ShardsLost).await;
    });
}

#[test]
fn a_shard_dead_lettered_with_failure_records_is_stuck_with_its_error() {
    block(async {
        let (_dir, store) = temp_store();
        let layout = write_run(&store, "failing", T0).await;
        for shard in 0..2 {
            done(&store, &layout, shard, T0 + 20).await;
        }
        let failure = pipeline::batch::featurizer::ShardFailure {
            shard: 2,
            attempt: Some(5),
            error: "AccessDenied on images/x.jpg".into(),
            at: rfc3339_of(T0 + 900),
        };
        put_json(
            &store,
            &format!("{}failures/shard-00002.json", layout.run_prefix()),
            &failure,
        )
        .await;
        let s = status_at(&store, "failing", T0 + 900 + 239).await;
        assert_eq!(s.state(), "shards failing");
        assert!(s.is_settled(), "every shard not done has failed");
        let s = status_at(&store, "failing", T0 + 900 + 240).await;
        let stuck = s.stuck.unwrap();
        assert_eq!(stuck.kind, StuckKind::ShardsLost);
        assert!(stuck.reason.contains("AccessDenied"), "{stuck:?}");
    });
}

#[test]
fn no_featurizer_started_is_stuck_after_the_start_grace() {
    block(async {
        let (_dir, store) = temp_store();
        write_run(&store, "unstarted", T0).await;
        let grace = secs(policy().no_start_after());
        assert_eq!(grace, 600);
        stuck_exactly_at(
            &store,
            "unstarted",
            T0,
            grace,
            StuckKind::NoFeaturizerStarted,
        )
        .await;
        let s = status_at(&store, "unstarted", T0 + grace).await;
        assert!(s
            .stuck
            .unwrap()
            .reason
            .contains("no featurizer has started"));
        // One start, and the run is moving.
        start(&store, &RunLayout::new("unstarted"), 1, 1, T0 + 700).await;
        assert!(status_at(&store, "unstarted", T0 + 800)
            .await
            .stuck
            .is_none());
    });
}

#[test]
fn every_shard_done_without_a_claim_is_stuck() {
    block(async {
        let (_dir, store) = temp_store();
        let layout = write_run(&store, "unclaimed", T0).await;
        for shard in 0..SHARDS {
            done(&store, &layout, shard, T0 + 10 + shard as u64).await;
        }
        let last = T0 + 10 + SHARDS as u64 - 1;
        let bound = secs(policy().no_claim_after());
        assert_eq!(bound, 1080 + 180 + 60);
        stuck_exactly_at(&store, "unclaimed", last, bound, StuckKind::NoClaim).await;
        assert_eq!(
            status_at(&store, "unclaimed", last).await.state(),
            "reducing"
        );
    });
}

#[test]
fn a_claim_without_a_lock_is_stuck() {
    block(async {
        let (_dir, store) = temp_store();
        let layout = write_run(&store, "claimed", T0).await;
        for shard in 0..SHARDS {
            done(&store, &layout, shard, T0 + 10).await;
        }
        let claim = ReduceClaim {
            claimed_by_shard: 1,
            claimed_at: rfc3339_of(T0 + 11),
            claimed_at_unix: T0 + 11,
        };
        put_json(&store, &layout.reduce_claim(), &claim).await;
        let bound = secs(policy().claim_unanswered_after);
        stuck_exactly_at(
            &store,
            "claimed",
            T0 + 11,
            bound,
            StuckKind::ClaimWithoutLock,
        )
        .await;
        let s = status_at(&store, "claimed", T0 + 11 + bound).await;
        assert!(s.reduce_claimed);
        assert!(s.stuck.unwrap().reason.contains("no reducer has started"));
    });
}

#[test]
fn a_stale_reducer_lock_is_stuck_and_a_released_one_with_a_failure_at_once() {
    block(async {
        let (_dir, store) = temp_store();
        let layout = write_run(&store, "locked", T0).await;
        for shard in 0..SHARDS {
            done(&store, &layout, shard, T0 + 10).await;
        }
        let claim = ReduceClaim {
            claimed_by_shard: 0,
            claimed_at: rfc3339_of(T0 + 11),
            claimed_at_unix: T0 + 11,
        };
        put_json(&store, &layout.reduce_claim(), &claim).await;
        let mut lock: ReduceLock = serde_json::from_value(serde_json::json!({
            "owner": "message-1",
            "generation": 1,
            "acquired_at": T0 + 12,
            "released": false,
        }))
        .unwrap();
        put_json(&store, &layout.reduce_lock(), &lock).await;
        let bound = secs(policy().lock_dead_after());
        assert_eq!(
            bound,
            1800 + 60,
            "the reduce queue's visibility timeout plus the margin"
        );
        stuck_exactly_at(&store, "locked", T0 + 12, bound, StuckKind::StaleLock).await;

        // A reducer that failed: it released the lock and recorded why.
        lock.released = true;
        put_json(&store, &layout.reduce_lock(), &lock).await;
        let failure = pipeline::batch::reducer::ReduceFailure {
            owner: "message-1".into(),
            error: "invariant broken: 3 rows for 4 images".into(),
            at: rfc3339_of(T0 + 20),
            at_unix: T0 + 20,
        };
        put_json(&store, &layout.reduce_failure(), &failure).await;
        let s = status_at(&store, "locked", T0 + 21).await;
        let stuck = s.stuck.unwrap();
        assert_eq!(stuck.kind, StuckKind::ReduceFailed);
        assert!(stuck.reason.contains("invariant broken"));
    });
}

/// `featurize status` prints the reason and the remedy and exits 5; `status --watch` ends
/// on it (with the system clock: the run's records are from 2023).
#[test]
fn status_and_watch_end_on_stuck_with_the_reason_the_remedy_and_exit_code_5() {
    block(async {
        let (dir, store) = temp_store();
        let layout = write_run(&store, "cli", T0).await;
        done(&store, &layout, 0, T0 + 5).await;
        done(&store, &layout, 1, T0 + 5).await;
        start(&store, &layout, 2, 5, T0 + 10).await;
        let featurize = env!("CARGO_BIN_EXE_featurize");
        let output = dir.path().to_str().unwrap();
        for watch in [false, true] {
            let mut command = std::process::Command::new(featurize);
            command.args(["status", "--run", "cli", "--output", output]);
            if watch {
                command.args(["--watch", "--interval", "0.2", "--timeout", "60"]);
            }
            let shown = command.output().unwrap();
            let text = String::from_utf8_lossy(&shown.stdout);
            assert_eq!(shown.status.code(), Some(5), "watch {watch}: {text}");
            assert!(text.contains("stuck since"), "{text}");
            assert!(text.contains("remedy:"), "{text}");
            assert!(text.contains("featurize resume --run cli"), "{text}");
        }
        let help = std::process::Command::new(featurize)
            .args(["status", "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains("5 stuck"),
            "--help documents the exit code: {help}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Collections
// ---------------------------------------------------------------------------------------------

fn pointer(collection: &str, snapshot: &str, published: u64) -> CurrentPointer {
    let layout = CollectionLayout::new(collection);
    CurrentPointer {
        collection: collection.into(),
        snapshot: snapshot.into(),
        seq: 1,
        results: layout.results_prefix(snapshot),
        results_pca: layout.pca_prefix(snapshot),
        pca_model: None,
        summary: layout.summary(snapshot),
        errors: layout.errors(snapshot),
        published_at: rfc3339_of(published),
        published_at_ms: published * 1000,
    }
}

/// A complete snapshot: `_SUCCESS`, its summary and its state.
async fn complete_snapshot<S: ObjectStore>(store: &S, collection: &str, snapshot: &str) {
    let layout = CollectionLayout::new(collection);
    store
        .put(&layout.success(snapshot), "".into())
        .await
        .unwrap();
    put_json(
        store,
        &layout.summary(snapshot),
        &pipeline::continuous::collection::RefitSummary::default(),
    )
    .await;
    store
        .put(&layout.state_index(snapshot), "{}".into())
        .await
        .unwrap();
}

/// A delta written at `at` (its id starts with its time, as `new_delta_id`'s).
async fn delta<S: ObjectStore>(store: &S, collection: &str, at: u64) {
    let layout = CollectionLayout::new(collection);
    let id = format!("{:013}-{:016x}", at * 1000, at);
    let delta = Delta {
        collection: collection.into(),
        id: id.clone(),
        written_at_ms: at * 1000,
        entries: vec![pipeline::continuous::collection::DeltaEntry::Removed {
            path: format!("a/{at}.jpg"),
        }],
        model_sha256: None,
    };
    put_json(store, &layout.delta_doc(&id), &delta).await;
}

async fn collection_at(store: &FsStore, collection: &str, now: u64) -> CollectionStatus {
    collection_status_at(store, collection, &policy(), &FixedClock::at_unix(now))
        .await
        .unwrap()
}

#[test]
fn a_dangling_collection_pointer_is_stuck_at_once() {
    block(async {
        let (dir, store) = temp_store();
        let layout = CollectionLayout::new("c");
        put_json(&store, &layout.current(), &pointer("c", "s2", T0)).await;
        let s = collection_at(&store, "c", T0 + 1).await;
        let stuck = s.stuck.unwrap();
        assert_eq!(stuck.kind, StuckKind::DanglingPointer);
        assert!(stuck.reason.contains("s2"), "{stuck:?}");
        assert!(
            stuck.remedy.contains("featurize reconcile --collection c"),
            "{stuck:?}"
        );

        // The CLI shows it, with exit code 5.
        let shown = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
            .args(["status", "--collection", "c", "--output"])
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&shown.stdout);
        assert_eq!(shown.status.code(), Some(5), "{text}");
        assert!(
            text.contains("remedy:") && text.contains("stuck since"),
            "{text}"
        );

        complete_snapshot(&store, "c", "s2").await;
        assert!(collection_at(&store, "c", T0 + 1).await.stuck.is_none());
    });
}

#[test]
fn collection_changes_pending_past_the_staleness_bound_are_stuck() {
    block(async {
        let (_dir, store) = temp_store();
        let layout = CollectionLayout::new("p");
        put_json(&store, &layout.current(), &pointer("p", "s1", T0)).await;
        complete_snapshot(&store, "p", "s1").await;
        // Uploads every 30 s from T0 + 100 on, and no refit publishes.
        for i in 0..20 {
            delta(&store, "p", T0 + 100 + 30 * i).await;
        }
        let bound = secs(policy().pending_too_old_after());
        assert_eq!(
            bound,
            900 + 300 + 60,
            "max staleness, one refit, the margin"
        );
        let before = collection_at(&store, "p", T0 + 100 + bound - 1).await;
        assert!(before.stuck.is_none(), "{before:?}");
        let at = collection_at(&store, "p", T0 + 100 + bound).await;
        let stuck = at.stuck.unwrap();
        assert_eq!(stuck.kind, StuckKind::PendingTooOld);
        assert_eq!(
            stuck.since,
            rfc3339_of(T0 + 100),
            "from the oldest pending change"
        );
        assert!(
            stuck.remedy.contains("featurize refit --collection p"),
            "{stuck:?}"
        );
        assert_eq!(at.pending_deltas, 20);

        // No staleness bound configured: waiting for quiet is not stuck.
        let unbounded = StallPolicy {
            max_staleness: Duration::ZERO,
            ..policy()
        };
        let s = collection_status_at(&store, "p", &unbounded, &FixedClock::at_unix(T0 + 10_000))
            .await
            .unwrap();
        assert!(s.stuck.is_none(), "{s:?}");
    });
}

#[test]
fn a_refit_dead_lettered_without_publishing_is_stuck() {
    block(async {
        let (_dir, store) = temp_store();
        let layout = CollectionLayout::new("r");
        put_json(&store, &layout.current(), &pointer("r", "s1", T0)).await;
        complete_snapshot(&store, "r", "s1").await;
        delta(&store, "r", T0 + 50).await;
        // The fifth delivery of the refit starts, then dies (out of memory): no record.
        record_refit_start(&store, "r", 5, &FixedClock::at_unix(T0 + 60))
            .await
            .unwrap();
        let bound = secs(policy().refit_lost_after(5));
        assert_eq!(bound, 300 + 60);
        assert!(collection_at(&store, "r", T0 + 60 + bound - 1)
            .await
            .stuck
            .is_none());
        let stuck = collection_at(&store, "r", T0 + 60 + bound)
            .await
            .stuck
            .unwrap();
        assert_eq!(stuck.kind, StuckKind::RefitLost);
        assert!(stuck.reason.contains("no failure record"), "{stuck:?}");
        // A later publication answers it.
        put_json(&store, &layout.current(), &pointer("r", "s1", T0 + 61)).await;
        assert!(collection_at(&store, "r", T0 + 60 + bound)
            .await
            .stuck
            .is_none());
    });
}

// ---------------------------------------------------------------------------------------------
// The scheduled checker
// ---------------------------------------------------------------------------------------------

/// Runs and collections in every state: the checker examines the unfinished runs, skips the
/// finished ones, and counts what is stuck in its metrics line.
async fn populate<S: ObjectStore>(store: &S, now: u64) {
    write_run(store, "stuck-run", now - 10_000).await;
    let complete = write_run(store, "complete-run", now - 10_000).await;
    store.put(&complete.pca_success(), "".into()).await.unwrap();
    write_run(store, "fresh-run", now - 10).await;
    store
        .put("runs/requests/r.json", "{}".into())
        .await
        .unwrap();
    let layout = CollectionLayout::new("dangling");
    put_json(
        store,
        &layout.current(),
        &pointer("dangling", "gone", now - 5),
    )
    .await;
    let healthy = CollectionLayout::new("healthy");
    put_json(
        store,
        &healthy.current(),
        &pointer("healthy", "s1", now - 5),
    )
    .await;
    complete_snapshot(store, "healthy", "s1").await;
}

fn assert_report(report: &aws::checker::CheckReport) {
    assert_eq!(report.runs, 3, "{report:?}");
    assert_eq!(report.runs_finished, 1, "{report:?}");
    assert_eq!(report.runs_unreadable, 0, "{report:?}");
    assert_eq!(
        (report.stuck_runs(), report.stuck_collections()),
        (1, 1),
        "{report:?}"
    );
    let run = report.stuck.iter().find(|s| s.what == "run").unwrap();
    assert_eq!(run.id, "stuck-run");
    assert_eq!(run.stuck.kind, StuckKind::NoFeaturizerStarted);
    let collection = report
        .stuck
        .iter()
        .find(|s| s.what == "collection")
        .unwrap();
    assert_eq!(collection.id, "dangling");
    let line: serde_json::Value = serde_json::from_str(&emf_line(report, "st", 1)).unwrap();
    assert_eq!(line["StuckRuns"], 1);
    assert_eq!(line["StuckCollections"], 1);
    assert_eq!(
        line["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "Featurize"
    );
}

#[test]
fn the_checker_counts_stuck_runs_and_collections_and_skips_finished_runs() {
    block(async {
        let (_dir, store) = temp_store();
        let now = T0 + 100_000;
        populate(&store, now).await;
        let settings = CheckerSettings {
            policy: policy(),
            max_items: 100,
        };
        let clock = FixedClock::at_unix(now);
        let report = check(&store, &ListedFolders(&store), &settings, &clock)
            .await
            .unwrap();
        assert_report(&report);
        // A budget of one run per invocation: the window moves, every run is examined.
        let one = CheckerSettings {
            max_items: 1,
            ..settings
        };
        let mut stuck_runs = 0;
        for step in 0..3 {
            clock.set_unix(now + step * aws::checker::WINDOW_STEP_S);
            let r = check(&store, &ListedFolders(&store), &one, &clock)
                .await
                .unwrap();
            assert_eq!(r.runs_examined, 1);
            stuck_runs += r.stuck_runs();
        }
        assert_eq!(stuck_runs, 1);
    });
}

/// The same on S3 (moto): the run folders come from a delimited listing.
#[test]
fn the_checker_on_s3_lists_run_folders_with_a_delimiter() {
    block(async {
        let moto = testkit::moto::Moto::connect().await;
        let s3 = moto.s3.clone();
        let bucket = testkit::moto::unique("stuck");
        moto.create_bucket(&bucket).await;
        let store = aws::sdk::S3Store::new(s3.clone(), &bucket);
        let now = aws::checker::WINDOW_STEP_S * 1_000_000;
        populate(&store, now).await;
        let folders = S3Folders::new(s3, &bucket);
        use aws::checker::Folders;
        assert_eq!(
            folders.folders("runs/").await.unwrap(),
            ["complete-run", "fresh-run", "requests", "stuck-run"]
        );
        let settings = CheckerSettings {
            policy: policy(),
            max_items: 100,
        };
        let report = check(&store, &folders, &settings, &FixedClock::at_unix(now))
            .await
            .unwrap();
        assert_report(&report);
    });
}

/// docs/operate.md states every default bound, as the code computes it.
#[test]
fn the_docs_state_the_default_bounds() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operate.md")).unwrap();
    let p = policy();
    for bound in [
        p.shard_lost_after(p.max_receive_count),
        p.shard_lost_after(1),
        p.no_start_after(),
        p.no_claim_after(),
        p.claim_unanswered_after,
        p.lock_dead_after(),
        p.pending_too_old_after(),
        p.refit_lost_after(p.max_receive_count),
    ] {
        let s = bound.as_secs();
        let grouped = if s >= 1000 {
            format!("{},{:03} s", s / 1000, s % 1000)
        } else {
            format!("{s} s")
        };
        assert!(
            docs.contains(&grouped),
            "docs/operate.md does not state the bound {grouped}"
        );
    }
}

/// The reducer's refit handler leaves the records the refit rule reads: a start record per
/// delivery (with its receive count) and a failure record when the refit fails.
#[test]
fn a_refit_failing_on_its_last_delivery_leaves_the_records_status_reads() {
    block(async {
        let (_dir, store) = temp_store();
        let layout = CollectionLayout::new("f");
        // A pointer that does not parse: every refit of the collection fails.
        store
            .put(&layout.current(), "garbage".into())
            .await
            .unwrap();
        let reducer = pipeline::batch::reducer::Reducer::new(
            store.clone(),
            pipeline::batch::reducer::ReducerSettings::default(),
        );
        let refitter = aws::lambda::Refitter {
            store: store.clone(),
            inbox: "inbox/".into(),
            quiet_ms: 0,
            options: Default::default(),
        };
        let event: aws_lambda_events::event::sqs::SqsEvent =
            serde_json::from_value(serde_json::json!({"Records": [{
                "messageId": "m1",
                "receiptHandle": "r1",
                "body": "{\"collection\":\"f\"}",
                "attributes": {"ApproximateReceiveCount": "5"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
            }]}))
            .unwrap();
        let response =
            aws::lambda::handle_reducer_batch(&reducer, Some(&refitter), event, "t").await;
        assert_eq!(response.batch_item_failures.len(), 1, "the refit failed");
        let started: pipeline::continuous::collection::RefitStart = serde_json::from_slice(
            &store
                .get(&pipeline::continuous::collection::refit_started_key(
                    &layout,
                ))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(started.receive_count, 5);
        let failure: pipeline::continuous::collection::RefitFailure = serde_json::from_slice(
            &store
                .get(&pipeline::continuous::collection::refit_failure_key(
                    &layout,
                ))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(failure.receive_count, 5);
        assert!(!failure.error.is_empty());

        // Nothing published, a change waits: stuck once the last delivery's bound passed,
        // with the refit's error.
        store.delete(&layout.current()).await.unwrap();
        delta(&store, "f", started.at_unix).await;
        let bound = secs(policy().refit_lost_after(5));
        let s = collection_at(&store, "f", started.at_unix + bound).await;
        let stuck = s.stuck.unwrap();
        assert_eq!(stuck.kind, StuckKind::RefitLost);
        assert!(stuck.reason.contains(&failure.error), "{stuck:?}");
    });
}
