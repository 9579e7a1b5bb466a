//! The checker function's role, as `template.yaml` declares it, against what the checker
//! does on a test stack (moto): a scan that finds a stuck run of each kind the scenario
//! makes, skips a complete one and reads a collection, then a scheduled reconcile that
//! repairs a missed inbox object through the ingest and refit queues. Every call is checked
//! against the role; then each Allow statement, and each action and resource of a
//! multi-item one, must be needed by some call (least privilege).

use std::sync::Arc;

use aws::checker::{check, reconcile_collections, CheckerSettings, ListedFolders};
use aws::sdk::{S3Store, SqsQueue};
use pipeline::batch::attempts::{started_key, ShardStart};
use pipeline::batch::featurizer::ShardFailure;
use pipeline::batch::listing::ImageFilter;
use pipeline::batch::splitter::SplitOutcome;
use pipeline::continuous::reconcile::QueueRepair;
use pipeline::layout::RunLayout;
use pipeline::ports::store::{Bytes, ObjectStore};
use pipeline::stuck::{StallPolicy, StuckKind, SystemClock};
use testkit::iam::{CheckedQueue, CheckedStore, Effect, Policy, Role};

use super::{request, Created, Stack, Template, ACCOUNT, REGION};
use crate::common::*;

/// The checker's role on `stack` (the template resolved for the stack's names and queues).
fn checker_role(stack: &Stack) -> Arc<Role> {
    let name = stack
        .bucket
        .strip_suffix(&format!("-data-{REGION}-{ACCOUNT}"))
        .expect("the stack's bucket name");
    let mut t = Template::load(name);
    for (id, queue) in [
        ("IngestQueue", &stack.ingest_queue),
        ("RefitQueue", &stack.refit_queue),
    ] {
        t.resources.insert(
            id.to_string(),
            Created {
                reference: queue.url.clone(),
                arn: queue.arn.clone(),
            },
        );
    }
    let id = t.function("checker");
    Role::new("checker", t.role_policy(&id))
}

async fn put_json<T: serde::Serialize>(stack: &Stack, key: &str, value: &T) {
    stack
        .store()
        .put(key, serde_json::to_vec(value).unwrap().into())
        .await
        .unwrap();
}

/// Runs in three states and a collection with an object its notification missed; the
/// checker scans them and reconciles the collection. Returns the checker's role.
async fn scenario_checker() -> Arc<Role> {
    let stack = Stack::new().await;
    let role = checker_role(&stack);
    stack.upload_images().await;
    let (lost, unreduced) = runs_in_three_states(&stack).await;
    collection_with_a_missed_image(&stack).await;

    let store = CheckedStore::new(stack.store(), role.clone(), &stack.bucket_arn);
    scan_finds_the_stuck_runs(&store, &lost, &unreduced).await;
    reconcile_repairs_the_missed_image(&stack, &role, &store).await;

    let denials: Vec<String> = role.denials().iter().map(|d| d.to_string()).collect();
    assert!(
        denials.is_empty(),
        "the checker's role refuses calls it makes:\n  {}",
        denials.join("\n  ")
    );
    role
}

/// A run whose shard messages were lost (one shard's delivery died, one failed with a
/// record), a run whose reduce message was lost, and a complete run: (lost, unreduced).
async fn runs_in_three_states(stack: &Stack) -> (SplitOutcome, SplitOutcome) {
    // Its shard messages lost; shard 0's fifth delivery started long ago and died (no
    // failure record), shard 1 failed with a record.
    let lost = stack.submit("lost", &request(2)).await;
    stack.lose_messages(&stack.shard_queue).await;
    let layout = RunLayout::new(&lost.run_id);
    let start = ShardStart {
        shard: 0,
        receive_count: 5,
        attempt: "a5".into(),
        at_unix: 1_000,
    };
    put_json(stack, &started_key(&layout, 0), &start).await;
    let failure = ShardFailure {
        shard: 1,
        attempt: Some(1),
        error: "injected".into(),
        at: pipeline::manifest::now_rfc3339(),
    };
    put_json(
        stack,
        &format!("{}failures/shard-00001.json", layout.run_prefix()),
        &failure,
    )
    .await;

    // Every shard done, its reduce message lost: a claim without a lock.
    let unreduced = stack.submit("unreduced", &request(3)).await;
    assert_eq!(stack.pump_shards().await, unreduced.shards);
    assert_eq!(stack.lose_messages(&stack.reduce_queue).await, 1);

    // A complete run.
    stack.submit("complete", &request(4)).await;
    stack.pump_shards().await;
    assert_eq!(stack.pump_reduce().await, 1);
    (lost, unreduced)
}

/// A published collection, then an image whose notification is lost.
async fn collection_with_a_missed_image(stack: &Stack) {
    let files = fruit_images(2, 2);
    let key = |p: &str| format!("{}c/{p}", stack.inbox);
    for (path, bytes) in &files[..3] {
        stack
            .store()
            .put(&key(path), Bytes::from(bytes.clone()))
            .await
            .unwrap();
    }
    assert!(stack.pump_ingest().await >= 1);
    assert!(stack.pump_refits().await >= 1);
    stack
        .store()
        .put(&key(&files[3].0), Bytes::from(files[3].1.clone()))
        .await
        .unwrap();
    assert!(stack.lose_messages(&stack.ingest_queue).await >= 1);
}

/// The scan under the checker's role: the lost run is stuck, the unreduced one only once its
/// claim's grace is zero.
async fn scan_finds_the_stuck_runs(
    store: &CheckedStore<S3Store>,
    lost: &SplitOutcome,
    unreduced: &SplitOutcome,
) {
    let settings = CheckerSettings {
        policy: StallPolicy::default(),
        max_items: 100,
    };
    let report = check(store, &ListedFolders(store), &settings, &SystemClock)
        .await
        .unwrap();
    let kind_of = |id: &str| {
        report
            .stuck
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.stuck.kind)
    };
    assert_eq!(
        kind_of(&lost.run_id),
        Some(StuckKind::ShardsLost),
        "{report:?}"
    );
    assert_eq!(
        kind_of(&unreduced.run_id),
        None,
        "a fresh claim: {report:?}"
    );
    assert_eq!(report.runs, 3, "{report:?}");
    assert_eq!(report.runs_finished, 1, "{report:?}");
    assert_eq!(report.collections, 1, "{report:?}");
    // The claim is fresh: with no grace, the claim without a lock is stuck too (and the
    // reducer's lock and failure record are read).
    let eager = CheckerSettings {
        policy: StallPolicy {
            claim_unanswered_after: std::time::Duration::ZERO,
            ..StallPolicy::default()
        },
        max_items: 100,
    };
    let report = check(store, &ListedFolders(store), &eager, &SystemClock)
        .await
        .unwrap();
    assert!(
        report
            .stuck
            .iter()
            .any(|s| s.id == unreduced.run_id && s.stuck.kind == StuckKind::ClaimWithoutLock),
        "{report:?}"
    );
}

/// The scheduled reconcile: the missed image goes to the ingest queue, a refit is asked.
async fn reconcile_repairs_the_missed_image(
    stack: &Stack,
    role: &Arc<Role>,
    store: &CheckedStore<S3Store>,
) {
    let queue = |q: &super::QueueRef| {
        CheckedQueue::new(
            SqsQueue::new(stack.moto.sqs.clone(), &q.url),
            role.clone(),
            &q.arn,
        )
    };
    let repair = QueueRepair {
        ingest_queue: queue(&stack.ingest_queue),
        refit_queue: Some(queue(&stack.refit_queue)),
    };
    let filter = ImageFilter::new("*.{jpg,jpeg,png}").unwrap();
    let records = reconcile_collections(store, &stack.inbox, &filter, &repair)
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].missing.count, 1, "{records:?}");
    assert_eq!(records[0].repair.queued, 1, "{records:?}");
}

/// Each Allow statement of the checker's role, and each action and resource of a
/// multi-item one, is needed: without it some call of the scenario is refused.
#[test]
fn the_checker_role_allows_its_calls_and_nothing_more() {
    // The scenario's futures (SDK calls in the pump, scan and reconcile) are deep for a test
    // thread's default stack in a debug build.
    let role = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| runtime().block_on(Box::pin(scenario_checker())))
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let requests = role.requests();
    let refused = |policy: &Policy| {
        requests.iter().any(|q| {
            !policy
                .evaluate_with(&q.action, &q.resource, &q.context)
                .is_allowed()
        })
    };
    let mut unneeded = Vec::new();
    let statements = role.policy().statements.clone();
    for (i, s) in statements.iter().enumerate() {
        if s.effect != Effect::Allow {
            continue;
        }
        let mut without = role.policy().clone();
        without.statements.remove(i);
        if !refused(&without) {
            unneeded.push(format!("{}: no call needs it", s.sid));
        }
        for kind in ["action", "resource"] {
            let list = if kind == "action" {
                &s.actions
            } else {
                &s.resources
            };
            if list.items().len() < 2 {
                continue;
            }
            for j in 0..list.items().len() {
                let mut without = role.policy().clone();
                let st = &mut without.statements[i];
                let patterns = if kind == "action" {
                    &mut st.actions
                } else {
                    &mut st.resources
                };
                let mut items = patterns.items().to_vec();
                let item = items.remove(j);
                *patterns = patterns.with_items(items);
                if !refused(&without) {
                    unneeded.push(format!("{} {kind} {item}: no call needs it", s.sid));
                }
            }
        }
    }
    assert!(
        unneeded.is_empty(),
        "grants of the checker's role that nothing uses:\n  {}",
        unneeded.join("\n  ")
    );
}
