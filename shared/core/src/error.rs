//! The library's error type. Each variant keeps its source so logs show the whole chain.

use thiserror::Error;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the pipeline outside of a single bad image
/// (bad images are data, see [`crate::manifest::ImageError`]).
#[derive(Debug, Error)]
pub enum Error {
    /// An object-store operation failed.
    #[error(transparent)]
    Store(#[from] crate::ports::store::StoreError),
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] crate::ports::queue::QueueError),
    /// The ONNX model could not be loaded, optimized or run.
    #[error("model: {0}")]
    Model(#[from] engine::model::ModelError),
    /// Writing or reading Parquet failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// An Arrow array could not be built or read.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A JSON document (manifest, request, message, summary) did not parse or serialize.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Local file-system access failed outside the object store (input folder, model file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The run request or its options are invalid (bad prefix, k too large, ...).
    #[error("invalid run request: {0}")]
    InvalidRequest(String),
    /// A required environment variable is missing or malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// The engine could not compute the statistics or the PCA (too few rows, corrupt or
    /// mismatched shard statistics, an invalid option).
    #[error(transparent)]
    Engine(#[from] engine::error::Error),
    /// A run's stored state is inconsistent (missing manifest, unknown shard, ...).
    #[error("run state: {0}")]
    RunState(String),
    /// The run's committed objects break an invariant (rows + errors != listed images, a
    /// path twice, statistics that do not match their rows): nothing is fitted.
    #[error("invariant broken: {0}")]
    Invariant(String),
    /// This reducer's lock was taken over: it stopped before writing anything more.
    #[error("lost the reduce lock: {0}")]
    LostLock(String),
    /// The invocation is about to hit its deadline; the work was stopped before any partial write.
    #[error("deadline: stopped with {remaining_ms} ms left, before {stage}")]
    Deadline {
        /// Milliseconds left when the stop was decided.
        remaining_ms: u64,
        /// The stage that was not started.
        stage: &'static str,
    },
    /// The run report could not be drawn.
    #[error("report: {0}")]
    Report(#[from] ReportError),
    /// A worker thread or blocking task panicked or was cancelled.
    #[error("worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Why the report could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// plotters failed to draw a chart.
    #[error("drawing the {chart} chart: {source}")]
    Chart {
        /// Which chart.
        chart: &'static str,
        /// plotters' error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
