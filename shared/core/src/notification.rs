//! S3 event notifications as the splitter and the ingest handler read them: the few fields
//! they use, parsed leniently, and the key decoding.

use serde::Deserialize;

/// The fields of an S3 notification the splitter uses. Parsed leniently on purpose: the
/// full `aws_lambda_events` S3 event also requires fields (user identity, a time zone on
/// `eventTime`) that S3-compatible emulators and re-driven events may omit.
#[derive(Debug, Clone, Deserialize)]
pub struct S3Notification {
    /// The records.
    #[serde(rename = "Records")]
    pub records: Vec<S3NotificationRecord>,
}

/// One record of an S3 notification.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3NotificationRecord {
    /// For example `ObjectCreated:Put`.
    #[serde(default)]
    pub event_name: Option<String>,
    /// Bucket and object.
    pub s3: S3NotificationEntity,
}

/// The bucket and object of a record.
#[derive(Debug, Clone, Deserialize)]
pub struct S3NotificationEntity {
    /// The object.
    pub object: S3NotificationObject,
}

/// The object of a record.
#[derive(Debug, Clone, Deserialize)]
pub struct S3NotificationObject {
    /// The key, percent-encoded with `+` for spaces.
    pub key: String,
    /// Orders the events of one key: unique to each write of it, and the same in every
    /// retry of one event (it identifies a run request across the splitter's retries).
    #[serde(default)]
    pub sequencer: Option<String>,
}

/// Decodes an S3 event key: percent-encoding, with `+` for spaces.
pub fn decode_s3_key(key: &str) -> String {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}
