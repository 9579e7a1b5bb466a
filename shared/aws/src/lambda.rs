//! Lambda glue shared by the three functions: event parsing and per-record SQS handling with
//! partial batch failures (`ReportBatchItemFailures`), and the splitter's S3-event dispatch.

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
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
use pipeline::continuous::collection::{
    project, record_refit_failure, record_refit_start, refit_with, ProjectMessage, ProjectOutcome,
    ProjectSender, RefitMessage, RefitOptions, RefitOutcome,
};
use pipeline::continuous::ingest::IngestSettings;
use pipeline::continuous::ingest::{parse_ingest_body, IngestBody, Ingestor};
use pipeline::error::{Error, Result};
use pipeline::health::verify_model_at_cold_start;
use pipeline::manifest::{ReduceMessage, ShardMessage};
use pipeline::ports::queue::Queue;
use pipeline::ports::store::ObjectStore;
use pipeline::stuck::SystemClock;

mod splitter;
pub use splitter::{
    handle_splitter_event, parse_splitter_event, request_result_key, SplitterEvent,
    SplitterFunction,
};

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
        self.process_with(message, None).await
    }

    /// [`Refitter::process`], with the refit queue: a large snapshot's projection is sent to
    /// it as projection messages ([`Refitter::project`] handles them).
    pub async fn process_with(
        &self,
        message: &RefitMessage,
        sender: Option<&dyn ProjectSender>,
    ) -> Result<RefitOutcome> {
        let mut options = self.options.clone();
        options.quiet_ms = (!message.force).then_some(self.quiet_ms);
        match refit_with(
            &self.store,
            &self.store,
            &self.inbox,
            &message.collection,
            &options,
            sender,
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

    /// Handles one projection message: projects its parts, stopping before `deadline`
    /// ([`Error::Deadline`]: the message is delivered again and goes on where it stopped),
    /// and publishes the snapshot when every part is projected. Duplicates are harmless.
    pub async fn project(
        &self,
        message: &ProjectMessage,
        deadline: Option<Instant>,
        sender: Option<&dyn ProjectSender>,
    ) -> Result<ProjectOutcome> {
        project(&self.store, message, &self.options, deadline, sender).await
    }
}

/// A refit-queue message: a refit, or a projection of part of a snapshot.
enum RefitQueueMessage {
    Refit(RefitMessage),
    Project(ProjectMessage),
}

impl RefitQueueMessage {
    fn parse(body: serde_json::Value) -> Result<Self> {
        Ok(if body.get("project").is_some() {
            Self::Project(serde_json::from_value(body)?)
        } else {
            Self::Refit(serde_json::from_value(body)?)
        })
    }
    fn collection(&self) -> &str {
        match self {
            Self::Refit(m) => &m.collection,
            Self::Project(m) => &m.collection,
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
            let message = match RefitQueueMessage::parse(body)? {
                RefitQueueMessage::Refit(m) => m,
                project_message => {
                    return project_record(refitter, &project_message, requeue, deadline, receive_count)
                        .await
                        .map(|outcome| {
                            info!(message_id = %id, request_id, ?outcome, "projection message processed");
                            RefitOutcome::NothingToDo
                        });
                }
            };
            let refitter = refitter.ok_or_else(|| {
                Error::Config("a refit message arrived, but refits are not configured".into())
            })?;
            // For `status --collection` and the checker: a refit that dies without a word
            // (out of memory, the timeout) is found by its start record (pipeline::stuck).
            let (store, c, clock) = (&refitter.store, &message.collection, &SystemClock);
            if let Err(e) = record_refit_start(store, c, receive_count, clock).await {
                warn!(error = %e, "could not record the refit's start");
            }
            let sender = requeue.map(|q| q as &dyn ProjectSender);
            let outcome = match refitter.process_with(&message, sender).await {
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

/// One projection message of the refit queue, its start and failure recorded as a refit's
/// (for `status --collection`).
async fn project_record<S: ObjectStore, Q: Queue>(
    refitter: Option<&Refitter<S>>,
    message: &RefitQueueMessage,
    requeue: Option<&Q>,
    deadline: Option<Instant>,
    receive_count: u32,
) -> Result<ProjectOutcome> {
    let RefitQueueMessage::Project(project) = message else {
        return Err(Error::Config("not a projection message".into()));
    };
    let refitter = refitter.ok_or_else(|| {
        Error::Config("a projection message arrived, but refits are not configured".into())
    })?;
    let (store, c, clock) = (&refitter.store, message.collection(), &SystemClock);
    if let Err(e) = record_refit_start(store, c, receive_count, clock).await {
        warn!(error = %e, "could not record the projection's start");
    }
    let sender = requeue.map(|q| q as &dyn ProjectSender);
    match refitter.project(project, deadline, sender).await {
        Ok(outcome) => Ok(outcome),
        Err(error) => {
            let text = error.to_string();
            if let Err(e) = record_refit_failure(store, c, receive_count, &text, clock).await {
                warn!(error = %e, "could not record the projection's failure");
            }
            Err(error)
        }
    }
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

/// The featurizer's cold-start check of its model against `MODEL_SHA256` (the stack's
/// `ModelSha256`): a mismatch, or no `MODEL_SHA256`, is recorded for `status` and the stuck
/// checker ([`pipeline::health`]) and fails with both hashes named.
pub async fn check_model_at_cold_start<S: ObjectStore>(
    store: &S,
    config: &Config,
    loaded_sha256: &str,
) -> Result<()> {
    let path = config.model_path.display().to_string();
    verify_model_at_cold_start(store, &config.model_sha256, loaded_sha256, &path)
        .await
        .map_err(|unhealthy| Error::Config(unhealthy.message()))
}

/// The featurizer's cold-start check of its layer's spec against `MODEL_SPEC_SHA256` (the
/// stack's `ModelSpecSha256`, the built-in spec's when unset): a layer packaged with another
/// spec fails the init, naming both and the fix, so that no image is preprocessed otherwise
/// than the runs and the run ids say.
pub fn check_spec_at_cold_start(config: &Config, model: &Model) -> Result<()> {
    spec_matches(
        &config.model_spec_sha256,
        &model.record(),
        &config.model_spec_path.display().to_string(),
    )
}

/// [`check_spec_at_cold_start`] on the values.
fn spec_matches(
    expected: &str,
    loaded: &engine::model::ModelRecord,
    spec_path: &str,
) -> Result<()> {
    if loaded.spec_sha256 == expected {
        return Ok(());
    }
    tracing::error!(
        expected,
        loaded = %loaded.spec_sha256,
        spec_path,
        "model spec mismatch at cold start"
    );
    Err(Error::Config(format!(
        "the featurizer's model spec {:?} ({spec_path}, or the built-in one when that file is \
         absent) has sha256 {}, but the stack's ModelSpecSha256 is {expected}: deploy the layer \
         built with the spec ModelSpecSha256 names, or set ModelSpecSha256 to the value \
         infra/build-layer.sh printed for this layer (its ModelSpecSha256 line)",
        loaded.name, loaded.spec_sha256
    )))
}

/// The featurizer function: the shard featurizer (batch runs) and, when a refit queue is
/// configured, the ingestor (continuous ingestion), sharing one model.
pub struct FeaturizerFunction {
    featurizer: ShardFeaturizer<DeployedStore, SqsQueue>,
    ingestor: Option<Ingestor<DeployedStore, DeployedStore, SqsQueue>>,
}

impl FeaturizerFunction {
    /// Builds both handlers from the configuration, loading the model once per container and
    /// verifying it at cold start ([`check_model_at_cold_start`],
    /// [`check_spec_at_cold_start`]): a layer with another model than `MODEL_SHA256`, or
    /// another spec than `MODEL_SPEC_SHA256`, fails the init, so neither a shard nor an
    /// ingested image is ever featurized with it.
    pub async fn from_config(config: &Config, aws: &SdkConfig) -> Result<Self> {
        let store = deployed_store(config, aws);
        let model = load_model(config)?;
        check_model_at_cold_start(&store, config, model.sha256()).await?;
        check_spec_at_cold_start(config, &model)?;
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
mod tests;
