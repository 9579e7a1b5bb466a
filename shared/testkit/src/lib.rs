//! Test-only tools, used as a dev-dependency only: fault injection over the ports
//! ([`faults`]: crashes, 503s, denials, pauses, lost messages, and writes applied while their
//! answer is lost or applied twice) and an IAM checker of every S3/SQS call against a role
//! ([`iam`]).

pub mod faults;
pub mod iam;
#[cfg(test)]
mod test_util;
