//! Reducer Lambda: wiring only. Consumes the reduce queue (batch runs) and the refit queue
//! (collections) with partial batch failures.

// The handler future (SDK clients behind the retry layer) is deeply nested; the default limit is too low.
#![recursion_limit = "256"]

use aws::config::Config;
use aws::lambda::ReducerFunction;
use aws::sdk::sdk_config;
use aws::telemetry::{init_tracing, LogFormat};
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing(LogFormat::from_env(), "info");
    let config = Config::from_env()?;
    let aws = sdk_config().await;
    let function = &ReducerFunction::from_config(&config, &aws)?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(
            function
                .handle(
                    event.payload,
                    &event.context.request_id,
                    event.context.deadline,
                )
                .await,
        )
    }))
    .await
}
