//! Ambiguous outcomes: a write that took effect while its caller saw an error (ack loss: S3
//! applied the request and the response was lost) and a write applied twice (a retried
//! request whose first copy had landed). Each handler — splitter, the last shard's
//! featurizer, the reducer — is hit at every one of its writes in turn, on the local store;
//! on S3 (moto) every conditional write of a whole run loses its first answer, under the
//! production retry layer. Every scenario ends as a clean run: every image once, in
//! `Results_PCA` or the error list, outputs equal to the clean run's.

use std::time::Duration;

use aws::retry::{RetryPolicy, Retrying};
use pipeline::batch::featurizer::{FeaturizerSettings, ShardFeaturizer};
use pipeline::batch::reducer::{ReduceOutcome, Reducer, ReducerSettings};
use pipeline::batch::splitter::Splitter;
use pipeline::error::Error;
use pipeline::layout::RunLayout;
use pipeline::manifest::{ReduceMessage, RunOptions, RunRequest, ShardMessage};
use pipeline::ports::store::{FsStore, ObjectStore};
use testkit::faults::{Faults, Selector, WriteOp};

use crate::aws::{assert_same_outputs, datasets, small_request, Reference, Stack};
use crate::common::*;
use crate::faults::{
    before_last_shard, committed_state, committed_state_staged, setup, Local, Store,
};

/// The store writes (sends are not retried by the store's retry layer).
const STORE_WRITES: [WriteOp; 4] = [
    WriteOp::Put,
    WriteOp::Create,
    WriteOp::Replace,
    WriteOp::Delete,
];

/// A retry layer as production's, with short delays.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

/// The faults of one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The write at the step is applied, its caller sees a 504; no retry layer.
    AckLoss,
    /// The same, under the retry layer: the retry finds the write done.
    AckLossRetried,
    /// The write (or send) at the step is applied twice; the caller gets the second answer.
    Duplicate,
}

impl Mode {
    fn faults(self, step: usize) -> Faults {
        match self {
            Mode::AckLoss | Mode::AckLossRetried => {
                Faults::ack_loss(Selector::ops(&STORE_WRITES).at_step(step))
            }
            Mode::Duplicate => Faults::duplicate_apply(Selector::every_write().at_step(step)),
        }
    }

    /// Whether the handler must succeed at its first delivery: every ambiguous answer is
    /// read back (or, without a retry layer, a lost answer surfaces as an error).
    fn must_succeed(self) -> bool {
        self != Mode::AckLoss
    }

    /// Whether the step logged as `entry` is worth a scenario in this mode: under the retry
    /// layer only the conditional writes (a plain write retried is the same write).
    fn hits(self, entry: &str) -> bool {
        self != Mode::AckLossRetried
            || entry.starts_with("create ")
            || entry.starts_with("replace ")
    }
}

/// A step's kind: its log entry with ids and numbers blanked, so that the writes of the four
/// parts, or the deletes of staging, count as one kind.
fn kind(entry: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in entry.chars().chain(std::iter::once('/')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() >= 4 || run.chars().all(|c| c.is_ascii_digit()) && !run.is_empty() {
            out.push('#');
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out
}

/// The steps of a handler's log worth a scenario: the first of each kind, and the last.
fn points(log: &[String], until: usize) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    (0..log.len())
        .filter(|&n| (n <= until && seen.insert(kind(&log[n]))) || n + 1 == log.len())
        .collect()
}

/// The stores of a handler in `mode`: the faulty store, under the retry layer or not.
enum Stores {
    Raw,
    Retried,
}

impl Stores {
    fn of(mode: Mode) -> Self {
        if mode == Mode::AckLossRetried {
            Stores::Retried
        } else {
            Stores::Raw
        }
    }
}

type Retried = Retrying<Store>;

fn retried(faults: &Faults, root: &std::path::Path) -> Retried {
    Retrying::new(faults.store(FsStore::new(root)), quick_retries())
}

async fn split(local: &Local, faults: &Faults, mode: Mode, request: &RunRequest) -> bool {
    match Stores::of(mode) {
        Stores::Raw => local.split(faults, request).await.is_ok(),
        Stores::Retried => Splitter::new(
            retried(faults, &local.input),
            retried(faults, &local.output),
            faults.queue(&local.shards),
            faults.queue(&local.reduces),
            RunOptions::default(),
            1280,
        )
        .with_model_sha256(model().sha256())
        .handle(request)
        .await
        .is_ok(),
    }
}

async fn featurize(local: &Local, faults: &Faults, mode: Mode, run_id: &str, shard: usize) -> bool {
    match Stores::of(mode) {
        Stores::Raw => local.featurize(faults, run_id, shard).await.is_ok(),
        Stores::Retried => {
            let message = ShardMessage {
                run_id: run_id.to_string(),
                shard,
            };
            ShardFeaturizer::new(
                retried(faults, &local.input),
                retried(faults, &local.output),
                faults.queue(&local.reduces),
                model(),
                FeaturizerSettings {
                    worker_threads: 2,
                    deadline_margin: Duration::ZERO,
                    ..Default::default()
                },
            )
            .process(&message, None, None)
            .await
            .is_ok()
        }
    }
}

async fn reduce(
    local: &Local,
    faults: &Faults,
    mode: Mode,
    message: &ReduceMessage,
) -> pipeline::error::Result<ReduceOutcome> {
    match Stores::of(mode) {
        Stores::Raw => {
            local
                .reducer(faults, Duration::from_secs(900))
                .process(message, "m1")
                .await
        }
        Stores::Retried => {
            Reducer::new(retried(faults, &local.output), ReducerSettings::default())
                .process(message, "m1")
                .await
        }
    }
}

const MODES: [Mode; 3] = [Mode::AckLoss, Mode::AckLossRetried, Mode::Duplicate];

/// Every write of the splitter, the last shard's featurizer and the reducer, in turn (one
/// of each kind: the four parts' writes are one kind), loses its answer (without the retry
/// layer; with it, every conditional write) or is applied twice. Under the retry layer,
/// and with duplicates, the handler succeeds at its first delivery: every conditional write
/// that answers "exists" / "changed" is read back and found to be its own (the request
/// binding, the manifest, the done marker, the claim, the reducer's lock and commit).
/// Without it, the error fails the delivery and the next one completes. Always: the run ends
/// clean, no row lost or duplicated, the committed shard the one a clean attempt commits.
#[test]
fn ack_loss_and_duplicates_at_every_write_of_every_handler_end_as_a_clean_run() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let (split_steps, split_scenarios) = splitter_scenarios(&files, &request, &reference).await;
        let (base, run) = before_last_shard(&files, &request).await;
        let (featurize_steps, featurize_scenarios) =
            featurizer_scenarios(&base, &run.run_id, run.shards - 1, &reference).await;
        let (points, reduce_scenarios) =
            reducer_scenarios(&base, &run.run_id, run.shards - 1, &reference).await;
        let scenarios = split_scenarios + featurize_scenarios + reduce_scenarios;
        eprintln!(
            "ack loss (with and without retries) and duplicate apply at every write: splitter \
             {split_steps} steps, featurizer {featurize_steps}, reducer {points} points; \
             {scenarios} scenarios, all clean"
        );
    });
}

/// The splitter's scenarios: each mode at every kind of its writes, then the request again
/// (a fresh delivery) and the run to its end. Returns its steps and the scenarios run.
async fn splitter_scenarios(
    files: &[(String, Vec<u8>)],
    request: &RunRequest,
    reference: &Reference,
) -> (usize, usize) {
    let mut scenarios = 0;
    let probe = Faults::new();
    Local::new(files).split(&probe, request).await.unwrap();
    let split_steps = probe.steps();
    let log = probe.log();
    for mode in MODES {
        for n in points(&log, log.len()) {
            if !mode.hits(&log[n]) {
                continue;
            }
            let what = format!("splitter, {mode:?} at step {n} ({})", log[n]);
            let local = Local::new(files);
            let ok = split(&local, &mode.faults(n), mode, request).await;
            assert!(ok || !mode.must_succeed(), "{what}: failed");
            let run = local.split(&Faults::new(), request).await.unwrap();
            local.drain().await;
            local.assert_clean(&run.run_id, reference, &what).await;
            scenarios += 1;
        }
    }
    (split_steps, scenarios)
}

/// The last shard's featurizer's scenarios, from `base` (every other shard done): each mode
/// at every kind of its writes, the message again if the delivery failed; the shard commits
/// what a clean attempt commits. Returns its steps and the scenarios run.
async fn featurizer_scenarios(
    base: &Local,
    run_id: &str,
    last: usize,
    reference: &Reference,
) -> (usize, usize) {
    let mut scenarios = 0;
    let probe = Faults::new();
    let probed = base.fork();
    probed.featurize(&probe, run_id, last).await.unwrap();
    let want = committed_state(&probed, run_id, last);
    let featurize_steps = probe.steps();
    let log = probe.log();
    for mode in MODES {
        for n in points(&log, log.len()) {
            if !mode.hits(&log[n]) {
                continue;
            }
            let what = format!("featurizer, {mode:?} at step {n} ({})", log[n]);
            let local = base.fork();
            let ok = featurize(&local, &mode.faults(n), mode, run_id, last).await;
            assert!(ok || !mode.must_succeed(), "{what}: failed");
            if !ok {
                // SQS delivers the message again.
                local.featurize(&Faults::new(), run_id, last).await.unwrap();
            }
            let (_, stats, errors) = committed_state_staged(&local, run_id, last);
            assert!(
                (stats, errors) == (want.1.clone(), want.2.clone()),
                "{what}: committed"
            );
            local.drain().await;
            let part = std::fs::read(local.output.join(RunLayout::new(run_id).results_part(last)))
                .unwrap();
            assert!(part == want.0, "{what}: published part");
            local.assert_clean(run_id, reference, &what).await;
            scenarios += 1;
        }
    }
    (featurize_steps, scenarios)
}

/// The reducer's scenarios, once the last shard of `base` is featurized: each mode at every
/// kind of step up to `_SUCCESS` and the first after it, and the last; the message again if
/// the delivery failed. Returns the points hit and the scenarios run.
async fn reducer_scenarios(
    base: &Local,
    run_id: &str,
    last: usize,
    reference: &Reference,
) -> (usize, usize) {
    let mut scenarios = 0;
    let ready = base.fork();
    ready.featurize(&Faults::new(), run_id, last).await.unwrap();
    let message: ReduceMessage = serde_json::from_str(&ready.reduces.pop().unwrap()).unwrap();
    let probe = Faults::new();
    ready
        .fork()
        .reducer(&probe, Duration::from_secs(900))
        .process(&message, "m1")
        .await
        .unwrap();
    let log = probe.log();
    let success = log
        .iter()
        .position(|s| s.contains("Results_PCA/") && s.ends_with("_SUCCESS"))
        .expect("_SUCCESS written");
    let points = points(&log, success + 1);
    for mode in MODES {
        for &n in &points {
            if !mode.hits(&log[n]) {
                continue;
            }
            let what = format!("reducer, {mode:?} at step {n} ({})", log[n]);
            let local = ready.fork();
            let first = reduce(&local, &mode.faults(n), mode, &message).await;
            assert!(
                first.is_ok() || !mode.must_succeed(),
                "{what}: failed: {first:?}"
            );
            if let Err(e) = &first {
                assert!(!matches!(e, Error::Invariant(_)), "{what}: {e}");
                // The message again (the failed delivery let go of its lock).
                let retried = local
                    .reducer(&Faults::new(), Duration::from_secs(900))
                    .process(&message, "m1")
                    .await
                    .unwrap_or_else(|e| panic!("{what}: the retry failed: {e}"));
                assert!(
                    matches!(
                        retried,
                        ReduceOutcome::Reduced(_) | ReduceOutcome::AlreadyReduced
                    ),
                    "{what}"
                );
            }
            local.assert_clean(run_id, reference, &what).await;
            scenarios += 1;
        }
    }
    (points.len(), scenarios)
}

/// On S3 (moto), a whole run under the production retry layer in which every conditional
/// write loses its first answer (the request binding and the manifest, every done marker,
/// the claim, the reducer's lock and commit): each retry gets 412 from S3's
/// `If-None-Match` / `If-Match` and reads back its own write. Then the same run with every
/// write applied twice. Both end equal to the clean run.
#[test]
fn on_s3_every_conditional_write_losing_its_answer_ends_as_a_clean_run() {
    let (files, _, reference) = setup();
    let request = small_request(4, 5);
    runtime().block_on(async {
        for (name, faults) in [
            (
                "acks",
                Faults::ack_loss(Selector::conditional().once_per_request()),
            ),
            ("dups", Faults::duplicate_apply(Selector::every_write())),
        ] {
            let stack = Stack::with_max_receive(name, 5).await;
            stack.upload("images/", &files).await;
            let store = || Retrying::new(faults.store(stack.store()), quick_retries());
            let splitter = Splitter::new(
                store(),
                store(),
                aws::sdk::SqsQueue::new(stack.sqs.clone(), &stack.shard_queue),
                aws::sdk::SqsQueue::new(stack.sqs.clone(), &stack.reduce_queue),
                RunOptions::default(),
                1280,
            )
            .with_input_bucket(&stack.bucket)
            .with_model_sha256(model().sha256());
            let run = splitter.handle(&request).await.unwrap();
            let delivered = stack.pump_shards(store(), 2).await;
            assert_eq!(
                delivered, run.shards,
                "{name}: every shard at its first delivery"
            );
            assert_eq!(stack.pump_reduce(store()).await, 1, "{name}: one reduce");
            let (rows, pca) = datasets(&stack.store(), &run.run_id).await;
            assert_same_outputs(&(rows, pca), &reference);
            let summary = crate::aws::summary_of(&stack.store(), &run.run_id).await;
            assert_eq!((summary.rows, summary.errors), (files.len(), 0), "{name}");
            // The manifest, each done marker, the claim, the reducer's lock and its commit.
            let conditional = 1 + run.shards + 1 + 2;
            match name {
                "acks" => assert!(
                    faults.acks_lost() >= conditional,
                    "{} answers lost, {conditional} conditional writes at least",
                    faults.acks_lost()
                ),
                _ => assert!(faults.duplicated() > 20, "{}", faults.duplicated()),
            }
            assert!(
                !stack
                    .store()
                    .exists(&format!(
                        "{}outputs.json",
                        pipeline::batch::reducer::generation_prefix(
                            &RunLayout::new(&run.run_id),
                            1
                        )
                    ))
                    .await
                    .unwrap(),
                "{name}: the staged outputs are cleaned up"
            );
            eprintln!(
                "S3 {name}: {} answers lost, {} writes applied twice; outputs equal the clean run",
                faults.acks_lost(),
                faults.duplicated()
            );
        }
    });
}
