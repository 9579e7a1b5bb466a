//! `featurize`: the pipeline's command line. `run` does the whole job on a local folder (no
//! AWS); `bench` measures the per-image cost; `submit` and `status` drive a deployed stack.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shared::featurizer::FeaturizerSettings;
use shared::local::{run_local, LocalRun};
use shared::manifest::{PcaConvention, RunRequest};
use shared::model::{Model, ModelSpec};
use shared::retry::{RetryPolicy, Retrying};
use shared::telemetry::{init_tracing, LogFormat};

mod bench;
mod simulate;

#[derive(Parser)]
#[command(
    name = "featurize",
    version,
    about = "Deep features (MobileNetV2, 1280-d) and their PCA for a folder or bucket of images",
    long_about = "Deep features (MobileNetV2, ImageNet, 1280-d) and their PCA for a folder or bucket of images.\n\n\
Locally (no AWS): `featurize run --input DIR --output OUT` writes OUT/Results/<run>/ (path, label, features), \
OUT/Results_PCA/<run>/ (path, label, pca_features) and OUT/runs/<run>/ (summary.json, pca_model.json, errors.json). \
The label of an image is its parent folder's name."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole job on a local folder: list, shard, featurize on all cores, fit the PCA.
    Run(RunArgs),
    /// Measure model load, cold start, and per-image decode / resize / inference / write time.
    Bench(bench::BenchArgs),
    /// Start a run on a deployed stack (or an emulator): list the bucket prefix, write the manifest, send the shards.
    Submit(SubmitArgs),
    /// Show a run's progress: shards done / pending / failed, errors, reduce, and whether it is stuck.
    Status(StatusArgs),
    /// Resume a run: featurize the shards that are not done, then reduce (also recovers a run
    /// that `status` reports stuck: a lost reduce message, a dead reducer).
    Resume(ResumeArgs),
    /// Simulate a run of N images at scale (synthetic features, no CNN): time, memory,
    /// requests and bytes per stage.
    Simulate(simulate::SimulateArgs),
}

/// Model location, shared by the subcommands that run it.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// The ONNX model (default: models/mobilenet_v2_features.onnx, else ../shared/models/...).
    #[arg(long, env = "MODEL_PATH")]
    pub model: Option<PathBuf>,
    /// Its spec (default: model_spec.json beside the model, else the bundled MobileNetV2 spec).
    #[arg(long, env = "MODEL_SPEC_PATH")]
    pub model_spec: Option<PathBuf>,
}

impl ModelArgs {
    /// Resolves the model path: the flag, `MODEL_PATH`, or the usual places.
    pub fn model_path(&self) -> Result<PathBuf> {
        if let Some(path) = &self.model {
            return Ok(path.clone());
        }
        let candidates = [
            "models/mobilenet_v2_features.onnx",
            "../shared/models/mobilenet_v2_features.onnx",
        ];
        candidates
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "no model found at {} — run models/get-model.sh or pass --model PATH",
                    candidates.join(" or ")
                )
            })
    }

    /// Loads and optimizes the model.
    pub fn load(&self) -> Result<Model> {
        self.load_with(shared::model::LoadOptions::default())
    }

    /// Loads and optimizes the model with explicit graph options.
    pub fn load_with(&self, options: shared::model::LoadOptions) -> Result<Model> {
        let path = self.model_path()?;
        let spec = ModelSpec::for_model(&path, self.model_spec.as_deref())?;
        Model::load_with(&path, spec, options)
            .with_context(|| format!("loading model {}", path.display()))
    }
}

/// Options of a run, shared by `run` and `submit`.
#[derive(Args, Clone)]
struct RunOptionArgs {
    /// Number of principal components.
    #[arg(long, default_value_t = 50, conflicts_with = "variance")]
    k: usize,
    /// Instead of k: keep the fewest components that explain this share of the variance (e.g. 0.95).
    #[arg(long)]
    variance: Option<f64>,
    /// Projection: centered = (x - mean) @ components.T (scikit-learn); uncentered = components @ x (Spark ML).
    #[arg(long, default_value = "centered", value_parser = parse_convention)]
    convention: PcaConvention,
    /// Images per shard.
    #[arg(long, default_value_t = shared::manifest::DEFAULT_SHARD_SIZE)]
    shard_size: usize,
    /// Number of shards (instead of --shard-size).
    #[arg(long, conflicts_with = "shard_size")]
    shards: Option<usize>,
    /// Which files are images: a glob on the file name, case-insensitive.
    #[arg(long, default_value = "*.{jpg,jpeg,png}")]
    glob: String,
    /// Reject images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = 50_000_000)]
    max_pixels: u64,
    /// Fail the run (no PCA) when more than this share of images fails.
    #[arg(long, default_value_t = 0.05)]
    max_error_rate: f64,
    /// Run id (default: derived from the input and options, so re-running resumes the same run).
    #[arg(long)]
    run_id: Option<String>,
}

impl RunOptionArgs {
    fn request(&self, input_prefix: String) -> RunRequest {
        RunRequest {
            input_prefix,
            run_id: self.run_id.clone(),
            k: self.variance.is_none().then_some(self.k),
            variance: self.variance,
            convention: Some(self.convention),
            shard_size: Some(self.shard_size),
            shard_count: self.shards,
            image_glob: Some(self.glob.clone()),
            max_pixels: Some(self.max_pixels),
            max_error_rate: Some(self.max_error_rate),
        }
    }
}

fn parse_convention(text: &str) -> Result<PcaConvention, String> {
    PcaConvention::parse(text).map_err(|e| e.to_string())
}

#[derive(Args)]
struct RunArgs {
    /// Folder of images, walked recursively; label = parent folder name.
    #[arg(long)]
    input: PathBuf,
    /// Output folder (Results/, Results_PCA/, runs/).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    options: RunOptionArgs,
    /// Inference threads (default: all cores).
    #[arg(long, short = 'j', default_value_t = 0)]
    jobs: usize,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Args)]
struct AwsArgs {
    /// The data bucket.
    #[arg(long, env = "BUCKET")]
    bucket: String,
    /// S3/SQS endpoint (an emulator such as moto); also read from AWS_ENDPOINT_URL.
    #[arg(long)]
    endpoint_url: Option<String>,
}

impl AwsArgs {
    async fn sdk(&self) -> shared::aws::SdkConfig {
        shared::aws::sdk_config_with_endpoint(self.endpoint_url.as_deref()).await
    }
}

#[derive(Args)]
struct SubmitArgs {
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
    /// sha256 of the deployed model (default: the local model's, as `--model` finds it).
    #[arg(long, env = "MODEL_SHA256")]
    model_sha256: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    options: RunOptionArgs,
}

#[derive(Args)]
struct ResumeArgs {
    /// The run id.
    #[arg(long)]
    run: String,
    /// A local output folder (embedded runs): the run is finished here, reading the input
    /// folder recorded in its manifest.
    #[arg(long, conflicts_with = "bucket")]
    output: Option<PathBuf>,
    /// The data bucket (deployed runs): missing shards or the reduce are sent to the queues.
    #[arg(long, env = "BUCKET")]
    bucket: Option<String>,
    /// S3/SQS endpoint (an emulator).
    #[arg(long)]
    endpoint_url: Option<String>,
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

#[derive(Args)]
struct StatusArgs {
    /// The run id.
    #[arg(long)]
    run: String,
    /// A local output folder (embedded runs).
    #[arg(long, conflicts_with = "bucket")]
    output: Option<PathBuf>,
    /// The data bucket (deployed runs).
    #[arg(long, env = "BUCKET")]
    bucket: Option<String>,
    /// S3 endpoint (an emulator).
    #[arg(long)]
    endpoint_url: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Call a claimed reduce that no reducer started after this many seconds lost.
    #[arg(long, default_value_t = 300)]
    stall_after: u64,
    /// Call a reducer lock older than this many seconds stale (the reducer's timeout).
    #[arg(long, default_value_t = 900)]
    lock_stale_after: u64,
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = Cli::parse();
    init_tracing(LogFormat::from_env(), "warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Bench(args) => bench::bench(args, process_start)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Submit(args) => submit(args).await,
            Command::Status(args) => status(args).await,
            Command::Resume(args) => resume(args).await,
            Command::Simulate(args) => simulate::simulate(args)
                .await
                .map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    if !args.input.is_dir() {
        bail!(
            "input folder {} does not exist or is not a folder",
            args.input.display()
        );
    }
    let started = Instant::now();
    let model = args.model.load()?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} images  {per_sec}  ETA {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_message("featurizing");
    let start_bar = bar.clone();
    let step_bar = bar.clone();
    let report = run_local(
        LocalRun {
            input: args.input.clone(),
            output: args.output.clone(),
            request: args.options.request(String::new()),
            featurizer: FeaturizerSettings {
                worker_threads: args.jobs,
                ..Default::default()
            },
            on_start: Some(Box::new(move |split| {
                start_bar.set_length(split.images as u64)
            })),
            progress: Some(Arc::new(move |n| step_bar.inc(n))),
        },
        model,
    )
    .await?;
    bar.finish_and_clear();
    let s = &report.summary;
    let wall = started.elapsed().as_secs_f64();
    println!("run {}: {}", s.run_id, s.status);
    if report.split.already_complete {
        println!(
            "  (already complete: outputs were not recomputed; remove {} to redo)",
            args.output.join("runs").join(&s.run_id).display()
        );
    }
    println!(
        "  images {}  rows {}  errors {}  shards {}",
        s.images, s.rows, s.errors, s.shards
    );
    if s.status == "succeeded" {
        println!(
            "  PCA k = {}  cumulative explained variance {:.4}  ({})",
            s.k, s.cumulative_explained_variance, s.convention
        );
    }
    if let Some(reason) = &s.failure {
        println!("  failed: {reason}");
    }
    println!(
        "  wall {wall:.1} s  ({:.1} images/s)",
        s.images as f64 / wall
    );
    let out = args.output.display();
    println!("  features     {out}/Results/{}/", s.run_id);
    println!("  projections  {out}/Results_PCA/{}/", s.run_id);
    println!(
        "  summary      {out}/runs/{}/summary.json  errors: {out}/runs/{}/errors.json",
        s.run_id, s.run_id
    );
    Ok(if s.status != "succeeded" {
        ExitCode::FAILURE
    } else if s.errors > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

async fn submit(args: SubmitArgs) -> Result<ExitCode> {
    use shared::aws::{s3_client, sqs_client, S3Store, SqsQueue};
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
    let splitter = shared::splitter::Splitter::new(
        store.clone(),
        store,
        SqsQueue::new(sqs.clone(), &args.shard_queue_url),
        SqsQueue::new(sqs, &args.reduce_queue_url),
        shared::manifest::RunOptions::default(),
        args.feature_dim,
    )
    .with_input_bucket(&args.aws.bucket)
    .with_model_sha256(model_sha256);
    let outcome = splitter
        .handle(&args.options.request(args.input_prefix.clone()))
        .await?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(ExitCode::SUCCESS)
}

fn file_sha256(path: &std::path::Path) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?;
    Ok(shared::featurizer::sha256_hex(&bytes))
}

async fn resume(args: ResumeArgs) -> Result<ExitCode> {
    use shared::aws::{s3_client, sqs_client, S3Store, SqsQueue};
    match (&args.output, &args.bucket) {
        (Some(output), _) => {
            let model = args.model.load()?;
            let report = shared::local::resume_local(
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
            let (Some(shard_url), Some(reduce_url)) = (&args.shard_queue_url, &args.reduce_queue_url)
            else {
                bail!("a deployed run needs --shard-queue-url and --reduce-queue-url (or SHARD_QUEUE_URL / REDUCE_QUEUE_URL)");
            };
            let aws = AwsArgs {
                bucket: bucket.clone(),
                endpoint_url: args.endpoint_url.clone(),
            };
            let sdk = aws.sdk().await;
            let store = Retrying::new(S3Store::new(s3_client(&sdk), bucket), RetryPolicy::default());
            let sqs = sqs_client(&sdk);
            let splitter = shared::splitter::Splitter::new(
                store.clone(),
                store,
                SqsQueue::new(sqs.clone(), shard_url),
                SqsQueue::new(sqs, reduce_url),
                shared::manifest::RunOptions::default(),
                1280,
            )
            .with_input_bucket(bucket);
            let outcome = splitter
                .resume(&shared::layout::RunLayout::new(&args.run))
                .await?;
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            Ok(ExitCode::SUCCESS)
        }
        (None, None) => bail!("give --output DIR (local run) or --bucket B (deployed run)"),
    }
}

async fn status(args: StatusArgs) -> Result<ExitCode> {
    let policy = shared::status::StallPolicy {
        claim_unanswered_after: std::time::Duration::from_secs(args.stall_after),
        lock_stale_after: std::time::Duration::from_secs(args.lock_stale_after),
    };
    let status = match (&args.output, &args.bucket) {
        (Some(dir), _) => {
            shared::status::run_status_with(&shared::store::FsStore::new(dir), &args.run, policy)
                .await?
        }
        (None, Some(bucket)) => {
            let aws = AwsArgs {
                bucket: bucket.clone(),
                endpoint_url: args.endpoint_url.clone(),
            };
            let sdk = aws.sdk().await;
            let store = shared::aws::S3Store::new(shared::aws::s3_client(&sdk), bucket);
            shared::status::run_status_with(&store, &args.run, policy).await?
        }
        (None, None) => bail!("give --output DIR (local run) or --bucket B (deployed run)"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("run {}: {}", status.run_id, status.state());
        println!(
            "  shards {} done / {} pending / {} failed (of {}), images {}, image errors {}",
            status.done.len(),
            status.pending.len(),
            status.failed.len(),
            status.shards,
            status.images,
            status.image_errors
        );
        for f in &status.failed {
            println!(
                "  shard {} failed (attempt {:?}) at {}: {}",
                f.shard, f.attempt, f.at, f.error
            );
        }
        println!(
            "  reduce claimed: {}  reduced: {}",
            status.reduce_claimed, status.reduced
        );
        if let Some(stuck) = &status.stuck {
            println!("  stuck since {}: {}", stuck.since, stuck.reason);
        }
        if let Some(s) = &status.summary {
            println!(
                "  summary: {} rows, {} errors, k = {}, cumulative explained variance {:.4}",
                s.rows, s.errors, s.k, s.cumulative_explained_variance
            );
        }
    }
    Ok(if status.failed.is_empty() && status.stuck.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
