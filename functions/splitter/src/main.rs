//! Splitter Lambda: wiring only. Starts runs from S3 `ObjectCreated` events on
//! `runs/requests/*.json` or from a direct invoke with the run request as payload.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::aws::{s3_client, sdk_config, sqs_client, S3Store, SqsQueue};
use shared::config::Config;
use shared::lambda::{handle_splitter_event, parse_splitter_event};
use shared::splitter::Splitter;
use shared::telemetry::{init_tracing, LogFormat};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing(LogFormat::from_env(), "info");
    let config = Config::from_env()?;
    let aws = sdk_config().await;
    let store = S3Store::new(s3_client(&aws), &config.bucket);
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
    .with_input_bucket(&config.bucket);
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
