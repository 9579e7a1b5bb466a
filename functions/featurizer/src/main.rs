//! Featurizer Lambda: wiring only. Consumes the shard queue (batch runs) and the ingest queue
//! (continuous ingestion) with partial batch failures.

// The handler future (SDK clients + tract plan) is deeply nested; the default limit is too low.
#![recursion_limit = "256"]

use aws::config::Config;
use aws::lambda::FeaturizerFunction;
use aws::sdk::sdk_config;
use aws::telemetry::{init_tracing, LogFormat};
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing(LogFormat::from_env(), "info");
    let config = Config::from_env()?;
    let aws = sdk_config().await;
    // The model is loaded once per container.
    let function = &FeaturizerFunction::from_config(&config, &aws).await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = event.context.deadline;
        Ok::<_, Error>(
            function
                .handle(event.payload, &event.context.request_id, deadline)
                .await,
        )
    }))
    .await
}
