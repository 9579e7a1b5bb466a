//! `featurize status`: a run's progress (once, or redrawn with `--watch`), or a collection's
//! published view and what waits for its next refit; either is called stuck, with the
//! reason and the remedy, by the bounds of `pipeline::stuck` (docs/operate.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

#[cfg(feature = "aws")]
use super::common::AwsArgs;
use super::common::{terminal_safe_lines, LocationArgs};

/// Exit code of `status` when the run or collection is stuck.
pub const EXIT_STUCK: u8 = 5;

/// The bounds after which a run or a collection is called stuck. Their defaults are the
/// template's (`FeaturizerTimeout`, `ShardQueueVisibilityTimeout`, `ReducerTimeout`,
/// `ReduceQueueVisibilityTimeout`, `MaxReceiveCount`, `StuckGraceSecs`, `StuckMarginSecs`,
/// `MaxStalenessSecs`): give the deployed stack's values when they differ.
#[derive(Args, Clone, Copy)]
#[command(next_help_heading = "When a run or collection is stuck (the deployed stack's settings)")]
pub struct StallArgs {
    /// Call a run stuck when no featurizer started any shard, or no reducer started a claimed
    /// reduce, this many seconds after (StuckGraceSecs).
    #[arg(long, default_value_t = pipeline::stuck::defaults::START_GRACE_S)]
    stall_after: u64,
    /// The featurizer's timeout in seconds (FeaturizerTimeout).
    #[arg(long, default_value_t = pipeline::stuck::defaults::FEATURIZER_TIMEOUT_S)]
    featurizer_timeout: u64,
    /// The shard queue's visibility timeout in seconds (ShardQueueVisibilityTimeout).
    #[arg(long, default_value_t = pipeline::stuck::defaults::SHARD_VISIBILITY_S)]
    shard_visibility: u64,
    /// The reducer's timeout in seconds (ReducerTimeout).
    #[arg(long, default_value_t = pipeline::stuck::defaults::REDUCER_TIMEOUT_S)]
    reducer_timeout: u64,
    /// The reduce and refit queues' visibility timeout in seconds (ReduceQueueVisibilityTimeout).
    #[arg(long, default_value_t = pipeline::stuck::defaults::REDUCE_VISIBILITY_S)]
    reduce_visibility: u64,
    /// Deliveries of a message before its dead-letter queue (MaxReceiveCount).
    #[arg(long, default_value_t = pipeline::stuck::defaults::MAX_RECEIVE_COUNT)]
    max_receive_count: u32,
    /// Seconds added to every bound (StuckMarginSecs).
    #[arg(long, default_value_t = pipeline::stuck::defaults::MARGIN_S)]
    stuck_margin: u64,
    /// A collection's staleness bound in seconds (MaxStalenessSecs; 0 = none).
    #[arg(long, default_value_t = pipeline::stuck::defaults::MAX_STALENESS_S)]
    max_staleness: u64,
}

impl StallArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> pipeline::stuck::StallPolicy {
        use std::time::Duration;
        pipeline::stuck::StallPolicy {
            featurizer_timeout: Duration::from_secs(self.featurizer_timeout),
            shard_visibility: Duration::from_secs(self.shard_visibility),
            reducer_timeout: Duration::from_secs(self.reducer_timeout),
            reduce_visibility: Duration::from_secs(self.reduce_visibility),
            max_receive_count: self.max_receive_count,
            start_grace: Duration::from_secs(self.stall_after),
            claim_unanswered_after: Duration::from_secs(self.stall_after),
            margin: Duration::from_secs(self.stuck_margin),
            max_staleness: Duration::from_secs(self.max_staleness),
        }
    }
}

/// Exit codes: 0 the run is complete or still going (a collection: not stuck), 1 the run
/// failed (too many image errors), 3 some shards failed (their messages are retried or
/// dead-lettered), 4 `--watch --timeout` ran out, 5 stuck (the reason and the remedy are
/// printed; docs/operate.md lists the bounds).
#[derive(Args)]
#[command(
    after_help = "Exit codes: 0 complete or going, 1 failed, 3 shards failed, 4 --watch --timeout ran out, 5 stuck (reason and remedy printed)."
)]
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
    #[command(flatten)]
    stall: StallArgs,
    /// Refresh until the run ends (complete, failed, stuck, or every remaining shard
    /// failed): redrawn in place on a terminal, a line per change otherwise, a JSON line per
    /// refresh with --json. The exit code is then the final status's (5 when stuck, with the
    /// reason and the remedy).
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
            &args.stall.policy(),
        )
        .await;
    }
    if args.run.is_empty() {
        bail!("give --run ID (a run) or --collection C (a collection)");
    }
    let policy = args.stall.policy();
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
        #[cfg(feature = "aws")]
        (None, Some(bucket)) => {
            let aws = AwsArgs {
                bucket: bucket.clone(),
                endpoint_url: args.at.endpoint_url.clone(),
            };
            let sdk = aws.sdk().await;
            let store = aws::sdk::S3Store::new(aws::sdk::s3_client(&sdk), bucket);
            status_on(&store, &args, policy).await
        }
        #[cfg(not(feature = "aws"))]
        (None, Some(_)) => Err(super::common::needs_aws("status --bucket")),
        (None, None) => bail!("give --output DIR (local run) or --bucket B (deployed run)"),
    }
}

/// The exit code of a status: 5 when the run is stuck, 3 when shards failed, 1 when the run
/// failed (too many image errors), else 0.
fn status_code(status: &pipeline::batch::status::RunStatus) -> ExitCode {
    if status.stuck.is_some() {
        ExitCode::from(EXIT_STUCK)
    } else if !status.failed.is_empty() {
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
        let clock = pipeline::stuck::SystemClock;
        let status =
            pipeline::batch::status::run_status_at(store, &args.run, &policy, &clock).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print_status(&status);
        }
        return Ok(status_code(&status));
    }
    let clock = pipeline::stuck::SystemClock;
    let terminal = std::io::stdout().is_terminal() && !args.json;
    let started = Instant::now();
    let mut drawn = 0usize;
    let mut last_key = String::new();
    let mut last_print = Instant::now();
    loop {
        let status =
            pipeline::batch::status::run_status_at(store, &args.run, &policy, &clock).await?;
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
            f.shard,
            f.attempt,
            f.at,
            terminal_safe_lines(&f.error)
        ));
    }
    if let Some(stuck) = &status.stuck {
        lines.extend(stuck_lines(stuck).map(|l| terminal_safe_lines(&l).into_owned()));
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
            f.shard,
            f.attempt,
            f.at,
            terminal_safe_lines(&f.error)
        );
    }
    println!(
        "  reduce claimed: {}  reduced: {}",
        status.reduce_claimed, status.reduced
    );
    if let Some(stuck) = &status.stuck {
        for line in stuck_lines(stuck) {
            println!("{}", terminal_safe_lines(&line));
        }
    }
    if let Some(s) = &status.summary {
        println!(
            "  summary: {} rows, {} errors, k = {}, cumulative explained variance {:.4}",
            s.rows, s.errors, s.k, s.cumulative_explained_variance
        );
        for w in &s.warnings {
            println!("  warning: {}", terminal_safe_lines(w));
        }
    }
}

/// Why a run or a collection is stuck, and what to do.
fn stuck_lines(stuck: &pipeline::stuck::Stuck) -> [String; 2] {
    [
        format!("  stuck since {}: {}", stuck.since, stuck.reason),
        format!("  remedy: {}", stuck.remedy),
    ]
}

/// How a store names a key for people (a path, or an `s3://` URI).
type Describe = Box<dyn Fn(&str) -> String>;

async fn collection_status_cmd(
    collection: &str,
    output: Option<&PathBuf>,
    bucket: Option<&String>,
    endpoint: Option<&str>,
    json: bool,
    policy: &pipeline::stuck::StallPolicy,
) -> Result<ExitCode> {
    use pipeline::continuous::collection::collection_status_at;
    use pipeline::continuous::reconcile::last_reconcile;
    use pipeline::ports::store::ObjectStore;
    let clock = pipeline::stuck::SystemClock;
    let (status, reconciled, describe): (_, _, Describe) = match (output, bucket) {
        (Some(dir), _) => {
            let store = pipeline::ports::store::FsStore::new(dir);
            (
                collection_status_at(&store, collection, policy, &clock).await?,
                last_reconcile(&store, collection).await?,
                Box::new(move |k: &str| store.describe(k)),
            )
        }
        #[cfg(feature = "aws")]
        (None, Some(bucket)) => {
            let sdk = aws::sdk::sdk_config_with_endpoint(endpoint).await;
            let store = aws::sdk::S3Store::new(aws::sdk::s3_client(&sdk), bucket);
            (
                collection_status_at(&store, collection, policy, &clock).await?,
                last_reconcile(&store, collection).await?,
                Box::new(move |k: &str| store.describe(k)),
            )
        }
        #[cfg(not(feature = "aws"))]
        (None, Some(_)) => {
            let _ = endpoint; // read by the S3 arm only
            return Err(super::common::needs_aws("status --collection --bucket"));
        }
        (None, None) => {
            bail!("give --output DIR (local collection) or --bucket B (deployed stack)")
        }
    };
    let code = if status.stuck.is_some() {
        ExitCode::from(EXIT_STUCK)
    } else {
        ExitCode::SUCCESS
    };
    if json {
        let mut value = serde_json::to_value(&status)?;
        if let (Some(map), Some(record)) = (value.as_object_mut(), &reconciled) {
            map.insert("last_reconcile".into(), serde_json::to_value(record)?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(code);
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
    if let Some(start) = &status.last_refit {
        println!(
            "  last refit started {} (delivery {})",
            pipeline::stuck::rfc3339_of(start.at_unix),
            start.receive_count
        );
    }
    if let Some(failure) = &status.last_refit_failure {
        println!(
            "  last refit failure {}: {}",
            pipeline::stuck::rfc3339_of(failure.at_unix),
            failure.error
        );
    }
    match &reconciled {
        Some(r) => println!(
            "  last reconcile {}: {} listed, {} indexed; repaired {} (missing {}, changed {}, \
             stale {}, retried {}), {} still failing",
            r.finished_at,
            r.listed,
            r.indexed,
            r.repaired(),
            r.missing.count,
            r.changed.count,
            r.stale.count,
            r.retried.count,
            r.repair.left.count
        ),
        None => println!("  last reconcile: never (`featurize reconcile --collection C`)"),
    }
    if let Some(stuck) = &status.stuck {
        for line in stuck_lines(stuck) {
            println!("{}", terminal_safe_lines(&line));
        }
    }
    Ok(code)
}
