//! Splitter Lambda: wiring only. Starts runs from S3 `ObjectCreated` events on
//! `runs/requests/*.json` or from a direct invoke with the run request as payload.

// The handler future (SDK clients behind the retry layer) is deeply nested; the default limit is too low.
#![recursion_limit = "256"]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::aws::{sdk_config, sqs_client, SqsQueue};
use shared::config::Config;
use shared::lambda::{deployed_store, handle_splitter_event, parse_splitter_event};
use shared::splitter::Splitter;
use shared::telemetry::{init_tracing, LogFormat};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing(LogFormat::from_env(), "info");
    let config = Config::from_env()?;
    let aws = sdk_config().await;
    let store = deployed_store(&config, &aws);
    let sqs = sqs_client(&aws);
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
    .with_model_sha256(&config.model_sha256);
    let (splitter, store) = (&splitter, &store);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let parsed = parse_splitter_event(event.payload)?;
            let outcomes = handle_splitter_event(splitter, store, parsed).await?;
            Ok::<_, Error>(serde_json::json!({ "runs": outcomes }))
        },
    ))
    .await
}
