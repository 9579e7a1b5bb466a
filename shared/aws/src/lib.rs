//! The AWS side: S3 and SQS adapters over the core's ports ([`sdk`]), retries of transient
//! failures ([`retry`]), the Lambda glue ([`lambda`]), configuration from the environment
//! ([`config`]), the scheduled stuck checker ([`checker`]), telemetry, and the scale
//! simulator ([`simulate`]).

pub mod checker;
pub mod config;
pub mod lambda;
pub mod retry;
pub mod sdk;
pub mod simulate;
pub mod telemetry;
#[cfg(test)]
mod test_util;
