//! `featurize reconcile`: repair a collection from its inbox — what lost or dead-lettered
//! events left out, objects there before the notifications existed (the backfill), deletes
//! never seen, failures whose cause may be gone — then refit (local, in this process, or on
//! a deployed stack).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
#[cfg(feature = "aws")]
use aws::retry::{RetryPolicy, Retrying};
use clap::Args;
use pipeline::batch::inference::Engine;
use pipeline::batch::listing::ImageFilter;
use pipeline::continuous::ingest::{IngestSettings, Ingestor};
#[cfg(feature = "aws")]
use pipeline::continuous::reconcile::QueueRepair;
use pipeline::continuous::reconcile::{
    reconcile as reconcile_collection, reconcile_key, Fixed, InProcessRepair, ReconcileRecord,
};
use pipeline::ports::queue::InProcessQueue;
use pipeline::ports::store::{FsStore, ObjectStore};

use super::common::{collection_root, LocationArgs, ModelArgs, PcaArgs};

#[derive(Args)]
pub struct ReconcileArgs {
    /// The collection.
    #[arg(long)]
    collection: String,
    #[command(flatten)]
    at: LocationArgs,
    /// The watched folder (local collections, with --output): the inbox to reconcile.
    #[arg(long, requires = "output")]
    input: Option<PathBuf>,
    /// The inbox prefix in the bucket.
    #[arg(long, default_value = "inbox/")]
    inbox_prefix: String,
    /// Send the repairs to the stack's ingest queue (its featurizer ingests them and asks
    /// for the refit) instead of featurizing here.
    #[arg(long, env = "INGEST_QUEUE_URL")]
    ingest_queue_url: Option<String>,
    /// With --ingest-queue-url: the stack's refit queue, to ask for a refit of deltas that
    /// were waiting.
    #[arg(long, env = "REFIT_QUEUE_URL", requires = "ingest_queue_url")]
    refit_queue_url: Option<String>,
    /// Which files are images: a glob on the file name, case-insensitive.
    #[arg(long, default_value = "*.{jpg,jpeg,png}")]
    glob: String,
    /// Reject images with more pixels than this.
    #[arg(long, default_value_t = 50_000_000)]
    max_pixels: u64,
    #[command(flatten)]
    pca: PcaArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Inference threads (default: all cores).
    #[arg(long, short = 'j', default_value_t = 0)]
    jobs: usize,
    /// Re-featurize the whole collection with the current model: first delete its view
    /// (pointer, snapshots, states, waiting deltas), then ingest every image of the inbox
    /// again. The remedy for a collection whose features come from two models.
    #[arg(long)]
    rebuild: bool,
}

impl ReconcileArgs {
    fn settings(&self, inbox: &str) -> Result<IngestSettings> {
        Ok(IngestSettings {
            inbox: inbox.to_string(),
            filter: ImageFilter::new(&self.glob)?,
            max_pixels: self.max_pixels,
            threads: self.jobs,
            fetch_concurrency: 16,
            quiet_s: 0,
        })
    }
}

/// Exit code 0 when everything was repaired, 2 when some keys still fail transiently (the
/// next reconcile takes them again).
pub async fn reconcile(args: ReconcileArgs) -> Result<ExitCode> {
    let filter = ImageFilter::new(&args.glob)?;
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
        let _exclusive =
            pipeline::batch::output_lock::OutputLock::acquire(out, "featurize reconcile")?;
        let (input, output) = (FsStore::new(root), FsStore::new(out));
        if args.rebuild {
            rebuild(&output, &args.collection).await?;
        }
        let queue = InProcessQueue::new();
        let ingestor = Ingestor::new(
            input.clone(),
            output.clone(),
            &queue,
            Engine::Model(args.model.load()?),
            args.settings("")?,
        );
        let repair = InProcessRepair {
            ingestor: &ingestor,
            options: args.pca.refit_options(),
        };
        let record =
            reconcile_collection(&input, &output, "", &args.collection, &filter, &repair).await?;
        return Ok(print_record(&record, &|k| output.describe(k)));
    }
    let Some(bucket) = &args.at.bucket else {
        bail!("give --output DIR --input DIR (local collection) or --bucket B (deployed stack)");
    };
    reconcile_on_s3(&args, &filter, bucket).await
}

/// A deployed stack's collection: repaired through its ingest queue, or here.
#[cfg(feature = "aws")]
async fn reconcile_on_s3(
    args: &ReconcileArgs,
    filter: &ImageFilter,
    bucket: &str,
) -> Result<ExitCode> {
    let sdk = aws::sdk::sdk_config_with_endpoint(args.at.endpoint_url.as_deref()).await;
    let store = Retrying::new(
        aws::sdk::S3Store::new(aws::sdk::s3_client(&sdk), bucket),
        RetryPolicy::default(),
    );
    let inbox = args.inbox_prefix.as_str();
    if args.rebuild {
        rebuild(&store, &args.collection).await?;
    }
    let record = match &args.ingest_queue_url {
        Some(url) => {
            let sqs = aws::sdk::sqs_client(&sdk);
            let repair = QueueRepair {
                ingest_queue: aws::sdk::SqsQueue::new(sqs.clone(), url),
                refit_queue: args
                    .refit_queue_url
                    .as_ref()
                    .map(|u| aws::sdk::SqsQueue::new(sqs, u)),
            };
            reconcile_collection(&store, &store, inbox, &args.collection, filter, &repair).await?
        }
        None => {
            let queue = InProcessQueue::new();
            let ingestor = Ingestor::new(
                store.clone(),
                store.clone(),
                &queue,
                Engine::Model(args.model.load()?),
                args.settings(inbox)?,
            );
            let repair = InProcessRepair {
                ingestor: &ingestor,
                options: args.pca.refit_options(),
            };
            reconcile_collection(&store, &store, inbox, &args.collection, filter, &repair).await?
        }
    };
    Ok(print_record(&record, &|k| store.describe(k)))
}

/// Without the `aws` feature: refused at once (the AWS SDK is not in this build).
#[cfg(not(feature = "aws"))]
async fn reconcile_on_s3(
    _args: &ReconcileArgs,
    _filter: &ImageFilter,
    _bucket: &str,
) -> Result<ExitCode> {
    Err(super::common::needs_aws("reconcile --bucket"))
}

/// Prints what a reconcile found and did; the exit code.
/// `--rebuild`: forgets the collection's view before the reconcile ingests everything again.
async fn rebuild<S: ObjectStore>(output: &S, collection: &str) -> Result<()> {
    let deleted = pipeline::continuous::reconcile::forget_view(output, collection).await?;
    println!(
        "collection {collection}: view forgotten ({deleted} objects deleted); every image of \
         the inbox is ingested again with the current model"
    );
    Ok(())
}

fn print_record(record: &ReconcileRecord, describe: &dyn Fn(&str) -> String) -> ExitCode {
    let kind = |name: &str, f: &Fixed| {
        let more = if f.count > f.examples.len() {
            ", …"
        } else {
            ""
        };
        match f.count {
            0 => format!("{name} 0"),
            n => format!("{name} {n} ({}{more})", f.examples.join(", ")),
        }
    };
    println!(
        "collection {}: reconciled — {} images in the inbox, {} paths in the index, {} deltas were waiting",
        record.collection, record.listed, record.indexed, record.pending_deltas
    );
    println!(
        "  {}  {}  {}  {}",
        kind("missing", &record.missing),
        kind("changed", &record.changed),
        kind("stale", &record.stale),
        kind("retried", &record.retried)
    );
    let r = &record.repair;
    if r.queued > 0 {
        println!("  repair: {} keys sent to the ingest queue", r.queued);
    } else if r.keys > 0 {
        println!(
            "  repair: {} keys: {} featurized, {} failed, {} removed",
            r.keys, r.upserts, r.failed, r.removed
        );
    } else {
        println!("  nothing to repair");
    }
    if let Some(refit) = &record.refit {
        println!("  refit: {refit}");
    }
    println!(
        "  record       {}",
        describe(&reconcile_key(&record.collection))
    );
    if r.left.count > 0 {
        println!(
            "  {} (still failing transiently; the next reconcile takes them again)",
            kind("left", &r.left)
        );
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
