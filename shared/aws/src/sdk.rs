//! AWS adapters of the two ports: S3 as the object store, SQS as the queue. They also talk to
//! local emulators (moto) through `AWS_ENDPOINT_URL` and path-style addressing.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use bytes::Bytes;

pub use aws_config::SdkConfig;

use pipeline::ports::queue::{Drain, Queue, QueueError};
use pipeline::ports::store::{ObjectInfo, ObjectStore, StoreError, Versioned};

/// Loads the SDK configuration (region, credentials, `AWS_ENDPOINT_URL`) from the environment.
pub async fn sdk_config() -> aws_config::SdkConfig {
    sdk_config_with_endpoint(None).await
}

/// The SDK's configuration loader (region, credentials and endpoint from the environment),
/// with its HTTPS client: hyper + rustls on the `ring` provider (the SDK's default client links
/// `aws-lc-rs`, a C library that doubled the cold build: docs/performance.md). Everything
/// that talks to AWS or to moto, tests included, starts here.
pub fn config_loader() -> aws_config::ConfigLoader {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https)
}

/// [`sdk_config`], with an explicit endpoint URL (an emulator) taking precedence.
pub async fn sdk_config_with_endpoint(endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let loader = config_loader();
    match endpoint_url {
        Some(url) => loader.endpoint_url(url).load().await,
        None => loader.load().await,
    }
}

/// An S3 client; path-style addressing when `AWS_S3_FORCE_PATH_STYLE=true` or an endpoint
/// URL is set (emulators do not serve virtual-hosted buckets).
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let path_style = std::env::var("AWS_S3_FORCE_PATH_STYLE")
        .map(|v| v == "true")
        .unwrap_or(false)
        || config.endpoint_url().is_some();
    let s3 = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// An SQS client.
pub fn sqs_client(config: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}

/// A failed SDK call as a store error, sorted by whether a retry can help.
fn remote<E, R>(op: &'static str, key: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> StoreError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: HttpStatus + std::fmt::Debug + Send + Sync + 'static,
{
    let transient = is_transient(&e);
    StoreError::Remote {
        op,
        key: key.to_string(),
        transient,
        source: Box::new(e),
    }
}

/// Throttling, server errors, timeouts and connection failures can succeed on a retry;
/// access denied, bad requests and other client errors cannot.
fn is_transient<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
    R: HttpStatus,
{
    use aws_sdk_s3::error::SdkError;
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status_code();
            let code = service.err().code().unwrap_or("");
            status >= 500
                || status == 429
                || matches!(
                    code,
                    "SlowDown"
                        | "Throttling"
                        | "ThrottlingException"
                        | "RequestTimeout"
                        | "RequestTimeoutException"
                        | "InternalError"
                        | "ServiceUnavailable"
                )
        }
        _ => false,
    }
}

/// A failed `GetObject` as a store error. The causes that are the object's own, and that no
/// retry changes, get their variants for the per-image guard: a missing key (`NoSuchKey`,
/// 404), access refused by a bucket, object or KMS key policy (`AccessDenied`, `KMS.*`), an
/// archived object (`InvalidObjectState`: Glacier Flexible Retrieval, Deep Archive) and, on an
/// `If-Match` read (`expected`), another content (`PreconditionFailed`, 412). The rest keeps
/// [`remote`]'s sorting: throttling and 5xx are transient; bad credentials, a wrong region
/// and the like are permanent for every key, not one image's fault.
fn get_error(
    key: &str,
    expected: Option<&str>,
    e: aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::get_object::GetObjectError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
) -> StoreError {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    let status = status_of(&e);
    let (code, message) = e
        .as_service_error()
        .map(|s| {
            (
                s.code().unwrap_or_default().to_string(),
                s.message().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default();
    let reason = || match (code.is_empty(), message.is_empty()) {
        (false, false) => format!("{} {code}: {message}", status.unwrap_or(0)),
        (false, true) => format!("{} {code}", status.unwrap_or(0)),
        _ => format!("HTTP {}", status.unwrap_or(0)),
    };
    let no_such_key = e.as_service_error().is_some_and(|s| s.is_no_such_key());
    match (status, code.as_str()) {
        (_, "NoSuchKey") | (Some(404), _) => StoreError::NotFound(key.to_string()),
        _ if no_such_key => StoreError::NotFound(key.to_string()),
        (_, "InvalidObjectState") => StoreError::Archived {
            key: key.to_string(),
            reason: reason(),
        },
        (_, "PreconditionFailed") | (Some(412), _) if expected.is_some() => StoreError::Changed {
            key: key.to_string(),
            expected: expected.unwrap_or_default().to_string(),
            current: None,
        },
        (_, "AccessDenied") => StoreError::AccessDenied {
            op: "GetObject",
            key: key.to_string(),
            reason: reason(),
        },
        (_, code) if code.starts_with("KMS.") => StoreError::AccessDenied {
            op: "GetObject",
            key: key.to_string(),
            reason: reason(),
        },
        _ => remote("GetObject", key, e),
    }
}

/// Reads a `GetObject` response's body with its entity tag.
async fn collect_body(
    key: &str,
    output: aws_sdk_s3::operation::get_object::GetObjectOutput,
) -> Result<Versioned, StoreError> {
    let etag = output.e_tag().unwrap_or_default().to_string();
    let data = output
        .body
        .collect()
        .await
        .map_err(|e| body_error("GetObject body", key, e))?;
    Ok(Versioned {
        body: data.into_bytes(),
        etag,
    })
}

/// The largest object one `CopyObject` copies (5 GiB).
pub const MAX_COPY_OBJECT_BYTES: u64 = 5 << 30;

/// `CopyObject`'s `x-amz-copy-source`: the bucket and the URL-encoded key.
fn copy_source(bucket: &str, key: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    /// Everything but the unreserved characters and `/` is encoded.
    const KEY: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!("{bucket}/{}", utf8_percent_encode(key, KEY))
}

/// Reads a `GetObject` response's body if it has at most `limit` bytes: refused from its
/// `Content-Length` before any byte is read, else streamed until it passes the limit.
async fn read_bounded(
    key: &str,
    mut output: aws_sdk_s3::operation::get_object::GetObjectOutput,
    limit: u64,
) -> Result<Versioned, StoreError> {
    use pipeline::ports::store::check_size;
    let etag = output.e_tag().unwrap_or_default().to_string();
    let declared = output.content_length().map(|n| n.max(0) as u64);
    if let Some(size) = declared {
        check_size(key, size, limit)?;
    }
    let capacity = declared.unwrap_or(0).min(limit).min(64 << 20) as usize;
    let mut body = bytes::BytesMut::with_capacity(capacity);
    while let Some(chunk) = output
        .body
        .try_next()
        .await
        .map_err(|e| body_error("GetObject body", key, e))?
    {
        let read = body.len() as u64 + chunk.len() as u64;
        check_size(key, declared.unwrap_or(read).max(read), limit)?;
        body.extend_from_slice(&chunk);
    }
    Ok(Versioned {
        body: body.freeze(),
        etag,
    })
}

/// An error while reading a response body (a dropped connection): worth a retry.
fn body_error(
    op: &'static str,
    key: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Remote {
        op,
        key: key.to_string(),
        transient: true,
        source: Box::new(e),
    }
}

/// HTTP status of a failed SDK call, if it got a response.
fn status_of<E, R: HttpStatus>(e: &aws_sdk_s3::error::SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(|r| r.status_code())
}

trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// A call of the [`ObjectStore`] port, as [`S3Store`] makes it: what [`s3_access`] maps to
/// the S3 API call and the IAM permission AWS checks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreCall {
    /// [`ObjectStore::get`].
    Get,
    /// [`ObjectStore::get_versioned`].
    GetVersioned,
    /// [`ObjectStore::put`].
    Put,
    /// [`ObjectStore::put_if_absent`].
    PutIfAbsent,
    /// [`ObjectStore::put_if_match`].
    PutIfMatch,
    /// [`ObjectStore::exists`].
    Exists,
    /// [`ObjectStore::head`].
    Head,
    /// [`ObjectStore::delete`].
    Delete,
    /// [`ObjectStore::list`].
    List,
    /// [`ObjectStore::copy`], on its source: the HEAD that sizes it and the read side of
    /// `CopyObject`.
    CopySource,
    /// [`ObjectStore::copy`], on its target: `CopyObject`'s write.
    Copy,
}

/// What IAM checks for one S3 API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Access {
    /// The S3 API call the adapter makes.
    pub api: &'static str,
    /// The IAM action AWS authorizes it with.
    pub action: &'static str,
    /// The resource is the bucket (`arn:aws:s3:::bucket`), not the object (`.../key`).
    pub on_bucket: bool,
    /// A missing key answers 404 only to a caller that also has `s3:ListBucket` on the
    /// bucket; without it S3 answers 403 AccessDenied (GetObject, HeadObject).
    pub missing_key_needs_list: bool,
}

/// The permission table of [`S3Store`]: for each port method, the S3 call it makes and the
/// IAM action AWS checks. Kept beside the adapter so that it stays true to what the adapter
/// calls; the IAM checker of the tests (`testkit::iam`) derives every check from it.
pub fn s3_access(call: StoreCall) -> S3Access {
    let object = |api, action, missing_key_needs_list| S3Access {
        api,
        action,
        on_bucket: false,
        missing_key_needs_list,
    };
    match call {
        StoreCall::Get => object("GetObject", "s3:GetObject", true),
        StoreCall::GetVersioned => object("GetObject", "s3:GetObject", true),
        // `get_if_match` is the same GetObject, with an If-Match header (no other action).
        // HeadObject has no IAM action of its own.
        StoreCall::Exists => object("HeadObject", "s3:GetObject", true),
        StoreCall::Head => object("HeadObject", "s3:GetObject", true),
        StoreCall::Put => object("PutObject", "s3:PutObject", false),
        // Conditional writes (If-None-Match / If-Match) need only s3:PutObject.
        StoreCall::PutIfAbsent => object("PutObject If-None-Match", "s3:PutObject", false),
        StoreCall::PutIfMatch => object("PutObject If-Match", "s3:PutObject", false),
        StoreCall::Delete => object("DeleteObject", "s3:DeleteObject", false),
        // CopyObject needs s3:GetObject on the source and s3:PutObject on the target; a
        // missing source answers 404 only with s3:ListBucket.
        StoreCall::CopySource => object("CopyObject", "s3:GetObject", false),
        StoreCall::Copy => object("CopyObject", "s3:PutObject", true),
        StoreCall::List => S3Access {
            api: "ListObjectsV2",
            action: "s3:ListBucket",
            on_bucket: true,
            missing_key_needs_list: false,
        },
    }
}

/// A call of the [`Queue`] port, as [`SqsQueue`] makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueCall {
    /// [`Queue::send_all`].
    SendAll,
}

/// The permission table of [`SqsQueue`]: (SQS API call, IAM action on the queue's ARN).
pub fn sqs_access(call: QueueCall) -> (&'static str, &'static str) {
    match call {
        // SendMessageBatch is authorized as sqs:SendMessage.
        QueueCall::SendAll => ("SendMessageBatch", "sqs:SendMessage"),
    }
}

/// What a Lambda SQS event-source mapping calls on its queue with the consuming function's
/// execution role (AWS Lambda developer guide, "Execution role permissions" for SQS).
pub const SQS_EVENT_SOURCE_ACTIONS: [&str; 3] = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
];

/// The data bucket as an [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    page_size: Option<i32>,
}

impl S3Store {
    /// A store on `bucket`.
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            page_size: None,
        }
    }

    /// Lists with pages of at most `keys` keys (S3's default is 1,000): tests force many
    /// pages with it.
    pub fn with_page_size(mut self, keys: i32) -> Self {
        self.page_size = Some(keys);
        self
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A presigned GET URL of `key`, valid for `expires_in` (S3 allows up to 7 days): who
    /// has it can download the object without credentials (`featurize report --bucket`).
    /// It is signed by the caller's credentials and needs their `s3:GetObject` on the key.
    pub async fn presigned_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<String, StoreError> {
        let remote = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Remote {
            op: "presign GetObject",
            key: key.to_string(),
            transient: false,
            source,
        };
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in)
            .map_err(|e| remote(Box::new(e)))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| remote(Box::new(e)))?;
        Ok(request.uri().to_string())
    }
}

impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        Ok(self.get_versioned(key).await?.body)
    }

    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match response {
            Ok(output) => collect_body(key, output).await,
            Err(e) => Err(get_error(key, None, e)),
        }
    }

    /// `GetObject` with `If-Match: <version>` (the listed ETag): S3 answers 412
    /// `PreconditionFailed` when the object was overwritten since, which is
    /// [`StoreError::Changed`].
    async fn get_if_match(&self, key: &str, version: &str) -> Result<Bytes, StoreError> {
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if !version.is_empty() {
            request = request.if_match(version);
        }
        match request.send().await {
            Ok(output) => Ok(collect_body(key, output).await?.body),
            Err(e) => Err(get_error(key, Some(version), e)),
        }
    }

    /// `GetObject` (with `If-Match` when `version` is given): refused from its
    /// `Content-Length` before the body is read, else the body is streamed and the read stops
    /// once it passes `limit` (the connection is dropped).
    async fn get_bounded(
        &self,
        key: &str,
        version: &str,
        limit: u64,
    ) -> Result<Versioned, StoreError> {
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if !version.is_empty() {
            request = request.if_match(version);
        }
        let expected = (!version.is_empty()).then_some(version);
        match request.send().await {
            Ok(output) => read_bounded(key, output, limit).await,
            Err(e) => Err(get_error(key, expected, e)),
        }
    }

    /// `HeadObject` on the source (its size, and the ETag the copy is pinned to with
    /// `x-amz-copy-source-if-match`), then `CopyObject`. Objects over 5 GiB, which
    /// `CopyObject` cannot copy, are refused before any copy with a clear error. A source
    /// that changed between the two calls answers 412: a transient error (a retry sizes the
    /// new content).
    async fn copy(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(from)
            .send()
            .await
            .map_err(|e| match status_of(&e) {
                Some(404) => StoreError::NotFound(from.to_string()),
                _ => remote("HeadObject", from, e),
            })?;
        let size = head.content_length().unwrap_or(0).max(0) as u64;
        if size > MAX_COPY_OBJECT_BYTES {
            return Err(StoreError::Remote {
                op: "CopyObject",
                key: from.to_string(),
                transient: false,
                source: format!(
                    "{size} bytes: CopyObject copies objects of up to {MAX_COPY_OBJECT_BYTES} \
                     bytes (5 GiB); a larger one needs a multipart copy"
                )
                .into(),
            });
        }
        let mut request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(copy_source(&self.bucket, from));
        if let Some(etag) = head.e_tag() {
            request = request.copy_source_if_match(etag);
        }
        match request.send().await {
            Ok(_) => Ok(size),
            Err(e) if status_of(&e) == Some(404) => Err(StoreError::NotFound(from.to_string())),
            Err(e) if status_of(&e) == Some(412) => Err(StoreError::Remote {
                op: "CopyObject",
                key: from.to_string(),
                transient: true,
                source: Box::new(e),
            }),
            Err(e) => Err(remote("CopyObject", to, e)),
        }
    }

    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        let response = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(etag)
            .body(ByteStream::from(body))
            .send()
            .await;
        match response {
            Ok(_) => Ok(true),
            // 412: the ETag changed. 404: the object is gone. 409: a concurrent write won.
            Err(e) if matches!(status_of(&e), Some(412 | 404 | 409)) => Ok(false),
            Err(e) => Err(remote("PutObject If-Match", key, e)),
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| remote("PutObject", key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        let response = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .body(ByteStream::from(body))
            .send()
            .await;
        match response {
            Ok(_) => Ok(true),
            // 412: the object exists. 409: a concurrent conditional write won the race.
            Err(e) if matches!(status_of(&e), Some(412 | 409)) => Ok(false),
            Err(e) => Err(remote("PutObject If-None-Match", key, e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn head(&self, key: &str) -> Result<String, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(output.e_tag().unwrap_or_default().to_string()),
            Err(e) if status_of(&e) == Some(404) => Err(StoreError::NotFound(key.to_string())),
            Err(e) => Err(remote("HeadObject", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| remote("DeleteObject", key, e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_max_keys(self.page_size)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| remote("ListObjectsV2", prefix, e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    objects.push(ObjectInfo {
                        key: key.to_string(),
                        size: object.size().unwrap_or(0).max(0) as u64,
                        version: object.e_tag().unwrap_or_default().to_string(),
                    });
                }
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    fn describe(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, key)
    }
}

/// An SQS queue as a [`Queue`].
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url`.
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }
}

/// Attempts per batch entry before giving up.
const SEND_ATTEMPTS: u32 = 5;

impl Queue for SqsQueue {
    async fn send_all(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        self.send_batches(bodies, None).await
    }

    async fn send_delayed(&self, bodies: Vec<String>, delay_s: u32) -> Result<(), QueueError> {
        self.send_batches(bodies, Some(delay_s.min(900) as i32))
            .await
    }
}

impl SqsQueue {
    async fn send_batches(
        &self,
        bodies: Vec<String>,
        delay_s: Option<i32>,
    ) -> Result<(), QueueError> {
        let total = bodies.len();
        // SendMessageBatch takes 10 entries; retry only the entries that failed.
        for chunk in bodies.chunks(10) {
            let mut pending: Vec<(String, &String)> = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| (i.to_string(), body))
                .collect();
            let mut last_reason = String::new();
            for attempt in 0..SEND_ATTEMPTS {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                let entries = pending
                    .iter()
                    .map(|(id, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(id.clone())
                            .message_body(body.as_str())
                            .set_delay_seconds(delay_s)
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| QueueError::Remote {
                        op: "SendMessageBatch",
                        queue: self.url.clone(),
                        source: Box::new(e),
                    })?;
                match self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                {
                    Ok(output) => {
                        let failed: std::collections::HashSet<&str> =
                            output.failed().iter().map(|f| f.id()).collect();
                        if let Some(f) = output.failed().first() {
                            last_reason = format!("{}: {}", f.code(), f.message().unwrap_or(""));
                        }
                        pending.retain(|(id, _)| failed.contains(id.as_str()));
                    }
                    Err(e) => {
                        last_reason = aws_sdk_sqs::error::DisplayErrorContext(&e).to_string();
                    }
                }
            }
            if !pending.is_empty() {
                return Err(QueueError::Partial {
                    queue: self.url.clone(),
                    failed: pending.len(),
                    total,
                    reason: last_reason,
                });
            }
        }
        Ok(())
    }
}

impl Drain for SqsQueue {
    /// ReceiveMessage (10 at a time, no wait) and DeleteMessageBatch until a receive comes
    /// back empty: the requests an event-source mapping makes for a function.
    async fn drain(&self) -> Result<Vec<String>, QueueError> {
        let remote =
            |op: &'static str, e: Box<dyn std::error::Error + Send + Sync>| QueueError::Remote {
                op,
                queue: self.url.clone(),
                source: e,
            };
        let mut bodies = Vec::new();
        loop {
            let received = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await
                .map_err(|e| remote("ReceiveMessage", Box::new(e)))?;
            let messages = received.messages();
            if messages.is_empty() {
                return Ok(bodies);
            }
            let mut entries = Vec::with_capacity(messages.len());
            for (i, m) in messages.iter().enumerate() {
                bodies.push(m.body().unwrap_or_default().to_string());
                entries.push(
                    aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .build()
                        .map_err(|e| remote("DeleteMessageBatch", Box::new(e)))?,
                );
            }
            self.client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| remote("DeleteMessageBatch", Box::new(e)))?;
        }
    }
}

#[cfg(test)]
#[path = "sdk_tests.rs"]
mod tests;
