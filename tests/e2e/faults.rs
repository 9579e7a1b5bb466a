//! Exactly once under concurrency and faults. The handlers run over fault-injecting adapters
//! (`testkit::faults`) on the local store and on S3 (moto): crashes after every write or send
//! step, two distinguishable attempts at one shard interleaved at every step, 503 SlowDown on
//! a share of all calls, paginated listings, real deadlines, a lost reduce message. Every
//! scenario ends with outputs equal to a clean run (features bit-identical, PCA within 1e-6),
//! no image lost and none duplicated. Ack loss and duplicates: `ackloss.rs`; the reducer's
//! fencing and progress across invocations: `fencing.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws::retry::{RetryPolicy, Retrying};
use pipeline::batch::featurizer::{FeaturizerSettings, ShardFeaturizer, ShardOutcome};
use pipeline::batch::reducer::{ReduceOutcome, Reducer, ReducerSettings};
use pipeline::batch::splitter::{SplitOutcome, Splitter};
use pipeline::batch::status::{run_status_with, StallPolicy};
use pipeline::error::Error;
use pipeline::layout::RunLayout;
use pipeline::manifest::{
    DoneMarker, ImageError, ReduceMessage, RunOptions, RunRequest, ShardMessage,
};
use pipeline::ports::queue::InProcessQueue;
use pipeline::ports::store::{FsStore, ObjectStore};
use testkit::faults::{Faults, FaultyQueue, FaultyStore};

use crate::aws::{assert_same_outputs, datasets, local_reference, small_request, Reference, Stack};
use crate::common::*;

/// The scenarios' images (16, in 4 shards of 4), their request (k = 5) and the clean run.
pub(crate) fn setup() -> (Vec<(String, Vec<u8>)>, RunRequest, Reference) {
    let files = fruit_images(4, 4);
    let request = RunRequest {
        input_prefix: String::new(),
        ..small_request(4, 5)
    };
    let reference = local_reference(&files, &request);
    (files, request, reference)
}

/// One local "deployment": an input folder, an output folder and the two queues. Each
/// handler call gets its own fault plan over them.
pub(crate) struct Local {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    pub(crate) input: PathBuf,
    pub(crate) output: PathBuf,
    pub(crate) shards: InProcessQueue,
    pub(crate) reduces: InProcessQueue,
}

pub(crate) type Store = FaultyStore<FsStore>;

/// The featurizers' settings: two threads, no deadline margin.
fn featurizer_settings() -> FeaturizerSettings {
    FeaturizerSettings {
        worker_threads: 2,
        deadline_margin: Duration::ZERO,
        ..Default::default()
    }
}

impl Local {
    pub(crate) fn new(files: &[(String, Vec<u8>)]) -> Self {
        let (input, output) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_tree(input.path(), files);
        Self {
            input: std::fs::canonicalize(input.path()).unwrap(),
            output: output.path().to_path_buf(),
            _dirs: (input, output),
            shards: InProcessQueue::new(),
            reduces: InProcessQueue::new(),
        }
    }

    /// A copy of this deployment's state (output folder and queued messages).
    pub(crate) fn fork(&self) -> Self {
        let output = tempfile::tempdir().unwrap();
        copy_tree(&self.output, output.path());
        let forked = Self {
            input: self.input.clone(),
            output: output.path().to_path_buf(),
            _dirs: (tempfile::tempdir().unwrap(), output),
            shards: InProcessQueue::new(),
            reduces: InProcessQueue::new(),
        };
        for (from, to) in [
            (&self.shards, &forked.shards),
            (&self.reduces, &forked.reduces),
        ] {
            for message in from.messages() {
                to.push(message);
            }
        }
        forked
    }

    pub(crate) fn output_store(&self) -> FsStore {
        FsStore::new(&self.output)
    }

    pub(crate) fn splitter<'a>(
        &'a self,
        faults: &Faults,
    ) -> Splitter<Store, FaultyQueue<&'a InProcessQueue>, FaultyQueue<&'a InProcessQueue>> {
        Splitter::new(
            faults.store(FsStore::new(&self.input)),
            faults.store(self.output_store()),
            faults.queue(&self.shards),
            faults.queue(&self.reduces),
            RunOptions::default(),
            1280,
        )
        .with_model_sha256(model().sha256())
    }

    pub(crate) fn featurizer<'a>(
        &'a self,
        faults: &Faults,
    ) -> ShardFeaturizer<Store, FaultyQueue<&'a InProcessQueue>> {
        ShardFeaturizer::new(
            faults.store(FsStore::new(&self.input)),
            faults.store(self.output_store()),
            faults.queue(&self.reduces),
            model(),
            featurizer_settings(),
        )
    }

    /// A featurizer that makes seeded synthetic features (1280-d) instead of running the
    /// model: an attempt distinguishable from the model's.
    pub(crate) fn synthetic_featurizer<'a>(
        &'a self,
        faults: &Faults,
    ) -> ShardFeaturizer<Store, FaultyQueue<&'a InProcessQueue>> {
        ShardFeaturizer::synthetic(
            faults.store(FsStore::new(&self.input)),
            faults.store(self.output_store()),
            faults.queue(&self.reduces),
            1280,
            featurizer_settings(),
        )
    }

    pub(crate) fn reducer(&self, faults: &Faults, stale_after: Duration) -> Reducer<Store> {
        Reducer::new(
            faults.store(self.output_store()),
            ReducerSettings {
                lock_stale_after: stale_after,
                ..Default::default()
            },
        )
    }

    pub(crate) async fn split(
        &self,
        faults: &Faults,
        request: &RunRequest,
    ) -> pipeline::error::Result<SplitOutcome> {
        self.splitter(faults).handle(request).await
    }

    pub(crate) async fn featurize(
        &self,
        faults: &Faults,
        run_id: &str,
        shard: usize,
    ) -> pipeline::error::Result<ShardOutcome> {
        let message = ShardMessage {
            run_id: run_id.to_string(),
            shard,
        };
        self.featurizer(faults).process(&message, None, None).await
    }

    /// Like SQS and its event source mapping: every queued message is handled until it
    /// succeeds (a failed one is delivered again, at most `MAX_DELIVERIES` times). Any
    /// reduce lock left by an earlier handler is stale by now (its delivery is over).
    pub(crate) async fn drain(&self) {
        const MAX_DELIVERIES: usize = 5;
        let clean = Faults::new();
        let featurizer = self.featurizer(&clean);
        let mut failures = 0;
        while let Some(body) = self.shards.pop() {
            let message: ShardMessage = serde_json::from_str(&body).unwrap();
            if let Err(e) = featurizer.process(&message, None, None).await {
                failures += 1;
                assert!(failures < MAX_DELIVERIES, "shard keeps failing: {e}");
                self.shards.push(body);
            }
        }
        let reducer = self.reducer(&clean, Duration::ZERO);
        while let Some(body) = self.reduces.pop() {
            let message: ReduceMessage = serde_json::from_str(&body).unwrap();
            reducer.process(&message, "drain").await.unwrap();
        }
    }

    /// The outputs, checked against the clean run, and every image accounted for once.
    pub(crate) async fn assert_clean(&self, run_id: &str, reference: &Reference, what: &str) {
        let store = self.output_store();
        assert!(
            store
                .exists(&RunLayout::new(run_id).pca_success())
                .await
                .unwrap(),
            "{what}: the run did not complete"
        );
        let got = datasets(&store, run_id).await;
        assert_same_outputs(&got, reference);
        let errors: Vec<ImageError> =
            serde_json::from_slice(&store.get(&RunLayout::new(run_id).errors()).await.unwrap())
                .unwrap();
        let mut paths: Vec<&str> = got.0.iter().map(|r| r.path.as_str()).collect();
        paths.extend(errors.iter().map(|e| e.path.as_str()));
        let total = paths.len();
        paths.sort();
        paths.dedup();
        assert_eq!(
            paths.len(),
            total,
            "{what}: an image is in the outputs twice"
        );
        assert_eq!(total, reference.0.len(), "{what}: an image was lost");
    }
}

/// A shard's committed state: its published part, and its committed statistics and errors
/// (the bytes the reducer checks and fits).
pub(crate) fn committed_state(
    local: &Local,
    run_id: &str,
    shard: usize,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (part, stats, errors) = committed_state_staged(local, run_id, shard);
    (part.expect("the published part"), stats, errors)
}

/// [`committed_state`] before the part is necessarily published (it may be missing).
pub(crate) fn committed_state_staged(
    local: &Local,
    run_id: &str,
    shard: usize,
) -> (Option<Vec<u8>>, Vec<u8>, Vec<u8>) {
    let layout = RunLayout::new(run_id);
    let marker: pipeline::manifest::DoneMarker = serde_json::from_slice(
        &std::fs::read(local.output.join(layout.done_marker(shard))).expect("committed"),
    )
    .unwrap();
    let read = |key: String| std::fs::read(local.output.join(key)).unwrap();
    (
        std::fs::read(local.output.join(layout.results_part(shard))).ok(),
        read(layout.attempt_stats(shard, &marker.attempt)),
        read(layout.attempt_errors(shard, &marker.attempt)),
    )
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let target = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A deployment with the run split and every shard but the last featurized: the state in
/// which the last shard's featurizer commits, claims and sends the reduce.
pub(crate) async fn before_last_shard(
    files: &[(String, Vec<u8>)],
    request: &RunRequest,
) -> (Local, SplitOutcome) {
    let local = Local::new(files);
    let run = local.split(&Faults::new(), request).await.unwrap();
    while local.shards.pop().is_some() {}
    for shard in 0..run.shards - 1 {
        local
            .featurize(&Faults::new(), &run.run_id, shard)
            .await
            .unwrap();
    }
    (local, run)
}

/// The splitter: crash after each step, then the same request again (a resume). Returns
/// its number of steps.
async fn sweep_splitter(
    files: &[(String, Vec<u8>)],
    request: &RunRequest,
    reference: &Reference,
) -> usize {
    let clean = Faults::new();
    let probe = Local::new(files);
    probe.split(&clean, request).await.unwrap();
    let split_steps = clean.steps();
    assert!(
        split_steps >= 2,
        "manifest + shard messages: {:?}",
        clean.log()
    );
    for n in 0..split_steps {
        let local = Local::new(files);
        let faults = Faults::crash_after(n);
        assert!(
            local.split(&faults, request).await.is_err(),
            "splitter step {n}"
        );
        let run = local.split(&Faults::new(), request).await.unwrap();
        local.drain().await;
        local
            .assert_clean(
                &run.run_id,
                reference,
                &format!("splitter crash after step {n}"),
            )
            .await;
    }
    split_steps
}

/// The featurizer of the last shard (from `base`, every other shard featurized): attempt
/// objects, commit, publish, claim, send. Returns its number of steps.
async fn sweep_featurizer(base: &Local, run: &SplitOutcome, reference: &Reference) -> usize {
    let last = run.shards - 1;
    let clean = Faults::new();
    let probe = base.fork();
    let outcome = probe.featurize(&clean, &run.run_id, last).await.unwrap();
    assert!(outcome.sent_reduce);
    let featurize_steps = clean.steps();
    assert_eq!(
        featurize_steps,
        9,
        "attempt started, 3 attempt objects, commit, publish, the barrier's tree node over \
         shards 2-3, claim, send: {:?}",
        clean.log()
    );
    let want = committed_state(&probe, &run.run_id, last);
    for n in 0..featurize_steps {
        let local = base.fork();
        let faults = Faults::crash_after(n);
        let crashed = local.featurize(&faults, &run.run_id, last).await;
        assert!(crashed.is_err(), "featurizer step {n}: {crashed:?}");
        // SQS delivers the message again.
        local
            .featurize(&Faults::new(), &run.run_id, last)
            .await
            .unwrap();
        let what = format!("featurizer crash after step {n} ({})", clean.log()[n]);
        if n + 1 < featurize_steps {
            // Crashed before its send: the redelivery claims and sends the reduce.
            assert_eq!(local.reduces.len(), 1, "{what}: one reduce requested");
        }
        let (_, stats, errors) = committed_state_staged(&local, &run.run_id, last);
        assert!(
            (stats, errors) == (want.1.clone(), want.2.clone()),
            "{what}: committed"
        );
        local.drain().await;
        // A crash between the commit and the publication leaves the part to the reducer.
        let part = std::fs::read(
            local
                .output
                .join(RunLayout::new(&run.run_id).results_part(last)),
        )
        .unwrap();
        assert!(part == want.0, "{what}: published part");
        local.assert_clean(&run.run_id, reference, &what).await;
    }
    featurize_steps
}

/// No file under `dir` (or no `dir` at all).
fn no_files_under(dir: &Path) -> bool {
    !dir.exists()
        || walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_map(|e| e.ok())
            .all(|e| !e.file_type().is_file())
}

/// The reducer (from `ready`, the reduce message queued): crash after each write, then the
/// same message delivered again. Returns its number of steps and of crash points.
async fn sweep_reducer(ready: &Local, run: &SplitOutcome, reference: &Reference) -> (usize, usize) {
    let message: ReduceMessage = serde_json::from_str(&ready.reduces.pop().unwrap()).unwrap();
    let clean = Faults::new();
    let probe = ready.fork();
    let reduced = probe
        .reducer(&clean, Duration::from_secs(900))
        .process(&message, "m1")
        .await
        .unwrap();
    assert!(matches!(reduced, ReduceOutcome::Reduced(_)));
    let reduce_steps = clean.steps();
    assert!(reduce_steps >= 8, "{:?}", clean.log());
    // Every step up to `_SUCCESS` and the first after it; the deletes of staging after
    // it are all alike, so of those the first and the last.
    let success = clean
        .log()
        .iter()
        .position(|s| s.contains("Results_PCA/") && s.ends_with("_SUCCESS"))
        .expect("_SUCCESS written");
    let points: Vec<usize> = (0..reduce_steps)
        .filter(|&n| n <= success + 1 || n + 1 == reduce_steps)
        .collect();
    let layout = RunLayout::new(&run.run_id);
    for &n in &points {
        let local = ready.fork();
        let faults = Faults::crash_after(n);
        let crashed = local
            .reducer(&faults, Duration::from_secs(900))
            .process(&message, "m1")
            .await;
        assert!(crashed.is_err(), "reducer step {n}");
        // The message again, once the dead delivery's lock is stale (SQS redelivers after
        // the visibility timeout, which is longer).
        let retried = local
            .reducer(&Faults::new(), Duration::ZERO)
            .process(&message, "m1")
            .await
            .unwrap();
        assert!(
            matches!(
                retried,
                ReduceOutcome::Reduced(_) | ReduceOutcome::AlreadyReduced
            ),
            "step {n}"
        );
        assert!(
            !local.output.join(layout.staging_prefix()).exists()
                || no_files_under(&local.output.join("staging")),
            "step {n}: staging deleted after the retry"
        );
        assert!(
            no_files_under(
                &local
                    .output
                    .join(pipeline::batch::reducer::reduce_prefix(&layout))
            ),
            "step {n}: the reduce's staged outputs deleted after the retry"
        );
        local
            .assert_clean(
                &run.run_id,
                reference,
                &format!("reducer crash after step {n} ({})", clean.log()[n]),
            )
            .await;
    }
    (reduce_steps, points.len())
}

/// Scenario a: crash-point sweep of the splitter, the featurizer and the reducer. Each is
/// stopped after each of its write or send steps in turn, then its message is delivered
/// again (or the run resumed), and the run must end as a clean one.
#[test]
fn crash_point_sweep_of_every_handler_loses_and_duplicates_nothing() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let split_steps = sweep_splitter(&files, &request, &reference).await;
        let (base, run) = before_last_shard(&files, &request).await;
        let featurize_steps = sweep_featurizer(&base, &run, &reference).await;
        let ready = base.fork();
        ready
            .featurize(&Faults::new(), &run.run_id, run.shards - 1)
            .await
            .unwrap();
        let (reduce_steps, points) = sweep_reducer(&ready, &run, &reference).await;
        eprintln!(
            "crash-point sweep: splitter {split_steps} steps, featurizer {featurize_steps}, \
             reducer {reduce_steps} ({points} crash points): every crash recovered to the clean outputs"
        );
    });
}

/// Scenario b: two attempts at the same shard, the first paused before each of its steps
/// while the second runs up to each of its own, then both finish. The attempts are made
/// distinguishable: A runs the model, B seeded synthetic features of the same dimension, so
/// that a shard whose part, statistics and errors came from different attempts would show.
/// In every schedule exactly one attempt is committed, whole (its part, statistics and
/// errors, as a clean run of that attempt leaves them), the committing attempt is the one
/// that says so, and the reducer — which recomputes each shard's statistics from its
/// committed part — reduces it.
#[test]
fn two_attempts_at_one_shard_interleaved_at_every_step() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let (base, run) = before_last_shard_unbound(&files, &request).await;
        let last = run.shards - 1;
        let clean = Faults::new();
        let probe_a = base.fork();
        probe_a.featurize(&clean, &run.run_id, last).await.unwrap();
        let steps = clean.steps();
        let want_a = committed_state(&probe_a, &run.run_id, last);
        let probe_b = base.fork();
        let message = ShardMessage {
            run_id: run.run_id.clone(),
            shard: last,
        };
        probe_b
            .synthetic_featurizer(&Faults::new())
            .process(&message, None, None)
            .await
            .unwrap();
        let want_b = committed_state(&probe_b, &run.run_id, last);
        assert!(
            want_a.0 != want_b.0 && want_a.1 != want_b.1,
            "the two attempts are distinguishable (parts and statistics differ)"
        );
        let (mut schedules, mut won) = (0, [0, 0]);
        for a_pause in 0..=steps {
            for b_pause in 0..=steps {
                let local = base.fork();
                let (a, b) = (Faults::pause_before(a_pause), Faults::pause_before(b_pause));
                let run_id = run.run_id.clone();
                let (fa, fb) = (local.featurizer(&a), local.synthetic_featurizer(&b));
                let attempt_a = fa.process(&message, None, None);
                let attempt_b = fb.process(&message, None, None);
                tokio::pin!(attempt_a, attempt_b);
                // A runs until its pause point (or to the end).
                let mut a_result = None;
                tokio::select! {
                    r = &mut attempt_a => a_result = Some(r),
                    _ = a.wait_paused() => {}
                }
                // Then B, until its own pause point (or to the end).
                let mut b_result = None;
                tokio::select! {
                    r = &mut attempt_b => b_result = Some(r),
                    _ = b.wait_paused() => {}
                }
                // A finishes, then B.
                a.resume();
                let a_result = match a_result {
                    Some(r) => r,
                    None => attempt_a.await,
                };
                b.resume();
                let b_result = match b_result {
                    Some(r) => r,
                    None => attempt_b.await,
                };
                let (ra, rb) = (a_result.unwrap(), b_result.unwrap());
                let what = format!("A paused before step {a_pause}, B before {b_pause}");
                assert!(
                    ra.already_done != rb.already_done,
                    "{what}: exactly one attempt commits: {ra:?} {rb:?}"
                );
                let (winner, want) = if ra.already_done {
                    (1, &want_b)
                } else {
                    (0, &want_a)
                };
                won[winner] += 1;
                assert!(
                    committed_state(&local, &run_id, last) == *want,
                    "{what}: the committed shard is not the committing attempt's, whole"
                );
                assert!(
                    !local.reduces.is_empty(),
                    "{what}: the reduce was requested"
                );
                local.drain().await;
                let summary = crate::aws::summary_of(&local.output_store(), &run_id).await;
                assert_eq!(
                    (summary.status.as_str(), summary.rows, summary.errors),
                    ("succeeded", files.len(), 0),
                    "{what}"
                );
                if winner == 0 {
                    local.assert_clean(&run_id, &reference, &what).await;
                }
                schedules += 1;
            }
        }
        assert!(
            won[0] > 0 && won[1] > 0,
            "both attempts win some schedules: {won:?}"
        );
        eprintln!(
            "{schedules} interleavings of two distinguishable attempts (model won {}, synthetic \
             {}): each committed one attempt whole, and each reduced",
            won[0], won[1]
        );
    });
}

/// [`before_last_shard`] for a run that binds no model (so that a synthetic featurizer may
/// take its shards too: attempts that differ).
pub(crate) async fn before_last_shard_unbound(
    files: &[(String, Vec<u8>)],
    request: &RunRequest,
) -> (Local, SplitOutcome) {
    let local = Local::new(files);
    let clean = Faults::new();
    let run = Splitter::new(
        clean.store(FsStore::new(&local.input)),
        clean.store(local.output_store()),
        clean.queue(&local.shards),
        clean.queue(&local.reduces),
        RunOptions::default(),
        1280,
    )
    .handle(request)
    .await
    .unwrap();
    while local.shards.pop().is_some() {}
    for shard in 0..run.shards - 1 {
        local
            .featurize(&Faults::new(), &run.run_id, shard)
            .await
            .unwrap();
    }
    (local, run)
}

/// A deployment whose shards are all featurized, and the reduce message they sent.
pub(crate) async fn ready_to_reduce(
    files: &[(String, Vec<u8>)],
    request: &RunRequest,
) -> (Local, SplitOutcome, ReduceMessage) {
    let (base, run) = before_last_shard(files, request).await;
    base.featurize(&Faults::new(), &run.run_id, run.shards - 1)
        .await
        .unwrap();
    let message: ReduceMessage = serde_json::from_str(&base.reduces.pop().unwrap()).unwrap();
    (base, run, message)
}

/// Scenario e: a real deadline hit mid-shard stops the attempt before it writes anything;
/// the message is delivered again and the run completes.
#[test]
fn a_deadline_hit_mid_shard_writes_nothing_and_the_retry_completes() {
    let files = fruit_images(8, 8);
    let request = RunRequest {
        input_prefix: String::new(),
        ..small_request(64, 5)
    };
    let reference = local_reference(&files, &request);
    runtime().block_on(async {
        let local = Local::new(&files);
        let run = local.split(&Faults::new(), &request).await.unwrap();
        assert_eq!(run.shards, 1);
        let message: ShardMessage = serde_json::from_str(&local.shards.pop().unwrap()).unwrap();
        let faults = Faults::new();
        // 64 images take 110-450 ms on 2 threads (a release build on a fast x86 to a test
        // build on a slow one; 16 were done inside 40 ms on the fast one): the deadline
        // comes after a few of them.
        let deadline = Instant::now() + Duration::from_millis(40);
        let result = local
            .featurizer(&faults)
            .process(&message, Some(deadline), Some(1))
            .await;
        assert!(matches!(result, Err(Error::Deadline { .. })), "{result:?}");
        assert_eq!(
            faults.steps(),
            2,
            "only the attempt-started and failure records: {:?}",
            faults.log()
        );
        assert!(faults.log()[0].contains("started/shard-00000.json"));
        assert!(faults.log()[1].contains("failures/shard-00000.json"));
        let status = run_status_with(&local.output_store(), &run.run_id, StallPolicy::default())
            .await
            .unwrap();
        assert_eq!(status.failed.len(), 1);
        assert!(
            status.failed[0].error.contains("deadline"),
            "{:?}",
            status.failed
        );
        local.shards.push(serde_json::to_string(&message).unwrap());
        local.drain().await;
        local
            .assert_clean(&run.run_id, &reference, "deadline")
            .await;
    });
}

/// Scenario g: the reduce message is lost after the claim. `status` says the run is stuck
/// and why; `featurize resume --run ID` recovers it.
#[test]
fn a_reduce_message_lost_after_the_claim_is_reported_and_resumed() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let (local, run) = before_last_shard(&files, &request).await;
        let lost = Faults::drop_sends();
        let outcome = local
            .featurize(&lost, &run.run_id, run.shards - 1)
            .await
            .unwrap();
        assert!(
            outcome.sent_reduce && local.reduces.is_empty(),
            "the message is lost"
        );
        let policy = StallPolicy {
            claim_unanswered_after: Duration::ZERO,
            ..StallPolicy::default()
        };
        let status = run_status_with(&local.output_store(), &run.run_id, policy)
            .await
            .unwrap();
        assert_eq!(status.state(), "stuck");
        let stuck = status.stuck.unwrap();
        assert!(stuck.reason.contains("no reducer has started"), "{stuck:?}");
        assert!(
            format!("{} {}", stuck.reason, stuck.remedy).contains("featurize resume"),
            "{stuck:?}"
        );

        let featurize = env!("CARGO_BIN_EXE_featurize");
        let model_path = shared_dir().join("models/mobilenet_v2_features.onnx");
        let output = local.output.to_str().unwrap();
        let shown = std::process::Command::new(featurize)
            .args([
                "status",
                "--run",
                &run.run_id,
                "--output",
                output,
                "--stall-after",
                "0",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&shown.stdout);
        assert_eq!(shown.status.code(), Some(5), "stuck: {text}");
        assert!(
            text.contains(": stuck") && text.contains("stuck since"),
            "{text}"
        );

        let resumed = std::process::Command::new(featurize)
            .args([
                "resume",
                "--run",
                &run.run_id,
                "--output",
                output,
                "-j",
                "2",
            ])
            .arg("--input")
            .arg(&local.input)
            .arg("--model")
            .arg(&model_path)
            .output()
            .unwrap();
        assert!(
            resumed.status.success(),
            "{}{}",
            String::from_utf8_lossy(&resumed.stdout),
            String::from_utf8_lossy(&resumed.stderr)
        );
        local
            .assert_clean(&run.run_id, &reference, "lost reduce message")
            .await;
        let status = run_status_with(&local.output_store(), &run.run_id, policy)
            .await
            .unwrap();
        assert_eq!(status.state(), "complete");
    });
}

/// Failures sorted by whether a retry can help: a transient read error fails the shard
/// (retried, never an image error); a missing object is that image's error.
#[test]
fn transient_fetch_errors_fail_the_shard_and_missing_objects_are_image_errors() {
    let (files, request, reference) = setup();
    runtime().block_on(async {
        let local = Local::new(&files);
        let run = local.split(&Faults::new(), &request).await.unwrap();
        while local.shards.pop().is_some() {}
        // Every read of the input fails as S3 does under load.
        let flaky_input = Faults::transient(1.0, Duration::ZERO, 1);
        let clean = Faults::new();
        let featurizer = ShardFeaturizer::new(
            flaky_input.store(FsStore::new(&local.input)),
            clean.store(local.output_store()),
            clean.queue(&local.reduces),
            model(),
            FeaturizerSettings {
                worker_threads: 2,
                ..Default::default()
            },
        );
        let message = ShardMessage {
            run_id: run.run_id.clone(),
            shard: 0,
        };
        let failed = featurizer.process(&message, None, Some(1)).await;
        let error = failed.unwrap_err();
        assert!(error.to_string().contains("503 SlowDown"), "{error}");
        let layout = RunLayout::new(&run.run_id);
        assert!(
            !local
                .output_store()
                .exists(&layout.done_marker(0))
                .await
                .unwrap(),
            "nothing committed: the shard is retried, no image error is recorded"
        );
        // Retried with a healthy store: all shards, no errors.
        for shard in 0..run.shards {
            local
                .featurize(&Faults::new(), &run.run_id, shard)
                .await
                .unwrap();
        }
        local.drain().await;
        local
            .assert_clean(&run.run_id, &reference, "transient input errors")
            .await;

        // An image deleted after the listing is that image's error, and only that.
        let local = Local::new(&files);
        let run = local.split(&Faults::new(), &request).await.unwrap();
        std::fs::remove_file(local.input.join(&files[5].0)).unwrap();
        local.drain().await;
        let errors: Vec<ImageError> = serde_json::from_slice(
            &local
                .output_store()
                .get(&RunLayout::new(&run.run_id).errors())
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, files[5].0);
        assert!(errors[0].reason.contains("not found"), "{errors:?}");
    });
}

/// The reducer checks the run's invariants on the committed objects and refuses to fit
/// anything when one is broken.
#[test]
fn the_reducer_refuses_a_run_whose_invariants_are_broken() {
    let (files, request, _) = setup();
    runtime().block_on(async {
        let (base, run, message) = ready_to_reduce(&files, &request).await;
        let layout = RunLayout::new(&run.run_id);
        let marker = |local: &Local, shard: usize| -> pipeline::manifest::DoneMarker {
            serde_json::from_slice(
                &std::fs::read(local.output.join(layout.done_marker(shard))).unwrap(),
            )
            .unwrap()
        };
        // A done marker that also lists one of its rows as an image error.
        let local = base.fork();
        let mut m = marker(&local, 1);
        let rows = pipeline::parquet_io::read_rows(
            pipeline::parquet_io::Dataset::Features,
            std::fs::read(local.output.join(layout.attempt_part(1, &m.attempt)))
                .unwrap()
                .into(),
        )
        .unwrap();
        m.errors = 1;
        m.rows = rows.len() - 1;
        m.error_list = vec![ImageError {
            path: rows[0].path.clone(),
            label: rows[0].label.clone(),
            kind: engine::preprocess::ImageErrorKind::Decode,
            reason: "tampered".into(),
        }];
        std::fs::write(
            local.output.join(layout.done_marker(1)),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        let refused = local
            .reducer(&Faults::new(), Duration::from_secs(900))
            .process(&message, "m1")
            .await;
        assert!(matches!(refused, Err(Error::Invariant(_))), "{refused:?}");
        assert!(
            !local.output.join(layout.pca_model()).exists(),
            "nothing fitted"
        );

        // Statistics of another attempt than the rows.
        let local = base.fork();
        let stats_path = local
            .output
            .join(layout.attempt_stats(2, &marker(&local, 2).attempt));
        let stats =
            engine::stats::ShardStats::from_bytes(&std::fs::read(&stats_path).unwrap(), "x")
                .unwrap();
        let fewer = engine::stats::ShardStats {
            count: stats.count - 1,
            ..stats
        };
        std::fs::write(&stats_path, fewer.to_bytes()).unwrap();
        let refused = local
            .reducer(&Faults::new(), Duration::from_secs(900))
            .process(&message, "m1")
            .await;
        let error = refused.unwrap_err().to_string();
        assert!(
            error.contains("statistics of 3 rows for a part of 4"),
            "{error}"
        );
        let status = run_status_with(&local.output_store(), &run.run_id, StallPolicy::default())
            .await
            .unwrap();
        assert_eq!(status.state(), "stuck", "{status:?}");
        assert!(status.stuck.unwrap().reason.contains("invariant broken"));
    });
}

/// The run id covers the images' content and the model; a conflicting explicit run id is
/// refused; a featurizer with another model refuses the run's shards.
#[test]
fn run_ids_cover_content_options_and_model() {
    let files = fruit_images(2, 3);
    let request = RunRequest {
        input_prefix: String::new(),
        ..small_request(4, 2)
    };
    runtime().block_on(async {
        let local = Local::new(&files);
        let first = local.split(&Faults::new(), &request).await.unwrap();
        let again = local.split(&Faults::new(), &request).await.unwrap();
        assert_eq!(first.run_id, again.run_id);
        assert!(!again.created);
        // The same key with new content is a new run.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(local.input.join(&files[0].0), &files[1].1).unwrap();
        let changed = local.split(&Faults::new(), &request).await.unwrap();
        assert_ne!(changed.run_id, first.run_id, "overwritten image, new run");
        // An explicit run id with other options is refused.
        let named = RunRequest {
            run_id: Some("my-run".into()),
            ..request.clone()
        };
        local.split(&Faults::new(), &named).await.unwrap();
        let conflicting = RunRequest {
            k: Some(3),
            ..named.clone()
        };
        let refused = local.split(&Faults::new(), &conflicting).await.unwrap_err();
        assert!(
            refused.to_string().contains("already exists for other"),
            "{refused}"
        );
        // Another model: the splitter records it, the featurizer refuses.
        let other_model = Local::new(&files);
        let run = Splitter::new(
            FsStore::new(&other_model.input),
            other_model.output_store(),
            &other_model.shards,
            &other_model.reduces,
            RunOptions::default(),
            1280,
        )
        .with_model_sha256("0".repeat(64))
        .handle(&request)
        .await
        .unwrap();
        assert_ne!(run.run_id, first.run_id, "the model is part of the run id");
        let refused = other_model
            .featurize(&Faults::new(), &run.run_id, 0)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("model sha256"), "{refused}");
    });
}

/// Scenarios c and d on S3 (moto): 503 SlowDown with latency on a quarter of all S3 calls of
/// every handler (under the production retry layer), and listings of many pages. Outputs
/// equal the clean run; no transient failure becomes an image error.
#[test]
fn on_s3_slowdowns_and_paginated_listings_end_as_a_clean_run() {
    let (files, _, reference) = setup();
    let request = small_request(4, 5);
    runtime().block_on(async {
        let stack = Stack::with_max_receive("slowdown", 5).await;
        stack.upload("images/", &files).await;
        let faults = Faults::transient(0.25, Duration::from_millis(5), 42);
        let retry = RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
        };
        // Every handler's store: retries over injected faults over S3, 3 keys a list page.
        let store = || Retrying::new(faults.store(stack.store().with_page_size(3)), retry);
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
        assert_eq!(run.images, files.len(), "every page listed");
        stack.pump_shards(store(), 2).await;
        stack.pump_reduce(store()).await;
        assert!(
            faults.injected() > 20,
            "{} faults injected",
            faults.injected()
        );
        let summary = crate::aws::summary_of(&stack.store(), &run.run_id).await;
        assert_eq!(
            (summary.rows, summary.errors),
            (files.len(), 0),
            "no transient failure became an image error"
        );
        assert_same_outputs(&datasets(&stack.store(), &run.run_id).await, &reference);
        eprintln!(
            "S3 with 25 % 503 SlowDown + 5 ms latency, 3-key list pages: {} faults injected, \
             {} rows, 0 image errors, outputs equal the clean run",
            faults.injected(),
            summary.rows
        );
    });
}

/// Keys are taken as listed: `a//b.jpg` and `a/b.jpg` are two images, and a key under a
/// prefix with a leading slash is found.
#[test]
fn on_s3_keys_with_doubled_or_leading_slashes_are_distinct_images() {
    let images = fruit_images(1, 4);
    let files: Vec<(String, Vec<u8>)> = vec![
        ("odd/a/b.jpg".into(), images[0].1.clone()),
        ("odd/a//b.jpg".into(), images[1].1.clone()),
        // Two, since a run needs at least 2 images for a PCA.
        ("/lead/c.jpg".into(), images[2].1.clone()),
        ("/lead/d.jpg".into(), images[3].1.clone()),
    ];
    runtime().block_on(async {
        let stack = Stack::new("slashes").await;
        stack.upload("", &files).await;
        let splitter = stack.splitter();
        let run = splitter
            .handle(&RunRequest {
                input_prefix: "odd/".into(),
                ..small_request(4, 1)
            })
            .await
            .unwrap();
        assert_eq!(run.images, 2);
        stack.pump_shards(stack.store(), 1).await;
        stack.pump_reduce(stack.store()).await;
        let (features, _) = datasets(&stack.store(), &run.run_id).await;
        let paths: Vec<&str> = features.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, vec!["a//b.jpg", "a/b.jpg"]);
        assert_ne!(
            features[0].values, features[1].values,
            "two keys, two images"
        );
        let lead = splitter
            .handle(&RunRequest {
                input_prefix: "/lead/".into(),
                ..small_request(4, 1)
            })
            .await
            .unwrap();
        assert_eq!(lead.images, 2, "the keys with a leading slash are listed");
        stack.pump_shards(stack.store(), 1).await;
        let summary_rows = {
            stack.pump_reduce(stack.store()).await;
            crate::aws::summary_of(&stack.store(), &lead.run_id)
                .await
                .rows
        };
        assert_eq!(summary_rows, 2, "and fetched");
    });
}

/// The featurizer fetches while it infers (a bounded prefetch): with a slow store, the
/// inference threads wait only for the first images, not for the whole download, and the
/// outputs are those of the clean run.
#[test]
fn fetching_overlaps_inference_on_a_slow_store() {
    let files = fruit_images(4, 4);
    let request = RunRequest {
        input_prefix: String::new(),
        ..small_request(16, 5)
    };
    let reference = local_reference(&files, &request);
    runtime().block_on(async {
        let local = Local::new(&files);
        let run = local.split(&Faults::new(), &request).await.unwrap();
        assert_eq!(run.shards, 1);
        while local.shards.pop().is_some() {}
        // Every GET takes 40 ms and two are in flight: a download of the whole shard
        // before inference would leave the CPU idle for >= 8 x 40 ms.
        let latency = Duration::from_millis(40);
        let slow_input = Faults::slow(latency);
        let clean = Faults::new();
        let featurizer = ShardFeaturizer::new(
            slow_input.store(FsStore::new(&local.input)),
            clean.store(local.output_store()),
            clean.queue(&local.reduces),
            model(),
            FeaturizerSettings {
                worker_threads: 1,
                fetch_concurrency: 2,
                ..Default::default()
            },
        );
        let message = ShardMessage {
            run_id: run.run_id.clone(),
            shard: 0,
        };
        featurizer.process(&message, None, None).await.unwrap();
        let marker: DoneMarker = serde_json::from_slice(
            &local
                .output_store()
                .get(&RunLayout::new(&run.run_id).done_marker(0))
                .await
                .unwrap(),
        )
        .unwrap();
        let t = &marker.timings;
        assert!(t.fetch_s >= 8.0 * latency.as_secs_f64(), "{t:?}");
        assert!(
            t.fetch_wait_s >= latency.as_secs_f64() * 0.9,
            "the first image is waited for, and that wait is measured: {t:?}"
        );
        // Downloading the shard first, the thread would wait for all of it (fetch_wait_s =
        // fetch_s) and then infer; overlapped, at least half of the inference runs while the
        // download goes on, whichever of the two is the slower (this machine's inference or
        // the 40 ms GETs).
        assert!(
            t.fetch_wait_s + 0.5 * t.infer_s <= t.fetch_s,
            "inference overlaps the download: {t:?}"
        );
        local.drain().await;
        local
            .assert_clean(&run.run_id, &reference, "fetch overlapped with inference")
            .await;
        let summary: pipeline::batch::summary::Summary = serde_json::from_slice(
            &local
                .output_store()
                .get(&RunLayout::new(&run.run_id).summary())
                .await
                .unwrap(),
        )
        .unwrap();
        // The summary reports the shard's wait as a share of its wall time (how large it is
        // depends on this machine's inference against the 40 ms GETs: checked above).
        let share = summary.timings.fetch_wait_share;
        assert!(
            share > 0.0 && share < 1.0 && (share - t.fetch_wait_s / t.wall_s).abs() < 1e-9,
            "fetch wait share {share}, shard {t:?}"
        );
    });
}
