//! `featurize resume`: featurize a run's missing shards and reduce, here or on a deployed stack.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use aws::retry::{RetryPolicy, Retrying};
use clap::Args;
use pipeline::batch::featurizer::FeaturizerSettings;
use pipeline::batch::local::LocalRun;
use pipeline::manifest::RunRequest;

use super::common::{AwsArgs, LocationArgs, ModelArgs};

#[derive(Args)]
pub struct ResumeArgs {
    /// The run id.
    #[arg(long)]
    run: String,
    #[command(flatten)]
    at: LocationArgs,
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
}

pub async fn resume(args: ResumeArgs) -> Result<ExitCode> {
    use aws::sdk::{s3_client, sqs_client, S3Store, SqsQueue};
    match (&args.at.output, &args.at.bucket) {
        (Some(output), _) => {
            let model = args.model.load()?;
            let report = pipeline::batch::local::resume_local(
                LocalRun {
                    input: PathBuf::new(),
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
        (None, Some(bucket)) => {
            let (Some(shard_url), Some(reduce_url)) =
                (&args.shard_queue_url, &args.reduce_queue_url)
            else {
                bail!("a deployed run needs --shard-queue-url and --reduce-queue-url (or SHARD_QUEUE_URL / REDUCE_QUEUE_URL)");
            };
            let aws = AwsArgs {
                bucket: bucket.clone(),
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
        (None, None) => bail!("give --output DIR (local run) or --bucket B (deployed run)"),
    }
}
