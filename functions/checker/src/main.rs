//! Checker Lambda: wiring only. On `CheckerSchedule` it finds stuck runs and collections and
//! emits the `Featurize/StuckRuns` and `Featurize/StuckCollections` metrics; on
//! `ReconcileSchedule` (`{"reconcile": true}`) it reconciles every collection.

// The handler future (SDK clients behind the retry layer) is deeply nested; the default limit is too low.
#![recursion_limit = "256"]

use aws::checker::CheckerFunction;
use aws::config::Config;
use aws::sdk::sdk_config;
use aws::telemetry::{init_tracing, LogFormat};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing(LogFormat::from_env(), "info");
    let config = Config::from_env()?;
    let aws = sdk_config().await;
    let function = &CheckerFunction::from_config(&config, &aws)?;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            Ok::<_, Error>(function.handle(event.payload).await?)
        },
    ))
    .await
}
