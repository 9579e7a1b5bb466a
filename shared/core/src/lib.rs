//! The pipeline's core: the run's documents and keys, the ports it runs on, and the handlers
//! that drive the [`engine`] over them — in layers:
//!
//! - [`ports`]: the object store and queue the handlers are generic over (a local folder and
//!   an in-memory FIFO here; S3 and SQS in the `aws` crate);
//! - [`manifest`], [`layout`], [`parquet_io`], [`notification`]: the run's documents, keys,
//!   Parquet datasets and the S3 events that start work;
//! - [`batch`]: the batch handlers (listing, splitter, featurizer, reducer, status, the
//!   run report, the embedded driver);
//! - [`continuous`]: collections fed by an inbox (ingest and refit);
//! - [`cost`]: the cost model.

pub mod batch;
pub mod continuous;
pub mod cost;
pub mod error;
pub mod health;
pub mod layout;
pub mod limits;
pub mod manifest;
pub mod notification;
pub mod parquet_io;
pub mod ports;
pub mod stuck;
#[cfg(test)]
mod test_util;
