//! Attempt-started records: each delivery of a shard message writes one before it fetches
//! anything, so that `status` can tell a shard that is being worked on from one whose
//! messages died without a failure record (an init failure, an out-of-memory kill, a hard
//! timeout) and were dead-lettered after the queue's receive limit.

use serde::{Deserialize, Serialize};

use crate::layout::RunLayout;

/// The last start of a shard (overwritten by each delivery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStart {
    /// The shard.
    pub shard: usize,
    /// The delivery count (SQS `ApproximateReceiveCount`; 1 when unknown, as locally).
    pub receive_count: u32,
    /// The attempt id of this delivery (its staging folder).
    pub attempt: String,
    /// When it started (Unix seconds).
    pub at_unix: u64,
}

/// Prefix of a run's attempt-started records.
pub fn started_prefix(layout: &RunLayout) -> String {
    format!("{}started/", layout.run_prefix())
}

/// Key of a shard's attempt-started record.
pub fn started_key(layout: &RunLayout, shard: usize) -> String {
    format!("{}shard-{shard:05}.json", started_prefix(layout))
}

/// The shard number of an attempt-started key, if it is one (named as the done markers are).
pub fn shard_of_started_key(key: &str) -> Option<usize> {
    crate::layout::shard_of_done_marker(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_key_round_trip() {
        let layout = RunLayout::new("r1");
        let key = started_key(&layout, 7);
        assert!(key.starts_with(&started_prefix(&layout)));
        assert_eq!(shard_of_started_key(&key), Some(7));
        assert_eq!(shard_of_started_key("runs/r1/started/x.json"), None);
    }
}
