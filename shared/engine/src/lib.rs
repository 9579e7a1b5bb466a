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

/// The version of the featurizing code: decoding, preprocessing and the engines that run the
/// model. It is part of every run's id (`pipeline::manifest::run_fingerprint`), so that
/// features computed by code that gives other outputs are never mixed into, or resumed as,
/// an older run. Bump it whenever a change can move any feature value; the e2e test
/// `fidelity::featurizer_version_is_bumped_when_the_golden_features_move` fails until it is
/// (its fixture, `tests/fixtures/featurizer_version.json`, records this version with the
/// features it gives on a few golden images).
pub const FEATURIZER_VERSION: u32 = 1;
