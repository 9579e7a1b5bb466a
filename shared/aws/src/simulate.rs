//! `featurize simulate`: a run at scale without images or a CNN. The real splitter lists N
//! synthetic keys (1,000 per page, as S3) and writes the manifest; each shard goes through
//! the real featurizer bookkeeping (fetches, Parquet part, statistics, errors, commit,
//! barrier) with seeded random features; the real reducer checks, merges, fits and projects.
//! Every store and queue call is counted per stage as AWS bills it, with the bytes moved,
//! the wall time and the process's peak memory per stage.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use pipeline::batch::featurizer::{FeaturizerSettings, ShardFeaturizer};

use pipeline::batch::inference::SYNTHETIC_MODEL_ID;
use pipeline::batch::reducer::{ReduceOutcome, Reducer, ReducerSettings};
use pipeline::batch::splitter::Splitter;
use pipeline::batch::summary::Summary;
use pipeline::cost::{Arch, Prices, Region};
use pipeline::error::{Error, Result};
use pipeline::layout::RunLayout;
use pipeline::manifest::{ReduceMessage, RunOptions, RunRequest, ShardMessage};
use pipeline::ports::counting::{Counters, CountingQueue, CountingStore, Usage};
use pipeline::ports::queue::{Drain, InProcessQueue, Queue};
use pipeline::ports::store::{FsStore, ObjectInfo, ObjectStore, StoreError, Versioned};

pub mod collection;

/// Where the synthetic images are listed, in the simulated bucket.
pub const SIM_INPUT_PREFIX: &str = "images/";

/// One bucket: synthetic images under [`SIM_INPUT_PREFIX`] (listed and fetched, empty
/// bodies), everything else (the run's objects) in a local folder.
#[derive(Debug, Clone)]
pub struct SimulatedBucket {
    images: Arc<Vec<ObjectInfo>>,
    output: FsStore,
}

/// The synthetic image keys of a simulation, sorted as S3 lists them.
pub fn synthetic_images(images: usize, labels: usize) -> Vec<ObjectInfo> {
    let labels = labels.max(1);
    let mut keys: Vec<ObjectInfo> = (0..images)
        .map(|i| ObjectInfo {
            key: format!("{SIM_INPUT_PREFIX}class-{:04}/img-{i:08}.jpg", i % labels),
            size: 0,
            version: format!("v{i}"),
        })
        .collect();
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    keys
}

impl SimulatedBucket {
    /// `images` synthetic keys in `labels` folders; the run's objects go to `folder`.
    pub fn new(images: usize, labels: usize, folder: &Path) -> Self {
        Self {
            images: Arc::new(synthetic_images(images, labels)),
            output: FsStore::new(folder),
        }
    }

    fn is_image(key: &str) -> bool {
        key.starts_with(SIM_INPUT_PREFIX)
    }
}

impl ObjectStore for SimulatedBucket {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        if Self::is_image(key) {
            return Ok(Bytes::new());
        }
        self.output.get(key).await
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        self.output.get_versioned(key).await
    }
    async fn get_if_match(&self, key: &str, version: &str) -> Result<Bytes, StoreError> {
        if Self::is_image(key) {
            return Ok(Bytes::new());
        }
        self.output.get_if_match(key, version).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.output.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        self.output.put_if_absent(key, body).await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        self.output.put_if_match(key, body, etag).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        if Self::is_image(key) {
            return Ok(true);
        }
        self.output.exists(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.output.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        if Self::is_image(prefix) {
            return Ok(self
                .images
                .iter()
                .filter(|o| o.key.starts_with(prefix))
                .cloned()
                .collect());
        }
        self.output.list(prefix).await
    }
    fn describe(&self, key: &str) -> String {
        format!("sim://{key}")
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulationOptions {
    /// Images in the run.
    pub images: usize,
    /// Images per shard.
    pub shard_size: usize,
    /// Feature dimension.
    pub dim: usize,
    /// Label folders.
    pub labels: usize,
    /// PCA components.
    pub k: usize,
    /// Shards featurized at once (each a "featurizer invocation").
    pub featurizer_concurrency: usize,
}

impl Default for SimulationOptions {
    fn default() -> Self {
        Self {
            images: 10_000,
            shard_size: pipeline::manifest::DEFAULT_SHARD_SIZE,
            dim: 1280,
            labels: 100,
            k: engine::pca::DEFAULT_K,
            featurizer_concurrency: 2,
        }
    }
}

/// One stage of the simulated run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReport {
    /// splitter, featurizers or reducer.
    pub stage: String,
    /// Invocations (one per shard for the featurizers).
    pub invocations: u64,
    /// Wall time of the stage, seconds (the featurizers': all shards, `featurizer_concurrency`
    /// at a time).
    pub wall_s: f64,
    /// The longest single invocation, seconds.
    pub max_invocation_s: f64,
    /// Peak resident memory of the process during the stage, MB (Linux).
    pub peak_rss_mb: Option<f64>,
    /// Requests and bytes.
    pub usage: Usage,
    /// The most bytes one invocation read (excluding images, which are empty here).
    pub max_invocation_read_bytes: u64,
}

impl StageReport {
    /// A stage of one invocation, started at `started`, its calls counted in `counters`.
    fn single(stage: &str, started: Instant, counters: &Counters) -> Self {
        let wall = started.elapsed().as_secs_f64();
        let usage = counters.usage();
        Self {
            stage: stage.into(),
            invocations: 1,
            wall_s: wall,
            max_invocation_s: wall,
            peak_rss_mb: peak_rss_mb(),
            usage,
            max_invocation_read_bytes: usage.bytes_read,
        }
    }
}

/// The whole simulation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimulationReport {
    /// Where the run's objects and messages went: `fs` (a folder, in-process queues) or `s3`
    /// (the S3 and SQS adapters, against moto or AWS).
    #[serde(default)]
    pub backend: String,
    /// The simulation driver's own requests, in no stage: receiving and deleting the
    /// messages (ReceiveMessage + DeleteMessageBatch, what an event-source mapping does for a
    /// deployed function) and reading the run's objects back to measure them.
    #[serde(default)]
    pub driver: Usage,
    /// The reducer's time by step (manifest, check + merge, fit, projection, publish).
    #[serde(default)]
    pub reduce_steps: pipeline::batch::summary::ReduceTimings,
    /// Images.
    pub images: usize,
    /// Images per shard.
    pub shard_size: usize,
    /// Shards.
    pub shards: usize,
    /// Feature dimension.
    pub dim: usize,
    /// Per stage.
    pub stages: Vec<StageReport>,
    /// Bytes of statistics written per image (staging).
    pub stats_bytes_per_image: f64,
    /// Bytes of features (Parquet part) written per image.
    pub feature_bytes_per_image: f64,
    /// Bytes the reducer read per image.
    pub reducer_read_bytes_per_image: f64,
    /// The manifest's size (header), bytes.
    pub manifest_bytes: u64,
    /// Explained-variance sum of the fitted components (a sanity value).
    pub cumulative_explained_variance: f64,
    /// Bytes the run keeps after success (features and PCA parts, run documents).
    pub kept_bytes: u64,
    /// Requests as `pipeline::cost::requests` counts them for a deployed run.
    pub requests: pipeline::cost::Requests,
    /// The AWS cost of such a run (x86_64 and arm64, in the default region eu-west-3, with
    /// the template's default 3,008 MB functions), with featurizer time estimated from
    /// [`FEATURIZER_S_PER_IMAGE_CORE`] on the vCPUs of 3,008 MB plus 0.5 s of writes per
    /// shard, and the splitter's and reducer's measured wall times.
    pub estimated_cost_usd: [f64; 2],
    /// The featurizer GB-seconds of that estimate.
    pub estimated_featurizer_gb_s: f64,
}

/// The template's default memory of the featurizer and the reducer (new accounts cap
/// functions at 3,008 MB).
const DEFAULT_MEMORY_MB: u64 = 3008;
/// vCPUs Lambda gives 3,008 MB (one vCPU per 1,769 MB).
const DEFAULT_VCPUS: f64 = 3008.0 / 1769.0;

/// Per-image compute of the featurizer, seconds of one core (read, decode, resize, inference,
/// write), used for the cost estimate: 12.7 ms, the median CPU time per image of the release
/// build's native AVX2 executor on a 2-core AMD EPYC (no AVX-512, loaded; 2026-12-07,
/// docs/performance.md "Per-image time for the deploy defaults"). AVX2 is what Lambda's
/// x86_64 promises, and slower than the AVX-512 kernels (7.1–7.8 ms on a Xeon, 2026-12-02).
pub const FEATURIZER_S_PER_IMAGE_CORE: f64 = 0.0127;

/// Resets the process's peak-RSS mark (Linux: `/proc/self/clear_refs`), so the next reading
/// is the peak of what follows.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory since the last reset, MB (`VmHWM`), on Linux.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs the simulation in `folder` (the run's objects are written there; the images are
/// synthetic keys that cost nothing to list or fetch).
pub async fn simulate(options: &SimulationOptions, folder: &Path) -> Result<SimulationReport> {
    check(options)?;
    let bucket = SimulatedBucket::new(options.images, options.labels, folder);
    simulate_on(
        options,
        "fs",
        bucket,
        &InProcessQueue::new(),
        &InProcessQueue::new(),
    )
    .await
}

/// Runs the simulation against a real S3 bucket and two SQS queues (moto, or AWS): first
/// puts the synthetic images there as empty objects (not counted), then runs every stage
/// through the S3 and SQS adapters, the shards' and the reduce message received back from
/// the queues. The requests the emulator served can then be checked against the counts.
/// With the feature `sdk` only.
#[cfg(feature = "sdk")]
pub async fn simulate_on_s3(
    options: &SimulationOptions,
    store: crate::sdk::S3Store,
    shard_queue: &crate::sdk::SqsQueue,
    reduce_queue: &crate::sdk::SqsQueue,
) -> Result<SimulationReport> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    check(options)?;
    stream::iter(
        synthetic_images(options.images, options.labels)
            .into_iter()
            .map(|o| {
                let store = &store;
                async move { store.put(&o.key, Bytes::new()).await }
            }),
    )
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await?;
    simulate_on(options, "s3", store, shard_queue, reduce_queue).await
}

fn check(options: &SimulationOptions) -> Result<()> {
    if options.images < 2 {
        return Err(Error::InvalidRequest("simulate at least 2 images".into()));
    }
    Ok(())
}

/// The featurizers' stage: one fresh handler per shard message (a cold invocation), a few at
/// a time, each with its own request counters.
async fn simulate_featurizers<S, Q>(
    options: &SimulationOptions,
    bucket: &S,
    shard_queue: &Q,
    reduce_queue: &Q,
    driver: &Arc<Counters>,
) -> Result<StageReport>
where
    S: ObjectStore + Clone + 'static,
    Q: Queue + Drain,
{
    reset_peak_rss();
    let started = Instant::now();
    let messages: Vec<String> = CountingQueue::new(shard_queue, driver.clone())
        .drain()
        .await?;
    let invocations = messages.len() as u64;
    let concurrency = options.featurizer_concurrency.max(1);
    let per_invocation: Vec<(Usage, f64)> = {
        use futures::stream::{self, StreamExt, TryStreamExt};
        stream::iter(messages.into_iter().map(|body| {
            let bucket = bucket.clone();
            async move {
                let counters = Counters::new();
                let store = CountingStore::new(bucket, counters.clone());
                let featurizer = ShardFeaturizer::synthetic(
                    store.clone(),
                    store,
                    CountingQueue::new(reduce_queue, counters.clone()),
                    options.dim,
                    FeaturizerSettings {
                        worker_threads: 1,
                        ..FeaturizerSettings::default()
                    },
                );
                let message: ShardMessage = serde_json::from_str(&body)?;
                let t = Instant::now();
                featurizer.process(&message, None, None).await?;
                Ok::<_, Error>((counters.usage(), t.elapsed().as_secs_f64()))
            }
        }))
        .buffer_unordered(concurrency)
        .try_collect()
        .await?
    };
    let wall = started.elapsed().as_secs_f64();
    let mut usage = Usage::default();
    for (u, _) in &per_invocation {
        usage = add_usage(usage, *u);
    }
    Ok(StageReport {
        stage: "featurizers".into(),
        invocations,
        wall_s: wall,
        max_invocation_s: per_invocation.iter().map(|(_, s)| *s).fold(0.0, f64::max),
        peak_rss_mb: peak_rss_mb(),
        usage,
        max_invocation_read_bytes: per_invocation
            .iter()
            .map(|(u, _)| u.bytes_read)
            .max()
            .unwrap_or(0),
    })
}

/// The reducer's stage: every reduce message, one reducer.
async fn simulate_reducer<S, Q>(
    bucket: &S,
    reduce_queue: &Q,
    driver: &Arc<Counters>,
) -> Result<(Box<Summary>, StageReport)>
where
    S: ObjectStore + Clone + 'static,
    Q: Queue + Drain,
{
    reset_peak_rss();
    let counters = Counters::new();
    let reducer = Reducer::new(
        CountingStore::new(bucket.clone(), counters.clone()),
        ReducerSettings::default(),
    );
    let started = Instant::now();
    let mut summary = None;
    for body in CountingQueue::new(reduce_queue, driver.clone())
        .drain()
        .await?
    {
        let message: ReduceMessage = serde_json::from_str(&body)?;
        match reducer.process(&message, "simulate").await? {
            ReduceOutcome::Reduced(s) => summary = Some(s),
            ReduceOutcome::AlreadyReduced => {}
            ReduceOutcome::Failed(s) => {
                return Err(Error::RunState(format!(
                    "the simulated run failed: {}",
                    s.failure.unwrap_or_default()
                )))
            }
        }
    }
    let summary =
        summary.ok_or_else(|| Error::RunState("the simulated run was never reduced".into()))?;
    Ok((summary, StageReport::single("reducer", started, &counters)))
}

/// The simulation over any bucket and queues.
async fn simulate_on<S, Q>(
    options: &SimulationOptions,
    backend: &str,
    bucket: S,
    shard_queue: &Q,
    reduce_queue: &Q,
) -> Result<SimulationReport>
where
    S: ObjectStore + Clone + 'static,
    Q: Queue + Drain,
{
    let mut stages = Vec::new();
    // The driver's own requests: delivering the messages (what the event-source mappings do
    // on AWS) and measuring the run's objects.
    let driver = Counters::new();
    let measure = CountingStore::new(bucket.clone(), driver.clone());

    // Splitter.
    reset_peak_rss();
    let counters = Counters::new();
    let store = CountingStore::new(bucket.clone(), counters.clone());
    let splitter = Splitter::new(
        store.clone(),
        store,
        CountingQueue::new(shard_queue, counters.clone()),
        CountingQueue::new(reduce_queue, counters.clone()),
        RunOptions::default(),
        options.dim,
    )
    .with_model_sha256(SYNTHETIC_MODEL_ID);
    let request = RunRequest {
        input_prefix: SIM_INPUT_PREFIX.to_string(),
        shard_size: Some(options.shard_size),
        k: Some(options.k),
        ..RunRequest::default()
    };
    let started = Instant::now();
    let split = splitter.handle(&request).await?;
    stages.push(StageReport::single("splitter", started, &counters));
    let layout = RunLayout::new(&split.run_id);
    let manifest_bytes = measure.get(&layout.manifest()).await?.len() as u64;

    // Featurizers: one fresh handler per shard (a cold invocation), a few at a time.
    stages.push(simulate_featurizers(options, &bucket, shard_queue, reduce_queue, &driver).await?);
    let stats_bytes: u64 = measure
        .list(&layout.staging_prefix())
        .await?
        .iter()
        .filter(|o| o.key.ends_with("stats.bin"))
        .map(|o| o.size)
        .sum();
    let feature_bytes: u64 = measure
        .list(&layout.results_prefix())
        .await?
        .iter()
        .map(|o| o.size)
        .sum();

    // Reducer.
    let (summary, reducer_stage) = simulate_reducer(&bucket, reduce_queue, &driver).await?;
    stages.push(reducer_stage);
    let n = options.images as f64;
    let kept_bytes: u64 = measure
        .list("")
        .await?
        .iter()
        .filter(|o| !o.key.starts_with(pipeline::layout::STAGING_PREFIX))
        .map(|o| o.size)
        .sum();
    let shape = |mb: u64| pipeline::cost::RunShape {
        images: options.images as u64,
        shards: split.shards as u64,
        featurizer_s_per_shard: (options.images as f64 / split.shards.max(1) as f64)
            * FEATURIZER_S_PER_IMAGE_CORE
            / DEFAULT_VCPUS
            + 0.5,
        featurizer_mb: mb,
        splitter_s: stages[0].wall_s,
        splitter_mb: 512,
        reducer_s: stages[2].wall_s,
        reducer_mb: DEFAULT_MEMORY_MB,
        stored_bytes: kept_bytes,
    };
    let x86 = pipeline::cost::breakdown(
        &shape(DEFAULT_MEMORY_MB),
        &Prices::for_region(Region::default(), Arch::X86_64),
    );
    let arm = pipeline::cost::breakdown(
        &shape(DEFAULT_MEMORY_MB),
        &Prices::for_region(Region::default(), Arch::Arm64),
    );
    Ok(SimulationReport {
        backend: backend.to_string(),
        driver: driver.usage(),
        reduce_steps: summary.timings.reduce,
        kept_bytes,
        requests: pipeline::cost::requests(options.images as u64, split.shards as u64),
        estimated_cost_usd: [x86.total, arm.total],
        estimated_featurizer_gb_s: x86.featurizer_gb_s,
        images: options.images,
        shard_size: options.shard_size,
        shards: split.shards,
        dim: options.dim,
        stats_bytes_per_image: stats_bytes as f64 / n,
        feature_bytes_per_image: feature_bytes as f64 / n,
        reducer_read_bytes_per_image: stages[2].usage.bytes_read as f64 / n,
        manifest_bytes,
        cumulative_explained_variance: summary.cumulative_explained_variance,
        stages,
    })
}

fn add_usage(a: Usage, b: Usage) -> Usage {
    Usage {
        s3_get: a.s3_get + b.s3_get,
        s3_put: a.s3_put + b.s3_put,
        s3_list: a.s3_list + b.s3_list,
        s3_delete: a.s3_delete + b.s3_delete,
        bytes_read: a.bytes_read + b.bytes_read,
        bytes_written: a.bytes_written + b.bytes_written,
        s3_copy: a.s3_copy + b.s3_copy,
        bytes_copied: a.bytes_copied + b.bytes_copied,
        sqs_requests: a.sqs_requests + b.sqs_requests,
        messages: a.messages + b.messages,
        max_message_bytes: a.max_message_bytes.max(b.max_message_bytes),
    }
}

/// Least-squares line `a + b x` through `points`.
pub fn linear_fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len().max(1) as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

/// A sweep's plot (SVG, plotters): wall time per stage and the estimated AWS cost against
/// images, log-log, measured points with their linear fits drawn out to `extend_to` images.
pub fn sweep_svg(reports: &[SimulationReport], extend_to: usize) -> Result<String> {
    use plotters::prelude::*;
    let err = |e: String| Error::RunState(format!("drawing the scale plot: {e}"));
    let max_n = reports
        .iter()
        .map(|r| r.images)
        .max()
        .unwrap_or(1)
        .max(extend_to) as f64;
    let min_n = reports.iter().map(|r| r.images).min().unwrap_or(1) as f64;
    let xs: Vec<f64> = (0..=40)
        .map(|i| min_n * (max_n / min_n).powf(i as f64 / 40.0))
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (980, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let (left, right) = root.split_horizontally(490);
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(214, 39, 40),
            RGBColor(44, 160, 44),
        ];
        let axes = Axes {
            xs: &xs,
            min_n,
            max_n,
            colors,
        };
        draw_time_panel(&left, reports, &axes)?;
        draw_cost_panel(&right, reports, &axes)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// What both panels of the scale plot share: the x samples (images, log-spaced), their range
/// and the series colours.
struct Axes<'a> {
    xs: &'a [f64],
    min_n: f64,
    max_n: f64,
    colors: [plotters::style::RGBColor; 3],
}

type Panel<'a> =
    plotters::drawing::DrawingArea<plotters::backend::SVGBackend<'a>, plotters::coord::Shift>;

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::RunState(format!("drawing the scale plot: {e}"))
}

/// A value of a linear fit, floored for the log scale.
fn fit_at(fit: (f64, f64), x: f64) -> f64 {
    (fit.0 + fit.1 * x).max(1e-3)
}

/// The left panel: wall time per stage against images, measured points and linear fits.
fn draw_time_panel(left: &Panel<'_>, reports: &[SimulationReport], axes: &Axes<'_>) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| plot_error(e);
    let (xs, min_n, max_n, colors) = (axes.xs, axes.min_n, axes.max_n, axes.colors);
    let at = fit_at;
    let stages = ["splitter", "featurizers (2 at a time)", "reducer"];
    let fits: Vec<(f64, f64)> = (0..3)
        .map(|i| {
            linear_fit(
                &reports
                    .iter()
                    .map(|r| (r.images as f64, r.stages[i].wall_s))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let top = fits
        .iter()
        .map(|&f| at(f, max_n))
        .chain(
            reports
                .iter()
                .flat_map(|r| r.stages.iter().map(|s| s.wall_s)),
        )
        .fold(1e-3, f64::max)
        * 2.0;
    let mut time = ChartBuilder::on(left)
        .caption("Wall time per stage (this machine)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d((min_n..max_n).log_scale(), (1e-3..top).log_scale())
        .map_err(|e| err(e.to_string()))?;
    time.configure_mesh()
        .x_desc("images")
        .y_desc("seconds")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, stage) in stages.iter().enumerate() {
        let color = colors[i];
        time.draw_series(LineSeries::new(
            xs.iter().map(|&x| (x, at(fits[i], x))),
            color.stroke_width(1),
        ))
        .map_err(|e| err(e.to_string()))?
        .label(*stage)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        time.draw_series(reports.iter().map(|r| {
            Circle::new(
                (r.images as f64, r.stages[i].wall_s.max(1e-3)),
                4,
                color.filled(),
            )
        }))
        .map_err(|e| err(e.to_string()))?;
    }
    time.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(e.to_string()))?;

    Ok(())
}

/// The right panel: the estimated cost per run on x86_64 and arm64 against images.
fn draw_cost_panel(right: &Panel<'_>, reports: &[SimulationReport], axes: &Axes<'_>) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| plot_error(e);
    let (xs, min_n, max_n, colors) = (axes.xs, axes.min_n, axes.max_n, axes.colors);
    let at = fit_at;
    let cost_fit = [0, 1].map(|a| {
        linear_fit(
            &reports
                .iter()
                .map(|r| (r.images as f64, r.estimated_cost_usd[a]))
                .collect::<Vec<_>>(),
        )
    });
    let ctop = at(cost_fit[0], max_n).max(1e-3) * 2.0;
    let cmin = reports
        .iter()
        .map(|r| r.estimated_cost_usd[1])
        .fold(f64::INFINITY, f64::min)
        .max(1e-5)
        / 2.0;
    let mut cost = ChartBuilder::on(right)
        .caption("Estimated AWS cost per run (us-east-1)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d((min_n..max_n).log_scale(), (cmin..ctop).log_scale())
        .map_err(|e| err(e.to_string()))?;
    cost.configure_mesh()
        .x_desc("images")
        .y_desc("USD")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (a, name) in ["x86_64", "arm64"].iter().enumerate() {
        let color = colors[a * 2];
        cost.draw_series(LineSeries::new(
            xs.iter().map(|&x| (x, at(cost_fit[a], x))),
            color.stroke_width(1),
        ))
        .map_err(|e| err(e.to_string()))?
        .label(*name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        cost.draw_series(reports.iter().map(|r| {
            Circle::new(
                (r.images as f64, r.estimated_cost_usd[a]),
                4,
                color.filled(),
            )
        }))
        .map_err(|e| err(e.to_string()))?;
    }
    cost.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
