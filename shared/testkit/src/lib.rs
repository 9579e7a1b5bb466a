//! Test-only tools, used as a dev-dependency only: fault injection over the ports
//! ([`faults`]: crashes, 503s, denials, pauses, lost messages, and writes applied while their
//! answer is lost or applied twice), an IAM checker of every S3/SQS call against a role
//! ([`iam`]), the moto harness ([`moto`]: SDK clients, buckets and queues on the emulator) and
//! the SAM template reader ([`template`]: template.yaml with its CloudFormation tags, as JSON).

pub mod faults;
pub mod iam;
pub mod moto;
pub mod template;
#[cfg(test)]
mod test_util;
