//! `featurize submit`: start a run on a deployed stack (or an emulator).

use std::process::ExitCode;

#[cfg(feature = "aws")]
use anyhow::Context;
use anyhow::Result;
#[cfg(feature = "aws")]
use aws::retry::{RetryPolicy, Retrying};
use clap::Args;

use super::common::{AwsArgs, ModelArgs, RunOptionArgs};

#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    aws: AwsArgs,
    /// Key prefix of the images in the bucket.
    #[arg(long)]
    input_prefix: String,
    /// The shard queue URL.
    #[arg(long, env = "SHARD_QUEUE_URL")]
    shard_queue_url: String,
    /// The reduce queue URL (used when resuming a run whose shards are all done).
    #[arg(long, env = "REDUCE_QUEUE_URL")]
    reduce_queue_url: String,
    /// Feature dimension of the deployed model (to validate --k).
    #[arg(long, default_value_t = 1280)]
    feature_dim: usize,
    /// The stack's inbox prefix (its `InboxPrefix`): never read as batch input.
    #[arg(long, env = "INBOX_PREFIX", default_value = "inbox/")]
    inbox_prefix: String,
    /// sha256 of the deployed model (default: the local model's, as `--model` finds it).
    #[arg(long, env = "MODEL_SHA256")]
    model_sha256: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    options: RunOptionArgs,
}

/// Without the `aws` feature: refused at once (the AWS SDK is not in this build).
#[cfg(not(feature = "aws"))]
pub async fn submit(_args: SubmitArgs) -> Result<ExitCode> {
    Err(super::common::needs_aws("submit"))
}

#[cfg(feature = "aws")]
pub async fn submit(args: SubmitArgs) -> Result<ExitCode> {
    use aws::sdk::{s3_client, sqs_client, S3Store, SqsQueue};
    let model_sha256 = match &args.model_sha256 {
        Some(sha) => sha.clone(),
        None => {
            let path = args.model.model_path().context(
                "the run records the model's sha256: pass --model-sha256 (or MODEL_SHA256), or --model",
            )?;
            file_sha256(&path)?
        }
    };
    let sdk = args.aws.sdk().await;
    let store = Retrying::new(
        S3Store::new(s3_client(&sdk), &args.aws.bucket),
        RetryPolicy::default(),
    );
    let sqs = sqs_client(&sdk);
    let splitter = pipeline::batch::splitter::Splitter::new(
        store.clone(),
        store,
        SqsQueue::new(sqs.clone(), &args.shard_queue_url),
        SqsQueue::new(sqs, &args.reduce_queue_url),
        pipeline::manifest::RunOptions::default(),
        args.feature_dim,
    )
    .with_input_bucket(&args.aws.bucket)
    .with_reserved_prefix(&args.inbox_prefix)
    .with_model_sha256(model_sha256);
    let outcome = splitter
        .handle(&args.options.request(args.input_prefix.clone()))
        .await?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "aws")]
fn file_sha256(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?;
    Ok(pipeline::batch::featurizer::sha256_hex(&bytes))
}
