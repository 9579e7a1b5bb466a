//! "Stuck": a run or a collection that has stopped moving and will not move by itself, with
//! the reason and the remedy. One definition for [`crate::batch::status`] (runs),
//! [`crate::continuous::collection::collection_status`] (collections) and the scheduled
//! checker on AWS (`aws::checker`), so `featurize status`, `status --watch` and the
//! `Featurize/StuckRuns` / `Featurize/StuckCollections` alarms agree.
//!
//! Every rule is a time bound derived from the deployment's own timeouts and receive limit
//! ([`StallPolicy`], whose defaults are the SAM template's parameter defaults), evaluated
//! against an injectable [`Clock`], so that tests move time instead of sleeping:
//!
//! | fault | stuck once (from) | default |
//! |---|---|---|
//! | shard lost without a done marker | last start + (MaxReceiveCount − its receive count) × shard visibility + featurizer timeout + margin | 240 s after the 5th start; 4,560 s after a 1st start with no redelivery |
//! | no featurizer started | manifest + start grace | 600 s |
//! | every shard done, no claim | newest done marker + shard visibility + featurizer timeout + margin | 1,320 s |
//! | claim without a lock | claim + start grace | 600 s |
//! | stale reducer lock | lock + max(reduce visibility, reducer timeout) + margin | 1,860 s |
//! | reduce failed (lock released) | at once | 0 s |
//! | collection change pending | oldest pending change + max staleness + reducer timeout + margin | 1,260 s |
//! | refit lost | last refit start + (MaxReceiveCount − its receive count) × refit visibility + reducer timeout + margin | 360 s after the 5th start |
//! | dangling collection pointer | at once | 0 s |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What "now" is, for the stuck rules: the system clock in production, a fixed clock in tests.
pub trait Clock: Send + Sync {
    /// Unix milliseconds.
    fn now_ms(&self) -> u64;
    /// Unix seconds.
    fn now_unix(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::manifest::unix_now_ms()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Default)]
pub struct FixedClock {
    ms: AtomicU64,
}

impl FixedClock {
    /// A clock standing at `unix` seconds.
    pub fn at_unix(unix: u64) -> Self {
        Self {
            ms: AtomicU64::new(unix * 1000),
        }
    }
    /// Sets it to `unix` seconds.
    pub fn set_unix(&self, unix: u64) {
        self.ms.store(unix * 1000, Ordering::SeqCst);
    }
    /// Moves it forward.
    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// Which rule found a run or a collection stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StuckKind {
    /// Shards not done whose messages will not be delivered again (dead-lettered, possibly
    /// without any failure record: an init failure, out of memory, a hard timeout).
    ShardsLost,
    /// No featurizer started any shard of the run within the start grace.
    NoFeaturizerStarted,
    /// Every shard is done but no featurizer claimed the reduce.
    NoClaim,
    /// The reduce was claimed but no reducer took the lock.
    ClaimWithoutLock,
    /// A reducer died holding the lock and no retry took it over.
    StaleLock,
    /// The reduce failed (its failure record) and let go of the lock.
    ReduceFailed,
    /// A collection's changes wait longer than the staleness bound plus one refit.
    PendingTooOld,
    /// A collection's refit will not be delivered again (dead-lettered).
    RefitLost,
    /// A collection's `current.json` names a snapshot that is not (or no longer) complete.
    DanglingPointer,
    /// The featurizer fails at cold start: its layer's model is not the stack's
    /// `ModelSha256` ([`crate::health`]).
    ModelMismatch,
    /// A collection holds (or waits to fold) the features of two models: its refits refuse.
    ModelsMixed,
}

/// Why and since when a run or a collection is stuck, and what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stuck {
    /// Which rule.
    pub kind: StuckKind,
    /// Since when it has not moved (RFC 3339).
    pub since: String,
    /// What happened.
    pub reason: String,
    /// What to do: the exact command or action.
    pub remedy: String,
}

impl Stuck {
    /// A stuck finding; `since_unix` is when the run or collection stopped moving.
    pub fn new(
        kind: StuckKind,
        since_unix: u64,
        reason: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            since: rfc3339_of(since_unix),
            reason: reason.into(),
            remedy: remedy.into(),
        }
    }
}

/// RFC 3339 of Unix seconds (the number itself if out of range).
pub fn rfc3339_of(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// The template's defaults the bounds derive from (`template.yaml` parameters; the e2e test
/// `template::stall_policy_defaults_are_the_template_defaults` keeps them equal).
pub mod defaults {
    /// `FeaturizerTimeout` (s).
    pub const FEATURIZER_TIMEOUT_S: u64 = 180;
    /// `ShardQueueVisibilityTimeout` (s).
    pub const SHARD_VISIBILITY_S: u64 = 1080;
    /// `ReducerTimeout` (s).
    pub const REDUCER_TIMEOUT_S: u64 = 300;
    /// `ReduceQueueVisibilityTimeout` (s), also the refit queue's.
    pub const REDUCE_VISIBILITY_S: u64 = 1800;
    /// `MaxReceiveCount`.
    pub const MAX_RECEIVE_COUNT: u32 = 5;
    /// How long a run may wait for its first featurizer, or a claimed reduce for its reducer.
    pub const START_GRACE_S: u64 = 600;
    /// Slack on every bound (clock skew, a cold start, queue latency).
    pub const MARGIN_S: u64 = 60;
    /// `MaxStalenessSecs`: a collection's change is visible within this (plus one refit).
    pub const MAX_STALENESS_S: u64 = 900;
}

/// When a run or a collection is called stuck: the deployment's timeouts and receive limit,
/// a start grace and a margin. Every bound is a method, so the code, the docs table and the
/// alarms state the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StallPolicy {
    /// The featurizer's timeout (`FeaturizerTimeout`).
    pub featurizer_timeout: Duration,
    /// The shard queue's visibility timeout: a failed delivery comes back after it.
    pub shard_visibility: Duration,
    /// The reducer's timeout (`ReducerTimeout`); refits run in the reducer too.
    pub reducer_timeout: Duration,
    /// The reduce (and refit) queue's visibility timeout.
    pub reduce_visibility: Duration,
    /// Deliveries of a message before it is dead-lettered (`MaxReceiveCount`).
    pub max_receive_count: u32,
    /// How long a run may wait for its first featurizer.
    pub start_grace: Duration,
    /// A claim this old without a reducer lock: the reduce message was lost, or its reducer
    /// fails before it starts (init).
    pub claim_unanswered_after: Duration,
    /// Slack added to every derived bound.
    pub margin: Duration,
    /// A collection's staleness bound (`MaxStalenessSecs`).
    pub max_staleness: Duration,
}

impl Default for StallPolicy {
    fn default() -> Self {
        use defaults::*;
        Self {
            featurizer_timeout: Duration::from_secs(FEATURIZER_TIMEOUT_S),
            shard_visibility: Duration::from_secs(SHARD_VISIBILITY_S),
            reducer_timeout: Duration::from_secs(REDUCER_TIMEOUT_S),
            reduce_visibility: Duration::from_secs(REDUCE_VISIBILITY_S),
            max_receive_count: MAX_RECEIVE_COUNT,
            start_grace: Duration::from_secs(START_GRACE_S),
            claim_unanswered_after: Duration::from_secs(START_GRACE_S),
            margin: Duration::from_secs(MARGIN_S),
            max_staleness: Duration::from_secs(MAX_STALENESS_S),
        }
    }
}

impl StallPolicy {
    /// Deliveries left after a delivery with `receive_count` (0 at or past the limit).
    fn left(&self, receive_count: u32) -> u32 {
        self.max_receive_count.saturating_sub(receive_count.max(1))
    }

    /// A shard not done whose last delivery (`receive_count`) started this long ago is lost:
    /// every delivery left would have started within one visibility timeout of the one
    /// before and replaced the start record, and the last one would have ended within the
    /// featurizer's timeout. At the receive limit: the timeout plus the margin.
    pub fn shard_lost_after(&self, receive_count: u32) -> Duration {
        self.shard_visibility * self.left(receive_count) + self.featurizer_timeout + self.margin
    }

    /// A run with no shard started and none done this long after its manifest was written.
    pub fn no_start_after(&self) -> Duration {
        self.start_grace
    }

    /// Every shard done this long after the newest done marker and still no claim: the
    /// barrier's retry (a redelivery after the visibility timeout) would have claimed.
    pub fn no_claim_after(&self) -> Duration {
        self.shard_visibility + self.featurizer_timeout + self.margin
    }

    /// A lock (not released) this old: its reducer is dead (older than the timeout) and no
    /// redelivery took it over within a visibility timeout.
    pub fn lock_dead_after(&self) -> Duration {
        self.reduce_visibility.max(self.reducer_timeout) + self.margin
    }

    /// A collection change pending this long: the staleness bound plus one refit.
    pub fn pending_too_old_after(&self) -> Duration {
        self.max_staleness + self.reducer_timeout + self.margin
    }

    /// A refit whose last delivery (`receive_count`) started this long ago, with nothing
    /// published since, is lost (the same rule as [`Self::shard_lost_after`]).
    pub fn refit_lost_after(&self, receive_count: u32) -> Duration {
        self.reduce_visibility * self.left(receive_count) + self.reducer_timeout + self.margin
    }

    /// The bounds, one line each (for `--help`, logs and the docs).
    pub fn describe(&self) -> Vec<(StuckKind, String)> {
        let s = |d: Duration| format!("{} s", d.as_secs());
        let max = self.max_receive_count;
        vec![
            (
                StuckKind::ShardsLost,
                format!(
                    "a shard not done, {} after its last start at receive {max} of {max} ({} after a first start with no redelivery)",
                    s(self.shard_lost_after(max)),
                    s(self.shard_lost_after(1))
                ),
            ),
            (
                StuckKind::NoFeaturizerStarted,
                format!("no shard started {} after the manifest", s(self.no_start_after())),
            ),
            (
                StuckKind::NoClaim,
                format!(
                    "every shard done, no claim {} after the last done marker",
                    s(self.no_claim_after())
                ),
            ),
            (
                StuckKind::ClaimWithoutLock,
                format!("a claim, no lock {} after the claim", s(self.claim_unanswered_after)),
            ),
            (
                StuckKind::StaleLock,
                format!("a lock not released {} after it was taken", s(self.lock_dead_after())),
            ),
            (StuckKind::ReduceFailed, "a reduce failure record: at once".into()),
            (
                StuckKind::PendingTooOld,
                format!(
                    "a collection change pending {} after it landed",
                    s(self.pending_too_old_after())
                ),
            ),
            (
                StuckKind::RefitLost,
                format!(
                    "a refit not published {} after its last start at receive {max} of {max}",
                    s(self.refit_lost_after(max))
                ),
            ),
            (
                StuckKind::DanglingPointer,
                "current.json naming an incomplete snapshot: at once".into(),
            ),
            (
                StuckKind::ModelMismatch,
                "a featurizer cold start with another model than ModelSha256: at once".into(),
            ),
            (
                StuckKind::ModelsMixed,
                "a collection with features of two models (snapshot, deltas): at once".into(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_bounds_follow_the_template_timeouts() {
        let p = StallPolicy::default();
        // At the receive limit: the featurizer's timeout plus the margin.
        assert_eq!(p.shard_lost_after(5), Duration::from_secs(180 + 60));
        assert_eq!(p.shard_lost_after(9), Duration::from_secs(240));
        // A first delivery: four more deliveries, each within a visibility timeout.
        assert_eq!(p.shard_lost_after(1), Duration::from_secs(4 * 1080 + 240));
        assert_eq!(p.shard_lost_after(0), p.shard_lost_after(1));
        assert_eq!(p.no_start_after(), Duration::from_secs(600));
        assert_eq!(p.no_claim_after(), Duration::from_secs(1080 + 180 + 60));
        assert_eq!(p.claim_unanswered_after, Duration::from_secs(600));
        assert_eq!(p.lock_dead_after(), Duration::from_secs(1800 + 60));
        assert_eq!(
            p.pending_too_old_after(),
            Duration::from_secs(900 + 300 + 60)
        );
        assert_eq!(p.refit_lost_after(5), Duration::from_secs(360));
        assert_eq!(p.describe().len(), 11);
    }

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let clock = FixedClock::at_unix(1_000);
        assert_eq!(clock.now_unix(), 1_000);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now_ms(), 1_001_500);
        clock.set_unix(5);
        assert_eq!(clock.now_unix(), 5);
        assert!(SystemClock.now_unix() > 1_700_000_000);
        assert_eq!(rfc3339_of(0), "1970-01-01T00:00:00Z");
    }
}
