//! The featurizer's cold-start health: whether the model it loaded is the one the stack
//! names (`ModelSha256`). A featurizer whose layer holds another model fails its init — no
//! shard and no ingested image is featurized with it — and first records why, best effort,
//! at [`featurizer_health_key`]; `status` and the stuck checker report every run with shards
//! left as stuck with the remedy, instead of shards that silently stop moving.
//!
//! The record lives under `runs/_health/` (`_health` is a reserved run id) in the folder of
//! the featurizer's failure records, which its role may already write and the checker's may
//! read. A later cold start with the right model overwrites it as healthy (it looks first,
//! so a healthy stack writes nothing).

use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use crate::error::Result;
use crate::layout::HEALTH_RUN_ID;
use crate::ports::store::{ObjectStore, StoreError};
use crate::stuck::{Stuck, StuckKind};

/// The featurizer's health record.
pub fn featurizer_health_key() -> String {
    format!("runs/{HEALTH_RUN_ID}/failures/featurizer-model.json")
}

/// What the last cold start of the featurizer found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelHealth {
    /// The loaded model is the expected one.
    pub ok: bool,
    /// `ModelSha256` (the stack's parameter, `MODEL_SHA256`).
    pub expected_sha256: String,
    /// sha256 of the model file the layer holds.
    pub loaded_sha256: String,
    /// The model file.
    pub model_path: String,
    /// When (RFC 3339).
    pub at: String,
    /// When (Unix seconds).
    pub at_unix: u64,
}

impl ModelHealth {
    /// The cold-start check: `Ok` when the loaded model is the expected one, else the
    /// (unhealthy) record to write and fail with.
    pub fn check(expected: &str, loaded: &str, model_path: &str) -> std::result::Result<(), Self> {
        if !expected.is_empty() && expected == loaded {
            return Ok(());
        }
        Err(Self::new(false, expected, loaded, model_path))
    }

    /// A record of now.
    pub fn new(ok: bool, expected: &str, loaded: &str, model_path: &str) -> Self {
        Self {
            ok,
            expected_sha256: expected.to_string(),
            loaded_sha256: loaded.to_string(),
            model_path: model_path.to_string(),
            at: crate::manifest::now_rfc3339(),
            at_unix: crate::manifest::unix_now(),
        }
    }

    /// What failed, naming both hashes.
    pub fn message(&self) -> String {
        if self.expected_sha256.is_empty() {
            return format!(
                "MODEL_SHA256 is not set: the featurizer cannot verify its model {} (sha256 {}); \
                 set the stack's ModelSha256",
                self.model_path, self.loaded_sha256
            );
        }
        format!(
            "the featurizer's model {} has sha256 {}, but the stack's ModelSha256 is {}: {}",
            self.model_path,
            self.loaded_sha256,
            self.expected_sha256,
            Self::REMEDY
        )
    }

    /// What to do about a mismatch.
    pub const REMEDY: &'static str =
        "deploy the layer whose sha256 matches ModelSha256, or update ModelSha256";

    /// The stuck finding of a run with shards left while this record says unhealthy.
    pub fn stuck(&self) -> Option<Stuck> {
        (!self.ok).then(|| {
            Stuck::new(
                StuckKind::ModelMismatch,
                self.at_unix,
                format!("the featurizer fails at cold start: {}", self.message()),
                format!(
                    "{}; then redrive the shard queue's dead letters or `featurize resume`",
                    Self::REMEDY
                ),
            )
        })
    }
}

/// Reads the featurizer's health record, if any.
pub async fn read_model_health<S: ObjectStore>(store: &S) -> Result<Option<ModelHealth>> {
    match store.get(&featurizer_health_key()).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The featurizer's cold-start check against the store: on a mismatch, records it (best
/// effort: a failed write is logged) and returns the record, whose message init fails with;
/// on a match, marks an earlier unhealthy record healthy.
pub async fn verify_model_at_cold_start<S: ObjectStore>(
    store: &S,
    expected: &str,
    loaded: &str,
    model_path: &str,
) -> std::result::Result<(), ModelHealth> {
    let key = featurizer_health_key();
    match ModelHealth::check(expected, loaded, model_path) {
        Err(unhealthy) => {
            error!(expected, loaded, model_path, "model mismatch at cold start");
            match serde_json::to_vec(&unhealthy) {
                Ok(body) => {
                    if let Err(e) = store.put(&key, body.into()).await {
                        warn!(error = %e, key, "could not record the model mismatch");
                    }
                }
                Err(e) => warn!(error = %e, "could not encode the model mismatch"),
            }
            Err(unhealthy)
        }
        Ok(()) => {
            let earlier = read_model_health(store).await;
            if matches!(&earlier, Ok(Some(h)) if !h.ok) {
                let healthy = ModelHealth::new(true, expected, loaded, model_path);
                if let Ok(body) = serde_json::to_vec(&healthy) {
                    if let Err(e) = store.put(&key, body.into()).await {
                        warn!(error = %e, key, "could not clear the model mismatch record");
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::store::FsStore;

    #[tokio::test]
    async fn a_mismatch_is_recorded_and_a_good_cold_start_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let (good, bad) = ("a".repeat(64), "b".repeat(64));
        // Healthy from the start: nothing written.
        verify_model_at_cold_start(&store, &good, &good, "/opt/m.onnx")
            .await
            .unwrap();
        assert_eq!(read_model_health(&store).await.unwrap(), None);
        let unhealthy = verify_model_at_cold_start(&store, &good, &bad, "/opt/m.onnx")
            .await
            .unwrap_err();
        let message = unhealthy.message();
        assert!(
            message.contains(&good) && message.contains(&bad),
            "{message}"
        );
        let stored = read_model_health(&store).await.unwrap().unwrap();
        assert!(!stored.ok);
        let stuck = stored.stuck().unwrap();
        assert_eq!(stuck.kind, StuckKind::ModelMismatch);
        assert!(stuck.remedy.contains(ModelHealth::REMEDY), "{stuck:?}");
        verify_model_at_cold_start(&store, &good, &good, "/opt/m.onnx")
            .await
            .unwrap();
        let stored = read_model_health(&store).await.unwrap().unwrap();
        assert!(stored.ok && stored.stuck().is_none());
        // Not set at all: refused too.
        let unset = ModelHealth::check("", &good, "/opt/m.onnx").unwrap_err();
        assert!(unset.message().contains("MODEL_SHA256 is not set"));
    }
}
