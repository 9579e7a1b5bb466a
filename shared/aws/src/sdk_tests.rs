//! Tests of the S3 adapter: its error sorting and its CopyObject source header.

use super::*;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::SdkBody;

/// A GetObject service error as S3 answers it: `status`, with `code` and `message`.
fn answer(status: u16, code: &str, message: &str) -> SdkError<GetObjectError, HttpResponse> {
    let meta = ErrorMetadata::builder().code(code).message(message).build();
    let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
    SdkError::service_error(GetObjectError::generic(meta), raw)
}

#[test]
fn get_errors_of_one_object_get_their_own_variants() {
    let e = get_error(
        "k",
        None,
        answer(404, "NoSuchKey", "The key does not exist"),
    );
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
    let e = get_error(
        "k",
        None,
        answer(403, "AccessDenied", "not authorized to perform kms:Decrypt"),
    );
    match &e {
        StoreError::AccessDenied { reason, .. } => {
            assert!(reason.contains("403 AccessDenied") && reason.contains("kms:Decrypt"))
        }
        other => panic!("{other}"),
    }
    let e = get_error(
        "k",
        None,
        answer(400, "KMS.DisabledException", "key disabled"),
    );
    assert!(matches!(e, StoreError::AccessDenied { .. }), "{e}");
    let e = get_error(
        "k",
        None,
        answer(403, "InvalidObjectState", "not valid for the storage class"),
    );
    assert!(matches!(e, StoreError::Archived { .. }), "{e}");
    let e = get_error(
        "k",
        Some("\"e1\""),
        answer(412, "PreconditionFailed", "At least one"),
    );
    match &e {
        StoreError::Changed { expected, .. } => assert_eq!(expected, "\"e1\""),
        other => panic!("{other}"),
    }
}

#[test]
fn get_errors_that_are_not_the_objects_own_keep_their_sorting() {
    for (status, code, transient) in [
        (503, "SlowDown", true),
        (500, "InternalError", true),
        (403, "InvalidAccessKeyId", false),
        (403, "SignatureDoesNotMatch", false),
        (400, "ExpiredToken", false),
    ] {
        match get_error("k", Some("\"e\""), answer(status, code, "m")) {
            StoreError::Remote { transient: t, .. } => assert_eq!(t, transient, "{code}"),
            other => panic!("{code}: {other}"),
        }
    }
}

#[test]
fn copy_sources_are_the_bucket_and_the_url_encoded_key() {
    assert_eq!(
        copy_source("b", "runs/r/part-00001.parquet"),
        "b/runs/r/part-00001.parquet"
    );
    assert_eq!(
        copy_source("b", "a b/c+d/ü?#%.jpg"),
        "b/a%20b/c%2Bd/%C3%BC%3F%23%25.jpg"
    );
    assert_eq!(s3_access(StoreCall::CopySource).action, "s3:GetObject");
    assert_eq!(s3_access(StoreCall::Copy).action, "s3:PutObject");
}

#[test]
fn a_body_without_content_length_is_read_up_to_the_limit_only() {
    use aws_sdk_s3::operation::get_object::GetObjectOutput;
    let output = |body: Vec<u8>, length: Option<i64>| {
        GetObjectOutput::builder()
            .body(ByteStream::from(body))
            .set_content_length(length)
            .e_tag("\"e1\"")
            .build()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        // No Content-Length: the streamed read passes the limit and stops.
        match read_bounded("k", output(vec![7; 1000], None), 999).await {
            Err(StoreError::TooLarge { key, size, limit }) => {
                assert_eq!((key.as_str(), limit), ("k", 999));
                assert!(size > 999, "{size}");
            }
            other => panic!("{other:?}"),
        }
        // A declared length over the limit: refused before the body is read.
        match read_bounded("k", output(vec![7; 10], Some(5_000_000_000)), 999).await {
            Err(StoreError::TooLarge { size, .. }) => assert_eq!(size, 5_000_000_000),
            other => panic!("{other:?}"),
        }
        let read = read_bounded("k", output(vec![7; 999], None), 999)
            .await
            .unwrap();
        assert_eq!((read.body.len(), read.etag.as_str()), (999, "\"e1\""));
    });
}
