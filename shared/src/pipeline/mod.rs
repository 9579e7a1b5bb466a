//! The pipeline: the handlers the CLI and the Lambdas drive — listing, the splitter, the
//! featurizer, the reducer, a run's status, the embedded (local) driver and the Lambda glue —
//! all generic over the ports.

pub mod collection;
pub mod featurizer;
pub mod ingest;
pub mod lambda;
pub mod listing;
pub mod local;
pub mod reducer;
pub mod run_manifest;
pub mod simulate;
pub mod splitter;
pub mod status;
