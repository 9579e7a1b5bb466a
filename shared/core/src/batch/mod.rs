//! The batch handlers the CLI and the Lambdas drive — listing, the splitter, the featurizer,
//! the reducer, a run's status, its report and the embedded (local) driver — all generic over the ports.

pub mod attempts;
pub mod barrier;
pub mod featurizer;
pub mod guard;
pub mod inference;
pub mod listing;
pub mod local;
pub mod output_lock;
pub mod reducer;
pub mod report;
pub mod run_manifest;
pub mod splitter;
pub mod status;
pub mod summary;
