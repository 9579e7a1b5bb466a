//! Fault injection: adapters over the object store and the queue that crash after a chosen
//! step, fail a share of calls as S3 does under load (503 SlowDown, with latency), deny the
//! calls on some keys as a missing permission does (403 AccessDenied, permanent), pause
//! before a step so that a test can interleave two attempts, or lose the messages sent.
//!
//! One [`Faults`] plan is shared by the store and the queue of one handler, so that "step"
//! counts every write and send of that handler in order. They work over any store (the local
//! folder, S3 on an emulator) and any queue.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use pipeline::ports::queue::{Queue, QueueError};
use pipeline::ports::store::{ObjectInfo, ObjectStore, StoreError, Versioned};

#[derive(Debug, Default)]
struct Plan {
    /// Let this many mutating steps happen, then crash.
    crash_after: Option<usize>,
    /// Share of calls that fail with a transient error, after `latency`.
    transient_rate: f64,
    latency: Duration,
    /// Pause before this mutating step (0-based) until resumed.
    pause_before: Option<usize>,
    /// Pause before the first mutating step on a key containing this, until resumed.
    pause_before_key: Option<String>,
    /// Every call on a key containing this fails with a permanent 403 AccessDenied.
    deny: Option<String>,
    /// Sends succeed but deliver nothing.
    drop_sends: bool,
}

#[derive(Debug)]
struct State {
    plan: Plan,
    steps: AtomicUsize,
    crashed: AtomicBool,
    injected: AtomicUsize,
    rng: Mutex<fastrand::Rng>,
    log: Mutex<Vec<String>>,
    paused: watch::Sender<bool>,
    resumed: watch::Sender<bool>,
}

/// A fault plan, shared by the adapters made from it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Faults {
    state: Arc<State>,
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl Faults {
    /// A plan that injects nothing (it still counts and logs steps).
    pub fn new() -> Self {
        Self::with_plan(Plan::default(), 0)
    }

    fn with_plan(plan: Plan, seed: u64) -> Self {
        Self {
            state: Arc::new(State {
                plan,
                steps: AtomicUsize::new(0),
                crashed: AtomicBool::new(false),
                injected: AtomicUsize::new(0),
                rng: Mutex::new(fastrand::Rng::with_seed(seed)),
                log: Mutex::new(Vec::new()),
                paused: watch::channel(false).0,
                resumed: watch::channel(false).0,
            }),
        }
    }

    /// The handler performs `steps` writes or sends, then dies: that step and every later
    /// call, reads included, fail as a dead process's would (nothing more reaches the store).
    pub fn crash_after(steps: usize) -> Self {
        Self::with_plan(
            Plan {
                crash_after: Some(steps),
                ..Plan::default()
            },
            0,
        )
    }

    /// A share `rate` of all calls fails with a transient "503 SlowDown" after `latency`;
    /// the draw is reproducible from `seed`.
    pub fn transient(rate: f64, latency: Duration, seed: u64) -> Self {
        Self::with_plan(
            Plan {
                transient_rate: rate,
                latency,
                ..Plan::default()
            },
            seed,
        )
    }

    /// Every call takes `latency` (a slow but healthy store, e.g. S3 from far away).
    pub fn slow(latency: Duration) -> Self {
        Self::transient(0.0, latency, 0)
    }

    /// The handler stops before its mutating step number `step` (from 0) until
    /// [`Faults::resume`]; [`Faults::wait_paused`] returns once it is there.
    pub fn pause_before(step: usize) -> Self {
        Self::with_plan(
            Plan {
                pause_before: Some(step),
                ..Plan::default()
            },
            0,
        )
    }

    /// The handler stops before its first mutating step on a key containing `key_part`
    /// (e.g. the pointer it publishes last) until [`Faults::resume`].
    pub fn pause_before_key(key_part: &str) -> Self {
        Self::with_plan(
            Plan {
                pause_before_key: Some(key_part.to_string()),
                ..Plan::default()
            },
            0,
        )
    }

    /// Every call on a key containing `key_part` fails with a permanent "403 AccessDenied",
    /// as on S3 when the role, a bucket policy or a KMS key refuses that object.
    pub fn deny(key_part: &str) -> Self {
        Self::with_plan(
            Plan {
                deny: Some(key_part.to_string()),
                ..Plan::default()
            },
            0,
        )
    }

    /// Every message sent is lost (the send itself succeeds).
    pub fn drop_sends() -> Self {
        Self::with_plan(
            Plan {
                drop_sends: true,
                ..Plan::default()
            },
            0,
        )
    }

    /// This plan over a store.
    pub fn store<S>(&self, inner: S) -> FaultyStore<S> {
        FaultyStore {
            inner,
            faults: self.clone(),
        }
    }

    /// This plan over a queue.
    pub fn queue<Q>(&self, inner: Q) -> FaultyQueue<Q> {
        FaultyQueue {
            inner,
            faults: self.clone(),
        }
    }

    /// Mutating steps (writes, deletes, sends) that took effect.
    pub fn steps(&self) -> usize {
        self.state.steps.load(Ordering::SeqCst)
    }

    /// Whether the crash happened.
    pub fn crashed(&self) -> bool {
        self.state.crashed.load(Ordering::SeqCst)
    }

    /// How many calls failed by injection.
    pub fn injected(&self) -> usize {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// The steps that took effect, as `op key`.
    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().expect("fault log").clone()
    }

    /// Waits until the handler is paused at its step (or returns at once if it already
    /// finished without reaching it: check [`Faults::steps`]).
    pub async fn wait_paused(&self) {
        let mut rx = self.state.paused.subscribe();
        let _ = rx.wait_for(|p| *p).await;
    }

    /// Whether the handler is waiting at its pause point.
    pub fn is_paused(&self) -> bool {
        *self.state.paused.borrow()
    }

    /// Lets a paused handler go on.
    pub fn resume(&self) {
        self.state.resumed.send_replace(true);
    }

    fn error(op: &'static str, key: &str, what: &str) -> StoreError {
        StoreError::Remote {
            op,
            key: key.to_string(),
            transient: true,
            source: what.to_string().into(),
        }
    }

    /// Before any call: a dead handler fails everything; a flaky store fails some calls.
    async fn before_call(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        if self.crashed() {
            return Err(Self::error(op, key, "injected crash: the handler is dead"));
        }
        let plan = &self.state.plan;
        if plan.deny.as_deref().is_some_and(|d| key.contains(d)) {
            self.state.injected.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Remote {
                op,
                key: key.to_string(),
                transient: false,
                source: "injected 403 AccessDenied: Access Denied".into(),
            });
        }
        if !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        if plan.transient_rate > 0.0 {
            let fail = self.state.rng.lock().expect("rng").f64() < plan.transient_rate;
            if fail {
                self.state.injected.fetch_add(1, Ordering::SeqCst);
                return Err(Self::error(
                    op,
                    key,
                    "injected 503 SlowDown: Please reduce your request rate",
                ));
            }
        }
        Ok(())
    }

    /// Before a mutating call: pause or crash when its number comes up.
    async fn before_step(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        self.before_call(op, key).await?;
        let plan = &self.state.plan;
        let step = self.steps();
        let pause_here = plan.pause_before == Some(step)
            || plan
                .pause_before_key
                .as_deref()
                .is_some_and(|k| key.contains(k));
        if pause_here && !*self.state.resumed.borrow() {
            self.state.paused.send_replace(true);
            let mut rx = self.state.resumed.subscribe();
            let _ = rx.wait_for(|r| *r).await;
            self.state.paused.send_replace(false);
        }
        if plan.crash_after.is_some_and(|n| step >= n) {
            self.state.crashed.store(true, Ordering::SeqCst);
            return Err(Self::error(op, key, "injected crash: the handler is dead"));
        }
        Ok(())
    }

    fn after_step(&self, op: &str, key: &str) {
        self.state.steps.fetch_add(1, Ordering::SeqCst);
        self.state
            .log
            .lock()
            .expect("fault log")
            .push(format!("{op} {key}"));
    }
}

/// An [`ObjectStore`] with injected faults.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Faults,
}

impl<S: ObjectStore> FaultyStore<S> {
    async fn write<T>(
        &self,
        op: &'static str,
        key: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.faults.before_step(op, key).await?;
        let result = call.await;
        if result.is_ok() {
            self.faults.after_step(op, key);
        }
        result
    }
}

impl<S: ObjectStore> ObjectStore for FaultyStore<S> {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.faults.before_call("get", key).await?;
        self.inner.get(key).await
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        self.faults.before_call("get", key).await?;
        self.inner.get_versioned(key).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.write("put", key, self.inner.put(key, body)).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        self.write("create", key, self.inner.put_if_absent(key, body))
            .await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        self.write("replace", key, self.inner.put_if_match(key, body, etag))
            .await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.faults.before_call("exists", key).await?;
        self.inner.exists(key).await
    }
    async fn head(&self, key: &str) -> Result<String, StoreError> {
        self.faults.before_call("head", key).await?;
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.write("delete", key, self.inner.delete(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.faults.before_call("list", prefix).await?;
        self.inner.list(prefix).await
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

/// A [`Queue`] with injected faults.
#[derive(Debug, Clone)]
pub struct FaultyQueue<Q> {
    inner: Q,
    faults: Faults,
}

impl<Q: Queue> Queue for FaultyQueue<Q> {
    async fn send_all(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        let as_queue_error = |e: StoreError| QueueError::Remote {
            op: "SendMessageBatch",
            queue: "(fault injection)".into(),
            source: Box::new(e),
        };
        self.faults
            .before_step("send", "queue")
            .await
            .map_err(as_queue_error)?;
        if !self.faults.state.plan.drop_sends {
            self.inner.send_all(bodies).await?;
        }
        self.faults.after_step("send", "queue");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
