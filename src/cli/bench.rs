//! `featurize bench`: where the time goes per image (read, decode, resize, inference, write),
//! model load, cold start (process start to first feature vector) and peak memory; then the
//! decode and resize cost by image size, on a 100x100 and a 4000x3000 (phone photo) JPEG made
//! in memory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::executor::Isa;
use engine::model::{Engine, Model, ModelSession};
use pipeline::batch::inference::{featurize_images, ImageOutcome};
use pipeline::batch::listing::{list_images, root_name, ImageFilter};
use pipeline::manifest::DEFAULT_IMAGE_GLOB;
use pipeline::parquet_io::{write_rows, Dataset, VectorRow};
use pipeline::ports::store::Bytes;
use pipeline::ports::store::{FsStore, ObjectStore};

/// Arguments of `bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Folder of images (walked recursively; the first --images in path order are used).
    #[arg(long)]
    input: PathBuf,
    /// How many images.
    #[arg(long, default_value_t = 200)]
    images: usize,
    /// Inference threads (1 measures the single-thread cost per image).
    #[arg(long, short = 'j', default_value_t = 1)]
    jobs: usize,
    /// Keep tract's default NCHW convolutions (to measure the channels-last rewrite; with
    /// `--engine tract`).
    #[arg(long)]
    no_channels_last: bool,
    /// Inference engine: `auto` (the native executor with this CPU's SIMD kernels where it
    /// can, else tract), `tract`, or the native executor with `avx512`, `avx2` or `portable`
    /// kernels.
    #[arg(long, default_value = "auto")]
    engine: String,
    /// Also time onnxruntime (1 thread) on the same preprocessed images, in turns with ours
    /// and tract's, through `infra/bench-onnxruntime.py --serve` (skipped, with a note, when
    /// Python has no onnxruntime). The only value is `onnxruntime`.
    #[arg(long)]
    compare: Option<String>,
    /// Rounds of the comparison (each engine runs every image once per round, in turns).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Images of the comparison and the profile (the first of --images).
    #[arg(long, default_value_t = 50)]
    compare_images: usize,
    /// Print the per-operator profile (ms per image) of ours, tract's and, with --compare,
    /// onnxruntime's.
    #[arg(long)]
    profile: bool,
    /// With --profile: also each step of ours, in order (time, MACs and GFMA/s).
    #[arg(long, requires = "profile")]
    profile_steps: bool,
    /// The Python that has onnxruntime (default: .venv/bin/python if present, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    #[command(flatten)]
    model: super::common::ModelArgs,
}

/// Runs the benchmark and prints its numbers.
pub async fn bench(args: BenchArgs, process_start: Instant) -> Result<()> {
    // The same listing (filter, labels, order) and reads as a run's.
    let store = FsStore::new(&args.input);
    let filter = ImageFilter::new(DEFAULT_IMAGE_GLOB)?;
    let root_label = root_name(&args.input.to_string_lossy());
    let mut images = list_images(&store, "", &filter, &root_label).await?;
    images.truncate(args.images);
    if images.is_empty() {
        bail!("no images under {}", args.input.display());
    }

    let load_start = Instant::now();
    let engine =
        match args.engine.as_str() {
            "auto" => Engine::Auto,
            "tract" => Engine::Tract,
            name => Engine::Native(Isa::parse(name).with_context(|| {
                format!("--engine {name}: auto, tract, avx512, avx2 or portable")
            })?),
        };
    let options = engine::model::LoadOptions {
        channels_last: !args.no_channels_last,
        engine,
    };
    let model = args.model.load_with(options)?;
    let load_ms = load_start.elapsed().as_secs_f64() * 1000.0;

    let read_start = Instant::now();
    let mut encoded: Vec<Result<Bytes, String>> = Vec::with_capacity(images.len());
    for image in &images {
        encoded.push(store.get(&image.path).await.map_err(|e| e.to_string()));
    }
    let read_s = read_start.elapsed().as_secs_f64();

    // Cold start: the first image through the whole path, right after the model load.
    let first = featurize_images(&model, &encoded[..1], 1, 50_000_000, None, None)?;
    let cold_start_ms = process_start.elapsed().as_secs_f64() * 1000.0;
    if !matches!(first.outcomes[0], ImageOutcome::Features(_)) {
        bail!("the first image failed: {:?}", first.outcomes[0]);
    }

    let run_start = Instant::now();
    let batch = featurize_images(&model, &encoded, args.jobs, 50_000_000, None, None)?;
    let wall_s = run_start.elapsed().as_secs_f64();
    let rows: Vec<VectorRow> = batch
        .outcomes
        .iter()
        .zip(&images)
        .filter_map(|(o, image)| match o {
            ImageOutcome::Features(values) => Some(VectorRow {
                path: image.path.clone(),
                label: image.label.clone(),
                values: values.clone(),
            }),
            ImageOutcome::Failed(..) => None,
        })
        .collect();
    let write_start = Instant::now();
    let part = write_rows(Dataset::Features, &rows)?;
    let write_s = write_start.elapsed().as_secs_f64();

    let n = images.len() as f64;
    let per = |s: f64| s * 1000.0 / n;
    let t = &batch.timings;
    println!(
        "featurize bench: {} images from {}, {} thread(s), model {} ({}-d), engine {}, convolutions {}",
        images.len(),
        args.input.display(),
        args.jobs,
        model.spec().name,
        model.feature_dim(),
        model.engine_name(),
        if model.executor().is_some() {
            "channels-last (native)".to_string()
        } else if options.channels_last {
            format!(
                "channels-last (NHWC, {} rewritten)",
                model.channels_last_convs()
            )
        } else {
            "tract default (NCHW)".to_string()
        }
    );
    println!("  model load + optimize   {load_ms:8.1} ms");
    println!(
        "  cold start              {cold_start_ms:8.1} ms  (process start -> first feature vector)"
    );
    println!("  per image (mean, ms, summed over threads):");
    println!("    read                  {:8.3}", per(read_s));
    println!("    decode                {:8.3}", per(t.decode_s));
    println!("    resize + normalize    {:8.3}", per(t.resize_s));
    println!("    inference             {:8.3}", per(t.infer_s));
    println!(
        "    write (parquet)       {:8.3}  ({} bytes for {} rows)",
        per(write_s),
        part.len(),
        rows.len()
    );
    println!(
        "  throughput              {:8.1} images/s  (wall {:.2} s)",
        n / wall_s,
        wall_s
    );
    if let Some(rss) = peak_rss_mb() {
        println!("  peak RSS                {rss:8.1} MB");
    }
    resize_by_size(model.preprocessor())?;
    let failed = batch
        .outcomes
        .iter()
        .filter(|o| matches!(o, ImageOutcome::Failed(..)))
        .count();
    if failed > 0 {
        println!("  failed images           {failed}");
    }
    if args.compare.is_some() || args.profile {
        compare(&args, &model, &encoded)?;
    }
    Ok(())
}

/// The first `--compare-images` images, decoded, resized and normalized as a run does.
fn preprocessed(
    model: &Model,
    encoded: &[Result<Bytes, String>],
    n: usize,
) -> Result<Vec<Vec<f32>>> {
    let preprocessor = model.preprocessor();
    let mut inputs = Vec::new();
    for bytes in encoded.iter().filter_map(|b| b.as_ref().ok()).take(n) {
        let decoded = engine::preprocess::decode_rgb8(bytes, 50_000_000)
            .map_err(|e| anyhow::anyhow!("decode: {}", e.reason))?;
        let mut input = vec![0.0; preprocessor.input_len()];
        preprocessor
            .prepare(&decoded, &mut input)
            .map_err(|e| anyhow::anyhow!("resize: {}", e.reason))?;
        inputs.push(input);
    }
    if inputs.is_empty() {
        bail!("no image decoded");
    }
    Ok(inputs)
}

/// Mean inference ms per image of one pass over `inputs`.
fn time_pass(session: &mut ModelSession, inputs: &[Vec<f32>]) -> Result<f64> {
    let start = Instant::now();
    for x in inputs {
        std::hint::black_box(session.infer(x)?);
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / inputs.len() as f64)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// onnxruntime behind `infra/bench-onnxruntime.py --serve`.
struct Onnxruntime {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    version: String,
    /// The inputs file the server reads: created by `tempfile` (an unpredictable name, opened
    /// with `O_EXCL` and mode 0600), removed on drop.
    _inputs: tempfile::TempPath,
}

impl Onnxruntime {
    fn start(
        args: &BenchArgs,
        model_path: &std::path::Path,
        inputs: &[Vec<f32>],
    ) -> Result<Option<Self>> {
        use std::io::{BufRead, Write};
        let python = args.python.clone().unwrap_or_else(|| {
            let venv = PathBuf::from(".venv/bin/python");
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        });
        let script = [
            PathBuf::from("infra/bench-onnxruntime.py"),
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("infra/bench-onnxruntime.py"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .context("infra/bench-onnxruntime.py not found")?;
        let probe = std::process::Command::new(&python)
            .args(["-c", "import onnxruntime, numpy"])
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            println!(
                "  onnxruntime: not installed for {} (pip install onnxruntime numpy, or --python): comparison skipped",
                python.display()
            );
            return Ok(None);
        }
        let mut raw = Vec::with_capacity(inputs.len() * inputs[0].len() * 4);
        for x in inputs {
            for v in x {
                raw.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut named = tempfile::Builder::new()
            .prefix("featurize-bench-")
            .suffix(".f32")
            .tempfile()
            .context("creating the inputs file for onnxruntime")?;
        named.write_all(&raw)?;
        named.flush()?;
        let file = named.into_temp_path();
        let mut child = std::process::Command::new(&python)
            .arg(&script)
            .arg("--serve")
            .arg(model_path)
            .arg(&*file)
            .arg(inputs.len().to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        let mut ready = String::new();
        stdout.read_line(&mut ready)?;
        let version = ready
            .trim()
            .strip_prefix("ready ")
            .with_context(|| format!("bench-onnxruntime.py said {ready:?}"))?
            .to_string();
        let mut ort = Self {
            child,
            stdin,
            stdout,
            version,
            _inputs: file,
        };
        ort.stdin.flush()?;
        Ok(Some(ort))
    }

    fn ask(&mut self, command: &str) -> Result<String> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.is_empty() {
            bail!("bench-onnxruntime.py exited");
        }
        Ok(line.trim().to_string())
    }

    /// Mean ms per image of one pass.
    fn pass(&mut self) -> Result<f64> {
        let line = self.ask("run")?;
        let mean = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bench-onnxruntime.py said {line:?}"))?;
        Ok(mean)
    }
}

impl Drop for Onnxruntime {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// Inference only, 1 thread, on the same preprocessed images: ours, tract's (when ours is
/// not tract) and onnxruntime's, in turns for `--rounds` rounds; then the profiles.
fn compare(args: &BenchArgs, model: &Model, encoded: &[Result<Bytes, String>]) -> Result<()> {
    let inputs = preprocessed(model, encoded, args.compare_images)?;
    let model_path = args.model.model_path()?;
    let tract_model = if model.executor().is_some() {
        Some(args.model.load_with(engine::model::LoadOptions {
            engine: Engine::Tract,
            ..Default::default()
        })?)
    } else {
        None
    };
    let mut ours = model.session()?;
    let mut tract_session = tract_model.as_ref().map(|m| m.session()).transpose()?;
    // The engines take turns on one CPU: this thread, and the onnxruntime process started
    // below (it inherits the mask), are pinned to the CPU this thread is on. Unpinned, the
    // idle side's process still lands work on the other vCPU of a 2-vCPU machine, which
    // slowed whichever engine ran then by up to 25 % (the vCPUs share L3 and memory).
    let pinned = pin_to_current_cpu();
    let mut ort = match args.compare.as_deref() {
        Some("onnxruntime") => Onnxruntime::start(args, &model_path, &inputs)?,
        Some(other) => bail!("--compare {other}: only onnxruntime"),
        None => None,
    };
    // Warm-up.
    time_pass(&mut ours, &inputs[..1])?;
    if let Some(t) = tract_session.as_mut() {
        time_pass(t, &inputs[..1])?;
    }
    let (mut t_ours, mut t_tract, mut t_ort) = (vec![], vec![], vec![]);
    for _ in 0..args.rounds.max(1) {
        t_ours.push(time_pass(&mut ours, &inputs)?);
        if let Some(t) = tract_session.as_mut() {
            t_tract.push(time_pass(t, &inputs)?);
        }
        if let Some(o) = ort.as_mut() {
            t_ort.push(o.pass()?);
        }
    }
    let cpu = cpu_name();
    let pinned = pinned
        .map(|c| format!(", all pinned to CPU {c}"))
        .unwrap_or_default();
    println!(
        "  inference, 1 thread, batch 1, {} images x {} rounds in turns (ms per image; median of the round means, min) on {cpu}{pinned}:",
        inputs.len(),
        args.rounds.max(1)
    );
    let ours_min = t_ours.iter().copied().fold(f64::MAX, f64::min);
    let ours_med = median(&mut t_ours);
    println!(
        "    {:28} {ours_med:8.3} {ours_min:8.3}",
        format!("ours: {}", model.engine_name())
    );
    if !t_tract.is_empty() {
        let min = t_tract.iter().copied().fold(f64::MAX, f64::min);
        let med = median(&mut t_tract);
        println!(
            "    {:28} {med:8.3} {min:8.3}   ours / tract {:.2}x",
            "tract",
            ours_med / med
        );
    }
    if let Some(o) = &ort {
        let min = t_ort.iter().copied().fold(f64::MAX, f64::min);
        let med = median(&mut t_ort);
        println!(
            "    {:28} {med:8.3} {min:8.3}   ours / onnxruntime {:.2}x (min {:.2}x)",
            o.version,
            ours_med / med,
            ours_min / min
        );
    }
    if args.profile {
        profile(
            model,
            tract_model.as_ref().unwrap_or(model),
            &inputs,
            ort.as_mut(),
            args.profile_steps,
        )?;
    }
    Ok(())
}

/// Per-operator time (ms per image): the native executor by step kind, tract by op, and
/// onnxruntime by node type.
fn profile(
    model: &Model,
    tract_model: &Model,
    inputs: &[Vec<f32>],
    ort: Option<&mut Onnxruntime>,
    steps: bool,
) -> Result<()> {
    if let Some(executor) = model.executor() {
        profile_ours(model, executor, inputs, steps);
    }
    if let Some(plan) = tract_model.tract_plan() {
        profile_tract(tract_model, plan, inputs)?;
    }
    if let Some(ort) = ort {
        profile_onnxruntime(ort)?;
    }
    Ok(())
}

/// The native executor's profile, by step kind (and, with `steps`, by step).
fn profile_ours(
    model: &Model,
    executor: &std::sync::Arc<engine::executor::Executor>,
    inputs: &[Vec<f32>],
    steps: bool,
) {
    let n = inputs.len() as f64;
    let mut session = executor.session();
    let mut times = Vec::new();
    session.run(&inputs[0]);
    for x in inputs {
        std::hint::black_box(session.run_profiled(x, Some(&mut times)));
    }
    let kinds = executor.step_kinds();
    let mut by_kind: Vec<(&str, f64, usize, usize)> = Vec::new();
    for ((kind, macs), t) in kinds.iter().zip(&times) {
        match by_kind.iter_mut().find(|(k, ..)| k == kind) {
            Some(e) => {
                e.1 += t.as_secs_f64();
                e.2 += 1;
                e.3 += macs;
            }
            None => by_kind.push((kind, t.as_secs_f64(), 1, *macs)),
        }
    }
    println!("  profile, ours ({}), ms per image:", model.engine_name());
    let total: f64 = by_kind.iter().map(|e| e.1).sum();
    for (kind, t, count, macs) in &by_kind {
        let ms = t * 1000.0 / n;
        let gflops = if *macs > 0 {
            format!("{:6.1} GFMA/s", *macs as f64 / (ms * 1e6))
        } else {
            String::new()
        };
        println!("    {kind:36} {count:3} x {ms:8.3}  {gflops}");
    }
    println!("    {:36}       {:8.3}", "total", total * 1000.0 / n);
    if steps {
        println!("  profile, ours, by step: ms per image, M multiply-adds, GFMA/s");
        for (i, ((kind, macs), t)) in kinds.iter().zip(&times).enumerate() {
            let ms = t.as_secs_f64() * 1000.0 / n;
            let gfma = if *macs > 0 {
                format!("{:6.1}", *macs as f64 / (ms * 1e6))
            } else {
                String::new()
            };
            println!(
                "    {i:3} {kind:36} {ms:8.3} {:7.1} {gfma}",
                *macs as f64 / 1e6
            );
        }
    }
}

/// tract's profile, by op (the first image is a warm-up).
fn profile_tract(
    tract_model: &Model,
    plan: &std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>,
    inputs: &[Vec<f32>],
) -> Result<()> {
    use tract_onnx::prelude::*;
    let mut state = plan.spawn()?;
    let shape = {
        let s = tract_model.spec();
        let (h, w, c) = (s.height as usize, s.width as usize, s.channels as usize);
        match s.layout {
            engine::model::Layout::NHWC => [1, h, w, c],
            engine::model::Layout::NCHW => [1, c, h, w],
        }
    };
    let mut by_op: Vec<(String, f64, usize)> = Vec::new();
    for (i, x) in inputs.iter().enumerate() {
        let tensor = Tensor::from_shape(&shape, x)?;
        let mut seen: Vec<(String, f64)> = Vec::new();
        state.run_plan_with_eval(tvec!(tensor.into()), |ctx, op_state, node, input| {
            let start = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
            seen.push((node.op.name().to_string(), start.elapsed().as_secs_f64()));
            r
        })?;
        if i == 0 {
            continue; // warm-up
        }
        for (op, t) in seen {
            match by_op.iter_mut().find(|(o, ..)| *o == op) {
                Some(e) => {
                    e.1 += t;
                    e.2 += 1;
                }
                None => by_op.push((op, t, 1)),
            }
        }
    }
    let runs = (inputs.len() - 1).max(1) as f64;
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("  profile, tract (channels-last), ms per image:");
    for (op, t, count) in &by_op {
        println!(
            "    {op:36} {:3} x {:8.3}",
            count / runs as usize,
            t * 1000.0 / runs
        );
    }
    println!(
        "    {:36}       {:8.3}",
        "total",
        by_op.iter().map(|e| e.1).sum::<f64>() * 1000.0 / runs
    );
    Ok(())
}

/// onnxruntime's profile, by node type (as its server reports it).
fn profile_onnxruntime(ort: &mut Onnxruntime) -> Result<()> {
    let line = ort.ask("profile")?;
    let by_op: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&line).with_context(|| format!("onnxruntime profile {line:?}"))?;
    let mut rows: Vec<(String, f64)> = by_op
        .into_iter()
        .map(|(k, v)| (k, v.as_f64().unwrap_or(0.0)))
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "  profile, {} (per-node profile by op type), ms per image:",
        ort.version
    );
    for (op, ms) in &rows {
        println!("    {op:36}       {ms:8.3}");
    }
    println!(
        "    {:36}       {:8.3}",
        "total",
        rows.iter().map(|r| r.1).sum::<f64>()
    );
    Ok(())
}

/// The CPU's model name (Linux), for the record.
/// Pins the calling thread (and the processes it starts from now on) to the CPU it runs on;
/// that CPU, or None where it cannot.
#[cfg(target_os = "linux")]
fn pin_to_current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no preconditions; the cpu_set_t is zeroed, then one bit set
    // with the libc macro, and passed with its size.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).ok()?;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        (libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0)
            .then_some(cpu)
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_to_current_cpu() -> Option<usize> {
    None
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Decode and resize (the model's: filter, size and crop) times, one thread, for a JPEG of
/// the Fruits-360 size (enlarged) and one of a phone photo's (shrunk), made in memory.
fn resize_by_size(preprocessor: &engine::preprocess::Preprocessor) -> Result<()> {
    let (width, height) = (preprocessor.spec().width, preprocessor.spec().height);
    println!("  by image size (JPEG made in memory, 1 thread, mean ms):");
    for (w, h, runs) in [(100u32, 100u32, 200u32), (4000, 3000, 10)] {
        let image = image::RgbImage::from_fn(w, h, |x, y| {
            // Shading plus a texture, so that the JPEG has a photo's entropy.
            let texture = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(2_246_822_519)) >> 27;
            image::Rgb([
                (x * 255 / w) as u8 ^ texture as u8,
                (y * 255 / h) as u8,
                ((x + y) % 256) as u8,
            ])
        });
        let mut jpeg = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image).write_to(&mut jpeg, image::ImageFormat::Jpeg)?;
        let jpeg = jpeg.into_inner();
        let (mut decode_s, mut resize_s) = (0.0, 0.0);
        for _ in 0..runs {
            let start = Instant::now();
            let decoded = engine::preprocess::decode_rgb8(&jpeg, u64::MAX)
                .map_err(|e| anyhow::anyhow!("decode: {}", e.reason))?;
            let decoded_at = Instant::now();
            let resized = preprocessor
                .pixels(&decoded)
                .map_err(|e| anyhow::anyhow!("resize: {}", e.reason))?;
            std::hint::black_box(&resized);
            decode_s += (decoded_at - start).as_secs_f64();
            resize_s += decoded_at.elapsed().as_secs_f64();
        }
        let per = |s: f64| s * 1000.0 / f64::from(runs);
        println!(
            "    {:>9} JPEG ({} KB): decode {:8.3}, resize to {width}x{height} {:8.3}",
            format!("{w}x{h}"),
            jpeg.len() / 1024,
            per(decode_s),
            per(resize_s)
        );
    }
    Ok(())
}

/// Peak resident memory (VmHWM) on Linux.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
