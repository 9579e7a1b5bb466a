//! Real fencing and a reducer that always makes progress: a reducer whose lock was taken
//! over makes no output visible (its outputs are staged; only its commit, on the lock's
//! entity tag as it wrote it, publishes them); two deliveries of one message exclude each
//! other; a reduce cut by its deadline, or killed, is resumed from its fit and projected
//! parts; statistics are checked against the committed parts (attempts made
//! distinguishable), and recomputed from them when `staging/` has expired; two local
//! commands on one output folder exclude each other, also after a SIGKILL.

use std::path::Path;
use std::time::{Duration, Instant};

use pipeline::batch::output_lock::OutputLock;
use pipeline::batch::reducer::{ReduceOutcome, Reducer, ReducerSettings};
use pipeline::error::Error;
use pipeline::layout::RunLayout;
use pipeline::manifest::{DoneMarker, ImageError, ReduceMessage, RunRequest, ShardMessage};
use pipeline::parquet_io::VectorRow;
use pipeline::ports::store::ObjectStore;
use testkit::faults::{Faults, Selector, WriteOp};

use crate::aws::{datasets, small_request};
use crate::common::*;
use crate::faults::{before_last_shard_unbound, ready_to_reduce, setup, Local};

const FRESH: Duration = Duration::from_secs(900);

/// The keys readers know: anything a reducer writing there would make visible.
fn visible(key: &str, run_id: &str) -> bool {
    let layout = RunLayout::new(run_id);
    key.starts_with("Results_PCA/")
        || key.starts_with("Results/")
        || [
            layout.summary(),
            layout.pca_model(),
            layout.errors(),
            layout.report(),
        ]
        .contains(&key.to_string())
}

/// The run's visible outputs in the output folder.
fn visible_outputs(local: &Local, run_id: &str) -> Vec<String> {
    let layout = RunLayout::new(run_id);
    let mut found: Vec<String> = walkdir::WalkDir::new(local.output.join(layout.pca_prefix()))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().display().to_string())
        .collect();
    for key in [
        layout.summary(),
        layout.pca_model(),
        layout.errors(),
        layout.report(),
        layout.results_success(),
    ] {
        if local.output.join(&key).exists() {
            found.push(key);
        }
    }
    found
}

/// The written keys of a fault log's entries (`op key`).
fn written(entries: &[String]) -> Vec<&str> {
    entries
        .iter()
        .filter_map(|e| {
            e.split_once(' ')
                .map(|(_, k)| k.trim_end_matches(" (ack lost)"))
        })
        .collect()
}

/// The lock's commit: the first replace of the lock by a reducer that created it, the
/// second by one that took it over.
fn before_commit(taken_over: bool) -> Faults {
    Faults::pause_before_write(
        Selector::ops(&[WriteOp::Replace])
            .on_key("_reduce.lock")
            .nth(usize::from(taken_over)),
    )
}

/// A reducer killed right after its first projected part; another delivery of the same
/// message waits while the lock is fresh, takes over once it is stale, and goes on from
/// the dead one's fit and part instead of starting from zero.
#[test]
fn a_reducer_killed_mid_projection_is_taken_over_and_goes_on_from_its_parts() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let (base, run, message) = ready_to_reduce(&files, &request).await;
        let clean = Faults::new();
        base.fork()
            .reducer(&clean, FRESH)
            .process(&message, "m1")
            .await
            .unwrap();
        let first_projection = clean
            .log()
            .iter()
            .position(|s| s.contains("/reduce/proj-"))
            .expect("a staged projection");
        let local = base.fork();
        let killed = Faults::crash_after(first_projection + 1);
        assert!(local
            .reducer(&killed, FRESH)
            .process(&message, "m1")
            .await
            .is_err());
        // The same message delivered again is another holder: it waits while the lock is
        // fresh...
        let early = local
            .reducer(&Faults::new(), FRESH)
            .process(&message, "m1")
            .await;
        assert!(
            early
                .as_ref()
                .is_err_and(|e| e.to_string().contains("being reduced")),
            "{early:?}"
        );
        // ...and takes over once it is stale, from where the dead one was.
        let taker = Faults::new();
        let taken = local
            .reducer(&taker, Duration::ZERO)
            .process(&message, "m1")
            .await
            .unwrap();
        assert!(matches!(taken, ReduceOutcome::Reduced(_)));
        let log = taker.log();
        let projected = log
            .iter()
            .filter(|s| s.starts_with("put ") && s.contains("/reduce/proj-"))
            .count();
        assert_eq!(
            projected,
            run.shards - 1,
            "the dead reducer's part is not projected again: {log:?}"
        );
        assert!(
            !log.iter()
                .any(|s| s.starts_with("put ") && s.contains("/reduce/fit-")),
            "its fit is reused: {log:?}"
        );
        local
            .assert_clean(&run.run_id, &reference, "reducer killed mid-projection")
            .await;
    });
}

/// Fencing: a reducer whose lock was taken over cannot make any output visible, whether it
/// is stopped before its commit (the taker holding the lock, not yet committed: nothing of
/// the run is visible at all) or before its projections (the taker finished: it writes only
/// staged objects, then stops).
#[test]
fn a_reducer_whose_lock_was_taken_over_makes_nothing_visible() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let (base, run, message) = ready_to_reduce(&files, &request).await;
        let run_id = run.run_id.clone();

        // m1 stops right before its commit; m2 takes over and stops before its own.
        let local = base.fork();
        let (p1, p2) = (before_commit(false), before_commit(true));
        let (m1, m2) = (
            local.reducer(&p1, FRESH),
            local.reducer(&p2, Duration::ZERO),
        );
        let (first, second) = (m1.process(&message, "m1"), m2.process(&message, "m2"));
        tokio::pin!(first, second);
        tokio::select! {
            r = &mut first => panic!("m1 finished before its commit: {r:?}"),
            _ = p1.wait_paused() => {}
        }
        tokio::select! {
            r = &mut second => panic!("m2 finished before its commit: {r:?}"),
            _ = p2.wait_paused() => {}
        }
        let at_pause = p1.log().len();
        p1.resume();
        let stale = first.await;
        assert!(matches!(stale, Err(Error::LostLock(_))), "{stale:?}");
        assert_eq!(
            visible_outputs(&local, &run_id),
            Vec::<String>::new(),
            "the stale reducer's outputs are staged, never visible"
        );
        let after: Vec<String> = p1.log()[at_pause..].to_vec();
        assert!(
            written(&after).iter().all(|k| !visible(k, &run_id)),
            "{after:?}"
        );
        p2.resume();
        let taker = second.await.unwrap();
        assert!(matches!(taker, ReduceOutcome::Reduced(_)));
        local
            .assert_clean(&run_id, &reference, "taken over before its commit")
            .await;

        // m1 stops before its first projection; m2 takes over and finishes; m1 goes on.
        let local = base.fork();
        let paused =
            Faults::pause_before_write(Selector::ops(&[WriteOp::Put]).on_key("/reduce/proj-"));
        let m1 = local.reducer(&paused, FRESH);
        let first = m1.process(&message, "m1");
        tokio::pin!(first);
        tokio::select! {
            r = &mut first => panic!("m1 finished before its pause point: {r:?}"),
            _ = paused.wait_paused() => {}
        }
        let at_pause = paused.log().len();
        let m2 = local
            .reducer(&Faults::new(), Duration::ZERO)
            .process(&message, "m2")
            .await
            .unwrap();
        assert!(matches!(m2, ReduceOutcome::Reduced(_)));
        let published = datasets(&local.output_store(), &run_id).await;
        paused.resume();
        let stale = first.await;
        assert!(matches!(stale, Err(Error::LostLock(_))), "{stale:?}");
        let after: Vec<String> = paused.log()[at_pause..].to_vec();
        assert!(
            written(&after).iter().all(|k| !visible(k, &run_id)),
            "the fenced reducer wrote a visible output: {after:?}"
        );
        assert!(
            datasets(&local.output_store(), &run_id).await == published,
            "the published outputs are the taker's"
        );
        local
            .assert_clean(&run_id, &reference, "taken over mid-projection")
            .await;
    });
}

/// Two deliveries of one reduce message (the same message id) hold the lock under tokens of
/// their own: while the first reduces, the second is refused, and writes nothing.
#[test]
fn duplicate_deliveries_of_one_reduce_message_exclude_each_other() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let (local, run, message) = ready_to_reduce(&files, &request).await;
        let paused = before_commit(false);
        let first = local.reducer(&paused, FRESH);
        let first = first.process(&message, "message-1");
        tokio::pin!(first);
        tokio::select! {
            r = &mut first => panic!("finished before its commit: {r:?}"),
            _ = paused.wait_paused() => {}
        }
        let duplicate = Faults::new();
        let refused = local
            .reducer(&duplicate, FRESH)
            .process(&message, "message-1")
            .await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("being reduced")),
            "{refused:?}"
        );
        assert!(
            duplicate.log().iter().all(|s| s.starts_with("create ")),
            "the duplicate only tried to create the lock: {:?}",
            duplicate.log()
        );
        paused.resume();
        assert!(matches!(first.await, Ok(ReduceOutcome::Reduced(_))));
        local
            .assert_clean(&run.run_id, &reference, "duplicate delivery")
            .await;
    });
}

/// A reduce too long for one invocation: with its deadline already near, each delivery
/// projects one part (at least one, so that it always progresses), lets go of the lock and
/// fails with a deadline; the next delivery takes over at once, reuses the fit and the
/// parts, and projects the next. The last one completes, with the clean outputs.
#[test]
fn a_reduce_cut_by_its_deadline_goes_on_from_its_projected_parts() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let (local, run, message) = ready_to_reduce(&files, &request).await;
        let settings = ReducerSettings {
            lock_stale_after: FRESH,
            deadline_margin: Duration::ZERO,
            ..ReducerSettings::default()
        };
        let mut invocations = 0;
        loop {
            invocations += 1;
            assert!(invocations <= run.shards, "no progress");
            let faults = Faults::new();
            let reducer = Reducer::new(faults.store(local.output_store()), settings.clone());
            let result = reducer
                .process_until(&message, "m1", Some(Instant::now()))
                .await;
            let log = faults.log();
            let count = |what: &str| {
                log.iter()
                    .filter(|s| s.starts_with("put ") && s.contains(what))
                    .count()
            };
            assert_eq!(
                count("/reduce/proj-"),
                1,
                "invocation {invocations}: {log:?}"
            );
            assert_eq!(
                count("/reduce/fit-"),
                usize::from(invocations == 1),
                "the fit is checkpointed once: {log:?}"
            );
            match result {
                Ok(ReduceOutcome::Reduced(_)) => break,
                Err(Error::Deadline { .. }) => {}
                other => panic!("invocation {invocations}: {other:?}"),
            }
        }
        assert_eq!(invocations, run.shards, "one part per invocation");
        local
            .assert_clean(&run.run_id, &reference, "reduce across invocations")
            .await;
    });
}

/// Attempts made distinguishable: the last shard featurized in one copy of the run by the
/// model, in another by seeded synthetic features. Each copy reduces. The model attempt's
/// committed part with the synthetic attempt's statistics (the same count: only the rows
/// differ) is refused by the reducer's recompute check, before anything is fitted.
#[test]
fn statistics_paired_with_another_attempts_part_are_refused() {
    let (files, request, _) = setup();
    runtime().block_on(async {
        let (base, run) = before_last_shard_unbound(&files, &request).await;
        let last = run.shards - 1;
        let layout = RunLayout::new(&run.run_id);
        let message = ShardMessage {
            run_id: run.run_id.clone(),
            shard: last,
        };
        let a = base.fork();
        a.featurize(&Faults::new(), &run.run_id, last)
            .await
            .unwrap();
        let b = base.fork();
        b.synthetic_featurizer(&Faults::new())
            .process(&message, None, None)
            .await
            .unwrap();
        let marker = |local: &Local| -> DoneMarker {
            serde_json::from_slice(
                &std::fs::read(local.output.join(layout.done_marker(last))).unwrap(),
            )
            .unwrap()
        };
        let (ma, mb) = (marker(&a), marker(&b));
        assert_ne!(ma.part_sha256, mb.part_sha256, "distinguishable attempts");
        for local in [a.fork(), b.fork()] {
            local.drain().await;
            let summary = crate::aws::summary_of(&local.output_store(), &run.run_id).await;
            assert_eq!(
                (summary.status.as_str(), summary.rows),
                ("succeeded", files.len())
            );
        }
        std::fs::copy(
            b.output.join(layout.attempt_stats(last, &mb.attempt)),
            a.output.join(layout.attempt_stats(last, &ma.attempt)),
        )
        .unwrap();
        let reduce: ReduceMessage = serde_json::from_str(&a.reduces.pop().unwrap()).unwrap();
        let refused = a
            .reducer(&Faults::new(), FRESH)
            .process(&reduce, "m1")
            .await;
        let Err(Error::Invariant(why)) = &refused else {
            panic!("{refused:?}")
        };
        assert!(why.contains("another attempt"), "{why}");
        assert!(why.contains(&format!("shard {last}")), "{why}");
        assert!(
            !a.output.join(layout.pca_model()).exists(),
            "nothing fitted"
        );
        assert!(
            !walkdir::WalkDir::new(a.output.join("runs"))
                .into_iter()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("fit-")),
            "no fit checkpoint"
        );
    });
}

/// A committed shard does not depend on `staging/`: with the whole of it gone (the lifecycle
/// rule expired it), the reducer takes each shard's error list from its done marker and
/// recomputes its statistics from its committed part — the outputs are bit-identical to a
/// reduce with `staging/` intact.
#[test]
fn a_committed_shard_survives_the_expiry_of_staging() {
    let mut files = fruit_images(4, 4);
    files.push(("Broken/not-an-image.jpg".into(), b"not a jpeg".to_vec()));
    let request = RunRequest {
        input_prefix: String::new(),
        max_error_rate: Some(0.5),
        ..small_request(4, 5)
    };
    runtime().block_on(async {
        let (base, run, message) = ready_to_reduce(&files, &request).await;
        let (message, run) = (&message, &run);
        let reduced = |local: Local| async move {
            let outcome = local
                .reducer(&Faults::new(), FRESH)
                .process(message, "m1")
                .await
                .unwrap();
            assert!(matches!(outcome, ReduceOutcome::Reduced(_)), "{outcome:?}");
            let store = local.output_store();
            let layout = RunLayout::new(&run.run_id);
            let errors: Vec<ImageError> =
                serde_json::from_slice(&store.get(&layout.errors()).await.unwrap()).unwrap();
            (datasets(&store, &run.run_id).await, errors, local)
        };
        let ((features, pca), errors, _intact) = reduced(base.fork()).await;
        let expired = base.fork();
        std::fs::remove_dir_all(expired.output.join("staging")).unwrap();
        let ((features2, pca2), errors2, _expired) = reduced(expired).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors2, errors, "the error list, from the done markers");
        assert_eq!(features2.len(), files.len() - 1);
        let same = |a: &[VectorRow], b: &[VectorRow]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.path == y.path && x.values == y.values)
        };
        assert!(same(&features2, &features), "features");
        assert!(same(&pca2, &pca), "PCA bit-identical");
    });
}

/// Runs the CLI; returns (exit code, stdout + stderr).
fn featurize(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `run`, `resume` and a local `refit` on an output folder another command holds are
/// refused at once, with who holds it; once it lets go, a run goes through.
#[test]
fn two_local_commands_on_one_output_folder_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    write_tree(&input, &fruit_images(2, 2));
    let collection = dir.path().join("watched/c");
    write_tree(&collection, &fruit_images(1, 2));
    let model = model_path();
    let (i, o, m, c) = (
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        model.to_str().unwrap(),
        collection.to_str().unwrap(),
    );
    let held = OutputLock::acquire(&output, "featurize watch (a test)").unwrap();
    for args in [
        vec![
            "run", "--input", i, "--output", o, "--model", m, "-q", "-j", "2",
        ],
        vec!["resume", "--run", "run-x", "--output", o, "--model", m],
        vec!["refit", "--collection", "c", "--output", o, "--input", c],
    ] {
        let (code, text) = featurize(&args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(
            text.contains("in use by another featurize command")
                && text.contains("featurize watch (a test)"),
            "{args:?}: {text}"
        );
    }
    drop(held);
    let (code, text) = featurize(&[
        "run", "--input", i, "--output", o, "--model", m, "-q", "-j", "2",
    ]);
    assert_eq!(code, Some(0), "{text}");
}

/// The exclusion survives SIGKILL: a run killed while it holds the folder leaves no lock
/// behind (the kernel drops it with the process); the next run takes the folder at once and
/// completes the killed run.
#[test]
fn a_killed_run_leaves_no_lock_behind() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    write_tree(&input, &fruit_images(8, 8));
    let model = model_path();
    let args = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "-q",
        "-j",
        "1",
    ];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock_file = output.join(pipeline::batch::output_lock::LOCK_FILE);
    let holder = format!("pid {}", child.id());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&lock_file).is_ok_and(|t| t.contains(&holder)) {
        assert!(Instant::now() < deadline, "the run never took the folder");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "killed while holding the folder");
    let taken = OutputLock::acquire(&output, "after the kill");
    assert!(taken.is_ok(), "{taken:?}");
    drop(taken);
    let (code, text) = featurize(&args);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("succeeded") && text.contains("rows 64"),
        "{text}"
    );
    assert!(Path::new(&output).join("Results_PCA").is_dir());
}

/// On S3 (moto), where `If-Match` is S3's: m1 stops right before its commit, m2 takes the
/// lock over and stops before its own; m1's commit gets 412 (nothing of the run becomes
/// visible). m3 reads the lock m2 holds and stops before its takeover; m2 commits and
/// publishes; m3's takeover gets 412, and reading the lock back it finds the commit: the run
/// is reduced, and m3 changes nothing.
#[test]
fn on_s3_a_reducer_whose_lock_was_taken_over_cannot_commit() {
    let (files, _, reference) = setup();
    let request = small_request(4, 5);
    runtime().block_on(async {
        let stack = crate::aws::Stack::new("fence").await;
        stack.upload("images/", &files).await;
        let run = stack.splitter().handle(&request).await.unwrap();
        stack.pump_shards(stack.store(), 2).await;
        let received = stack.receive(&stack.reduce_queue, 1).await;
        let message: ReduceMessage = serde_json::from_str(received[0].body().unwrap()).unwrap();
        let reducer = |faults: &Faults, stale: Duration| {
            Reducer::new(
                faults.store(stack.store()),
                ReducerSettings {
                    lock_stale_after: stale,
                    ..ReducerSettings::default()
                },
            )
        };
        let (p1, p2) = (before_commit(false), before_commit(true));
        let p3 =
            Faults::pause_before_write(Selector::ops(&[WriteOp::Replace]).on_key("_reduce.lock"));
        let (m1, m2, m3) = (
            reducer(&p1, FRESH),
            reducer(&p2, Duration::ZERO),
            reducer(&p3, Duration::ZERO),
        );
        let (first, second, third) = (
            m1.process(&message, "m1"),
            m2.process(&message, "m2"),
            m3.process(&message, "m3"),
        );
        tokio::pin!(first, second, third);
        tokio::select! {
            r = &mut first => panic!("m1 finished before its commit: {r:?}"),
            _ = p1.wait_paused() => {}
        }
        tokio::select! {
            r = &mut second => panic!("m2 finished before its commit: {r:?}"),
            _ = p2.wait_paused() => {}
        }
        p1.resume();
        let stale = first.await;
        assert!(matches!(stale, Err(Error::LostLock(_))), "{stale:?}");
        let layout = RunLayout::new(&run.run_id);
        let store = stack.store();
        assert!(store.list(&layout.pca_prefix()).await.unwrap().is_empty());
        for key in [layout.summary(), layout.pca_model(), layout.errors()] {
            assert!(!store.exists(&key).await.unwrap(), "{key} is visible");
        }
        tokio::select! {
            r = &mut third => panic!("m3 finished before its takeover: {r:?}"),
            _ = p3.wait_paused() => {}
        }
        p2.resume();
        assert!(matches!(second.await, Ok(ReduceOutcome::Reduced(_))));
        let published = datasets(&store, &run.run_id).await;
        p3.resume();
        let late = third.await;
        assert!(
            matches!(
                late,
                Ok(ReduceOutcome::Reduced(_) | ReduceOutcome::AlreadyReduced)
            ),
            "m3 finds the commit (published, or being published): {late:?}"
        );
        assert!(datasets(&store, &run.run_id).await == published);
        crate::aws::assert_same_outputs(&published, &reference);
    });
}
