//! `featurize`: the pipeline's command line. `run` does the whole job on a local folder (no
//! AWS); `bench` measures the per-image cost; `submit` and `status` drive a deployed stack;
//! `report` writes or fetches a run's HTML report.

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
OUT/Results_PCA/<run>/ (path, label, pca_features) and OUT/runs/<run>/ (summary.json, pca_model.json, errors.json, report.html). \
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
    /// Show a run's progress: shards done / pending / failed, errors, reduce, and whether it is
    /// stuck; `--watch` redraws until the run ends.
    Status(StatusArgs),
    /// Write (or regenerate) a run's HTML report and print its path, or a presigned URL on S3.
    Report(ReportArgs),
    /// Resume a run: featurize the shards that are not done, then reduce (also recovers a run
    /// that `status` reports stuck: a lost reduce message, a dead reducer). With --output, here,
    /// reading the input folder recorded in the manifest; with --bucket, by sending the missing
    /// shards or the reduce to the stack's queues.
    Resume(ResumeArgs),
    /// Simulate a run of N images at scale (synthetic features, no CNN): time, memory,
    /// requests and bytes per stage.
    Simulate(simulate::SimulateArgs),
    /// Keep a folder's features and PCA current: featurize files as they appear, change or
    /// disappear, refit once quiet; on Ctrl-C / SIGTERM finish, refit, publish and exit.
    Watch(WatchArgs),
    /// Refit a collection now (local, in this process, or on a deployed stack).
    Refit(RefitArgs),
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

/// The PCA's options, shared by runs (`run`, `submit`) and collections (`watch`, `refit`).
#[derive(Args, Clone)]
struct PcaArgs {
    /// Number of principal components.
    #[arg(long, default_value_t = 50, conflicts_with = "variance")]
    k: usize,
    /// Instead of k: keep the fewest components that explain this share of the variance (e.g. 0.95).
    #[arg(long)]
    variance: Option<f64>,
    /// Projection: centered = (x - mean) @ components.T (scikit-learn); uncentered = components @ x (Spark ML).
    #[arg(long, default_value = "centered", value_parser = parse_convention)]
    convention: PcaConvention,
}

impl PcaArgs {
    /// A collection's refit options with these PCA settings.
    fn refit_options(&self) -> shared::collection::RefitOptions {
        shared::collection::RefitOptions {
            pca: shared::manifest::PcaOptions {
                k: self.k,
                variance: self.variance,
                convention: self.convention,
            },
            ..Default::default()
        }
    }
}

/// Options of a run, shared by `run` and `submit`.
#[derive(Args, Clone)]
struct RunOptionArgs {
    #[command(flatten)]
    pca: PcaArgs,
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
            k: self.pca.variance.is_none().then_some(self.pca.k),
            variance: self.pca.variance,
            convention: Some(self.pca.convention),
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

/// Where a run or a collection lives: an output folder here (embedded runs, `featurize
/// watch`), or a deployed stack's bucket.
#[derive(Args)]
struct LocationArgs {
    /// A local output folder (`featurize run --output`, `featurize watch --output`).
    #[arg(long, conflicts_with = "bucket")]
    output: Option<PathBuf>,
    /// The data bucket of a deployed stack.
    #[arg(long, env = "BUCKET")]
    bucket: Option<String>,
    /// S3/SQS endpoint (an emulator such as moto).
    #[arg(long)]
    endpoint_url: Option<String>,
}

#[derive(Args)]
struct ResumeArgs {
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

#[derive(Args)]
struct StatusArgs {
    /// The run id.
    #[arg(long, conflicts_with = "collection", default_value = "", hide_default_value = true)]
    run: String,
    /// A collection (continuous ingestion): its published view and what waits for the next refit.
    #[arg(long)]
    collection: Option<String>,
    #[command(flatten)]
    at: LocationArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Call a claimed reduce that no reducer started after this many seconds lost.
    #[arg(long, default_value_t = 300)]
    stall_after: u64,
    /// Call a reducer lock older than this many seconds stale (the reducer's timeout).
    #[arg(long, default_value_t = 900)]
    lock_stale_after: u64,
    /// Refresh until the run ends (complete, failed, stuck, or every remaining shard
    /// failed): redrawn in place on a terminal, a line per change otherwise, a JSON line per
    /// refresh with --json. The exit code is then the final status's.
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2.0, requires = "watch")]
    interval: f64,
    /// Stop watching after this many seconds (exit code 4) if the run has not ended.
    #[arg(long, requires = "watch")]
    timeout: Option<f64>,
}

#[derive(Args)]
struct ReportArgs {
    /// The run id.
    #[arg(long)]
    run: String,
    #[command(flatten)]
    at: LocationArgs,
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
            Command::Report(args) => report(args).await,
            Command::Resume(args) => resume(args).await,
            Command::Watch(args) => watch(args).await,
            Command::Refit(args) => refit_cmd(args).await,
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
    for warning in &s.warnings {
        println!("  warning: {warning}");
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
    if let Some(r) = &s.report {
        println!(
            "  report       {out}/{}  ({} kB, built in {:.2} s)",
            r.key,
            r.bytes / 1024,
            r.build_s
        );
    }
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
    match (&args.at.output, &args.at.bucket) {
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
                endpoint_url: args.at.endpoint_url.clone(),
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
    if let Some(collection) = &args.collection {
        return collection_status_cmd(
            collection,
            args.at.output.as_ref(),
            args.at.bucket.as_ref(),
            args.at.endpoint_url.as_deref(),
            args.json,
        )
        .await;
    }
    if args.run.is_empty() {
        bail!("give --run ID (a run) or --collection C (a collection)");
    }
    let policy = shared::status::StallPolicy {
        claim_unanswered_after: std::time::Duration::from_secs(args.stall_after),
        lock_stale_after: std::time::Duration::from_secs(args.lock_stale_after),
    };
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        bail!("--interval must be a positive number of seconds, got {}", args.interval);
    }
    match (&args.at.output, &args.at.bucket) {
        (Some(dir), _) => status_on(&shared::store::FsStore::new(dir), &args, policy).await,
        (None, Some(bucket)) => {
            let aws = AwsArgs {
                bucket: bucket.clone(),
                endpoint_url: args.at.endpoint_url.clone(),
            };
            let sdk = aws.sdk().await;
            let store = shared::aws::S3Store::new(shared::aws::s3_client(&sdk), bucket);
            status_on(&store, &args, policy).await
        }
        (None, None) => bail!("give --output DIR (local run) or --bucket B (deployed run)"),
    }
}

/// The exit code of a status: 3 when shards failed or the run is stuck, 1 when the run
/// failed (too many image errors), else 0.
fn status_code(status: &shared::status::RunStatus) -> ExitCode {
    if !status.failed.is_empty() || status.stuck.is_some() {
        ExitCode::from(3)
    } else if status.state() == "failed" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn status_on<S: shared::store::ObjectStore>(
    store: &S,
    args: &StatusArgs,
    policy: shared::status::StallPolicy,
) -> Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    if !args.watch {
        let status = shared::status::run_status_with(store, &args.run, policy).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print_status(&status);
        }
        return Ok(status_code(&status));
    }
    let terminal = std::io::stdout().is_terminal() && !args.json;
    let started = Instant::now();
    let mut drawn = 0usize;
    let mut last_key = String::new();
    let mut last_print = Instant::now();
    loop {
        let status = shared::status::run_status_with(store, &args.run, policy).await?;
        let settled = status.is_settled();
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&status)?)?;
        } else {
            let lines = watch_lines(&status);
            if terminal {
                if drawn > 0 {
                    // Up to the first line drawn last time, and clear below.
                    write!(out, "\x1b[{drawn}A\x1b[J")?;
                }
                for line in &lines {
                    writeln!(out, "{line}")?;
                }
                drawn = lines.len();
            } else {
                // In a log: a line when something changed, else one every 30 s.
                let key = format!(
                    "{} {:?} {:?} {} {}",
                    status.state(),
                    status.done.len(),
                    status.failed.len(),
                    status.image_errors,
                    status.reduced
                );
                if key != last_key || last_print.elapsed().as_secs() >= 30 || settled {
                    for line in &lines {
                        writeln!(out, "{} {line}", shared::manifest::now_rfc3339())?;
                    }
                    last_key = key;
                    last_print = Instant::now();
                }
            }
        }
        out.flush()?;
        drop(out);
        if settled {
            return Ok(status_code(&status));
        }
        if let Some(limit) = args.timeout {
            if started.elapsed().as_secs_f64() >= limit {
                eprintln!(
                    "stopped watching after {limit} s: run {} is still {}",
                    status.run_id,
                    status.state()
                );
                return Ok(ExitCode::from(4));
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs_f64(args.interval)).await;
    }
}

fn eta_text(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// What `status --watch` draws: one line of progress, then one per failed shard and why a
/// run is stuck.
fn watch_lines(status: &shared::status::RunStatus) -> Vec<String> {
    let rate = status
        .images_per_second
        .map_or("–".into(), |r| format!("{r:.1} images/s"));
    let eta = match (status.eta_s, status.state()) {
        (Some(eta), _) => format!("ETA {}", eta_text(eta)),
        (None, "reducing") => "reducing".into(),
        (None, _) => "ETA –".into(),
    };
    let mut lines = vec![format!(
        "run {}: {:<14} shards {} done / {} pending / {} failed (of {})  images {}/{}  {rate}  {eta}  errors {}",
        status.run_id,
        status.state(),
        status.done.len(),
        status.pending.len(),
        status.failed.len(),
        status.shards,
        status.images_done,
        status.images,
        status.image_errors
    )];
    for f in &status.failed {
        lines.push(format!(
            "  shard {} failed (attempt {:?}) at {}: {}",
            f.shard, f.attempt, f.at, f.error
        ));
    }
    if let Some(stuck) = &status.stuck {
        lines.push(format!("  stuck since {}: {}", stuck.since, stuck.reason));
    }
    if let Some(s) = &status.summary {
        lines.push(format!(
            "  {}: {} rows, {} errors, k = {}, cumulative explained variance {:.4}",
            s.status, s.rows, s.errors, s.k, s.cumulative_explained_variance
        ));
    }
    lines
}

fn print_status(status: &shared::status::RunStatus) {
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
        for w in &s.warnings {
            println!("  warning: {w}");
        }
    }
}

async fn report(args: ReportArgs) -> Result<ExitCode> {
    use shared::store::ObjectStore;
    let layout = shared::layout::RunLayout::new(&args.run);
    shared::manifest::validate_run_id(&args.run)?;
    match (&args.at.output, &args.at.bucket) {
        (Some(dir), _) => {
            let path = dir.join(layout.report());
            if args.regenerate || !path.is_file() {
                let output = shared::store::FsStore::new(dir);
                let manifest: shared::manifest::Manifest = serde_json::from_slice(
                    &output.get(&layout.manifest()).await.with_context(|| {
                        format!("no run {} in {}", args.run, dir.display())
                    })?,
                )?;
                // A local run's images are in the folder its manifest names.
                let input_dir = PathBuf::from(&manifest.input.uri);
                let input = input_dir
                    .is_dir()
                    .then(|| shared::store::FsStore::new(&input_dir));
                if input.is_none() {
                    eprintln!(
                        "warning: input folder {} is gone: the report has no thumbnails",
                        input_dir.display()
                    );
                }
                let built = shared::report::regenerate(&output, input.as_ref(), &args.run).await?;
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
        (None, Some(bucket)) => {
            let aws = AwsArgs {
                bucket: bucket.clone(),
                endpoint_url: args.at.endpoint_url.clone(),
            };
            let sdk = aws.sdk().await;
            let s3 = shared::aws::S3Store::new(shared::aws::s3_client(&sdk), bucket);
            let store = Retrying::new(s3.clone(), RetryPolicy::default());
            if args.regenerate || !store.exists(&layout.report()).await? {
                // The images are in the same bucket, under the run's input prefix.
                let built = shared::report::regenerate(&store, Some(&store), &args.run).await?;
                eprintln!(
                    "report built in {:.2} s ({} kB) and written to s3://{bucket}/{}",
                    built.info.build_s,
                    built.info.bytes / 1024,
                    built.info.key
                );
            }
            let url = s3
                .presigned_get(&layout.report(), std::time::Duration::from_secs(args.expires))
                .await?;
            println!("{url}");
            if args.open {
                open(&url);
            }
        }
        (None, None) => bail!("give --output DIR (local run) or --bucket B (deployed run)"),
    }
    Ok(ExitCode::SUCCESS)
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

#[derive(Args)]
struct WatchArgs {
    /// The folder to watch: the collection (its name); an image's label is its parent folder's name.
    #[arg(long)]
    input: PathBuf,
    /// Output folder: OUT/collections/<name>/ (the same layout as on S3).
    #[arg(long)]
    output: PathBuf,
    /// Refit the PCA once nothing changed for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    quiet: f64,
    /// A file is read once no event touched it for this many milliseconds (half-written files wait).
    #[arg(long, default_value_t = 500)]
    debounce_ms: u64,
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
}

#[derive(Args)]
struct RefitArgs {
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

fn print_refit(outcome: &shared::collection::RefitOutcome, store_describe: &dyn Fn(&str) -> String) {
    use shared::collection::{CollectionLayout, RefitOutcome};
    match outcome {
        RefitOutcome::Published(s) => {
            let layout = CollectionLayout::new(&s.collection);
            println!("collection {}: snapshot {} (refit {}) published", s.collection, s.snapshot, s.seq);
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
            println!("  Results      {}", store_describe(&layout.results_prefix(&s.snapshot)));
            println!("  Results_PCA  {}", store_describe(&layout.pca_prefix(&s.snapshot)));
            println!("  pca_model    {}", store_describe(&layout.pca_model(&s.snapshot)));
            println!("  current      {}", store_describe(&layout.current()));
        }
        RefitOutcome::NothingToDo => println!("nothing changed since the published snapshot"),
        RefitOutcome::NotQuiet { since_change_ms } => {
            println!("not quiet yet: last change {since_change_ms} ms ago")
        }
        RefitOutcome::LostRace => println!("other refits kept publishing first ({} times): run it again", shared::collection::REFIT_ATTEMPTS),
    }
}

async fn refit_cmd(args: RefitArgs) -> Result<ExitCode> {
    use shared::store::ObjectStore;
    let options = args.pca.refit_options();
    if let Some(out) = &args.at.output {
        let input = args.input.as_ref().context("--input DIR (the watched folder) is required with --output")?;
        let (root, name) = collection_root(input)?;
        if name != args.collection {
            bail!("--input {} is collection {name:?}, not {:?}", input.display(), args.collection);
        }
        let output = shared::store::FsStore::new(out);
        let outcome = shared::collection::refit(&output, &shared::store::FsStore::new(root), "", &args.collection, &options).await?;
        print_refit(&outcome, &|k| output.describe(k));
        return Ok(ExitCode::SUCCESS);
    }
    let Some(bucket) = &args.at.bucket else {
        bail!("give --output DIR --input DIR (local collection) or --bucket B (deployed stack)");
    };
    let sdk = shared::aws::sdk_config_with_endpoint(args.at.endpoint_url.as_deref()).await;
    if let Some(url) = &args.refit_queue_url {
        use shared::queue::Queue;
        let queue = shared::aws::SqsQueue::new(shared::aws::sqs_client(&sdk), url);
        let message = shared::collection::RefitMessage { collection: args.collection.clone(), force: true };
        queue.send_all(vec![serde_json::to_string(&message)?]).await?;
        println!("refit of {} requested ({url}); `featurize status --collection {} --bucket {bucket}` shows when it is published", args.collection, args.collection);
        return Ok(ExitCode::SUCCESS);
    }
    let store = Retrying::new(shared::aws::S3Store::new(shared::aws::s3_client(&sdk), bucket), RetryPolicy::default());
    let outcome = shared::collection::refit(&store, &store, &args.inbox_prefix, &args.collection, &options).await?;
    print_refit(&outcome, &|k| store.describe(k));
    Ok(ExitCode::SUCCESS)
}

/// The parent folder and the name of a watched folder.
fn collection_root(input: &std::path::Path) -> Result<(PathBuf, String)> {
    let dir = std::fs::canonicalize(input).with_context(|| format!("{} is not a folder", input.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a folder", input.display());
    }
    let name = dir.file_name().and_then(|n| n.to_str()).context("the folder has no usable name")?.to_string();
    if !shared::collection::valid_collection(&name) {
        bail!("{name:?} cannot be a collection name");
    }
    let root = dir.parent().context("the folder has no parent")?.to_path_buf();
    Ok((root, name))
}

fn key_of(root: &std::path::Path, path: &std::path::Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let key = rel.to_str()?.replace(std::path::MAIN_SEPARATOR, "/");
    (!key.is_empty()).then_some(key)
}

async fn watch(args: WatchArgs) -> Result<ExitCode> {
    use notify_debouncer_mini::{new_debouncer, notify::RecursiveMode};
    use shared::collection::{refit, CollectionLayout, RefitOutcome};
    use shared::ingest::{IngestSettings, Ingestor};
    use shared::store::{FsStore, ObjectStore};
    use std::collections::BTreeSet;
    use std::time::Duration;
    use tokio::signal::unix::{signal, SignalKind};

    if !(args.quiet >= 0.0 && args.quiet.is_finite()) {
        bail!("--quiet must be a number of seconds, got {}", args.quiet);
    }
    let (root, collection) = collection_root(&args.input)?;
    let dir = root.join(&collection);
    let model = args.model.load()?;
    let input = FsStore::new(&root);
    let output = FsStore::new(&args.output);
    let queue = shared::queue::InProcessQueue::new();
    let settings = IngestSettings {
        inbox: String::new(),
        filter: shared::listing::ImageFilter::new(&args.glob)?,
        max_pixels: args.max_pixels,
        threads: args.jobs,
        fetch_concurrency: 8,
        quiet_s: args.quiet.ceil() as u32,
    };
    let ingestor = Ingestor::new(input.clone(), output.clone(), &queue, shared::featurizer::Engine::Model(model), settings);
    let options = args.pca.refit_options();
    let layout = CollectionLayout::new(&collection);

    // Start from what is there: every file, and every path the published view still has
    // (deleted while nobody watched).
    let mut known: BTreeSet<String> = input
        .list(&format!("{collection}/"))
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    if let Some((pointer, _)) = shared::collection::read_current(&output, &layout).await? {
        let index: shared::collection::CollectionIndex =
            serde_json::from_slice(&output.get(&layout.state_index(&pointer.snapshot)).await?)?;
        known.extend(index.entries.keys().map(|p| format!("{collection}/{p}")));
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut debouncer = new_debouncer(Duration::from_millis(args.debounce_ms), move |events: notify_debouncer_mini::DebounceEventResult| {
        match events {
            Ok(events) => {
                for e in events {
                    let _ = tx.send(e.path);
                }
            }
            Err(e) => eprintln!("watch error: {e}"),
        }
    })
    .context("starting the file watcher")?;
    debouncer
        .watcher()
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    eprintln!(
        "watching {} (collection {collection:?}); views under {}; Ctrl-C to finish",
        dir.display(),
        output.describe(&layout.prefix())
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let quiet = Duration::from_secs_f64(args.quiet);
    let mut pending: BTreeSet<String> = known.clone();
    let mut dirty = true;
    let mut last_change = std::time::Instant::now();
    // What each file was (size, modification time) when last ingested: reading a file makes
    // the watcher report it again (access events), which must not re-featurize it forever.
    let mut stamps: std::collections::HashMap<String, (u64, std::time::SystemTime)> = Default::default();
    let stamp = |root: &std::path::Path, key: &str| {
        std::fs::metadata(root.join(key))
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| Some((m.len(), m.modified().ok()?)))
    };
    let expand = |path: PathBuf,
                  known: &BTreeSet<String>,
                  stamps: &std::collections::HashMap<String, (u64, std::time::SystemTime)>,
                  pending: &mut BTreeSet<String>| {
        let Some(key) = key_of(&root, &path) else { return };
        if key == collection {
            return; // the watched folder itself
        }
        if path.is_dir() {
            // A folder moved in: its files (those already known have events of their own).
            for entry in walkdir_files(&path) {
                if let Some(k) = key_of(&root, &entry) {
                    if !known.contains(&k) {
                        pending.insert(k);
                    }
                }
            }
        } else {
            // A file, or something gone: a folder removed takes what was known under it.
            let folder = format!("{key}/");
            pending.extend(known.range(folder.clone()..).take_while(|k| k.starts_with(&folder)).cloned());
            let unchanged = stamps.get(&key).is_some_and(|s| Some(*s) == stamp(root.as_path(), &key));
            if !unchanged {
                pending.insert(key);
            }
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            Some(path) = rx.recv() => {
                expand(path, &known, &stamps, &mut pending);
                continue;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {}
        }
        if !pending.is_empty() {
            let keys: Vec<String> = std::mem::take(&mut pending).into_iter().collect();
            let before: Vec<(String, Option<(u64, std::time::SystemTime)>)> =
                keys.iter().map(|k| (k.clone(), stamp(root.as_path(), k))).collect();
            match ingestor.ingest(&keys).await {
                Ok(outcome) => {
                    eprintln!(
                        "ingested {} keys: {} featurized, {} failed, {} removed, {} ignored",
                        outcome.keys, outcome.upserts, outcome.failed, outcome.removed, outcome.ignored
                    );
                    known.extend(keys);
                    for (key, s) in before {
                        match s {
                            Some(s) => stamps.insert(key, s),
                            None => stamps.remove(&key),
                        };
                    }
                }
                Err(e) => {
                    // A transient failure (a busy file, a full disk): tried again next tick.
                    eprintln!("ingest failed, retrying: {e}");
                    pending.extend(keys);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            while queue.pop().is_some() {}
            dirty = true;
            last_change = std::time::Instant::now();
        } else if dirty && last_change.elapsed() >= quiet {
            let outcome = refit(&output, &input, "", &collection, &options).await?;
            if matches!(outcome, RefitOutcome::Published(_)) {
                print_refit(&outcome, &|k| output.describe(k));
            }
            dirty = false;
        }
    }
    // Finish: what the debouncer still holds, then a last refit.
    eprintln!("finishing: pending changes, refit, publish");
    tokio::time::sleep(Duration::from_millis(args.debounce_ms + 200)).await;
    drop(debouncer);
    while let Ok(path) = rx.try_recv() {
        expand(path, &known, &stamps, &mut pending);
    }
    if !pending.is_empty() {
        let keys: Vec<String> = std::mem::take(&mut pending).into_iter().collect();
        ingestor.ingest(&keys).await?;
    }
    let outcome = refit(&output, &input, "", &collection, &options).await?;
    match &outcome {
        RefitOutcome::NothingToDo => {
            let status = shared::collection::collection_status(&output, &collection).await?;
            match status.current {
                Some(p) => {
                    println!("collection {collection}: snapshot {} (refit {}) is current", p.snapshot, p.seq);
                    println!("  Results      {}", output.describe(&p.results));
                    println!("  Results_PCA  {}", output.describe(&p.results_pca));
                    if let Some(m) = &p.pca_model {
                        println!("  pca_model    {}", output.describe(m));
                    }
                    println!("  current      {}", output.describe(&layout.current()));
                }
                None => println!("collection {collection}: nothing published"),
            }
        }
        other => print_refit(other, &|k| output.describe(k)),
    }
    Ok(ExitCode::SUCCESS)
}

fn walkdir_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn collection_status_cmd(collection: &str, output: Option<&PathBuf>, bucket: Option<&String>, endpoint: Option<&str>, json: bool) -> Result<ExitCode> {
    use shared::store::ObjectStore;
    let (status, describe): (_, Box<dyn Fn(&str) -> String>) = match (output, bucket) {
        (Some(dir), _) => {
            let store = shared::store::FsStore::new(dir);
            (shared::collection::collection_status(&store, collection).await?, Box::new(move |k: &str| store.describe(k)))
        }
        (None, Some(bucket)) => {
            let sdk = shared::aws::sdk_config_with_endpoint(endpoint).await;
            let store = shared::aws::S3Store::new(shared::aws::s3_client(&sdk), bucket);
            (shared::collection::collection_status(&store, collection).await?, Box::new(move |k: &str| store.describe(k)))
        }
        (None, None) => bail!("give --output DIR (local collection) or --bucket B (deployed stack)"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("collection {} ({})", status.collection, status.location);
    match (&status.current, &status.summary) {
        (Some(p), summary) => {
            println!("  published  snapshot {} (refit {}) at {}", p.snapshot, p.seq, p.published_at);
            if let Some(s) = summary {
                println!("  rows {}  errors {}  PCA k = {}  cumulative explained variance {:.4}", s.rows, s.errors, s.k, s.cumulative_explained_variance);
                println!("  last refit: {} deltas, {} changed paths (+{} ~{} -{}), fit {:.3} s, publish {:.3} s", s.deltas, s.changed_paths, s.added, s.replaced, s.removed, s.fit_s, s.publish_s);
            }
            println!("  Results      {}", describe(&p.results));
            println!("  Results_PCA  {}", describe(&p.results_pca));
        }
        (None, _) => println!("  nothing published yet"),
    }
    match status.last_change_ms {
        Some(ms) => println!(
            "  pending    {} changes in {} deltas, last {:.1} s ago (refitted once quiet)",
            status.pending_changes,
            status.pending_deltas,
            shared::manifest::unix_now_ms().saturating_sub(ms) as f64 / 1000.0
        ),
        None => println!("  pending    nothing: the view is current"),
    }
    Ok(ExitCode::SUCCESS)
}
