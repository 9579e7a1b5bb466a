//! `featurize run`: the whole job on a local folder (embedded mode, no AWS).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipeline::batch::featurizer::FeaturizerSettings;
use pipeline::batch::local::{run_local, LocalRun};

use super::common::{terminal_safe_lines, ModelArgs, RunOptionArgs};

#[derive(Args)]
pub struct RunArgs {
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
    #[command(flatten)]
    engine: EngineArgs,
}

/// The inference engine, shared by `run` and `resume`.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Inference engine: auto (the native executor with this CPU's SIMD kernels where it
    /// knows the graph, tract otherwise), tract, or the native executor with avx512, avx2 or
    /// portable kernels. The run's summary and report say which ran.
    #[arg(long = "engine", env = engine::model::Engine::ENV, default_value = "auto",
          value_parser = parse_engine)]
    pub engine: engine::model::Engine,
}

impl EngineArgs {
    /// Load options with this engine.
    pub fn load_options(&self) -> engine::model::LoadOptions {
        engine::model::LoadOptions {
            engine: self.engine,
            ..Default::default()
        }
    }
}

fn parse_engine(name: &str) -> Result<engine::model::Engine, String> {
    engine::model::Engine::parse(name)
        .ok_or_else(|| format!("{name:?}: auto, tract, avx512, avx2 or portable"))
}

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    if !args.input.is_dir() {
        bail!(
            "input folder {} does not exist or is not a folder",
            args.input.display()
        );
    }
    let started = Instant::now();
    let model = args.model.load_with(args.engine.load_options())?;
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
    if let Some(engines) = s.engines_line() {
        println!("  engine {engines}");
    }
    if s.status == "succeeded" {
        println!(
            "  PCA k = {}  cumulative explained variance {:.4}  ({})",
            s.k, s.cumulative_explained_variance, s.convention
        );
    }
    if let Some(reason) = &s.failure {
        println!("  failed: {}", terminal_safe_lines(reason));
    }
    for warning in &s.warnings {
        println!("  warning: {}", terminal_safe_lines(warning));
    }
    println!(
        "  wall {wall:.1} s  ({:.1} images/s){}",
        s.images as f64 / wall,
        peak_memory()
            .map(|bytes| format!("  peak memory {:.1} MiB", bytes as f64 / (1 << 20) as f64))
            .unwrap_or_default()
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

/// This process's peak resident memory (Linux: `VmHWM` of `/proc/self/status`, which counts
/// this program alone, not the process it was started from); `None` elsewhere.
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
