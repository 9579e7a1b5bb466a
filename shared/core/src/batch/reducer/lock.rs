//! The reducer's lock and its commit point, both one object: `runs/<run>/_reduce.lock`.
//!
//! The lock is created once (`If-None-Match: *`) and only ever replaced conditionally on its
//! entity tag (`If-Match`): by a takeover (a new generation), a release, or the commit. Each
//! delivery of a reduce message holds it under its own token (the message id and a random
//! nonce), so two deliveries of one message exclude each other. A holder remembers the tag
//! of the lock as it wrote it; its commit — the lock rewritten with `committed` set — is
//! accepted only while that tag is current, so a reducer whose lock was taken over (or
//! released) can never commit, and nothing becomes visible without a commit.
//!
//! Every conditional write here reads back who won when its answer is "lost" or a transient
//! error: a write that S3 applied while its response was lost (and that a retry then found
//! done) is recognized by the token inside the document, never mistaken for another's.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::Reducer;
use crate::error::{Error, Result};
use crate::layout::RunLayout;
use crate::manifest::unix_now;
use crate::ports::store::{ObjectStore, StoreError, Versioned};

/// The reducer's lock content. It is only ever replaced conditionally (on its ETag), and
/// each takeover increments `generation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceLock {
    /// Who holds it: the reduce message's id and a nonce of this delivery.
    pub owner: String,
    /// Incremented by every takeover.
    #[serde(default)]
    pub generation: u64,
    /// Unix seconds when taken.
    pub acquired_at: u64,
    /// Set by a reducer that failed and let go: the next one may take over at once.
    #[serde(default)]
    pub released: bool,
    /// Set by the holder's commit: the run's outputs are the ones it staged. Once set, the
    /// lock is never taken over again; anyone publishes the committed outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<ReduceCommit>,
}

/// The commit of one generation's outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceCommit {
    /// The committing holder's token.
    pub owner: String,
    /// Its generation.
    pub generation: u64,
    /// Whether the run succeeded (a PCA) or failed (too many image errors, no PCA).
    pub succeeded: bool,
    /// The staged list of outputs to publish (`runs/<run>/reduce/g<generation>/outputs.json`).
    pub outputs: String,
    /// Its sha256: what publishers check before copying anything.
    pub outputs_sha256: String,
    /// Unix seconds of the commit.
    pub committed_at: u64,
}

/// What a reducer holds while it reduces: its token, generation, and the lock's entity tag
/// as it wrote it (the condition of its commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken {
    /// The lock's owner (unique to this delivery).
    pub owner: String,
    /// Its generation.
    pub generation: u64,
    /// When it was taken (Unix seconds), kept in the commit.
    pub acquired_at: u64,
    /// The lock's entity tag as this holder wrote it.
    pub etag: String,
}

/// The outcome of taking the lock.
#[derive(Debug, Clone, PartialEq)]
pub enum Acquired {
    /// This delivery holds it.
    Held(LockToken),
    /// A reducer already committed the run's outputs: publish them (no lock needed).
    Committed(ReduceCommit),
}

/// A token unique to one delivery of a reduce message (`<message id>#<nonce>`): a duplicate
/// delivery of the same message, or a retry, is another holder.
pub fn delivery_token(message_id: &str) -> String {
    format!("{message_id}#{:016x}", fastrand::u64(..))
}

impl<S: ObjectStore> Reducer<S> {
    /// The lock and its entity tag, if any.
    pub(super) async fn read_lock(
        &self,
        layout: &RunLayout,
    ) -> Result<Option<(ReduceLock, String)>> {
        match self.store.get_versioned(&layout.reduce_lock()).await {
            Ok(Versioned { body, etag }) => Ok(Some((serde_json::from_slice(&body)?, etag))),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the run's lock for `owner` (a [`delivery_token`]): creates it, or takes it over
    /// (conditionally on its ETag) when its holder released it or is stale. When a reducer
    /// already committed, returns its commit instead.
    pub async fn lock(&self, layout: &RunLayout, owner: &str) -> Result<Acquired> {
        let key = layout.reduce_lock();
        for _ in 0..3 {
            let fresh = ReduceLock {
                owner: owner.to_string(),
                generation: 1,
                acquired_at: unix_now(),
                released: false,
                committed: None,
            };
            let created = self
                .store
                .put_if_absent(&key, serde_json::to_vec(&fresh)?.into())
                .await;
            // Created, "exists" or no answer: the stored lock says who holds it (a create of
            // ours whose answer was lost included).
            let doubt = match created {
                Ok(_) => None,
                Err(e) if e.is_transient() => Some(e),
                Err(e) => return Err(e.into()),
            };
            let Some((held, etag)) = self.read_lock(layout).await? else {
                match doubt {
                    Some(e) => return Err(e.into()),
                    None => continue,
                }
            };
            if let Some(commit) = held.committed {
                return Ok(Acquired::Committed(commit));
            }
            if held.owner == owner && !held.released {
                return Ok(Acquired::Held(LockToken {
                    owner: owner.to_string(),
                    generation: held.generation,
                    acquired_at: held.acquired_at,
                    etag,
                }));
            }
            let age = unix_now().saturating_sub(held.acquired_at);
            if !held.released && age < self.settings.lock_stale_after.as_secs() {
                return Err(Error::RunState(format!(
                    "run {} is being reduced by {} (lock taken {age} s ago); retry later",
                    layout.run_id(),
                    held.owner
                )));
            }
            let next = ReduceLock {
                owner: owner.to_string(),
                generation: held.generation + 1,
                acquired_at: unix_now(),
                released: false,
                committed: None,
            };
            warn!(run_id = layout.run_id(), holder = %held.owner, age, released = held.released,
                generation = next.generation, "taking over the reduce lock");
            match self
                .store
                .put_if_match(&key, serde_json::to_vec(&next)?.into(), &etag)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e.into()),
            }
            // Whatever the answer, the stored lock says whether the takeover is ours.
            if let Some((now, etag)) = self.read_lock(layout).await? {
                if let Some(commit) = now.committed {
                    return Ok(Acquired::Committed(commit));
                }
                if now.owner == owner && now.generation == next.generation && !now.released {
                    return Ok(Acquired::Held(LockToken {
                        owner: owner.to_string(),
                        generation: now.generation,
                        acquired_at: now.acquired_at,
                        etag,
                    }));
                }
            }
        }
        Err(Error::RunState(format!(
            "could not take the reduce lock of run {}: another reducer took it",
            layout.run_id()
        )))
    }

    /// Whether `token` still holds the lock, uncommitted.
    pub(super) async fn holds(&self, layout: &RunLayout, token: &LockToken) -> Result<bool> {
        Ok(self.read_lock(layout).await?.is_some_and(|(held, _)| {
            held.owner == token.owner
                && held.generation == token.generation
                && !held.released
                && held.committed.is_none()
        }))
    }

    /// Checked before each expensive step, to stop early once the lock was taken over. (Not
    /// what keeps a stale reducer's outputs invisible: the commit does that.)
    pub(super) async fn fence(&self, layout: &RunLayout, token: &LockToken) -> Result<()> {
        if self.holds(layout, token).await? {
            Ok(())
        } else {
            Err(lost(layout, token))
        }
    }

    /// Commits this holder's staged outputs: the lock rewritten with `committed`, only if it
    /// is still exactly the lock this holder wrote. A lost answer is read back.
    pub(super) async fn commit(
        &self,
        layout: &RunLayout,
        token: &LockToken,
        commit: ReduceCommit,
    ) -> Result<ReduceCommit> {
        let lock = ReduceLock {
            owner: token.owner.clone(),
            generation: token.generation,
            acquired_at: token.acquired_at,
            released: false,
            committed: Some(commit.clone()),
        };
        let written = self
            .store
            .put_if_match(
                &layout.reduce_lock(),
                serde_json::to_vec(&lock)?.into(),
                &token.etag,
            )
            .await;
        let doubt = match written {
            Ok(true) => return Ok(commit),
            Ok(false) => None,
            Err(e) if e.is_transient() => Some(e),
            Err(e) => return Err(e.into()),
        };
        match self.read_lock(layout).await? {
            Some((held, _)) if held.committed.as_ref() == Some(&commit) => {
                info!(
                    run_id = layout.run_id(),
                    "the commit landed (its answer was lost)"
                );
                Ok(commit)
            }
            // Still ours and uncommitted: the write did not land; retry later.
            Some((held, _))
                if doubt.is_some()
                    && held.owner == token.owner
                    && held.generation == token.generation
                    && held.committed.is_none() =>
            {
                Err(doubt.expect("checked").into())
            }
            _ => Err(lost(layout, token)),
        }
    }

    /// Marks the lock released if it is still exactly the one this holder wrote (never
    /// someone else's): the next delivery takes over at once.
    pub(super) async fn release(&self, layout: &RunLayout, token: &LockToken) {
        let lock = ReduceLock {
            owner: token.owner.clone(),
            generation: token.generation,
            acquired_at: token.acquired_at,
            released: true,
            committed: None,
        };
        let result = async {
            Ok::<_, Error>(
                self.store
                    .put_if_match(
                        &layout.reduce_lock(),
                        serde_json::to_vec(&lock)?.into(),
                        &token.etag,
                    )
                    .await?,
            )
        }
        .await;
        if let Err(e) = result {
            warn!(error = %e, "could not release the reduce lock");
        }
    }

    /// Releases the lock if `owner` holds it uncommitted: after a failed attempt to take it
    /// whose create or takeover may have landed unseen.
    pub(super) async fn release_owner(&self, layout: &RunLayout, owner: &str) {
        if let Ok(Some((held, etag))) = self.read_lock(layout).await {
            if held.owner == owner && !held.released && held.committed.is_none() {
                let token = LockToken {
                    owner: held.owner,
                    generation: held.generation,
                    acquired_at: held.acquired_at,
                    etag,
                };
                self.release(layout, &token).await;
            }
        }
    }
}

fn lost(layout: &RunLayout, token: &LockToken) -> Error {
    Error::LostLock(format!(
        "run {}: {} (generation {}) no longer holds the reduce lock; none of its outputs is \
         visible",
        layout.run_id(),
        token.owner,
        token.generation
    ))
}
