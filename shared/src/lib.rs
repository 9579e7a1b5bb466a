//! The featurization pipeline's library: domain logic (listing, sharding, preprocessing,
//! inference, shard statistics, PCA), the two ports it runs on (an object store and a queue)
//! with their local and AWS adapters, and the three handlers (splitter, featurizer, reducer)
//! that the CLI and the Lambda binaries drive.

pub mod aws;
pub mod config;
pub mod cost;
pub mod error;
pub mod faults;
pub mod featurizer;
pub mod iam;
pub mod lambda;
pub mod layout;
pub mod listing;
pub mod local;
pub mod manifest;
pub mod model;
pub mod parquet_io;
pub mod pca;
pub mod preprocess;
pub mod queue;
pub mod reducer;
pub mod retry;
pub mod splitter;
pub mod stats;
pub mod status;
pub mod store;
pub mod telemetry;

pub use error::{Error, Result};
// Re-exported so the Lambda binaries use the same event types as the handlers.
pub use aws_lambda_events;
