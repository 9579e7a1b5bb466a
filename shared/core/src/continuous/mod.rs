//! Continuous mode: collections whose images land in an inbox, featurized as they arrive
//! ([`ingest`]) and refitted into a published view ([`collection`]).

pub mod collection;
pub mod ingest;
