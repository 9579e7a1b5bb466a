//! Reducer Lambda: wiring only. Consumes the reduce queue (batch runs) and the refit queue
//! (collections) with partial batch failures.

// The handler future (SDK clients behind the retry layer) is deeply nested; the default limit is too low.
#![recursion_limit = "256"]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::aws::sdk_config;
use shared::aws_lambda_events::event::sqs::SqsEvent;
use shared::config::Config;
use shared::lambda::{deployed_store, handle_reducer_batch, Refitter};
use shared::reducer::Reducer;
use shared::telemetry::{init_tracing, LogFormat};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing(LogFormat::from_env(), "info");
    let config = Config::from_env()?;
    let aws = sdk_config().await;
    let store = deployed_store(&config, &aws);
    // The images are in the same bucket: the report's thumbnails are read from it.
    let reducer = &Reducer::new(store.clone(), config.reducer.clone()).with_input(store.clone());
    // Collections: refitted once quiet, or at once when asked.
    let refitter = &Refitter::from_config(store, &config);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(
            handle_reducer_batch(reducer, Some(refitter), event.payload, &event.context.request_id)
                .await,
        )
    }))
    .await
}
