//! `featurize refit`: refit a collection now (local, in this process, or on a deployed stack).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
#[cfg(feature = "aws")]
use aws::retry::{RetryPolicy, Retrying};
use clap::Args;

use super::common::{collection_root, LocationArgs, PcaArgs};

#[derive(Args)]
pub struct RefitArgs {
    /// The collection.
    #[arg(long)]
    collection: String,
    #[command(flatten)]
    at: LocationArgs,
    /// The watched folder (local collections, with --output): where the refit checks each
    /// changed file.
    #[arg(long, requires = "output")]
    input: Option<PathBuf>,
    /// The inbox prefix in the bucket.
    #[arg(long, default_value = "inbox/")]
    inbox_prefix: String,
    /// Send a refit request to the stack's refit queue instead of refitting here.
    #[arg(long, env = "REFIT_QUEUE_URL")]
    refit_queue_url: Option<String>,
    #[command(flatten)]
    pca: PcaArgs,
}

pub fn print_refit(
    outcome: &pipeline::continuous::collection::RefitOutcome,
    store_describe: &dyn Fn(&str) -> String,
) {
    use pipeline::continuous::collection::{CollectionLayout, RefitOutcome};
    match outcome {
        RefitOutcome::Published(s) => {
            let layout = CollectionLayout::new(&s.collection);
            println!(
                "collection {}: snapshot {} (refit {}) published",
                s.collection, s.snapshot, s.seq
            );
            println!(
                "  rows {}  errors {}  added {}  replaced {}  removed {}  pending {}",
                s.rows, s.errors, s.added, s.replaced, s.removed, s.pending
            );
            println!(
                "  PCA k = {}  cumulative explained variance {:.4}  fit {:.3} s  publish {:.3} s",
                s.k, s.cumulative_explained_variance, s.fit_s, s.publish_s
            );
            for w in &s.warnings {
                println!("  warning: {w}");
            }
            println!(
                "  Results      {}",
                store_describe(&layout.results_prefix(&s.snapshot))
            );
            println!(
                "  Results_PCA  {}",
                store_describe(&layout.pca_prefix(&s.snapshot))
            );
            println!(
                "  pca_model    {}",
                store_describe(&layout.pca_model(&s.snapshot))
            );
            println!("  current      {}", store_describe(&layout.current()));
        }
        RefitOutcome::NothingToDo => println!("nothing changed since the published snapshot"),
        RefitOutcome::NotQuiet {
            since_change_ms, ..
        } => {
            println!("not quiet yet: last change {since_change_ms} ms ago")
        }
        RefitOutcome::LostRace => println!(
            "other refits kept publishing first ({} times): run it again",
            pipeline::continuous::collection::REFIT_ATTEMPTS
        ),
        RefitOutcome::Projecting {
            snapshot,
            seq,
            parts,
            messages,
        } => println!(
            "snapshot {snapshot} (refit {seq}) written; its {parts} parts are being projected \
             by {messages} messages on the refit queue, the last of which publishes it"
        ),
    }
}

pub async fn refit(args: RefitArgs) -> Result<ExitCode> {
    use pipeline::ports::store::ObjectStore;
    let options = args.pca.refit_options();
    if let Some(out) = &args.at.output {
        let input = args
            .input
            .as_ref()
            .context("--input DIR (the watched folder) is required with --output")?;
        let (root, name) = collection_root(input)?;
        if name != args.collection {
            bail!(
                "--input {} is collection {name:?}, not {:?}",
                input.display(),
                args.collection
            );
        }
        // One writer per output folder: `watch`, `run` and `resume` on it refuse meanwhile.
        let _exclusive = pipeline::batch::output_lock::OutputLock::acquire(out, "featurize refit")?;
        let output = pipeline::ports::store::FsStore::new(out);
        let outcome = pipeline::continuous::collection::refit(
            &output,
            &pipeline::ports::store::FsStore::new(root),
            "",
            &args.collection,
            &options,
        )
        .await?;
        print_refit(&outcome, &|k| output.describe(k));
        return Ok(ExitCode::SUCCESS);
    }
    let Some(bucket) = &args.at.bucket else {
        bail!("give --output DIR --input DIR (local collection) or --bucket B (deployed stack)");
    };
    refit_on_s3(&args, &options, bucket).await
}

/// A deployed stack's collection: a refit request on its refit queue, or a refit here.
#[cfg(feature = "aws")]
async fn refit_on_s3(
    args: &RefitArgs,
    options: &pipeline::continuous::collection::RefitOptions,
    bucket: &str,
) -> Result<ExitCode> {
    use pipeline::ports::store::ObjectStore;
    let sdk = aws::sdk::sdk_config_with_endpoint(args.at.endpoint_url.as_deref()).await;
    if let Some(url) = &args.refit_queue_url {
        use pipeline::ports::queue::Queue;
        let queue = aws::sdk::SqsQueue::new(aws::sdk::sqs_client(&sdk), url);
        let message = pipeline::continuous::collection::RefitMessage {
            collection: args.collection.clone(),
            force: true,
        };
        queue
            .send_all(vec![serde_json::to_string(&message)?])
            .await?;
        println!("refit of {} requested ({url}); `featurize status --collection {} --bucket {bucket}` shows when it is published", args.collection, args.collection);
        return Ok(ExitCode::SUCCESS);
    }
    let store = Retrying::new(
        aws::sdk::S3Store::new(aws::sdk::s3_client(&sdk), bucket),
        RetryPolicy::default(),
    );
    let outcome = pipeline::continuous::collection::refit(
        &store,
        &store,
        &args.inbox_prefix,
        &args.collection,
        options,
    )
    .await?;
    print_refit(&outcome, &|k| store.describe(k));
    Ok(ExitCode::SUCCESS)
}

/// Without the `aws` feature: refused at once (the AWS SDK is not in this build).
#[cfg(not(feature = "aws"))]
async fn refit_on_s3(
    _args: &RefitArgs,
    _options: &pipeline::continuous::collection::RefitOptions,
    _bucket: &str,
) -> Result<ExitCode> {
    Err(super::common::needs_aws("refit --bucket"))
}
