//! The engine: pixels to features to a PCA, with no I/O of its own — decoding and
//! Pillow-exact preprocessing ([`preprocess`]), the ONNX model ([`model`]) run by tract or by
//! the native executor ([`executor`]), shard statistics ([`stats`]) and the PCA fit ([`pca`]).
//!
//! No tokio, no AWS, no run documents: the layers above ([`pipeline`](../pipeline/index.html))
//! build on its small types.

pub mod error;
pub mod executor;
pub mod glibc;
pub mod model;
pub mod pca;
pub mod preprocess;
pub mod stats;
