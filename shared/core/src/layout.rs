//! Where everything of a run lives, as object keys. One place, so the splitter, featurizer,
//! reducer, status and tests agree.
//!
//! The Parquet folders `Results/<run>/` and `Results_PCA/<run>/` hold only `part-*.parquet`
//! and `_SUCCESS`, so Spark, pyarrow and DuckDB read each as one dataset; the run's JSON
//! documents live under `runs/<run>/`.

/// Prefix of run requests that start a run when created (S3 event).
pub const REQUESTS_PREFIX: &str = "runs/requests/";

/// Prefix of the request bindings: which run a request (one event, one client token) started.
pub const BINDINGS_PREFIX: &str = "runs/bindings/";

/// Where a request's binding to its run lives: `runs/bindings/<sha256 of its identity>.json`.
/// Created once, before the run's manifest, so that a retry of the same request lands on the
/// same run even when the input listing changed in between.
pub fn request_binding(identity: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest: String = Sha256::digest(identity.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{BINDINGS_PREFIX}{digest}.json")
}

/// The reserved run id under which the functions' health records live (`runs/_health/`,
/// [`crate::health`]).
pub const HEALTH_RUN_ID: &str = "_health";

/// Prefix of every run's intermediate objects (expired by a lifecycle rule).
pub const STAGING_PREFIX: &str = "staging/";

/// Key builder for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    run_id: String,
}

impl RunLayout {
    /// The layout of `run_id`.
    pub fn new(run_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
        }
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// `runs/<run>/`: the run's state and reports.
    pub fn run_prefix(&self) -> String {
        format!("runs/{}/", self.run_id)
    }
    /// The manifest: shards and their images.
    pub fn manifest(&self) -> String {
        format!("runs/{}/manifest.json", self.run_id)
    }
    /// One shard's image list, written by the splitter before the manifest (which commits
    /// the run). Under the run's fingerprint, so a refused request reusing the run id never
    /// overwrites the lists of the run that owns it.
    pub fn shard_list(&self, fingerprint: &str, shard: usize) -> String {
        let fp = &fingerprint[..fingerprint.len().min(16)];
        format!("runs/{}/shards/{fp}/shard-{shard:05}.json", self.run_id)
    }
    /// Prefix of the shards' done markers.
    pub fn done_prefix(&self) -> String {
        format!("runs/{}/done/", self.run_id)
    }
    /// A shard's done marker: created once (conditionally), it names the attempt whose
    /// part, statistics and errors are the shard's. It is the shard's commit point.
    pub fn done_marker(&self, shard: usize) -> String {
        format!("runs/{}/done/shard-{shard:05}.json", self.run_id)
    }
    /// `staging/<run>/`: the run's intermediate objects (attempts' parts, statistics and
    /// errors). The reducer deletes it after `_SUCCESS`; a lifecycle rule on `staging/`
    /// expires what a failed run leaves.
    /// A node of the completion barrier's tree ([`crate::batch::barrier`]), under the done
    /// prefix (the featurizer's grants there cover it; [`shard_of_done_marker`] skips it).
    pub fn barrier_node(&self, level: u32, index: usize) -> String {
        format!(
            "runs/{}/done/tree/node-{level:02}-{index:05}.json",
            self.run_id
        )
    }
    pub fn staging_prefix(&self) -> String {
        format!("{STAGING_PREFIX}{}/", self.run_id)
    }
    /// Where one attempt at a shard keeps its outputs until the done marker commits them.
    /// Attempts never share keys, so interleaved attempts cannot mix their objects.
    pub fn attempt_prefix(&self, shard: usize, attempt: &str) -> String {
        format!("{}shard-{shard:05}/{attempt}/", self.staging_prefix())
    }
    /// An attempt's features part (published to `Results` once committed).
    pub fn attempt_part(&self, shard: usize, attempt: &str) -> String {
        format!("{}part.parquet", self.attempt_prefix(shard, attempt))
    }
    /// An attempt's PCA statistics (count, mean, co-moment).
    pub fn attempt_stats(&self, shard: usize, attempt: &str) -> String {
        format!("{}stats.bin", self.attempt_prefix(shard, attempt))
    }
    /// An attempt's per-image errors.
    pub fn attempt_errors(&self, shard: usize, attempt: &str) -> String {
        format!("{}errors.json", self.attempt_prefix(shard, attempt))
    }
    /// The last failure of the reduce (for `status`).
    pub fn reduce_failure(&self) -> String {
        format!("runs/{}/failures/reduce.json", self.run_id)
    }
    /// The barrier's claim: whoever creates it sends the reduce message.
    pub fn reduce_claim(&self) -> String {
        format!("runs/{}/_reduce.claim", self.run_id)
    }
    /// The reducer's lock, so that one reducer at a time writes.
    pub fn reduce_lock(&self) -> String {
        format!("runs/{}/_reduce.lock", self.run_id)
    }
    /// The merged error list of the run.
    pub fn errors(&self) -> String {
        format!("runs/{}/errors.json", self.run_id)
    }
    /// The run summary (counts, timings, explained variance, cost).
    pub fn summary(&self) -> String {
        format!("runs/{}/summary.json", self.run_id)
    }
    /// The run's HTML report.
    pub fn report(&self) -> String {
        format!("runs/{}/report.html", self.run_id)
    }
    /// The fitted PCA model.
    pub fn pca_model(&self) -> String {
        format!("runs/{}/pca_model.json", self.run_id)
    }
    /// `Results/<run>/`: features dataset.
    pub fn results_prefix(&self) -> String {
        format!("Results/{}/", self.run_id)
    }
    /// A shard's features part.
    pub fn results_part(&self, shard: usize) -> String {
        format!("Results/{}/part-{shard:05}.parquet", self.run_id)
    }
    /// Written by the reducer once every committed part is published.
    pub fn results_success(&self) -> String {
        format!("Results/{}/_SUCCESS", self.run_id)
    }
    /// `Results_PCA/<run>/`: projections dataset.
    pub fn pca_prefix(&self) -> String {
        format!("Results_PCA/{}/", self.run_id)
    }
    /// A shard's projections part.
    pub fn pca_part(&self, shard: usize) -> String {
        format!("Results_PCA/{}/part-{shard:05}.parquet", self.run_id)
    }
    /// Written last of all: the run is complete.
    pub fn pca_success(&self) -> String {
        format!("Results_PCA/{}/_SUCCESS", self.run_id)
    }
}

/// The shard number of a done marker key, if it is one.
pub fn shard_of_done_marker(key: &str) -> Option<usize> {
    let name = key.rsplit('/').next()?;
    name.strip_prefix("shard-")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_marker_round_trip() {
        let layout = RunLayout::new("r1");
        assert_eq!(shard_of_done_marker(&layout.done_marker(42)), Some(42));
        assert!(layout.done_marker(3).starts_with(&layout.done_prefix()));
        assert_eq!(shard_of_done_marker("runs/r1/done/other.json"), None);
        let node = layout.barrier_node(3, 7);
        assert!(node.starts_with(&layout.done_prefix()));
        assert_eq!(shard_of_done_marker(&node), None, "not a shard's marker");
        let a = layout.attempt_part(3, "a1");
        let b = layout.attempt_part(3, "b2");
        assert_ne!(a, b, "attempts never share keys");
        let bound = request_binding("s3://b/runs/requests/x.json#seq1");
        assert!(bound.starts_with(BINDINGS_PREFIX) && bound.ends_with(".json"));
        assert_ne!(bound, request_binding("s3://b/runs/requests/x.json#seq2"));
        assert!(a.starts_with(&layout.attempt_prefix(3, "a1")));
    }
}
