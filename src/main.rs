//! `featurize`: the pipeline's command line. `run` does the whole job on a local folder (no
//! AWS); `bench` measures the per-image cost; `submit` and `status` drive a deployed stack;
//! `report` writes or fetches a run's HTML report.
//!
//! This file holds the top-level parser and the dispatch; each subcommand lives in its own
//! module under `cli/`, and the options several of them share in `cli/common.rs`.

use std::process::ExitCode;
use std::time::Instant;

use aws::telemetry::{init_tracing, LogFormat};
use clap::{Parser, Subcommand};

mod cli;

use cli::{bench, reconcile, refit, report, resume, run, simulate, status, submit, watch};

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
    Run(run::RunArgs),
    /// Measure model load, cold start, and per-image decode / resize / inference / write time.
    Bench(bench::BenchArgs),
    /// Start a run on a deployed stack (or an emulator): list the bucket prefix, write the manifest, send the shards.
    Submit(submit::SubmitArgs),
    /// Show a run's progress: shards done / pending / failed, errors, reduce, and whether it is
    /// stuck; `--watch` redraws until the run ends.
    Status(status::StatusArgs),
    /// Write (or regenerate) a run's HTML report and print its path, or a presigned URL on S3.
    Report(report::ReportArgs),
    /// Resume a run: featurize the shards that are not done, then reduce (also recovers a run
    /// that `status` reports stuck: a lost reduce message, a dead reducer). With --output, here,
    /// reading the input folder recorded in the manifest; with --bucket, by sending the missing
    /// shards or the reduce to the stack's queues.
    Resume(resume::ResumeArgs),
    /// Simulate a run of N images at scale (synthetic features, no CNN): time, memory,
    /// requests and bytes per stage.
    Simulate(simulate::SimulateArgs),
    /// Keep a folder's features and PCA current: featurize files as they appear, change or
    /// disappear, refit once quiet; on Ctrl-C / SIGTERM finish, refit, publish and exit.
    Watch(watch::WatchArgs),
    /// Refit a collection now (local, in this process, or on a deployed stack).
    Refit(refit::RefitArgs),
    /// Repair a collection from its inbox (lost or dead-lettered events, objects there before
    /// the notifications: the backfill, failures whose cause may be gone), then refit.
    Reconcile(reconcile::ReconcileArgs),
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = Cli::parse();
    init_tracing(LogFormat::from_env(), "warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(dispatch(cli.command, process_start));
    match result {
        Ok(code) => code,
        Err(e) => {
            // Keys and reasons in errors come from the data: no control character reaches
            // the terminal.
            eprintln!(
                "error: {}",
                cli::common::terminal_safe_lines(&error_chain(&e))
            );
            ExitCode::FAILURE
        }
    }
}

/// Runs one subcommand.
async fn dispatch(command: Command, process_start: Instant) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run::run(args).await,
        Command::Bench(args) => bench::bench(args, process_start)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Submit(args) => submit::submit(args).await,
        Command::Status(args) => status::status(args).await,
        Command::Report(args) => report::report(args).await,
        Command::Resume(args) => resume::resume(args).await,
        Command::Watch(args) => watch::watch(args).await,
        Command::Refit(args) => refit::refit(args).await,
        Command::Reconcile(args) => reconcile::reconcile(args).await,
        Command::Simulate(args) => simulate::simulate(args).await.map(|()| ExitCode::SUCCESS),
    }
}

/// An error with its causes, `a: b: c`, each cause once: a message that already shows its
/// source (`"{op} {path}: {source}"`) does not get it appended again.
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Without the `aws` feature (the default build), every command on S3 or SQS is refused at
/// once, naming itself and the build that has it (with it, tests/e2e/aws.rs drives them
/// against moto).
#[cfg(all(test, not(feature = "aws")))]
mod tests {
    use super::*;

    #[test]
    fn commands_on_aws_are_refused_at_once_without_the_aws_feature() {
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "submit",
                    "--bucket=b",
                    "--input-prefix=images/",
                    "--shard-queue-url=http://127.0.0.1:9/shards",
                    "--reduce-queue-url=http://127.0.0.1:9/reduce",
                    "--model-sha256=00",
                ],
                "`featurize submit`",
            ),
            (
                &["status", "--run=r1", "--bucket=b"],
                "`featurize status --bucket`",
            ),
            (
                &["status", "--collection=c", "--bucket=b"],
                "`featurize status --collection --bucket`",
            ),
            (
                &["report", "--run=r1", "--bucket=b"],
                "`featurize report --bucket`",
            ),
            (
                &[
                    "resume",
                    "--run=r1",
                    "--bucket=b",
                    "--shard-queue-url=http://127.0.0.1:9/shards",
                    "--reduce-queue-url=http://127.0.0.1:9/reduce",
                ],
                "`featurize resume --bucket`",
            ),
            (
                &["refit", "--collection=c", "--bucket=b"],
                "`featurize refit --bucket`",
            ),
            (
                &["reconcile", "--collection=c", "--bucket=b"],
                "`featurize reconcile --bucket`",
            ),
            (
                &["simulate", "--images=10", "--endpoint=http://127.0.0.1:9"],
                "`featurize simulate --endpoint`",
            ),
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (args, named) in cases {
            let cli = Cli::try_parse_from(std::iter::once("featurize").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"));
            let started = Instant::now();
            let error = runtime
                .block_on(dispatch(cli.command, started))
                .expect_err("refused without the aws feature");
            let message = error_chain(&error);
            assert!(
                message.starts_with(&format!(
                    "{named} talks to AWS, and this featurize was built without it"
                )),
                "{args:?}: {message}"
            );
            assert!(
                message.ends_with(
                    "build it with `cargo build --release --bin featurize --features aws`"
                ),
                "{args:?}: {message}"
            );
            // At once: no connection was tried (nothing listens on port 9).
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{args:?}"
            );
        }
    }
}
