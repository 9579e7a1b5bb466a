//! Continuous mode: collections whose images land in an inbox, featurized as they arrive
//! ([`ingest`]) and refitted into a published view ([`collection`]); a [`reconcile`] repairs
//! what lost events left out.

pub mod collection;
pub mod ingest;
pub mod reconcile;
