//! Adapters over the ports: S3 and SQS, retries of transient failures, fault injection, and
//! IAM checking of every call against a role.

pub mod aws;
pub mod counting;
pub mod faults;
pub mod iam;
pub mod retry;
