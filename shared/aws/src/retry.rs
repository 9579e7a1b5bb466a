//! Retries of transient store failures, as an adapter over any [`ObjectStore`].
//!
//! The AWS SDK retries throttling and 5xx answers itself, but not a connection dropped while
//! a body streams, and its attempts are few. This layer retries what [`StoreError::is_transient`]
//! calls transient, with exponential backoff and jitter; permanent errors pass at once. The
//! conditional writes stay correct under retries because every caller reads back who won
//! (a create whose first attempt landed answers "exists" on the retry).

use std::time::Duration;

use bytes::Bytes;

use pipeline::ports::store::{ObjectInfo, ObjectStore, StoreError, Versioned};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubled each time, with up to 50 % jitter.
    pub base_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (from 1).
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_delay);
        exp.mul_f64(0.5 + 0.5 * fastrand::f64())
    }

    /// Runs `op` until it succeeds, fails permanently, or the attempts are spent.
    pub async fn run<T, F, Fut>(&self, what: &str, key: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    let delay = self.delay(attempt);
                    tracing::debug!(what, key, attempt, ?delay, error = %e, "transient store error: retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// An [`ObjectStore`] that retries the transient failures of the one it wraps.
#[derive(Debug, Clone)]
pub struct Retrying<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S> Retrying<S> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: ObjectStore> ObjectStore for Retrying<S> {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.policy.run("get", key, || self.inner.get(key)).await
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        self.policy
            .run("get_versioned", key, || self.inner.get_versioned(key))
            .await
    }
    async fn get_if_match(&self, key: &str, version: &str) -> Result<Bytes, StoreError> {
        self.policy
            .run("get_if_match", key, || {
                self.inner.get_if_match(key, version)
            })
            .await
    }
    async fn get_bounded(
        &self,
        key: &str,
        version: &str,
        limit: u64,
    ) -> Result<Versioned, StoreError> {
        self.policy
            .run("get_bounded", key, || {
                self.inner.get_bounded(key, version, limit)
            })
            .await
    }
    /// Retried as a put: a copy overwrites its target unconditionally, so sending it again
    /// after a lost answer gives the same result.
    async fn copy(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        self.policy
            .run("copy", to, || self.inner.copy(from, to))
            .await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.policy
            .run("put", key, || self.inner.put(key, body.clone()))
            .await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        self.policy
            .run("put_if_absent", key, || {
                self.inner.put_if_absent(key, body.clone())
            })
            .await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        self.policy
            .run("put_if_match", key, || {
                self.inner.put_if_match(key, body.clone(), etag)
            })
            .await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.policy
            .run("exists", key, || self.inner.exists(key))
            .await
    }
    async fn head(&self, key: &str) -> Result<String, StoreError> {
        self.policy.run("head", key, || self.inner.head(key)).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.policy
            .run("delete", key, || self.inner.delete(key))
            .await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.policy
            .run("list", prefix, || self.inner.list(prefix))
            .await
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::test_util::block;

    fn failure(transient: bool) -> StoreError {
        StoreError::Remote {
            op: "GetObject",
            key: "k".into(),
            transient,
            source: "503 SlowDown".into(),
        }
    }

    #[test]
    fn transient_errors_are_retried_and_permanent_ones_are_not() {
        let policy = RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        };
        let calls = AtomicU32::new(0);
        let ok = block(policy.run("get", "k", || async {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            if n < 2 {
                Err(failure(true))
            } else {
                Ok(n)
            }
        }));
        assert_eq!(ok.unwrap(), 2);
        assert_eq!(calls.load(Ordering::Relaxed), 3);

        calls.store(0, Ordering::Relaxed);
        let err = block(policy.run("get", "k", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(failure(false))
        }));
        assert!(!err.unwrap_err().is_transient());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "permanent: no retry");

        calls.store(0, Ordering::Relaxed);
        let err = block(policy.run("get", "k", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(failure(true))
        }));
        assert!(err.unwrap_err().is_transient());
        assert_eq!(
            calls.load(Ordering::Relaxed),
            4,
            "gives up after the attempts"
        );
        assert!(!StoreError::NotFound("x".into()).is_transient());
    }

    #[test]
    fn delays_grow_and_are_bounded() {
        let policy = RetryPolicy::default();
        for retry in 1..20 {
            let d = policy.delay(retry);
            assert!(d <= policy.max_delay, "{d:?}");
        }
        assert!(policy.delay(1) <= Duration::from_millis(100));
    }
}
