//! The completion barrier: which featurizer learns that every shard of a run is done, in
//! O(log shards) requests per shard instead of a listing of every done marker.
//!
//! A binary tree over the shard ids. Its leaves are the shards' done markers
//! (`runs/<run>/done/shard-N.json`); node `(level, index)` covers shards
//! `[index * 2^level, (index + 1) * 2^level)` and, once that range is complete, exists as
//! `runs/<run>/done/tree/node-LL-IIIII.json` ([`RunLayout::barrier_node`]). A range past the
//! last shard is empty, hence complete, and never written.
//!
//! After its done marker exists, a shard climbs: at each level it asks whether its node's
//! sibling exists (one HEAD). If not, it stops — the sibling subtree's last climber will find
//! ours, because each climber creates its own node *before* it looks at the sibling, and S3
//! is strongly consistent (read-after-write): of two climbers racing at the same parent, at
//! least one sees the other. If the sibling exists, it creates the parent (create-once,
//! `If-None-Match`) and goes on. Whoever created the parent does not matter: completion is
//! monotone, so a create that finds the node already there (a racing sibling's, or our own
//! whose answer was lost) is the same news, and every climber that gets there may climb on.
//! Duplicate deliveries re-climb the same way. A climber that reaches the root goes to the
//! reduce claim (create-once with its read-back, in the featurizer), so one reduce is sent.
//!
//! Cost per shard: at most one HEAD and one conditional PUT per level, `2 * ceil(log2 n)`
//! requests, against a LIST of all `n` markers (`n / 1000` pages) per shard before.
//!
//! A climber that dies between two steps leaves its message to be delivered again; if it
//! never is (dead-lettered), the run's status finds every shard done without a claim and
//! names `featurize resume`, which lists the done markers itself (not the hot path).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::layout::RunLayout;
use crate::ports::store::ObjectStore;

/// A tree node's content: who created it first (for logs; nothing reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarrierNode {
    /// The tree level (1 = pairs of shards).
    pub level: u32,
    /// The node's index at its level.
    pub index: usize,
    /// The shard whose climber created it.
    pub by_shard: usize,
    /// A token of that climber (its attempt or delivery).
    pub token: String,
    /// When (Unix milliseconds).
    pub at_ms: u64,
}

/// The number of levels above the leaves: the smallest `h` with `2^h >= shards`.
pub fn height(shards: usize) -> u32 {
    shards.max(1).next_power_of_two().trailing_zeros()
}

/// Whether node `(level, index)` covers no shard of a run of `shards` (so is complete).
fn is_empty(shards: usize, level: u32, index: usize) -> bool {
    index
        .checked_shl(level)
        .filter(|start| start >> level == index)
        .is_none_or(|start| start >= shards)
}

/// The key of node `(level, index)`: the done marker itself at level 0.
fn node_key(layout: &RunLayout, level: u32, index: usize) -> String {
    if level == 0 {
        layout.done_marker(index)
    } else {
        layout.barrier_node(level, index)
    }
}

/// Climbs from `shard`'s done marker (which must exist) as far as the tree is complete.
/// Returns `true` when this climber reached the root: every shard of the run is done.
/// `token` identifies the climber in the nodes it creates.
pub async fn climb<S: ObjectStore>(
    store: &S,
    layout: &RunLayout,
    shards: usize,
    shard: usize,
    token: &str,
) -> Result<bool> {
    let top = height(shards);
    let mut index = shard;
    for level in 0..top {
        let sibling = index ^ 1;
        let sibling_done = is_empty(shards, level, sibling)
            || store.exists(&node_key(layout, level, sibling)).await?;
        if !sibling_done {
            return Ok(false);
        }
        index >>= 1;
        if level + 1 == top {
            // The root: its existence would tell nobody anything (the claim follows).
            break;
        }
        let node = BarrierNode {
            level: level + 1,
            index,
            by_shard: shard,
            token: token.to_string(),
            at_ms: crate::manifest::unix_now_ms(),
        };
        // Created, or already there (a racing sibling's, or ours with its answer lost):
        // either way the parent is complete, and we climb on.
        store
            .put_if_absent(
                &node_key(layout, level + 1, index),
                serde_json::to_vec(&node)?.into(),
            )
            .await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::counting::{Counters, CountingStore};
    use crate::ports::store::{Bytes, FsStore};

    #[test]
    fn heights_and_empty_ranges() {
        assert_eq!(
            [1, 2, 3, 4, 5, 1000, 1024, 1025].map(height),
            [0, 1, 2, 2, 3, 10, 10, 11]
        );
        // 5 shards: level 1 has nodes 0..=2 (node 2 = shard 4 alone), node 3 is empty.
        assert!(!is_empty(5, 1, 2));
        assert!(is_empty(5, 1, 3));
        assert!(is_empty(5, 0, 5));
        assert!(is_empty(5, 63, 2), "no overflow");
    }

    async fn finish(store: &FsStore, layout: &RunLayout, shards: usize, shard: usize) -> bool {
        store
            .put(&layout.done_marker(shard), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        climb(store, layout, shards, shard, "t").await.unwrap()
    }

    #[tokio::test]
    async fn exactly_the_last_shard_reaches_the_root_in_any_order() {
        for shards in [1usize, 2, 3, 7, 16, 33] {
            let mut order: Vec<usize> = (0..shards).collect();
            fastrand::shuffle(&mut order);
            let dir = tempfile::tempdir().unwrap();
            let store = FsStore::new(dir.path());
            let layout = RunLayout::new("r");
            let mut reached = Vec::new();
            for (i, shard) in order.iter().enumerate() {
                if finish(&store, &layout, shards, *shard).await {
                    reached.push(i);
                }
            }
            assert_eq!(
                reached,
                vec![shards - 1],
                "{shards} shards, order {order:?}"
            );
            // A duplicate delivery of any shard re-climbs to the root once all are done.
            assert!(climb(&store, &layout, shards, order[0], "dup")
                .await
                .unwrap());
        }
    }

    #[tokio::test]
    async fn a_thousand_shards_cost_o_log_n_requests_each() {
        let shards = 1000;
        let dir = tempfile::tempdir().unwrap();
        let base = FsStore::new(dir.path());
        let layout = RunLayout::new("r");
        let mut worst = 0;
        let mut order: Vec<usize> = (0..shards).collect();
        fastrand::seed(30);
        fastrand::shuffle(&mut order);
        for shard in order {
            base.put(&layout.done_marker(shard), Bytes::from_static(b"{}"))
                .await
                .unwrap();
            let counters = Counters::new();
            let store = CountingStore::new(base.clone(), counters.clone());
            climb(&store, &layout, shards, shard, "t").await.unwrap();
            let usage = counters.usage();
            assert_eq!(usage.s3_list, 0, "no listing");
            worst = worst.max(usage.s3_get + usage.s3_put);
        }
        // 10 levels: at most one HEAD and one PUT each (no PUT for the root).
        assert!(worst <= 2 * height(shards) as u64, "{worst} requests");
        assert!(
            worst >= height(shards) as u64,
            "the last climber went up every level"
        );
    }
}
