//! Splitter Lambda: wiring only. Starts runs from S3 `ObjectCreated` events on
//! `runs/requests/*.json` or from a direct invoke with the run request as payload.

// The handler future (SDK clients behind the retry layer) is deeply nested; the default limit is too low.
#![recursion_limit = "256"]

use aws::config::Config;
use aws::lambda::SplitterFunction;
use aws::sdk::sdk_config;
use aws::telemetry::{init_tracing, LogFormat};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing(LogFormat::from_env(), "info");
    let config = Config::from_env()?;
    let aws = sdk_config().await;
    let function = &SplitterFunction::from_config(&config, &aws)?;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            Ok::<_, Error>(
                function
                    .handle(event.payload, &event.context.request_id)
                    .await?,
            )
        },
    ))
    .await
}
