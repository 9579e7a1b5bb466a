//! `featurize status`: a run's progress (once, or redrawn with `--watch`), or a collection's
//! published view and what waits for its next refit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use super::common::{AwsArgs, LocationArgs};

#[derive(Args)]
pub struct StatusArgs {
    /// The run id.
    #[arg(
        long,
        conflicts_with = "collection",
        default_value = "",
        hide_default_value = true
    )]
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

pub async fn status(args: StatusArgs) -> Result<ExitCode> {
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
    let policy = pipeline::batch::status::StallPolicy {
        claim_unanswered_after: std::time::Duration::from_secs(args.stall_after),
        lock_stale_after: std::time::Duration::from_secs(args.lock_stale_after),
    };
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        bail!(
            "--interval must be a positive number of seconds, got {}",
            args.interval
        );
    }
    match (&args.at.output, &args.at.bucket) {
        (Some(dir), _) => {
            status_on(&pipeline::ports::store::FsStore::new(dir), &args, policy).await
        }
        (None, Some(bucket)) => {
            let aws = AwsArgs {
                bucket: bucket.clone(),
                endpoint_url: args.at.endpoint_url.clone(),
            };
            let sdk = aws.sdk().await;
            let store = aws::sdk::S3Store::new(aws::sdk::s3_client(&sdk), bucket);
            status_on(&store, &args, policy).await
        }
        (None, None) => bail!("give --output DIR (local run) or --bucket B (deployed run)"),
    }
}

/// The exit code of a status: 3 when shards failed or the run is stuck, 1 when the run
/// failed (too many image errors), else 0.
fn status_code(status: &pipeline::batch::status::RunStatus) -> ExitCode {
    if !status.failed.is_empty() || status.stuck.is_some() {
        ExitCode::from(3)
    } else if status.state() == "failed" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn status_on<S: pipeline::ports::store::ObjectStore>(
    store: &S,
    args: &StatusArgs,
    policy: pipeline::batch::status::StallPolicy,
) -> Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    if !args.watch {
        let status = pipeline::batch::status::run_status_with(store, &args.run, policy).await?;
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
        let status = pipeline::batch::status::run_status_with(store, &args.run, policy).await?;
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
                        writeln!(out, "{} {line}", pipeline::manifest::now_rfc3339())?;
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
fn watch_lines(status: &pipeline::batch::status::RunStatus) -> Vec<String> {
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

fn print_status(status: &pipeline::batch::status::RunStatus) {
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

/// How a store names a key for people (a path, or an `s3://` URI).
type Describe = Box<dyn Fn(&str) -> String>;

async fn collection_status_cmd(
    collection: &str,
    output: Option<&PathBuf>,
    bucket: Option<&String>,
    endpoint: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    use pipeline::ports::store::ObjectStore;
    let (status, describe): (_, Describe) = match (output, bucket) {
        (Some(dir), _) => {
            let store = pipeline::ports::store::FsStore::new(dir);
            (
                pipeline::continuous::collection::collection_status(&store, collection).await?,
                Box::new(move |k: &str| store.describe(k)),
            )
        }
        (None, Some(bucket)) => {
            let sdk = aws::sdk::sdk_config_with_endpoint(endpoint).await;
            let store = aws::sdk::S3Store::new(aws::sdk::s3_client(&sdk), bucket);
            (
                pipeline::continuous::collection::collection_status(&store, collection).await?,
                Box::new(move |k: &str| store.describe(k)),
            )
        }
        (None, None) => {
            bail!("give --output DIR (local collection) or --bucket B (deployed stack)")
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("collection {} ({})", status.collection, status.location);
    match (&status.current, &status.summary) {
        (Some(p), summary) => {
            println!(
                "  published  snapshot {} (refit {}) at {}",
                p.snapshot, p.seq, p.published_at
            );
            if let Some(s) = summary {
                println!(
                    "  rows {}  errors {}  PCA k = {}  cumulative explained variance {:.4}",
                    s.rows, s.errors, s.k, s.cumulative_explained_variance
                );
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
            pipeline::manifest::unix_now_ms().saturating_sub(ms) as f64 / 1000.0
        ),
        None => println!("  pending    nothing: the view is current"),
    }
    Ok(ExitCode::SUCCESS)
}
