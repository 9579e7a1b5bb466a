//! The AWS side: S3 and SQS adapters over the core's ports ([`sdk`]), retries of transient
//! failures ([`retry`]), the Lambda glue ([`lambda`]), configuration from the environment
//! ([`config`]), the scheduled stuck checker ([`checker`]), telemetry, and the scale
//! simulator ([`simulate`]).
//!
//! The modules that use the AWS SDK (`sdk`, `lambda`, `checker`, and
//! `simulate::simulate_on_s3`) are built with the feature `sdk` only: the SDK is a large
//! part of a cold build, and the CLI's local commands never need it.

#[cfg(feature = "sdk")]
pub mod checker;
pub mod config;
#[cfg(feature = "sdk")]
pub mod lambda;
pub mod retry;
#[cfg(feature = "sdk")]
pub mod sdk;
pub mod simulate;
pub mod telemetry;
#[cfg(test)]
mod test_util;
