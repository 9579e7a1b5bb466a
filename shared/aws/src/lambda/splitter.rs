//! The splitter's Lambda glue: its events (S3 notifications on the requests prefix, the
//! `s3:TestEvent`, a direct invoke), the record of what became of each request, and the
//! function built from the configuration (with the stack's request ceilings).

use bytes::Bytes;
use tracing::{error, info, warn};

use super::{deployed_store, DeployedStore};
use crate::config::Config;
use crate::sdk::{sqs_client, SdkConfig, SqsQueue};
use pipeline::batch::splitter::{SplitOutcome, Splitter};
use pipeline::error::{Error, Result};
use pipeline::layout::REQUESTS_PREFIX;
use pipeline::manifest::RunRequest;
use pipeline::notification::{decode_s3_key, S3Notification};
use pipeline::ports::queue::Queue;
use pipeline::ports::store::ObjectStore;

/// What the splitter was invoked with.
#[derive(Debug)]
pub enum SplitterEvent {
    /// S3 notifications (run request objects created).
    S3(S3Notification),
    /// The `s3:TestEvent` S3 sends when a notification is configured.
    S3Test,
    /// A direct invoke with the run request itself.
    Direct(RunRequest),
}

/// Tells the splitter's events apart.
pub fn parse_splitter_event(value: serde_json::Value) -> Result<SplitterEvent> {
    if value.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(SplitterEvent::S3Test);
    }
    if value.get("Records").is_some() {
        return Ok(SplitterEvent::S3(serde_json::from_value(value)?));
    }
    Ok(SplitterEvent::Direct(serde_json::from_value(value)?))
}

/// Where the splitter records what became of a request (outside the requests prefix, so it
/// does not trigger the splitter again): `runs/request-results/<name>.json`.
pub fn request_result_key(request_key: &str) -> String {
    let name = request_key
        .strip_prefix(REQUESTS_PREFIX)
        .unwrap_or(request_key);
    format!("runs/request-results/{name}")
}

/// Splitter: runs every request the event carries. Requests are validated before anything is
/// written; a bad request object is logged and recorded (retrying it would not help), while
/// an infrastructure error fails the invocation so it is retried.
///
/// Each request is bound to its run before the run's manifest is written, under what its
/// retries share: an S3 record's key and sequencer, or a direct invoke's Lambda request id
/// (an asynchronous invoke's retries keep it). A retry after a crash resumes that run even
/// when the input changed in between.
pub async fn handle_splitter_event<S: ObjectStore, Q: Queue, R: Queue>(
    splitter: &Splitter<S, Q, R>,
    store: &S,
    event: SplitterEvent,
    request_id: &str,
) -> Result<Vec<SplitOutcome>> {
    match event {
        SplitterEvent::S3Test => {
            info!("s3:TestEvent ignored");
            Ok(Vec::new())
        }
        SplitterEvent::Direct(request) => {
            let identity = format!("invoke:{request_id}");
            Ok(vec![
                splitter.handle_bound(&request, Some(&identity)).await?,
            ])
        }
        SplitterEvent::S3(event) => {
            let mut outcomes = Vec::new();
            for record in event.records {
                let created = record
                    .event_name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("ObjectCreated"));
                let key = decode_s3_key(&record.s3.object.key);
                if !created || !key.starts_with(REQUESTS_PREFIX) || !key.ends_with(".json") {
                    info!(key, event = ?record.event_name, "not a run request: ignored");
                    continue;
                }
                let body = store.get(&key).await?;
                let identity = match &record.s3.object.sequencer {
                    Some(sequencer) => format!("s3:{key}#{sequencer}"),
                    None => format!("s3:{key}@{request_id}"),
                };
                let result = match serde_json::from_slice::<RunRequest>(&body) {
                    Ok(request) => splitter.handle_bound(&request, Some(&identity)).await,
                    Err(e) => Err(Error::InvalidRequest(format!(
                        "{key} is not a valid run request: {e}"
                    ))),
                };
                let record_body = match &result {
                    Ok(outcome) => {
                        serde_json::json!({ "request": key, "ok": true, "outcome": outcome })
                    }
                    Err(e) => {
                        serde_json::json!({ "request": key, "ok": false, "error": e.to_string() })
                    }
                };
                store
                    .put(
                        &request_result_key(&key),
                        Bytes::from(serde_json::to_vec_pretty(&record_body)?),
                    )
                    .await?;
                match result {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(e @ (Error::InvalidRequest(_) | Error::Json(_))) => {
                        error!(key, error = %e, "run request rejected; no run was started");
                    }
                    Err(e) => return Err(e),
                }
            }
            if outcomes.is_empty() {
                warn!("no run started by this event");
            }
            Ok(outcomes)
        }
    }
}

/// The splitter function: starts runs from S3 notifications on the requests prefix or from a
/// direct invoke with the run request.
pub struct SplitterFunction {
    splitter: Splitter<DeployedStore, SqsQueue, SqsQueue>,
    store: DeployedStore,
}

impl SplitterFunction {
    /// Builds the splitter from the configuration.
    pub fn from_config(config: &Config, aws: &SdkConfig) -> Result<Self> {
        let store = deployed_store(config, aws);
        let sqs = sqs_client(aws);
        let shard_queue = SqsQueue::new(sqs.clone(), config.shard_queue_url()?);
        let reduce_queue = SqsQueue::new(sqs, config.reduce_queue_url()?);
        // Each run records the layer's spec (ModelSpecSha256), and its id covers it when it
        // is not the built-in one (runs with the built-in spec keep their ids).
        let spec = config.model_spec_record();
        let defaults = pipeline::manifest::RunOptions {
            model_spec: Some(spec.clone()),
            ..config.run_defaults.clone()
        };
        let splitter = Splitter::new(
            store.clone(),
            store.clone(),
            shard_queue,
            reduce_queue,
            defaults,
            config.feature_dim,
        )
        .with_input_bucket(&config.bucket)
        .with_reserved_prefix(&config.inbox_prefix)
        .with_model_sha256(&config.model_sha256)
        .with_model_spec_sha256(spec.custom_sha256())
        .with_limits(config.limits.clone());
        Ok(Self { splitter, store })
    }

    /// One invocation: the event as received and the invocation's request id; answers
    /// `{"runs": [...]}`.
    pub async fn handle(
        &self,
        event: serde_json::Value,
        request_id: &str,
    ) -> Result<serde_json::Value> {
        let parsed = parse_splitter_event(event)?;
        let outcomes =
            handle_splitter_event(&self.splitter, &self.store, parsed, request_id).await?;
        Ok(serde_json::json!({ "runs": outcomes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_style_s3_events_parse() {
        let moto = serde_json::json!({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3",
            "eventTime": "2026-11-25T01:26:48.685636", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "runs%2Frequests%2Fa+b.json", "size": 2}}}]});
        let SplitterEvent::S3(event) = parse_splitter_event(moto).unwrap() else {
            panic!("not S3")
        };
        assert_eq!(
            decode_s3_key(&event.records[0].s3.object.key),
            "runs/requests/a b.json"
        );
    }
}
