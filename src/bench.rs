//! `featurize bench`: where the time goes per image (read, decode, resize, inference, write),
//! model load, cold start (process start to first feature vector) and peak memory; then the
//! decode and resize cost by image size, on a 100x100 and a 4000x3000 (phone photo) JPEG made
//! in memory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use shared::featurizer::{featurize_images, ImageOutcome};
use shared::listing::{list_images, root_name, ImageFilter};
use shared::manifest::DEFAULT_IMAGE_GLOB;
use shared::parquet_io::{write_rows, Dataset, VectorRow};
use shared::store::Bytes;
use shared::store::{FsStore, ObjectStore};

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
    /// Keep tract's default NCHW convolutions (to measure the channels-last rewrite).
    #[arg(long)]
    no_channels_last: bool,
    #[command(flatten)]
    model: crate::ModelArgs,
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
    let options = shared::model::LoadOptions {
        channels_last: !args.no_channels_last,
        ..Default::default()
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
        "featurize bench: {} images from {}, {} thread(s), model {} ({}-d), convolutions {}",
        images.len(),
        args.input.display(),
        args.jobs,
        model.spec().name,
        model.feature_dim(),
        if options.channels_last {
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
    resize_by_size(model.spec().width, model.spec().height)?;
    let failed = batch
        .outcomes
        .iter()
        .filter(|o| matches!(o, ImageOutcome::Failed(..)))
        .count();
    if failed > 0 {
        println!("  failed images           {failed}");
    }
    Ok(())
}

/// Decode and resize (Pillow bicubic, to the model's input size) times, one thread, for a
/// JPEG of the Fruits-360 size (enlarged) and one of a phone photo's (shrunk), made in memory.
fn resize_by_size(width: u32, height: u32) -> Result<()> {
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
            let decoded = shared::preprocess::decode_rgb8(&jpeg, u64::MAX)
                .map_err(|e| anyhow::anyhow!("decode: {}", e.reason))?;
            let decoded_at = Instant::now();
            let resized = shared::preprocess::resize_bicubic(&decoded, width, height)
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
