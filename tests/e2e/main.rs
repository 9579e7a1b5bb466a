//! End-to-end tests: fidelity against the golden reference, the embedded pipeline with bad
//! inputs, the three Lambdas against a real S3/SQS emulator (moto), the SAM template, and the
//! run report, `status --watch` and the clamped k.
//!
//! Run through `./infra/test.sh`, which installs the Python side (pyarrow, moto) and starts
//! moto; the tests fail with a clear message when something they need is missing.

mod ackloss;
mod aws;
mod binding;
mod breaker;
mod breaker_barrier;
mod breaker_refit;
mod byo_model;
mod bytes;
mod ceilings;
mod common;
mod docs;
mod faults;
mod features;
mod fencing;
mod fidelity;
mod guard;
mod iam;
mod ingest;
mod local;
mod model_source;
mod refit;
mod report;
mod stuck;
mod template;
