//! `featurize report`: write (or regenerate) a run's HTML report; print its path, or a
//! presigned URL on S3.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
#[cfg(feature = "aws")]
use aws::retry::{RetryPolicy, Retrying};
use clap::Args;

#[cfg(feature = "aws")]
use super::common::AwsArgs;
use super::common::{named_input, terminal_safe, LocationArgs};

#[derive(Args)]
pub struct ReportArgs {
    /// The run id.
    #[arg(long)]
    run: String,
    #[command(flatten)]
    at: LocationArgs,
    /// The folder of the run's images, for the thumbnails of a local run: the one you name
    /// is read, not the one the output folder's manifest records (asked for on a terminal;
    /// without it the report has no thumbnails).
    #[arg(long, conflicts_with = "bucket")]
    input: Option<PathBuf>,
    /// Build the report again from the run's outputs and images, even if one exists (it
    /// is built when missing anyway).
    #[arg(long)]
    regenerate: bool,
    /// Open it (xdg-open when present; otherwise the path or URL is only printed).
    #[arg(long)]
    open: bool,
    /// Lifetime of the presigned URL, seconds (at most 7 days).
    #[arg(long, default_value_t = 3600)]
    expires: u64,
}

pub async fn report(args: ReportArgs) -> Result<ExitCode> {
    use pipeline::ports::store::ObjectStore;
    let layout = pipeline::layout::RunLayout::new(&args.run);
    pipeline::manifest::validate_run_id(&args.run)?;
    match (&args.at.output, &args.at.bucket) {
        (Some(dir), _) => {
            let path = dir.join(layout.report());
            if args.regenerate || !path.is_file() {
                let output = pipeline::ports::store::FsStore::new(dir);
                let manifest: pipeline::manifest::Manifest = serde_json::from_slice(
                    &output
                        .get(&layout.manifest())
                        .await
                        .with_context(|| format!("no run {} in {}", args.run, dir.display()))?,
                )?;
                // The images are read from the folder the user names, never from the one
                // the manifest records (an output folder can come from anyone).
                let input = match named_input(args.input.as_deref(), &manifest.input.uri, &args.run)
                {
                    Some(dir) if dir.is_dir() => Some(pipeline::ports::store::FsStore::new(dir)),
                    Some(dir) => {
                        eprintln!(
                            "warning: input folder {} is not a folder: the report has no thumbnails",
                            terminal_safe(&dir.display().to_string())
                        );
                        None
                    }
                    None => {
                        eprintln!(
                            "note: no --input: the report has no thumbnails (give --input DIR, \
                             the folder of the run's images)"
                        );
                        None
                    }
                };
                let built =
                    pipeline::batch::report::regenerate(&output, input.as_ref(), &args.run).await?;
                eprintln!(
                    "report built in {:.2} s ({} kB, {} points, {} thumbnails)",
                    built.info.build_s,
                    built.info.bytes / 1024,
                    built.info.points,
                    built.info.thumbnails
                );
            }
            println!("{}", path.display());
            if args.open {
                open(&path.display().to_string());
            }
        }
        (None, Some(bucket)) => report_on_s3(&args, &layout, bucket).await?,
        (None, None) => bail!("give --output DIR (local run) or --bucket B (deployed run)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A deployed run's report: built in the bucket when missing (or `--regenerate`); prints a
/// presigned URL to it.
#[cfg(feature = "aws")]
async fn report_on_s3(
    args: &ReportArgs,
    layout: &pipeline::layout::RunLayout,
    bucket: &str,
) -> Result<()> {
    use pipeline::ports::store::ObjectStore;
    let aws = AwsArgs {
        bucket: bucket.to_string(),
        endpoint_url: args.at.endpoint_url.clone(),
    };
    let sdk = aws.sdk().await;
    let s3 = aws::sdk::S3Store::new(aws::sdk::s3_client(&sdk), bucket);
    let store = Retrying::new(s3.clone(), RetryPolicy::default());
    if args.regenerate || !store.exists(&layout.report()).await? {
        // The images are in the same bucket, under the run's input prefix.
        let built = pipeline::batch::report::regenerate(&store, Some(&store), &args.run).await?;
        eprintln!(
            "report built in {:.2} s ({} kB) and written to s3://{bucket}/{}",
            built.info.build_s,
            built.info.bytes / 1024,
            built.info.key
        );
    }
    let url = s3
        .presigned_get(
            &layout.report(),
            std::time::Duration::from_secs(args.expires),
        )
        .await?;
    println!("{url}");
    if args.open {
        open(&url);
    }
    Ok(())
}

/// Without the `aws` feature: refused at once (the AWS SDK is not in this build).
#[cfg(not(feature = "aws"))]
async fn report_on_s3(
    _args: &ReportArgs,
    _layout: &pipeline::layout::RunLayout,
    _bucket: &str,
) -> Result<()> {
    Err(super::common::needs_aws("report --bucket"))
}

/// Opens a file or URL with xdg-open when there is one; otherwise says so (the path or URL
/// is printed already).
fn open(target: &str) {
    match std::process::Command::new("xdg-open").arg(target).status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("xdg-open {target} failed ({status}); open it yourself"),
        Err(_) => eprintln!("no xdg-open here: open {target} in a browser"),
    }
}
