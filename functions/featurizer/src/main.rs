//! Featurizer Lambda: wiring only. Consumes the shard queue (batch runs) and the ingest queue
//! (continuous ingestion) with partial batch failures.

// The handler future (SDK clients + tract plan) is deeply nested; the default limit is too low.
#![recursion_limit = "256"]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::aws::sdk_config;
use shared::aws_lambda_events::event::sqs::SqsEvent;
use shared::config::Config;
use shared::lambda::FeaturizerFunction;
use shared::telemetry::{init_tracing, LogFormat};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing(LogFormat::from_env(), "info");
    let config = Config::from_env()?;
    let aws = sdk_config().await;
    // The model is loaded once per container.
    let function = &FeaturizerFunction::from_config(&config, &aws)?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let (request_id, deadline) = (&event.context.request_id, event.context.deadline);
        Ok::<_, Error>(function.handle(event.payload, request_id, deadline).await)
    }))
    .await
}
