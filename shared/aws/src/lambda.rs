//! Lambda glue shared by the three functions: event parsing and per-record SQS handling with
//! partial batch failures (`ReportBatchItemFailures`), and the splitter's S3-event dispatch.

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tracing::{error, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::retry::{RetryPolicy, Retrying};
use crate::sdk::{s3_client, sqs_client, S3Store, SdkConfig, SqsQueue};
use engine::model::{Model, ModelSpec};
use pipeline::batch::featurizer::ShardFeaturizer;
use pipeline::batch::inference::Engine;
use pipeline::batch::listing::ImageFilter;
use pipeline::batch::reducer::Reducer;
use pipeline::batch::splitter::{SplitOutcome, Splitter};
use pipeline::continuous::collection::{
    record_refit_failure, record_refit_start, refit, RefitMessage, RefitOptions, RefitOutcome,
};
use pipeline::continuous::ingest::IngestSettings;
use pipeline::continuous::ingest::{parse_ingest_body, IngestBody, Ingestor};
use pipeline::error::{Error, Result};
use pipeline::layout::REQUESTS_PREFIX;
use pipeline::manifest::{ReduceMessage, RunRequest, ShardMessage};
use pipeline::notification::{decode_s3_key, S3Notification};
use pipeline::ports::queue::Queue;
use pipeline::ports::store::ObjectStore;
use pipeline::stuck::SystemClock;

/// The invocation deadline as an `Instant`. Lambda gives epoch milliseconds; `cargo lambda
/// watch` gives the timeout itself (e.g. `600000`), so a value before 2001 is read as a
/// duration from now. `0` means no deadline.
pub fn deadline_instant(deadline_ms: u64) -> Option<Instant> {
    const YEAR_2001_MS: u64 = 978_307_200_000;
    if deadline_ms == 0 {
        return None;
    }
    if deadline_ms < YEAR_2001_MS {
        return Some(Instant::now() + Duration::from_millis(deadline_ms));
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    Some(Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms)))
}

fn parse_body<T: DeserializeOwned>(message: &SqsMessage) -> Result<T> {
    let body = message
        .body
        .as_deref()
        .ok_or_else(|| Error::InvalidRequest("SQS message without a body".into()))?;
    Ok(serde_json::from_str(body)?)
}

fn failure(id: &str) -> BatchItemFailure {
    let mut f = BatchItemFailure::default();
    f.item_identifier = id.to_string();
    f
}

/// Featurizer: processes each shard message on its own; failed ones are reported so only
/// they are retried (and, after maxReceiveCount, dead-lettered).
pub async fn handle_shard_batch<S: ObjectStore, Q: Queue>(
    featurizer: &ShardFeaturizer<S, Q>,
    event: SqsEvent,
    request_id: &str,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let remaining_ms =
        deadline.map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64);
    info!(
        request_id,
        records = event.records.len(),
        remaining_ms,
        "shard batch received"
    );
    for message in &event.records {
        let id = message.message_id.clone().unwrap_or_default();
        let attempt = message
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok());
        let result = async {
            let shard: ShardMessage = parse_body(message)?;
            let span = info_span!("shard", run_id = %shard.run_id, shard = shard.shard, request_id, message_id = %id);
            featurizer.process(&shard, deadline, attempt).instrument(span).await
        }
        .await;
        match result {
            Ok(outcome) => info!(message_id = %id, request_id, ?outcome, "shard message processed"),
            Err(e) => {
                error!(message_id = %id, request_id, error = %e, "shard message failed; it will be retried");
                response.batch_item_failures.push(failure(&id));
            }
        }
    }
    response
}

/// Featurizer on both of its queues: shard messages (batch runs) and S3 event notifications
/// of the ingest queue (continuous ingestion), told apart by their bodies, each record on its
/// own. The S3 records of an invocation are ingested in one pass (one delta per collection),
/// key by key ([`Ingestor::ingest_each`]): a record is reported failed (and retried, then
/// dead-lettered) only if one of its keys failed transiently; an image that crashes the
/// decoder, or an object that cannot be read for good, is its path's error entry and its
/// record succeeds. An `s3:TestEvent` is acknowledged; a body that is neither is a failed
/// record (it ends in the DLQ).
pub async fn handle_featurizer_batch<S, Q, I, O, R>(
    featurizer: &ShardFeaturizer<S, Q>,
    ingestor: Option<&Ingestor<I, O, R>>,
    event: SqsEvent,
    request_id: &str,
    deadline: Option<Instant>,
) -> SqsBatchResponse
where
    S: ObjectStore,
    Q: Queue,
    I: ObjectStore,
    O: ObjectStore,
    R: Queue,
{
    let mut response = SqsBatchResponse::default();
    let mut shard_records = Vec::new();
    let mut s3_records: Vec<(String, Vec<String>)> = Vec::new();
    for message in event.records {
        let id = message.message_id.clone().unwrap_or_default();
        match message.body.as_deref().and_then(parse_ingest_body) {
            None => shard_records.push(message),
            Some(Ok(IngestBody::S3Test)) => info!(message_id = %id, "s3:TestEvent acknowledged"),
            Some(Ok(IngestBody::S3(keys))) => s3_records.push((id, keys)),
            Some(Err(e)) => {
                error!(message_id = %id, error = %e, "unreadable S3 notification");
                response.batch_item_failures.push(failure(&id));
            }
        }
    }
    if !s3_records.is_empty() {
        let failed = ingest_records(ingestor, &s3_records, request_id).await;
        response
            .batch_item_failures
            .extend(failed.iter().map(|id| failure(id)));
    }
    if !shard_records.is_empty() {
        let mut shards = SqsEvent::default();
        shards.records = shard_records;
        let done = handle_shard_batch(featurizer, shards, request_id, deadline).await;
        response
            .batch_item_failures
            .extend(done.batch_item_failures);
    }
    response
}

/// Ingests the keys of the S3 records (message id, keys) in one pass, key by key; returns
/// the ids of the records to retry: those with a key that failed transiently, or all of them
/// when ingestion is not configured or the pass itself panicked.
async fn ingest_records<I: ObjectStore, O: ObjectStore, R: Queue>(
    ingestor: Option<&Ingestor<I, O, R>>,
    records: &[(String, Vec<String>)],
    request_id: &str,
) -> Vec<String> {
    use futures::FutureExt;
    let all = || records.iter().map(|(id, _)| id.clone()).collect();
    let Some(ingestor) = ingestor else {
        error!(
            request_id,
            "S3 notifications arrived, but ingestion is not configured (REFIT_QUEUE_URL)"
        );
        return all();
    };
    let keys: Vec<String> = records
        .iter()
        .flat_map(|(_, k)| k.iter().cloned())
        .collect();
    let report = match std::panic::AssertUnwindSafe(ingestor.ingest_each(&keys))
        .catch_unwind()
        .await
    {
        Ok(report) => report,
        Err(_) => {
            error!(
                request_id,
                "the ingest pass panicked; its records will be retried"
            );
            return all();
        }
    };
    let retry: std::collections::BTreeSet<&str> =
        report.outcome.retry.iter().map(String::as_str).collect();
    let failed: Vec<String> = records
        .iter()
        .filter(|(_, keys)| keys.iter().any(|k| retry.contains(k.as_str())))
        .map(|(id, _)| id.clone())
        .collect();
    for (key, e) in &report.errors {
        warn!(request_id, key, error = %e, "ingest of a key failed; its record will be retried");
    }
    info!(
        request_id,
        records = records.len(),
        failed_records = failed.len(),
        outcome = ?report.outcome,
        "ingest batch processed"
    );
    failed
}

/// How the reducer refits collections (refit queue).
#[derive(Debug, Clone)]
pub struct Refitter<S> {
    /// The bucket (inbox and collections).
    pub store: S,
    /// The inbox prefix.
    pub inbox: String,
    /// Quiet time (ms) a non-forced refit waits for.
    pub quiet_ms: u64,
    /// The PCA and publishing options; `max_staleness_ms` bounds how long a non-forced
    /// refit waits for quiet (`MAX_STALENESS_SECS`).
    pub options: RefitOptions,
}

/// For a refit that was not due yet: the delay (s) after which its message must come back,
/// when no later message is sure to come first. The newest change's own message arrives
/// when the quiet time is reached (`quiet_left_ms`), so a message is re-sent only when the
/// staleness bound comes first: with a delay of the time left until it. Re-sending every
/// message instead would keep every message of a steady load alive for ever.
pub fn requeue_delay_s(outcome: &RefitOutcome) -> Option<u32> {
    match outcome {
        RefitOutcome::NotQuiet {
            quiet_left_ms,
            staleness_left_ms: Some(left),
            ..
        } if left < quiet_left_ms => Some((left.div_ceil(1000)).clamp(1, 900) as u32),
        _ => None,
    }
}

impl<S: ObjectStore> Refitter<S> {
    /// The reducer's refitter, as its configuration (`INBOX_PREFIX`, `QUIET_SECS`,
    /// `MAX_STALENESS_SECS` — default 900, `0` for no bound —, the run defaults' PCA,
    /// `REDUCE_CONCURRENCY`) describes it.
    pub fn from_config(store: S, config: &Config) -> Self {
        let max_staleness_s = config.max_staleness_secs;
        Self {
            store,
            inbox: config.inbox_prefix.clone(),
            quiet_ms: u64::from(config.quiet_secs) * 1000,
            options: RefitOptions {
                pca: config.run_defaults.pca.clone(),
                concurrency: config.reducer.concurrency,
                max_staleness_ms: (max_staleness_s > 0).then_some(max_staleness_s * 1000),
                ..Default::default()
            },
        }
    }

    /// Handles one refit message. A refit that kept losing the race for the pointer is an
    /// error, so that the message is delivered again rather than its changes left waiting.
    pub async fn process(&self, message: &RefitMessage) -> Result<RefitOutcome> {
        let mut options = self.options.clone();
        options.quiet_ms = (!message.force).then_some(self.quiet_ms);
        match refit(
            &self.store,
            &self.store,
            &self.inbox,
            &message.collection,
            &options,
        )
        .await?
        {
            RefitOutcome::LostRace => Err(Error::RunState(format!(
                "collection {}: other refits published first {} times in a row",
                message.collection,
                pipeline::continuous::collection::REFIT_ATTEMPTS
            ))),
            outcome => Ok(outcome),
        }
    }
}

/// Reducer on both of its queues: reduce messages (batch runs) and refit messages
/// (collections), told apart by their bodies, each record on its own. A refit that is not
/// due and must come back before the staleness bound ([`requeue_delay_s`]) is reported
/// failed: SQS delivers it again after the queue's visibility timeout. See
/// [`handle_reducer_batch_requeuing`], which re-sends it with the exact delay instead.
pub async fn handle_reducer_batch<S: ObjectStore>(
    reducer: &Reducer<S>,
    refitter: Option<&Refitter<S>>,
    event: SqsEvent,
    request_id: &str,
) -> SqsBatchResponse {
    handle_reducer_batch_requeuing::<S, pipeline::ports::queue::InProcessQueue>(
        reducer, refitter, None, event, request_id,
    )
    .await
}

/// [`handle_reducer_batch`], with the refit queue to re-send a refit that is not due yet: the
/// message is sent again with a delay of [`requeue_delay_s`] (so it arrives when the oldest
/// waiting change reaches the staleness bound) and the one received is acknowledged; if
/// the send fails, the received one is reported failed (retried).
pub async fn handle_reducer_batch_requeuing<S: ObjectStore, Q: Queue>(
    reducer: &Reducer<S>,
    refitter: Option<&Refitter<S>>,
    requeue: Option<&Q>,
    event: SqsEvent,
    request_id: &str,
) -> SqsBatchResponse {
    handle_reducer_invocation(reducer, refitter, requeue, event, request_id, None).await
}

/// [`handle_reducer_batch_requeuing`] within the invocation's `deadline`: a reduce that
/// cannot finish in time stops before it (after at least one projected part), lets go of
/// its lock, and the next delivery goes on from the parts already projected.
pub async fn handle_reducer_invocation<S: ObjectStore, Q: Queue>(
    reducer: &Reducer<S>,
    refitter: Option<&Refitter<S>>,
    requeue: Option<&Q>,
    event: SqsEvent,
    request_id: &str,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let mut reduce_records = Vec::new();
    for message in event.records {
        let id = message.message_id.clone().unwrap_or_default();
        let refit_message = message
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .filter(|v| v.get("collection").is_some());
        let Some(body) = refit_message else {
            reduce_records.push(message);
            continue;
        };
        let receive_count: u32 = message
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let result = async {
            let message: RefitMessage = serde_json::from_value(body)?;
            let refitter = refitter.ok_or_else(|| {
                Error::Config("a refit message arrived, but refits are not configured".into())
            })?;
            // For `status --collection` and the checker: a refit that dies without a word
            // (out of memory, the timeout) is found by its start record (pipeline::stuck).
            let (store, c, clock) = (&refitter.store, &message.collection, &SystemClock);
            if let Err(e) = record_refit_start(store, c, receive_count, clock).await {
                warn!(error = %e, "could not record the refit's start");
            }
            let outcome = match refitter.process(&message).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    let text = error.to_string();
                    if let Err(e) = record_refit_failure(store, c, receive_count, &text, clock).await {
                        warn!(error = %e, "could not record the refit's failure");
                    }
                    return Err(error);
                }
            };
            if let Some(delay_s) = requeue_delay_s(&outcome) {
                let queue = requeue.ok_or_else(|| {
                    Error::Config(format!(
                        "refit not due yet, back in {delay_s} s, and no refit queue to re-send it: retried after the visibility timeout"
                    ))
                })?;
                queue
                    .send_delayed(vec![serde_json::to_string(&message)?], delay_s)
                    .await?;
                info!(message_id = %id, request_id, delay_s, "refit not due yet: re-sent to arrive at the staleness bound");
            }
            Ok::<_, Error>(outcome)
        }
        .await;
        match result {
            Ok(outcome) => info!(message_id = %id, request_id, ?outcome, "refit message processed"),
            Err(e) => {
                error!(message_id = %id, request_id, error = %e, "refit failed; it will be retried");
                response.batch_item_failures.push(failure(&id));
            }
        }
    }
    if !reduce_records.is_empty() {
        let mut reduces = SqsEvent::default();
        reduces.records = reduce_records;
        let done = handle_reduce_batch_until(reducer, reduces, request_id, deadline).await;
        response
            .batch_item_failures
            .extend(done.batch_item_failures);
    }
    response
}

/// Reducer: same pattern; the lock owner is the message id, so a retry of the same message
/// can take over its own lock.
pub async fn handle_reduce_batch<S: ObjectStore>(
    reducer: &Reducer<S>,
    event: SqsEvent,
    request_id: &str,
) -> SqsBatchResponse {
    handle_reduce_batch_until(reducer, event, request_id, None).await
}

/// [`handle_reduce_batch`] within the invocation's deadline ([`Reducer::process_until`]).
pub async fn handle_reduce_batch_until<S: ObjectStore>(
    reducer: &Reducer<S>,
    event: SqsEvent,
    request_id: &str,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for message in &event.records {
        let id = message.message_id.clone().unwrap_or_default();
        let result = async {
            let reduce: ReduceMessage = parse_body(message)?;
            let span = info_span!("reduce", run_id = %reduce.run_id, request_id, message_id = %id);
            reducer
                .process_until(&reduce, &id, deadline)
                .instrument(span)
                .await
        }
        .await;
        match result {
            Ok(outcome) => {
                info!(message_id = %id, request_id, outcome = ?outcome_name(&outcome), "reduce message processed")
            }
            Err(e) => {
                error!(message_id = %id, request_id, error = %e, "reduce failed; it will be retried");
                response.batch_item_failures.push(failure(&id));
            }
        }
    }
    response
}

fn outcome_name(outcome: &pipeline::batch::reducer::ReduceOutcome) -> &'static str {
    match outcome {
        pipeline::batch::reducer::ReduceOutcome::Reduced(_) => "reduced",
        pipeline::batch::reducer::ReduceOutcome::AlreadyReduced => "already reduced",
        pipeline::batch::reducer::ReduceOutcome::Failed(_) => "failed (too many image errors)",
    }
}

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
        let splitter = Splitter::new(
            store.clone(),
            store.clone(),
            shard_queue,
            reduce_queue,
            config.run_defaults.clone(),
            config.feature_dim,
        )
        .with_input_bucket(&config.bucket)
        .with_reserved_prefix(&config.inbox_prefix)
        .with_model_sha256(&config.model_sha256);
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

/// The reducer function: reduces batch runs and, for collections, refits once quiet (or at
/// once when asked).
pub struct ReducerFunction {
    reducer: Reducer<DeployedStore>,
    refitter: Refitter<DeployedStore>,
    /// The refit queue (`REFIT_QUEUE_URL`), to re-send refits that are not due yet.
    refit_queue: Option<SqsQueue>,
}

impl ReducerFunction {
    /// Builds the reducer and the refitter from the configuration.
    pub fn from_config(config: &Config, aws: &SdkConfig) -> Result<Self> {
        let store = deployed_store(config, aws);
        // The images are in the same bucket: the report's thumbnails are read from it.
        let reducer = Reducer::new(store.clone(), config.reducer.clone()).with_input(store.clone());
        let refitter = Refitter::from_config(store, config);
        let refit_queue = config
            .refit_queue_url
            .as_ref()
            .map(|url| SqsQueue::new(sqs_client(aws), url));
        Ok(Self {
            reducer,
            refitter,
            refit_queue,
        })
    }

    /// One invocation: its SQS records, its request id and its deadline (Unix ms).
    pub async fn handle(
        &self,
        event: SqsEvent,
        request_id: &str,
        deadline_ms: u64,
    ) -> SqsBatchResponse {
        handle_reducer_invocation(
            &self.reducer,
            Some(&self.refitter),
            self.refit_queue.as_ref(),
            event,
            request_id,
            deadline_instant(deadline_ms),
        )
        .await
    }
}

/// The bucket as the deployed functions see it: S3, transient failures (throttling, 5xx,
/// dropped connections) retried.
pub type DeployedStore = Retrying<S3Store>;

/// The bucket named in the configuration, through the retry layer.
pub fn deployed_store(config: &Config, aws: &SdkConfig) -> DeployedStore {
    Retrying::new(
        S3Store::new(s3_client(aws), &config.bucket),
        RetryPolicy::default(),
    )
}

/// Loads the model the configuration names (`MODEL_PATH`, with `MODEL_SPEC_PATH` when that
/// file exists), once per container: every invocation reuses the optimized plan.
pub fn load_model(config: &Config) -> Result<Model> {
    let spec_path = Some(config.model_spec_path.as_path()).filter(|p| p.is_file());
    let spec = ModelSpec::for_model(&config.model_path, spec_path)?;
    let model = Model::load(&config.model_path, spec)?;
    info!(
        load_ms = model.load_time().as_millis() as u64,
        feature_dim = model.feature_dim(),
        "model loaded"
    );
    Ok(model)
}

/// The featurizer function: the shard featurizer (batch runs) and, when a refit queue is
/// configured, the ingestor (continuous ingestion), sharing one model.
pub struct FeaturizerFunction {
    featurizer: ShardFeaturizer<DeployedStore, SqsQueue>,
    ingestor: Option<Ingestor<DeployedStore, DeployedStore, SqsQueue>>,
}

impl FeaturizerFunction {
    /// Builds both handlers from the configuration, loading the model.
    pub fn from_config(config: &Config, aws: &SdkConfig) -> Result<Self> {
        let store = deployed_store(config, aws);
        let model = load_model(config)?;
        let ingestor = match &config.refit_queue_url {
            Some(url) => Some(Ingestor::new(
                store.clone(),
                store.clone(),
                SqsQueue::new(sqs_client(aws), url),
                Engine::Model(model.clone()),
                IngestSettings {
                    inbox: config.inbox_prefix.clone(),
                    filter: ImageFilter::new(&config.run_defaults.image_glob)?,
                    max_pixels: config.run_defaults.max_pixels,
                    threads: config.featurizer.worker_threads,
                    fetch_concurrency: config.featurizer.fetch_concurrency,
                    quiet_s: config.quiet_secs,
                },
            )),
            None => None,
        };
        let reduce_queue = SqsQueue::new(sqs_client(aws), config.reduce_queue_url()?);
        let featurizer = ShardFeaturizer::new(
            store.clone(),
            store,
            reduce_queue,
            model,
            config.featurizer.clone(),
        );
        Ok(Self {
            featurizer,
            ingestor,
        })
    }

    /// One invocation: its SQS records, the invocation's deadline (ms since the epoch).
    pub async fn handle(
        &self,
        event: SqsEvent,
        request_id: &str,
        deadline_ms: u64,
    ) -> SqsBatchResponse {
        handle_featurizer_batch(
            &self.featurizer,
            self.ingestor.as_ref(),
            event,
            request_id,
            deadline_instant(deadline_ms),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_early_refit_is_resent_only_when_the_staleness_bound_comes_first() {
        let not_quiet = |quiet_left_ms, staleness_left_ms| RefitOutcome::NotQuiet {
            since_change_ms: 1_000,
            quiet_left_ms,
            staleness_left_ms,
        };
        // The newest change's own message arrives first (in 59 s): nothing to re-send.
        assert_eq!(requeue_delay_s(&not_quiet(59_000, Some(600_000))), None);
        assert_eq!(requeue_delay_s(&not_quiet(59_000, None)), None);
        // The bound comes first: back when it is reached (rounded up, at least 1 s).
        assert_eq!(requeue_delay_s(&not_quiet(59_000, Some(12_300))), Some(13));
        assert_eq!(requeue_delay_s(&not_quiet(59_000, Some(0))), Some(1));
        assert_eq!(requeue_delay_s(&RefitOutcome::NothingToDo), None);
    }

    #[test]
    fn deadlines_from_lambda_and_from_emulators() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let remaining = |d: Option<Instant>| {
            d.unwrap()
                .saturating_duration_since(Instant::now())
                .as_secs()
        };
        assert!((29..=30).contains(&remaining(deadline_instant(now_ms + 30_000))));
        assert!((599..=600).contains(&remaining(deadline_instant(600_000))));
        assert_eq!(remaining(deadline_instant(now_ms - 5_000)), 0);
        assert!(deadline_instant(0).is_none());
    }

    #[test]
    fn s3_keys_are_decoded() {
        assert_eq!(
            decode_s3_key("runs/requests/demo+run.json"),
            "runs/requests/demo run.json"
        );
        assert_eq!(
            decode_s3_key("images/Pomme%C3%A9+1/a%2Bb.jpg"),
            "images/Pommeé 1/a+b.jpg"
        );
        assert_eq!(
            request_result_key("runs/requests/a.json"),
            "runs/request-results/a.json"
        );
    }

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

    #[test]
    fn sample_events_parse() {
        let s3: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/events/s3-run-request.json"))
                .unwrap();
        assert!(matches!(
            parse_splitter_event(s3).unwrap(),
            SplitterEvent::S3(_)
        ));
        let test: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/events/s3-test-event.json")).unwrap();
        assert!(matches!(
            parse_splitter_event(test).unwrap(),
            SplitterEvent::S3Test
        ));
        let direct: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/events/run-request.json")).unwrap();
        assert!(matches!(
            parse_splitter_event(direct).unwrap(),
            SplitterEvent::Direct(_)
        ));
        let bad = serde_json::json!({"input_prefx": "x"});
        assert!(parse_splitter_event(bad).is_err());
        let sqs: SqsEvent =
            serde_json::from_str(include_str!("../../../tests/events/sqs-shard-batch.json"))
                .unwrap();
        let shard: ShardMessage = parse_body(&sqs.records[1]).unwrap();
        assert_eq!(shard.shard, 1);
        let sqs: SqsEvent =
            serde_json::from_str(include_str!("../../../tests/events/sqs-reduce.json")).unwrap();
        let _: ReduceMessage = parse_body(&sqs.records[0]).unwrap();
    }
}
