//! Featurizer Lambda: wiring only. Consumes the shard queue with partial batch failures.

// The handler future (SDK clients + tract plan) is deeply nested; the default limit is too low.
#![recursion_limit = "256"]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::aws::{s3_client, sdk_config, sqs_client, S3Store, SqsQueue};
use shared::aws_lambda_events::event::sqs::SqsEvent;
use shared::config::Config;
use shared::retry::{RetryPolicy, Retrying};
use shared::featurizer::ShardFeaturizer;
use shared::ingest::{IngestSettings, Ingestor};
use shared::lambda::{deadline_instant, handle_featurizer_batch};
use shared::listing::ImageFilter;
use shared::model::{Model, ModelSpec};
use shared::telemetry::{init_tracing, LogFormat};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing(LogFormat::from_env(), "info");
    let config = Config::from_env()?;
    let aws = sdk_config().await;
    // Transient S3 failures (throttling, 5xx, dropped connections) are retried here too.
    let store = Retrying::new(
        S3Store::new(s3_client(&aws), &config.bucket),
        RetryPolicy::default(),
    );
    let reduce_queue = SqsQueue::new(sqs_client(&aws), config.reduce_queue_url()?);
    // Loaded once per container; every invocation reuses the optimized plan.
    let spec = ModelSpec::for_model(
        &config.model_path,
        Some(&config.model_spec_path)
            .filter(|p| p.is_file())
            .map(|p| p.as_path()),
    )?;
    let model = Model::load(&config.model_path, spec)?;
    tracing::info!(
        load_ms = model.load_time().as_millis() as u64,
        feature_dim = model.feature_dim(),
        "model loaded"
    );
    // Continuous ingestion (the ingest queue's S3 notifications), when a refit queue is set.
    let ingestor = match &config.refit_queue_url {
        Some(url) => Some(Ingestor::new(
            store.clone(),
            store.clone(),
            SqsQueue::new(sqs_client(&aws), url),
            shared::featurizer::Engine::Model(model.clone()),
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
    let featurizer = ShardFeaturizer::new(
        store.clone(),
        store,
        reduce_queue,
        model,
        config.featurizer.clone(),
    );
    let (featurizer, ingestor) = (&featurizer, ingestor.as_ref());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        tracing::debug!(deadline_ms = event.context.deadline, "invocation deadline");
        let deadline = deadline_instant(event.context.deadline);
        Ok::<_, Error>(
            handle_featurizer_batch(
                featurizer,
                ingestor,
                event.payload,
                &event.context.request_id,
                deadline,
            )
            .await,
        )
    }))
    .await
}
