//! `featurize simulate`: a run of N synthetic images through the real splitter, featurizer
//! bookkeeping and reducer (no images, no CNN), measured per stage: wall time, peak memory,
//! S3/SQS requests and bytes. See `aws::simulate` and docs/scale.md.

use std::path::PathBuf;

use anyhow::{Context, Result};
use aws::simulate::{simulate as run_simulation, SimulationOptions, SimulationReport};
use clap::Args;

/// `featurize simulate` arguments.
#[derive(Args)]
pub struct SimulateArgs {
    /// Images in the simulated run; several (comma-separated, e.g. 10000,100000) run one
    /// after the other and end with a table and a linear fit of time against images.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub images: Vec<usize>,
    /// Images per shard.
    #[arg(long, default_value_t = pipeline::manifest::DEFAULT_SHARD_SIZE)]
    pub shard_size: usize,
    /// Feature dimension.
    #[arg(long, default_value_t = 1280)]
    pub dim: usize,
    /// Label folders the images are spread over.
    #[arg(long, default_value_t = 100)]
    pub labels: usize,
    /// PCA components.
    #[arg(long, default_value_t = engine::pca::DEFAULT_K)]
    pub k: usize,
    /// Shards featurized at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Folder for the run's objects (default: a temporary folder, deleted afterwards).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// With several sizes: write a plot (SVG) of time and cost against images, the fits
    /// drawn out to `--extend-to` images.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Instead of simulating: read the reports of an earlier `--json` run from this file
    /// (e.g. to plot them).
    #[arg(long, conflicts_with = "work")]
    pub from_json: Option<PathBuf>,
    /// How far the plot's fitted lines reach (images).
    #[arg(long, default_value_t = 1_000_000)]
    pub extend_to: usize,
    /// Run against S3 and SQS at this endpoint (moto: `python -m moto.server`) instead of a
    /// folder: a fresh bucket and two queues are created there, the synthetic images put as
    /// empty objects, and every stage goes through the S3 and SQS adapters, so the
    /// emulator's request log can be checked against the counts (`infra/simulate-moto.sh`).
    #[arg(long, conflicts_with_all = ["work", "from_json"])]
    pub endpoint: Option<String>,
    /// Simulate a collection of this many images instead of a run: its refits after each
    /// number of `--changes`, through the real refit code over a folder behind a model of
    /// S3's latencies (docs/scale.md, "Collections").
    #[arg(long, conflicts_with_all = ["endpoint", "from_json", "plot"])]
    pub collection: Option<usize>,
    /// With --collection: images changed before each refit, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,100000")]
    pub changes: Vec<usize>,
}

/// `featurize simulate --collection N`: the refits of a collection of N images.
async fn simulate_collection(args: &SimulateArgs, images: usize) -> Result<()> {
    use aws::simulate::collection::{simulate_collection, CollectionSimOptions, S3Latency};
    let options = CollectionSimOptions {
        images,
        changes: args.changes.clone(),
        dim: args.dim,
        labels: args.labels,
        k: args.k,
        concurrency: args.concurrency,
        latency: S3Latency::default(),
        release_memory: Some(release_memory),
    };
    let temp;
    let folder = match &args.work {
        Some(folder) => {
            let folder = folder.join(format!("collection-{images}"));
            if folder.exists() {
                std::fs::remove_dir_all(&folder)
                    .with_context(|| format!("clearing {}", folder.display()))?;
            }
            folder
        }
        None => {
            temp = tempfile::tempdir().context("creating a temporary folder")?;
            temp.path().to_path_buf()
        }
    };
    let report = simulate_collection(&options, &folder).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "simulated collection: {} images, dim {}, k {}, first snapshot written in {:.1} s",
        report.images, report.dim, report.k, report.setup_s
    );
    println!(
        "{:>8} {:>8} {:>9} {:>9} {:>6} {:>9} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}",
        "changes",
        "buckets",
        "refit s",
        "proj s",
        "msgs",
        "peak MB",
        "read MB",
        "write MB",
        "copy MB",
        "GET",
        "PUT",
        "COPY",
        "LIST"
    );
    for r in &report.rounds {
        let u = r.total_usage();
        println!(
            "{:>8} {:>4}/{:<3} {:>9.1} {:>9.1} {:>6} {:>9} {:>8.0} {:>9.0} {:>9.0} {:>9} {:>7} {:>7} {:>7}",
            r.changes,
            r.buckets_rewritten,
            r.buckets,
            r.refit.wall_s,
            r.projections.iter().map(|p| p.wall_s).fold(0.0, f64::max),
            r.projections.len(),
            r.max_peak_mb().map_or("-".into(), |m| format!("{m:.0}")),
            u.bytes_read as f64 / 1e6,
            u.bytes_written as f64 / 1e6,
            u.bytes_copied as f64 / 1e6,
            u.s3_get,
            u.s3_put,
            u.s3_copy,
            u.s3_list,
        );
    }
    Ok(())
}

/// Gives freed memory back to the system, so that each measured peak is its own.
fn release_memory() {
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs the simulation(s) and prints the reports.
pub async fn simulate(args: SimulateArgs) -> Result<()> {
    if let Some(images) = args.collection {
        return simulate_collection(&args, images).await;
    }
    let mut reports: Vec<SimulationReport> = Vec::new();
    if let Some(path) = &args.from_json {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        reports = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a `simulate --json` output", path.display()))?;
    }
    let sizes: &[usize] = if args.from_json.is_some() {
        &[]
    } else {
        &args.images
    };
    for &images in sizes {
        let options = SimulationOptions {
            images,
            shard_size: args.shard_size,
            dim: args.dim,
            labels: args.labels,
            k: args.k,
            featurizer_concurrency: args.concurrency,
        };
        if let Some(endpoint) = &args.endpoint {
            let report = simulate_on_moto(&options, endpoint).await?;
            if !args.json {
                print_report(&report);
                println!();
            }
            reports.push(report);
            continue;
        }
        let temp;
        let folder = match &args.work {
            Some(folder) => {
                let folder = folder.join(format!("sim-{images}"));
                if folder.exists() {
                    std::fs::remove_dir_all(&folder)
                        .with_context(|| format!("clearing {}", folder.display()))?;
                }
                std::fs::create_dir_all(&folder)
                    .with_context(|| format!("creating {}", folder.display()))?;
                folder
            }
            None => {
                temp = tempfile::tempdir().context("creating a temporary folder")?;
                temp.path().to_path_buf()
            }
        };
        let report = run_simulation(&options, &folder).await?;
        if !args.json {
            print_report(&report);
            println!();
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else if args.from_json.is_some() {
        for report in &reports {
            print_report(report);
            println!();
        }
        print_sweep(&reports);
    } else if reports.len() > 1 {
        print_sweep(&reports);
    }
    if let Some(path) = &args.plot {
        let svg = aws::simulate::sweep_svg(&reports, args.extend_to)?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

/// Without the `aws` feature: refused at once (the AWS SDK is not in this build).
#[cfg(not(feature = "aws"))]
async fn simulate_on_moto(
    _options: &SimulationOptions,
    _endpoint: &str,
) -> Result<SimulationReport> {
    Err(super::common::needs_aws("simulate --endpoint"))
}

/// One simulation on S3 + SQS at `endpoint`, in a bucket and queues of its own.
#[cfg(feature = "aws")]
async fn simulate_on_moto(options: &SimulationOptions, endpoint: &str) -> Result<SimulationReport> {
    let config = aws::sdk::sdk_config_with_endpoint(Some(endpoint)).await;
    let s3 = aws::sdk::s3_client(&config);
    let sqs = aws::sdk::sqs_client(&config);
    let name = format!("featurize-sim-{}-{}", options.images, std::process::id());
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .with_context(|| format!("creating bucket {name} at {endpoint}"))?;
    let mut queues = Vec::new();
    for q in ["shards", "reduce"] {
        let url = sqs
            .create_queue()
            .queue_name(format!("{name}-{q}"))
            .send()
            .await
            .with_context(|| format!("creating queue {name}-{q} at {endpoint}"))?
            .queue_url()
            .context("CreateQueue returned no URL")?
            .to_string();
        queues.push(aws::sdk::SqsQueue::new(sqs.clone(), url));
    }
    eprintln!(
        "simulating {} images on s3://{name} at {endpoint}",
        options.images
    );
    let store = aws::sdk::S3Store::new(s3, &name);
    Ok(aws::simulate::simulate_on_s3(options, store, &queues[0], &queues[1]).await?)
}

fn print_sweep(reports: &[SimulationReport]) {
    println!(
        "{:>9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "images",
        "shards",
        "split s",
        "feat s",
        "reduce s",
        "red. MB",
        "stats B/i",
        "red. B/i",
        "S3 req",
        "x86 $",
        "arm64 $"
    );
    for r in reports {
        let req = r.requests.s3_get + r.requests.s3_put;
        println!(
            "{:>9} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>9.0} {:>9.0} {:>10} {:>9.4} {:>9.4}",
            r.images,
            r.shards,
            r.stages[0].wall_s,
            r.stages[1].wall_s,
            r.stages[2].wall_s,
            r.stages[2]
                .peak_rss_mb
                .map_or("-".into(), |m| format!("{m:.0}")),
            r.stats_bytes_per_image,
            r.reducer_read_bytes_per_image,
            req,
            r.estimated_cost_usd[0],
            r.estimated_cost_usd[1],
        );
    }
    let mut sizes: Vec<usize> = reports.iter().map(|r| r.images).collect();
    sizes.dedup();
    if sizes.len() < 2 {
        return;
    }
    for (i, stage) in ["splitter", "featurizers", "reducer"].iter().enumerate() {
        let points: Vec<(f64, f64)> = reports
            .iter()
            .map(|r| (r.images as f64, r.stages[i].wall_s))
            .collect();
        let (a, b) = aws::simulate::linear_fit(&points);
        println!(
            "fit {stage:<11} wall s = {a:.3} + {:.3} per 1,000 images  (1,000,000 images: {:.1} s)",
            b * 1000.0,
            a + b * 1e6
        );
    }
}

fn print_report(r: &SimulationReport) {
    println!(
        "simulated run ({}): {} images, {} shards of {}, dim {}",
        if r.backend == "s3" {
            "S3 + SQS adapters"
        } else {
            "folder"
        },
        r.images,
        r.shards,
        r.shard_size,
        r.dim
    );
    println!(
        "{:<12} {:>6} {:>9} {:>9} {:>8} {:>9} {:>9} {:>7} {:>11} {:>11} {:>6}",
        "stage",
        "calls",
        "wall s",
        "max s",
        "peak MB",
        "S3 GET",
        "S3 PUT",
        "LIST",
        "read MB",
        "written MB",
        "SQS"
    );
    for s in &r.stages {
        println!(
            "{:<12} {:>6} {:>9.2} {:>9.2} {:>8} {:>9} {:>9} {:>7} {:>11.1} {:>11.1} {:>6}",
            s.stage,
            s.invocations,
            s.wall_s,
            s.max_invocation_s,
            s.peak_rss_mb.map_or("-".into(), |m| format!("{m:.0}")),
            s.usage.s3_get,
            s.usage.s3_put,
            s.usage.s3_list,
            s.usage.bytes_read as f64 / 1e6,
            s.usage.bytes_written as f64 / 1e6,
            s.usage.sqs_requests,
        );
    }
    println!(
        "per image: statistics written {:.0} B, features written {:.0} B, read by the reducer {:.0} B",
        r.stats_bytes_per_image, r.feature_bytes_per_image, r.reducer_read_bytes_per_image
    );
    let st = &r.reduce_steps;
    println!(
        "reducer steps: manifest {:.2} s, check + merge {:.2} s, fit {:.2} s, projection {:.2} s, publish {:.2} s",
        st.manifest_s, st.check_merge_s, st.fit_s, st.project_s, st.publish_s
    );
    println!(
        "S3 requests in all stages: {} (GET/HEAD {}, PUT {}, LIST {}, DELETE {}); SQS: {} sent by the stages + {} to receive and delete (event-source mapping)",
        r.stages.iter().map(|s| s.usage.s3_get + s.usage.s3_put + s.usage.s3_list + s.usage.s3_delete).sum::<u64>(),
        r.stages.iter().map(|s| s.usage.s3_get).sum::<u64>(),
        r.stages.iter().map(|s| s.usage.s3_put).sum::<u64>(),
        r.stages.iter().map(|s| s.usage.s3_list).sum::<u64>(),
        r.stages.iter().map(|s| s.usage.s3_delete).sum::<u64>(),
        r.stages.iter().map(|s| s.usage.sqs_requests).sum::<u64>(),
        r.driver.sqs_requests,
    );
    let f = &r.stages[1];
    println!(
        "manifest header {} B; the most one featurizer read: {} B; largest message {} B",
        r.manifest_bytes,
        f.max_invocation_read_bytes,
        r.stages
            .iter()
            .map(|s| s.usage.max_message_bytes)
            .max()
            .unwrap_or(0)
    );
}
