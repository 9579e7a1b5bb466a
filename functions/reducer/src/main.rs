//! Reducer Lambda: wiring only. Consumes the reduce queue with partial batch failures.

// The handler future (SDK clients behind the retry layer) is deeply nested; the default limit is too low.
#![recursion_limit = "256"]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::aws::{s3_client, sdk_config, S3Store};
use shared::aws_lambda_events::event::sqs::SqsEvent;
use shared::config::Config;
use shared::retry::{RetryPolicy, Retrying};
use shared::lambda::handle_reduce_batch;
use shared::reducer::Reducer;
use shared::telemetry::{init_tracing, LogFormat};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing(LogFormat::from_env(), "info");
    let config = Config::from_env()?;
    let aws = sdk_config().await;
    let store = Retrying::new(
        S3Store::new(s3_client(&aws), &config.bucket),
        RetryPolicy::default(),
    );
    // The images are in the same bucket: the report's thumbnails are read from it.
    let reducer = Reducer::new(store.clone(), config.reducer.clone()).with_input(store);
    let reducer = &reducer;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(handle_reduce_batch(reducer, event.payload, &event.context.request_id).await)
    }))
    .await
}
