//! Unit tests of the fault plans.

use super::*;
use pipeline::ports::queue::InProcessQueue;
use pipeline::ports::store::FsStore;

use crate::test_util::block;

#[test]
fn a_crash_stops_everything_after_the_chosen_step() {
    let dir = tempfile_dir("crash");
    let faults = Faults::crash_after(2);
    let store = faults.store(FsStore::new(&dir));
    let queue = InProcessQueue::new();
    let q = faults.queue(&queue);
    block(async {
        store.put("a", Bytes::from_static(b"1")).await.unwrap();
        q.send_all(vec!["m".into()]).await.unwrap();
        assert!(store.put("b", Bytes::from_static(b"2")).await.is_err());
        assert!(
            store.get("a").await.is_err(),
            "a dead handler reads nothing"
        );
    });
    assert!(faults.crashed());
    assert_eq!(faults.steps(), 2);
    assert_eq!(faults.log(), vec!["put a", "send queue"]);
    assert_eq!(queue.len(), 1);
    assert!(!dir.join("b").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn transient_faults_are_reproducible_and_transient() {
    let dir = tempfile_dir("flaky");
    let run = |seed| {
        let faults = Faults::transient(0.3, Duration::ZERO, seed);
        let store = faults.store(FsStore::new(&dir));
        let outcomes: Vec<bool> = block(async {
            let mut v = Vec::new();
            for i in 0..100 {
                let r = store.put(&format!("k{i}"), Bytes::from_static(b"x")).await;
                if let Err(e) = &r {
                    assert!(e.is_transient());
                }
                v.push(r.is_ok());
            }
            v
        });
        (outcomes, faults.injected())
    };
    let (a, failed) = run(7);
    assert_eq!(a, run(7).0, "same seed, same faults");
    assert!((15..=45).contains(&failed), "{failed} of 100 failed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn denied_keys_fail_permanently_and_others_pass() {
    let dir = tempfile_dir("deny");
    let faults = Faults::deny("secret/");
    let store = faults.store(FsStore::new(&dir));
    block(async {
        store.put("open/a", Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(
            store.head("open/a").await.unwrap(),
            store.get_versioned("open/a").await.unwrap().etag
        );
        for e in [
            store.get("secret/b").await.unwrap_err(),
            store.head("secret/b").await.unwrap_err(),
            store.put("secret/b", Bytes::new()).await.unwrap_err(),
        ] {
            assert!(!e.is_transient(), "{e}");
            assert!(e.to_string().contains("AccessDenied"), "{e}");
        }
    });
    assert_eq!(faults.injected(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lost_messages_are_counted_but_not_delivered() {
    let faults = Faults::drop_sends();
    let queue = InProcessQueue::new();
    block(faults.queue(&queue).send_all(vec!["m".into()])).unwrap();
    assert!(queue.is_empty());
    assert_eq!(faults.steps(), 1);
}

#[test]
fn a_lost_ack_leaves_the_write_applied_and_the_caller_in_doubt() {
    let dir = tempfile_dir("ackloss");
    let faults = Faults::ack_loss(Selector::conditional().once_per_request());
    let store = faults.store(FsStore::new(&dir));
    block(async {
        // A create: applied, answered with a transient error; sent again, it finds
        // itself ("exists").
        let e = store
            .put_if_absent("lock", Bytes::from_static(b"mine"))
            .await
            .unwrap_err();
        assert!(
            e.is_transient() && e.to_string().contains("ack loss"),
            "{e}"
        );
        assert_eq!(
            store.get("lock").await.unwrap(),
            Bytes::from_static(b"mine")
        );
        assert!(!store
            .put_if_absent("lock", Bytes::from_static(b"mine"))
            .await
            .unwrap());
        // A replace: the same; its retry finds the tag changed.
        let v = store.get_versioned("lock").await.unwrap();
        assert!(store
            .put_if_match("lock", Bytes::from_static(b"next"), &v.etag)
            .await
            .is_err());
        assert_eq!(
            store.get("lock").await.unwrap(),
            Bytes::from_static(b"next")
        );
        assert!(!store
            .put_if_match("lock", Bytes::from_static(b"next"), &v.etag)
            .await
            .unwrap());
        // Plain writes are not conditional: untouched by this selector.
        store.put("plain", Bytes::from_static(b"p")).await.unwrap();
    });
    assert_eq!(faults.acks_lost(), 2);
    assert_eq!(
        faults.log(),
        vec![
            "create lock",
            "create lock (ack lost)",
            "create lock",
            "replace lock",
            "replace lock (ack lost)",
            "replace lock",
            "put plain"
        ],
        "the retries are steps too (they answered)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ack_loss_picks_writes_by_kind_key_step_and_count() {
    let dir = tempfile_dir("ackpick");
    block(async {
        // By step: only the write numbered 1.
        let faults = Faults::ack_loss(Selector::every_write().at_step(1));
        let store = faults.store(FsStore::new(&dir));
        let results: Vec<bool> = futures_results(&store, 3).await;
        assert_eq!(results, [true, false, true]);
        assert_eq!(faults.steps(), 3, "the lost one took effect too");
        assert!(dir.join("k1").exists());
        // By key and count: the first write of keys containing "k2", once.
        let faults = Faults::ack_loss(Selector::ops(&[WriteOp::Put]).on_key("k2").times(1));
        let store = faults.store(FsStore::new(&dir));
        assert_eq!(futures_results(&store, 3).await, [true, true, false]);
        assert_eq!(futures_results(&store, 3).await, [true, true, true]);
        // Deletes too.
        let faults = Faults::ack_loss(Selector::ops(&[WriteOp::Delete]));
        let store = faults.store(FsStore::new(&dir));
        assert!(store.delete("k0").await.is_err());
        assert!(!dir.join("k0").exists(), "deleted all the same");
        // Copies: applied, then the answer is lost; selected by their target key.
        let faults = Faults::ack_loss(Selector::ops(&[WriteOp::Copy]).on_key("copy-of"));
        let store = faults.store(FsStore::new(&dir));
        let lost = store.copy("k1", "copy-of-k1").await.unwrap_err();
        assert!(lost.is_transient(), "{lost}");
        assert!(dir.join("copy-of-k1").exists(), "copied all the same");
        assert_eq!(
            faults.log(),
            ["copy copy-of-k1", "copy copy-of-k1 (ack lost)"]
        );
        assert!(store.copy("k1", "other").await.is_ok(), "another target");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_duplicate_apply_answers_as_the_second_copy_of_the_request() {
    let dir = tempfile_dir("dup");
    let faults = Faults::duplicate_apply(Selector::every_write());
    let store = faults.store(FsStore::new(&dir));
    let queue = InProcessQueue::new();
    block(async {
        assert!(
            !store
                .put_if_absent("claim", Bytes::from_static(b"c"))
                .await
                .unwrap(),
            "the first copy created it: the second finds it"
        );
        assert_eq!(store.get("claim").await.unwrap(), Bytes::from_static(b"c"));
        let v = store.get_versioned("claim").await.unwrap();
        assert!(!store
            .put_if_match("claim", Bytes::from_static(b"d"), &v.etag)
            .await
            .unwrap());
        assert_eq!(store.get("claim").await.unwrap(), Bytes::from_static(b"d"));
        store.put("p", Bytes::from_static(b"x")).await.unwrap();
        store.delete("p").await.unwrap();
        faults
            .queue(&queue)
            .send_all(vec!["m".into()])
            .await
            .unwrap();
    });
    assert_eq!(queue.len(), 2, "the message is queued twice");
    assert_eq!(faults.duplicated(), 5);
    assert_eq!(faults.steps(), 10);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lost_send_ack_leaves_the_message_queued() {
    let faults = Faults::ack_loss(Selector::ops(&[WriteOp::Send]));
    let queue = InProcessQueue::new();
    assert!(block(faults.queue(&queue).send_all(vec!["m".into()])).is_err());
    assert_eq!(queue.len(), 1);
}

#[test]
fn a_spurious_precondition_failure_answers_false_and_applies_nothing() {
    let dir = tempfile_dir("refuse");
    let faults = Faults::spurious_precondition_failures(Selector::conditional().once_per_request());
    let store = faults.store(FsStore::new(&dir));
    block(async {
        // A create: "exists", yet nothing is there; sent again, it lands.
        assert!(!store
            .put_if_absent("lock", Bytes::from_static(b"mine"))
            .await
            .unwrap());
        assert!(matches!(
            store.get("lock").await,
            Err(StoreError::NotFound(_))
        ));
        assert!(store
            .put_if_absent("lock", Bytes::from_static(b"mine"))
            .await
            .unwrap());
        assert_eq!(
            store.get("lock").await.unwrap(),
            Bytes::from_static(b"mine")
        );
        // A replace on the right tag: "changed", yet the object and its tag are unchanged;
        // sent again, it lands.
        let v = store.get_versioned("lock").await.unwrap();
        assert!(!store
            .put_if_match("lock", Bytes::from_static(b"next"), &v.etag)
            .await
            .unwrap());
        let after = store.get_versioned("lock").await.unwrap();
        assert_eq!(after.body, Bytes::from_static(b"mine"));
        assert_eq!(after.etag, v.etag);
        assert!(store
            .put_if_match("lock", Bytes::from_static(b"next"), &v.etag)
            .await
            .unwrap());
        assert_eq!(
            store.get("lock").await.unwrap(),
            Bytes::from_static(b"next")
        );
        // Plain writes are never refused.
        store.put("plain", Bytes::from_static(b"p")).await.unwrap();
    });
    assert_eq!(faults.spurious_failures(), 2);
    assert_eq!(faults.steps(), 3, "a refused write is not a step");
    assert_eq!(
        faults.log(),
        vec![
            "create lock (precondition failed, not applied)",
            "create lock",
            "replace lock (precondition failed, not applied)",
            "replace lock",
            "put plain"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spurious_precondition_failures_pick_by_key_and_count_and_only_conditional_writes() {
    let dir = tempfile_dir("refusepick");
    block(async {
        // Every write selected: only the conditional ones can be refused.
        let faults = Faults::spurious_precondition_failures(Selector::every_write());
        let store = faults.store(FsStore::new(&dir));
        store.put("p", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(store.copy("p", "q").await.unwrap(), 1);
        store.delete("q").await.unwrap();
        assert!(dir.join("p").exists() && !dir.join("q").exists());
        assert!(!store.put_if_absent("c", Bytes::new()).await.unwrap());
        assert!(!dir.join("c").exists());
        assert_eq!(faults.spurious_failures(), 1);
        // By key and count: the first conditional write on "current", once.
        let faults = Faults::spurious_precondition_failures(
            Selector::conditional().on_key("current").times(1),
        );
        let store = faults.store(FsStore::new(&dir));
        assert!(store.put_if_absent("other", Bytes::new()).await.unwrap());
        assert!(!store.put_if_absent("current", Bytes::new()).await.unwrap());
        assert!(!dir.join("current").exists());
        assert!(store.put_if_absent("current", Bytes::new()).await.unwrap());
        assert_eq!(faults.spurious_failures(), 1);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_write_then_a_lost_ack_on_its_retry() {
    let dir = tempfile_dir("refuseack");
    let pick = || Selector::conditional().on_key("current").times(1);
    let faults = Faults::spurious_precondition_failures(pick()).and_ack_loss(pick());
    let store = faults.store(FsStore::new(&dir));
    block(async {
        let body = Bytes::from_static(b"pointer");
        // Refused: not applied, and not the write whose answer is lost.
        assert!(!store.put_if_absent("current", body.clone()).await.unwrap());
        assert!(!dir.join("current").exists());
        // The retry lands; its answer is lost.
        let e = store
            .put_if_absent("current", body.clone())
            .await
            .unwrap_err();
        assert!(
            e.is_transient() && e.to_string().contains("ack loss"),
            "{e}"
        );
        assert_eq!(store.get("current").await.unwrap(), body);
        // Sent again: it finds its own write.
        assert!(!store.put_if_absent("current", body.clone()).await.unwrap());
    });
    assert_eq!((faults.spurious_failures(), faults.acks_lost()), (1, 1));
    assert_eq!(
        faults.log(),
        vec![
            "create current (precondition failed, not applied)",
            "create current",
            "create current (ack lost)",
            "create current"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[should_panic(expected = "before it is shared")]
fn faults_are_added_to_a_plan_before_it_is_shared() {
    let faults = Faults::spurious_precondition_failures(Selector::conditional());
    let _store = faults.store(());
    let _ = faults.and_ack_loss(Selector::conditional());
}

/// Writes `k0..kn` (one put each) and tells which answered success.
async fn futures_results(store: &FaultyStore<FsStore>, n: usize) -> Vec<bool> {
    let mut results = Vec::new();
    for i in 0..n {
        results.push(
            store
                .put(&format!("k{i}"), Bytes::from_static(b"v"))
                .await
                .is_ok(),
        );
    }
    results
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
