//! The engine's error type: what can go wrong fitting a PCA or reading shard statistics.

use thiserror::Error;

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the statistics or the PCA could not be computed.
#[derive(Debug, Error)]
pub enum Error {
    /// An option is invalid (an unknown PCA convention, ...).
    #[error("invalid run request: {0}")]
    InvalidRequest(String),
    /// The PCA could not be fitted (too few rows, eigen-solver failure, ...).
    #[error("pca: {0}")]
    Pca(String),
    /// Shard statistics were corrupt or of the wrong dimension.
    #[error("shard statistics {key}: {reason}")]
    Stats {
        /// The statistics object's key.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
}
