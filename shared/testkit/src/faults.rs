//! Fault injection: adapters over the object store and the queue that crash after a chosen
//! step, fail a share of calls as S3 does under load (503 SlowDown, with latency), deny the
//! calls on some keys as a missing permission does (403 AccessDenied, permanent), pause
//! before a step so that a test can interleave two attempts, or lose the messages sent.
//!
//! Two faults act *after* a write took effect, as on S3 when the request landed but its
//! response did not: **ack loss** ([`Faults::ack_loss`]: the write is applied, then the
//! caller sees a transient 504, so a retry layer sends it again and a conditional write
//! answers "exists" / "changed") and **duplicate apply** ([`Faults::duplicate_apply`]: the
//! write is applied twice, as a retried request whose first copy had landed, and the caller
//! gets the second answer). One acts *instead of* a conditional write: a **spurious
//! precondition failure** ([`Faults::spurious_precondition_failures`]: the create or replace
//! is answered "precondition failed", `Ok(false)`, and not applied — as S3 answers 409
//! `ConditionalRequestConflict` to a conditional write that raced another one in progress,
//! even if that one fails too). A [`Selector`] picks the writes they hit: by kind, key, step.
//! Plans combine with [`Faults::and_ack_loss`].
//!
//! One [`Faults`] plan is shared by the store and the queue of one handler, so that "step"
//! counts every write and send of that handler in order. They work over any store (the local
//! folder, S3 on an emulator) and any queue.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use pipeline::ports::queue::{Queue, QueueError};
use pipeline::ports::store::{ObjectInfo, ObjectStore, StoreError, Versioned};

/// The kinds of mutating calls a [`Selector`] can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteOp {
    /// [`ObjectStore::put`].
    Put,
    /// [`ObjectStore::put_if_absent`] (S3 `If-None-Match: *`).
    Create,
    /// [`ObjectStore::put_if_match`] (S3 `If-Match`).
    Replace,
    /// [`ObjectStore::delete`].
    Delete,
    /// [`ObjectStore::copy`] (S3 `CopyObject`), on its target key.
    Copy,
    /// [`Queue::send_all`].
    Send,
}

impl WriteOp {
    /// The name in the step log (`put`, `create`, `replace`, `delete`, `copy`, `send`).
    pub fn name(self) -> &'static str {
        match self {
            WriteOp::Put => "put",
            WriteOp::Create => "create",
            WriteOp::Replace => "replace",
            WriteOp::Delete => "delete",
            WriteOp::Copy => "copy",
            WriteOp::Send => "send",
        }
    }
}

/// Which mutating calls an after-the-fact fault ([`Faults::ack_loss`],
/// [`Faults::duplicate_apply`]) or a refusal ([`Faults::spurious_precondition_failures`])
/// hits. Every condition given must hold; by default every mutating call (sends included) is
/// hit, every time.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    ops: Vec<WriteOp>,
    key_part: Option<String>,
    step: Option<usize>,
    once_per_request: bool,
    limit: Option<usize>,
    nth: Option<usize>,
}

impl Selector {
    /// Every mutating call: writes, deletes and sends.
    pub fn every_write() -> Self {
        Self::default()
    }

    /// The conditional writes: creates (`If-None-Match: *`) and replaces (`If-Match`).
    pub fn conditional() -> Self {
        Self::ops(&[WriteOp::Create, WriteOp::Replace])
    }

    /// The calls of these kinds.
    pub fn ops(ops: &[WriteOp]) -> Self {
        Self {
            ops: ops.to_vec(),
            ..Self::default()
        }
    }

    /// Only calls on a key containing `key_part` (sends have the key `queue`).
    pub fn on_key(mut self, key_part: &str) -> Self {
        self.key_part = Some(key_part.to_string());
        self
    }

    /// Only the mutating call numbered `step` (from 0, counted as [`Faults::steps`]).
    pub fn at_step(mut self, step: usize) -> Self {
        self.step = Some(step);
        self
    }

    /// Each distinct request (kind, key and body) only the first time it is made, so that
    /// a retry of it goes through: "every conditional write loses its first answer".
    pub fn once_per_request(mut self) -> Self {
        self.once_per_request = true;
        self
    }

    /// At most `n` calls in all.
    pub fn times(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Only the `n`th call (from 0) that meets the other conditions, e.g. the second
    /// replace of a lock (a reducer's commit, after its takeover).
    pub fn nth(mut self, n: usize) -> Self {
        self.nth = Some(n);
        self
    }

    fn matches(&self, op: WriteOp, key: &str, step: usize) -> bool {
        (self.ops.is_empty() || self.ops.contains(&op))
            && self.key_part.as_deref().is_none_or(|k| key.contains(k))
            && self.step.is_none_or(|s| s == step)
    }
}

/// A fault a [`Selector`] picks the calls of: after the call took effect (a lost answer, a
/// second copy), instead of it (a refusal), or before it (a pause). The number indexes
/// [`State::matched`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Picked {
    AckLoss = 0,
    Duplicate = 1,
    Pause = 2,
    Refuse = 3,
}

/// Counts the calls a selector matched, for [`Selector::nth`]; whether this one is the one.
fn nth_matches(selector: &Selector, matched: &AtomicUsize) -> bool {
    let index = matched.fetch_add(1, Ordering::SeqCst);
    selector.nth.is_none_or(|n| n == index)
}

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
    /// Pause before the first mutating call this selects, until resumed.
    pause_at: Option<Selector>,
    /// Every call on a key containing this fails with a permanent 403 AccessDenied.
    deny: Option<String>,
    /// Sends succeed but deliver nothing.
    drop_sends: bool,
    /// Writes applied, then answered with a transient error.
    ack_loss: Option<Selector>,
    /// Writes applied twice; the caller gets the second answer.
    duplicate: Option<Selector>,
    /// Conditional writes answered "precondition failed" (`Ok(false)`) without being applied.
    refuse: Option<Selector>,
}

#[derive(Debug)]
struct State {
    plan: Plan,
    steps: AtomicUsize,
    crashed: AtomicBool,
    injected: AtomicUsize,
    rng: Mutex<fastrand::Rng>,
    log: Mutex<Vec<String>>,
    /// Requests each selected fault already hit (for `once_per_request`).
    hit_requests: Mutex<HashSet<(Picked, WriteOp, String, u64)>>,
    acks_lost: AtomicUsize,
    duplicated: AtomicUsize,
    refused: AtomicUsize,
    /// Calls each selector matched (ack loss, duplicate, pause, refusal; by [`Picked`]), for
    /// [`Selector::nth`].
    matched: [AtomicUsize; 4],
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
                hit_requests: Mutex::new(HashSet::new()),
                acks_lost: AtomicUsize::new(0),
                duplicated: AtomicUsize::new(0),
                refused: AtomicUsize::new(0),
                matched: Default::default(),
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

    /// The handler stops before the first mutating call `selector` picks (e.g.
    /// `Selector::ops(&[WriteOp::Replace]).on_key("_reduce.lock").nth(1)`: a reducer's
    /// commit after its takeover) until [`Faults::resume`].
    pub fn pause_before_write(selector: Selector) -> Self {
        Self::with_plan(
            Plan {
                pause_at: Some(selector),
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

    /// The writes `selector` picks take effect, then their caller sees a transient error
    /// ("504 Gateway Timeout"), as when S3 applied a request and the response was lost.
    /// Under a retry layer the request is sent again and finds its own write: a create
    /// answers "exists", a replace "changed". Logged as `<op> <key> (ack lost)`.
    pub fn ack_loss(selector: Selector) -> Self {
        Self::with_plan(
            Plan {
                ack_loss: Some(selector),
                ..Plan::default()
            },
            0,
        )
    }

    /// The writes `selector` picks are applied twice, as a retried request whose first copy
    /// had landed; the caller gets the second answer (a create: "exists"; a replace:
    /// "changed"; a send: the message is queued twice).
    pub fn duplicate_apply(selector: Selector) -> Self {
        Self::with_plan(
            Plan {
                duplicate: Some(selector),
                ..Plan::default()
            },
            0,
        )
    }

    /// The conditional writes (creates and replaces; other calls are never refused) that
    /// `selector` picks are answered "precondition failed" (`Ok(false)`) and **not applied**:
    /// the object is left as it was, and the call is not a step (it took no effect). On S3:
    /// a 409 `ConditionalRequestConflict` (a conditional write racing another one in
    /// progress on the key, which may then fail as well), which the S3 adapter answers as
    /// `false` — the caller's read-back then finds neither its write nor anyone else's.
    /// Logged as `<op> <key> (precondition failed, not applied)`. With
    /// [`Selector::times`]`(n)`: the first `n` such writes; with
    /// [`Selector::once_per_request`]: each request the first time only.
    pub fn spurious_precondition_failures(selector: Selector) -> Self {
        Self::with_plan(
            Plan {
                refuse: Some(selector),
                ..Plan::default()
            },
            0,
        )
    }

    /// This plan, with [`Faults::ack_loss`] on the writes `selector` picks as well (a write
    /// refused by [`Faults::spurious_precondition_failures`] is not applied, so it is never
    /// one of them: `times(1)` loses the answer of the first write that lands). Call it
    /// before the plan is shared (before [`Faults::store`] or a clone); it panics otherwise.
    pub fn and_ack_loss(mut self, selector: Selector) -> Self {
        let state = Arc::get_mut(&mut self.state)
            .expect("and_ack_loss: add faults to a plan before it is shared");
        state.plan.ack_loss = Some(selector);
        self
    }

    /// How many conditional writes [`Faults::spurious_precondition_failures`] has refused.
    pub fn spurious_failures(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// How many answers [`Faults::ack_loss`] has lost.
    pub fn acks_lost(&self) -> usize {
        self.state.acks_lost.load(Ordering::SeqCst)
    }

    /// How many calls [`Faults::duplicate_apply`] has applied twice.
    pub fn duplicated(&self) -> usize {
        self.state.duplicated.load(Ordering::SeqCst)
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
            return Err(StoreError::AccessDenied {
                op,
                key: key.to_string(),
                reason: "injected 403 AccessDenied: Access Denied".into(),
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
    async fn before_step(&self, write: WriteOp, key: &str) -> Result<(), StoreError> {
        let op = write.name();
        self.before_call(op, key).await?;
        let plan = &self.state.plan;
        let step = self.steps();
        let pause_here = plan.pause_before == Some(step)
            || plan
                .pause_before_key
                .as_deref()
                .is_some_and(|k| key.contains(k))
            || plan.pause_at.as_ref().is_some_and(|s| {
                s.matches(write, key, step)
                    && nth_matches(s, &self.state.matched[Picked::Pause as usize])
            });
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

    /// Whether the selected fault `which` hits this call (made at `step`), counting it.
    fn hits(&self, which: Picked, op: WriteOp, key: &str, step: usize, body: u64) -> bool {
        let plan = &self.state.plan;
        let (selector, counter) = match which {
            Picked::AckLoss => (&plan.ack_loss, &self.state.acks_lost),
            Picked::Duplicate => (&plan.duplicate, &self.state.duplicated),
            Picked::Refuse => (&plan.refuse, &self.state.refused),
            // Decided in `before_step`.
            Picked::Pause => return false,
        };
        let Some(selector) = selector else {
            return false;
        };
        if !selector.matches(op, key, step)
            || !nth_matches(selector, &self.state.matched[which as usize])
        {
            return false;
        }
        if selector.once_per_request
            && !self
                .state
                .hit_requests
                .lock()
                .expect("hit requests")
                .insert((which, op, key.to_string(), body))
        {
            return false;
        }
        // Claim one of the `limit` hits atomically.
        let claimed = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            selector.limit.is_none_or(|l| n < l).then_some(n + 1)
        });
        claimed.is_ok()
    }

    fn ack_lost_error(op: &'static str, key: &str) -> StoreError {
        StoreError::Remote {
            op,
            key: key.to_string(),
            transient: true,
            source: "injected ack loss: 504 Gateway Timeout (the request was applied, its \
                     response was lost)"
                .into(),
        }
    }
}

/// A digest of a request's body, to tell one request from another.
fn body_digest(body: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    hasher.finish()
}

/// An [`ObjectStore`] with injected faults.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Faults,
}

impl<S: ObjectStore> FaultyStore<S> {
    /// One mutating call: the plan's faults before it (crash, pause, deny, 503), a refusal
    /// instead of it (conditional writes only: `refused` is their "precondition failed"
    /// answer), the call, then the faults after it (a lost answer, a duplicate).
    async fn write<T, F, Fut>(
        &self,
        op: WriteOp,
        key: &str,
        body: u64,
        refused: Option<T>,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let name = op.name();
        self.faults.before_step(op, key).await?;
        let step = self.faults.steps();
        if let Some(refused) = refused {
            if self.faults.hits(Picked::Refuse, op, key, step, body) {
                self.faults
                    .state
                    .log
                    .lock()
                    .expect("fault log")
                    .push(format!("{name} {key} (precondition failed, not applied)"));
                return Ok(refused);
            }
        }
        let answer = call().await?;
        self.faults.after_step(name, key);
        if self.faults.hits(Picked::Duplicate, op, key, step, body) {
            let again = call().await;
            if again.is_ok() {
                self.faults.after_step(&format!("{name} (again)"), key);
            }
            return again;
        }
        if self.faults.hits(Picked::AckLoss, op, key, step, body) {
            self.faults
                .state
                .log
                .lock()
                .expect("fault log")
                .push(format!("{name} {key} (ack lost)"));
            return Err(Faults::ack_lost_error(name, key));
        }
        Ok(answer)
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
    async fn get_if_match(&self, key: &str, version: &str) -> Result<Bytes, StoreError> {
        self.faults.before_call("get", key).await?;
        self.inner.get_if_match(key, version).await
    }
    async fn get_bounded(
        &self,
        key: &str,
        version: &str,
        limit: u64,
    ) -> Result<Versioned, StoreError> {
        self.faults.before_call("get", key).await?;
        self.inner.get_bounded(key, version, limit).await
    }
    /// A mutating step on `to` (its faults select the target key); a read of `from` first
    /// (a denied or crashed source fails as a read does).
    async fn copy(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        self.faults.before_call("get", from).await?;
        self.write(
            WriteOp::Copy,
            to,
            body_digest(from.as_bytes()),
            None,
            || self.inner.copy(from, to),
        )
        .await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.write(WriteOp::Put, key, body_digest(&body), None, || {
            self.inner.put(key, body.clone())
        })
        .await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        self.write(
            WriteOp::Create,
            key,
            body_digest(&body),
            Some(false),
            || self.inner.put_if_absent(key, body.clone()),
        )
        .await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        self.write(
            WriteOp::Replace,
            key,
            body_digest(&body),
            Some(false),
            || self.inner.put_if_match(key, body.clone(), etag),
        )
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
        self.write(WriteOp::Delete, key, 0, None, || self.inner.delete(key))
            .await
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
            .before_step(WriteOp::Send, "queue")
            .await
            .map_err(as_queue_error)?;
        let step = self.faults.steps();
        let digest = body_digest(bodies.join("\n").as_bytes());
        let deliver = !self.faults.state.plan.drop_sends;
        if deliver {
            self.inner.send_all(bodies.clone()).await?;
        }
        self.faults.after_step("send", "queue");
        let faults = &self.faults;
        if faults.hits(Picked::Duplicate, WriteOp::Send, "queue", step, digest) {
            if deliver {
                self.inner.send_all(bodies).await?;
            }
            faults.after_step("send (again)", "queue");
        } else if faults.hits(Picked::AckLoss, WriteOp::Send, "queue", step, digest) {
            return Err(as_queue_error(Faults::ack_lost_error("send", "queue")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
