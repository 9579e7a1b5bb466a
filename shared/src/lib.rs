//! The featurization pipeline's library, in layers:
//!
//! - [`engine`]: decoding, preprocessing, the model, shard statistics and the PCA;
//! - [`pipeline`]: the handlers (splitter, featurizer, reducer, status, local driver, Lambda glue);
//! - [`ports`]: the object store and queue the handlers are generic over;
//! - [`adapters`]: S3/SQS, retries, fault injection and IAM checking over those ports;
//!
//! plus the run's documents and keys ([`manifest`], [`layout`], [`parquet_io`]), its HTML
//! [`report`], configuration,
//! cost, errors and telemetry. Each module is also re-exported at the crate root
//! (`shared::store`, `shared::featurizer`, …).

pub mod adapters;
pub mod config;
pub mod cost;
pub mod engine;
pub mod error;
pub mod glibc;
pub mod layout;
pub mod manifest;
pub mod parquet_io;
pub mod pipeline;
pub mod ports;
pub mod report;
pub mod telemetry;
#[cfg(test)]
mod test_util;

pub use adapters::{aws, counting, faults, iam, retry};
pub use engine::{executor, model, pca, preprocess, stats};
pub use pipeline::{
    collection, featurizer, ingest, lambda, listing, local, reducer, run_manifest, simulate, splitter, status,
};
/// tract, for the benchmark's per-operator profile of its plan.
pub use tract_onnx;
pub use ports::{queue, store};

pub use error::{Error, Result};
// Re-exported so the Lambda binaries use the same event types as the handlers.
pub use aws_lambda_events;
