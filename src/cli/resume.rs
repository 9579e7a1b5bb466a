//! `featurize resume`: featurize a run's missing shards and reduce, here or on a deployed stack.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
#[cfg(feature = "aws")]
use aws::retry::{RetryPolicy, Retrying};
use clap::Args;
use pipeline::batch::featurizer::FeaturizerSettings;
use pipeline::batch::local::LocalRun;
use pipeline::manifest::RunRequest;

#[cfg(feature = "aws")]
use super::common::AwsArgs;
use super::common::{named_input, LocationArgs, ModelArgs};

/// The input folder a local run's manifest records, if the manifest can be read.
async fn recorded_input(output: &std::path::Path, run: &str) -> Option<String> {
    let store = pipeline::ports::store::FsStore::new(output);
    let layout = pipeline::layout::RunLayout::new(run);
    pipeline::batch::run_manifest::read_header(&store, &layout)
        .await
        .ok()
        .map(|m| m.input.uri)
}

#[derive(Args)]
pub struct ResumeArgs {
    /// The run id.
    #[arg(long)]
    run: String,
    #[command(flatten)]
    at: LocationArgs,
    /// The folder of the run's images (local runs): the one you name is read, not the one
    /// the output folder's manifest records (asked for on a terminal when not given).
    #[arg(long, conflicts_with = "bucket")]
    input: Option<PathBuf>,
    /// The shard queue URL (deployed runs).
    #[arg(long, env = "SHARD_QUEUE_URL")]
    shard_queue_url: Option<String>,
    /// The reduce queue URL (deployed runs).
    #[arg(long, env = "REDUCE_QUEUE_URL")]
    reduce_queue_url: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Inference threads for a local run (default: all cores).
    #[arg(long, short = 'j', default_value_t = 0)]
    jobs: usize,
    #[command(flatten)]
    engine: super::run::EngineArgs,
}

pub async fn resume(args: ResumeArgs) -> Result<ExitCode> {
    match (&args.at.output, &args.at.bucket) {
        (Some(output), _) => {
            let model = args.model.load_with(args.engine.load_options())?;
            let recorded = recorded_input(output, &args.run).await;
            let input = match &recorded {
                Some(uri) => named_input(args.input.as_deref(), uri, &args.run),
                None => args.input.clone(),
            };
            let report = pipeline::batch::local::resume_local(
                LocalRun {
                    // Empty when none was named: refused, after the output folder's lock.
                    input: input.unwrap_or_default(),
                    output: output.clone(),
                    request: RunRequest::default(),
                    featurizer: FeaturizerSettings {
                        worker_threads: args.jobs,
                        ..Default::default()
                    },
                    on_start: None,
                    progress: None,
                },
                &args.run,
                model,
            )
            .await?;
            let s = &report.summary;
            println!(
                "run {}: {} (resumed: {} shards featurized, reduce {})",
                s.run_id,
                s.status,
                report.split.shards_sent,
                if report.split.already_complete {
                    "already done"
                } else {
                    "run"
                }
            );
            println!(
                "  images {}  rows {}  errors {}  shards {}",
                s.images, s.rows, s.errors, s.shards
            );
            Ok(if s.status == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        (None, Some(bucket)) => resume_on_s3(&args, bucket).await,
        (None, None) => bail!("give --output DIR (local run) or --bucket B (deployed run)"),
    }
}

/// A deployed run: sends its missing shards, or its reduce, to the stack's queues.
#[cfg(feature = "aws")]
async fn resume_on_s3(args: &ResumeArgs, bucket: &str) -> Result<ExitCode> {
    use aws::sdk::{s3_client, sqs_client, S3Store, SqsQueue};
    let (Some(shard_url), Some(reduce_url)) = (&args.shard_queue_url, &args.reduce_queue_url)
    else {
        bail!("a deployed run needs --shard-queue-url and --reduce-queue-url (or SHARD_QUEUE_URL / REDUCE_QUEUE_URL)");
    };
    let aws = AwsArgs {
        bucket: bucket.to_string(),
        endpoint_url: args.at.endpoint_url.clone(),
    };
    let sdk = aws.sdk().await;
    let store = Retrying::new(
        S3Store::new(s3_client(&sdk), bucket),
        RetryPolicy::default(),
    );
    let sqs = sqs_client(&sdk);
    let splitter = pipeline::batch::splitter::Splitter::new(
        store.clone(),
        store,
        SqsQueue::new(sqs.clone(), shard_url),
        SqsQueue::new(sqs, reduce_url),
        pipeline::manifest::RunOptions::default(),
        1280,
    )
    .with_input_bucket(bucket);
    let outcome = splitter
        .resume(&pipeline::layout::RunLayout::new(&args.run))
        .await?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(ExitCode::SUCCESS)
}

/// Without the `aws` feature: refused at once (the AWS SDK is not in this build).
#[cfg(not(feature = "aws"))]
async fn resume_on_s3(_args: &ResumeArgs, _bucket: &str) -> Result<ExitCode> {
    Err(super::common::needs_aws("resume --bucket"))
}
