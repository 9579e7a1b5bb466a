//! Counting adapters: every call through a store or queue, counted as AWS bills it (S3 GET
//! class, PUT class, a LIST per 1,000 keys, SQS requests of up to 10 messages), with the bytes
//! moved. `featurize simulate` measures each stage of a run with them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ports::queue::{Drain, Queue, QueueError};
use crate::ports::store::{ObjectInfo, ObjectStore, StoreError, Versioned};

/// Keys per S3 ListObjectsV2 page.
pub const LIST_PAGE: u64 = 1000;
/// Messages per SQS SendMessageBatch.
pub const SQS_BATCH: u64 = 10;

/// Running totals, shared by the adapters of one stage.
#[derive(Debug, Default)]
pub struct Counters {
    gets: AtomicU64,
    puts: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    copies: AtomicU64,
    bytes_copied: AtomicU64,
    sqs_requests: AtomicU64,
    messages: AtomicU64,
    message_bytes: AtomicU64,
}

/// What a stage did, as counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// S3 GET and HEAD requests.
    pub s3_get: u64,
    /// S3 PUT requests (conditional ones included).
    pub s3_put: u64,
    /// S3 LIST requests (one per page of 1,000 keys).
    pub s3_list: u64,
    /// S3 DELETE requests (free).
    pub s3_delete: u64,
    /// Bytes read from the store.
    pub bytes_read: u64,
    /// Bytes written to the store.
    pub bytes_written: u64,
    /// Server-side copies (S3 `CopyObject`, billed as a PUT; locally hard links): apart from
    /// `s3_put`, since their bytes never pass through the function.
    #[serde(default)]
    pub s3_copy: u64,
    /// Bytes copied server-side (apart from `bytes_read` and `bytes_written`).
    #[serde(default)]
    pub bytes_copied: u64,
    /// SQS send requests (batches of up to 10).
    pub sqs_requests: u64,
    /// Messages sent.
    pub messages: u64,
    /// The largest message body, bytes.
    pub max_message_bytes: u64,
}

impl Counters {
    /// New, shared counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The totals so far.
    pub fn usage(&self) -> Usage {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Usage {
            s3_get: get(&self.gets),
            s3_put: get(&self.puts),
            s3_list: get(&self.lists),
            s3_delete: get(&self.deletes),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            s3_copy: get(&self.copies),
            bytes_copied: get(&self.bytes_copied),
            sqs_requests: get(&self.sqs_requests),
            messages: get(&self.messages),
            max_message_bytes: get(&self.message_bytes),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A store whose calls are counted.
#[derive(Debug, Clone)]
pub struct CountingStore<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S> CountingStore<S> {
    /// Counts `inner`'s calls into `counters`.
    pub fn new(inner: S, counters: Arc<Counters>) -> Self {
        Self { inner, counters }
    }
}

impl<S: ObjectStore> ObjectStore for CountingStore<S> {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        Counters::add(&self.counters.gets, 1);
        let body = self.inner.get(key).await?;
        Counters::add(&self.counters.bytes_read, body.len() as u64);
        Ok(body)
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        Counters::add(&self.counters.gets, 1);
        let v = self.inner.get_versioned(key).await?;
        Counters::add(&self.counters.bytes_read, v.body.len() as u64);
        Ok(v)
    }
    async fn get_if_match(&self, key: &str, version: &str) -> Result<Bytes, StoreError> {
        Counters::add(&self.counters.gets, 1);
        let body = self.inner.get_if_match(key, version).await?;
        Counters::add(&self.counters.bytes_read, body.len() as u64);
        Ok(body)
    }
    async fn get_bounded(
        &self,
        key: &str,
        version: &str,
        limit: u64,
    ) -> Result<Versioned, StoreError> {
        Counters::add(&self.counters.gets, 1);
        let read = self.inner.get_bounded(key, version, limit).await?;
        Counters::add(&self.counters.bytes_read, read.body.len() as u64);
        Ok(read)
    }
    async fn copy(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        Counters::add(&self.counters.copies, 1);
        let size = self.inner.copy(from, to).await?;
        Counters::add(&self.counters.bytes_copied, size);
        Ok(size)
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        Counters::add(&self.counters.puts, 1);
        Counters::add(&self.counters.bytes_written, body.len() as u64);
        self.inner.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        Counters::add(&self.counters.puts, 1);
        Counters::add(&self.counters.bytes_written, body.len() as u64);
        self.inner.put_if_absent(key, body).await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        Counters::add(&self.counters.puts, 1);
        Counters::add(&self.counters.bytes_written, body.len() as u64);
        self.inner.put_if_match(key, body, etag).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Counters::add(&self.counters.gets, 1);
        self.inner.exists(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        Counters::add(&self.counters.deletes, 1);
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let listed = self.inner.list(prefix).await?;
        // As S3 pages it: one request per 1,000 keys, and one for an empty listing.
        Counters::add(
            &self.counters.lists,
            (listed.len() as u64).div_ceil(LIST_PAGE).max(1),
        );
        Ok(listed)
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

/// A queue whose sends are counted (one SQS request per batch of 10 messages).
#[derive(Debug, Clone)]
pub struct CountingQueue<Q> {
    inner: Q,
    counters: Arc<Counters>,
}

impl<Q> CountingQueue<Q> {
    /// Counts `inner`'s sends into `counters`.
    pub fn new(inner: Q, counters: Arc<Counters>) -> Self {
        Self { inner, counters }
    }
}

impl<Q: Queue> Queue for CountingQueue<Q> {
    async fn send_all(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        let n = bodies.len() as u64;
        Counters::add(&self.counters.sqs_requests, n.div_ceil(SQS_BATCH));
        Counters::add(&self.counters.messages, n);
        let largest = bodies.iter().map(|b| b.len() as u64).max().unwrap_or(0);
        self.counters
            .message_bytes
            .fetch_max(largest, Ordering::Relaxed);
        self.inner.send_all(bodies).await
    }
}

impl<Q: Drain> Drain for CountingQueue<Q> {
    /// As an SQS consumer pays: one ReceiveMessage per 10 messages plus the empty one that
    /// ends the drain, and one DeleteMessageBatch per 10.
    async fn drain(&self) -> Result<Vec<String>, QueueError> {
        let bodies = self.inner.drain().await?;
        let n = bodies.len() as u64;
        Counters::add(&self.counters.sqs_requests, 2 * n.div_ceil(SQS_BATCH) + 1);
        Ok(bodies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::queue::InProcessQueue;
    use crate::ports::store::FsStore;

    #[test]
    fn counts_requests_as_billed_and_bytes_moved() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Counters::new();
        let store = CountingStore::new(FsStore::new(dir.path()), counters.clone());
        let queue = CountingQueue::new(InProcessQueue::new(), counters.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 0..1001 {
                store
                    .put(&format!("k/{i:04}"), Bytes::from_static(b"abc"))
                    .await
                    .unwrap();
            }
            assert!(!store
                .put_if_absent("k/0000", Bytes::from_static(b"x"))
                .await
                .unwrap());
            assert_eq!(store.get("k/0001").await.unwrap().len(), 3);
            assert!(store.exists("k/0002").await.unwrap());
            assert_eq!(store.list("k/").await.unwrap().len(), 1001);
            assert_eq!(store.list("none/").await.unwrap().len(), 0);
            store.delete("k/0003").await.unwrap();
            assert_eq!(store.copy("k/0004", "c/0004").await.unwrap(), 3);
            assert_eq!(
                store.get_bounded("k/0005", "", 3).await.unwrap().body.len(),
                3
            );
            assert!(store.get_bounded("k/0005", "", 2).await.is_err());
            queue
                .send_all((0..21).map(|i| format!("m{i}")).collect())
                .await
                .unwrap();
            assert_eq!(queue.drain().await.unwrap().len(), 21);
        });
        assert_eq!(
            counters.usage(),
            Usage {
                s3_get: 4,
                s3_put: 1002,
                s3_list: 3,
                s3_delete: 1,
                bytes_read: 6,
                bytes_written: 1001 * 3 + 1,
                s3_copy: 1,
                bytes_copied: 3,
                sqs_requests: 3 + (2 * 3 + 1),
                messages: 21,
                max_message_bytes: 3,
            }
        );
    }
}
