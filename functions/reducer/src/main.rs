//! Reducer Lambda: wiring only. Consumes the reduce queue with partial batch failures.

// The handler future (SDK clients behind the retry layer) is deeply nested; the default limit is too low.
#![recursion_limit = "256"]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::aws::{s3_client, sdk_config, S3Store};
use shared::aws_lambda_events::event::sqs::SqsEvent;
use shared::config::Config;
use shared::retry::{RetryPolicy, Retrying};
use shared::lambda::{handle_reducer_batch, Refitter};
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
    let reducer = Reducer::new(store.clone(), config.reducer.clone()).with_input(store.clone());
    // Collections (the refit queue): refitted once quiet, or at once when asked.
    let refitter = Refitter {
        store,
        inbox: config.inbox_prefix.clone(),
        quiet_ms: u64::from(config.quiet_secs) * 1000,
        options: shared::collection::RefitOptions {
            pca: config.run_defaults.pca.clone(),
            concurrency: config.reducer.concurrency,
            ..Default::default()
        },
    };
    let (reducer, refitter) = (&reducer, &refitter);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(
            handle_reducer_batch(reducer, Some(refitter), event.payload, &event.context.request_id)
                .await,
        )
    }))
    .await
}
