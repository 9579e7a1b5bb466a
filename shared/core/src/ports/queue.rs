//! The queue port: how the splitter fans out shards and the barrier winner asks for the reduce.
//! In AWS it is SQS ([`aws::sdk::SqsQueue`]); embedded, an in-process FIFO.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

use thiserror::Error;

/// Failures of a queue.
#[derive(Debug, Error)]
pub enum QueueError {
    /// Some entries of a batch could not be sent even after retries.
    #[error("{failed} of {total} messages could not be sent to {queue}: {reason}")]
    Partial {
        /// The queue.
        queue: String,
        /// How many failed.
        failed: usize,
        /// How many were sent in all.
        total: usize,
        /// The last failure's reason.
        reason: String,
    },
    /// The queue call failed.
    #[error("sqs {op} {queue}: {source}")]
    Remote {
        /// The API call.
        op: &'static str,
        /// The queue URL.
        queue: String,
        /// The SDK error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A message queue that the pipeline sends to. Receiving is the runtime's business
/// (the Lambda event-source mapping, or the local driver).
pub trait Queue: Send + Sync {
    /// Sends every body; retries what failed; errors only if some could not be sent at all.
    fn send_all(&self, bodies: Vec<String>) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Like [`Queue::send_all`], each message delivered no sooner than `delay_s` seconds from
    /// now (SQS `DelaySeconds`, at most 900). A queue without delays delivers them at once
    /// (the default); its consumer then checks the time itself.
    fn send_delayed(
        &self,
        bodies: Vec<String>,
        delay_s: u32,
    ) -> impl Future<Output = Result<(), QueueError>> + Send {
        let _ = delay_s;
        self.send_all(bodies)
    }
}

/// A queue whose waiting messages a driver can take itself (the simulation, tests): what a
/// Lambda event-source mapping does for a deployed function.
pub trait Drain: Send + Sync {
    /// Takes (receives and deletes) every message waiting now, oldest first where the queue
    /// keeps an order.
    fn drain(&self) -> impl Future<Output = Result<Vec<String>, QueueError>> + Send;
}

/// An in-process FIFO queue (embedded mode, tests).
#[derive(Debug, Default)]
pub struct InProcessQueue {
    messages: Mutex<VecDeque<String>>,
}

impl InProcessQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the oldest message.
    pub fn pop(&self) -> Option<String> {
        self.messages.lock().expect("queue lock").pop_front()
    }

    /// Adds a message at the end (a redelivery, in tests and the local driver).
    pub fn push(&self, body: String) {
        self.messages.lock().expect("queue lock").push_back(body);
    }

    /// The waiting messages, oldest first, left in place.
    pub fn messages(&self) -> Vec<String> {
        self.messages
            .lock()
            .expect("queue lock")
            .iter()
            .cloned()
            .collect()
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.messages.lock().expect("queue lock").len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Queue for InProcessQueue {
    async fn send_all(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        self.messages.lock().expect("queue lock").extend(bodies);
        Ok(())
    }
}

impl Drain for InProcessQueue {
    async fn drain(&self) -> Result<Vec<String>, QueueError> {
        Ok(self
            .messages
            .lock()
            .expect("queue lock")
            .drain(..)
            .collect())
    }
}

impl<T: Queue> Queue for &T {
    async fn send_all(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        (**self).send_all(bodies).await
    }
    async fn send_delayed(&self, bodies: Vec<String>, delay_s: u32) -> Result<(), QueueError> {
        (**self).send_delayed(bodies, delay_s).await
    }
}

impl<T: Drain> Drain for &T {
    async fn drain(&self) -> Result<Vec<String>, QueueError> {
        (**self).drain().await
    }
}
