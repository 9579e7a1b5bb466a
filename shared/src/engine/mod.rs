//! The engine: turning one image into its features and many features into a PCA — decoding
//! and Pillow-exact preprocessing, the ONNX model (tract), shard statistics and the PCA fit.

pub mod model;
pub mod pca;
pub mod preprocess;
pub mod stats;
pub mod executor;
