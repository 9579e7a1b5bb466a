//! Shared test helpers: where `../shared` is, the model (loaded once), Python, and fixtures.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use engine::model::{Model, ModelSpec};
use pipeline::batch::featurizer::FeaturizerSettings;
use pipeline::batch::local::{run_local, LocalReport, LocalRun};
use pipeline::manifest::RunRequest;

/// `../shared` beside the repository (models, data, golden outputs).
pub fn shared_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        dir.is_dir(),
        "{} is missing: the tests need ../shared (models, data, golden)",
        dir.display()
    );
    dir
}

/// The Fruits-360 test images.
pub fn fruits() -> PathBuf {
    shared_dir().join("data/fruits-360/Test")
}

/// The model file the tests run: `MODEL_PATH` when set (relative to the repository root; e.g.
/// the output of `models/get-model.sh --from-source`), else `../shared`'s copy.
pub fn model_path() -> PathBuf {
    let path = match std::env::var_os("MODEL_PATH") {
        Some(path) => Path::new(env!("CARGO_MANIFEST_DIR")).join(path),
        None => shared_dir().join("models/mobilenet_v2_features.onnx"),
    };
    assert!(
        path.is_file(),
        "no model at {} (MODEL_PATH)",
        path.display()
    );
    path
}

/// The MobileNetV2 features model, loaded and optimized once for all tests.
pub fn model() -> Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = model_path();
            Model::load(&path, ModelSpec::mobilenet_v2()).expect("load the model")
        })
        .clone()
}

/// The Python with pyarrow (set up by `infra/test.sh`): `FEATURIZE_PYTHON`, else `.venv`.
pub fn python() -> PathBuf {
    let candidate = std::env::var_os("FEATURIZE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        candidate.exists(),
        "no Python with pyarrow at {} — run ./infra/test.sh (it creates .venv) or set FEATURIZE_PYTHON",
        candidate.display()
    );
    candidate
}

/// Runs a Python snippet with arguments; panics with its output if it fails.
pub fn run_python(code: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The first `per_class` images of each of the first `classes` Fruits-360 classes, as
/// (path relative to the Test folder, bytes).
pub fn fruit_images(classes: usize, per_class: usize) -> Vec<(String, Vec<u8>)> {
    let mut class_dirs: Vec<PathBuf> = std::fs::read_dir(fruits())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    class_dirs.sort();
    let mut out = Vec::new();
    for dir in class_dirs.into_iter().take(classes) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files.into_iter().take(per_class) {
            let relative = format!(
                "{}/{}",
                dir.file_name().unwrap().to_string_lossy(),
                file.file_name().unwrap().to_string_lossy()
            );
            out.push((relative, std::fs::read(&file).unwrap()));
        }
    }
    out
}

/// Synthetic bad files: (name, bytes, expected error kind).
pub fn bad_files(real_jpeg: &[u8]) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut corrupt = real_jpeg.to_vec();
    for b in corrupt.iter_mut().skip(20).take(400) {
        *b = 0x55;
    }
    vec![
        ("bad/empty.jpg", Vec::new(), "empty"),
        (
            "bad/not-an-image.png",
            b"this is a text file, not a PNG".to_vec(),
            "unsupported",
        ),
        (
            "bad/truncated.jpg",
            real_jpeg[..real_jpeg.len() / 2].to_vec(),
            "decode",
        ),
        ("bad/corrupt.jpg", corrupt, "decode"),
        ("bad/too-large.png", png_rgb(300, 200), "too_large"),
    ]
}

/// A valid RGB PNG of the given size (a gradient).
pub fn png_rgb(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    encode(
        image::DynamicImage::ImageRgb8(image),
        image::ImageFormat::Png,
    )
}

/// Encodes an image.
pub fn encode(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Valid images in unusual encodings: grayscale, RGBA, 16-bit.
pub fn unusual_valid_images() -> Vec<(&'static str, Vec<u8>)> {
    let gray = image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(64, 48, |x, y| {
        image::Luma([((x + y) % 256) as u8])
    }));
    let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(50, 70, |x, y| {
        image::Rgba([x as u8, y as u8, 90, 128])
    }));
    let deep = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(40, 40, |x, y| {
        image::Rgb([(x * 1600) as u16, (y * 1600) as u16, 30000])
    }));
    vec![
        (
            "odd formats/gray.png",
            encode(gray, image::ImageFormat::Png),
        ),
        (
            "odd formats/rgba.PNG",
            encode(rgba, image::ImageFormat::Png),
        ),
        (
            "odd formats/deep 16-bit.png",
            encode(deep, image::ImageFormat::Png),
        ),
    ]
}

/// Writes files under a folder.
pub fn write_tree(root: &Path, files: &[(String, Vec<u8>)]) {
    for (relative, bytes) in files {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A multi-threaded runtime for async tests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs the embedded pipeline (2 threads) on a folder, to completion.
pub fn run_local_blocking(input: &Path, output: &Path, request: RunRequest) -> LocalReport {
    runtime()
        .block_on(run_local(
            LocalRun {
                input: input.to_path_buf(),
                output: output.to_path_buf(),
                request,
                featurizer: FeaturizerSettings {
                    worker_threads: 2,
                    ..Default::default()
                },
                on_start: None,
                progress: None,
            },
            model(),
        ))
        .expect("local run")
}

/// A synthetic "photo" (deterministic from `seed`): smooth shading, a few objects with hard
/// edges, and fine sensor-like texture, the mix of frequencies real photos have.
pub fn synthetic_photo(width: u32, height: u32, seed: u32) -> image::RgbImage {
    let hash = |x: u32, y: u32, c: u32| -> u32 {
        let mut h = seed
            .wrapping_mul(0x9E37_79B1)
            .wrapping_add(c.wrapping_mul(0x27D4_EB2F))
            .wrapping_add(x.wrapping_mul(0x85EB_CA77))
            .wrapping_add(y.wrapping_mul(0xC2B2_AE3D));
        h ^= h >> 15;
        h = h.wrapping_mul(0x2C1B_3C6D);
        h ^= h >> 12;
        h = h.wrapping_mul(0x297A_2D39);
        h ^ (h >> 15)
    };
    let phase = f64::from(seed % 7);
    // The shading is separable (sums of products of a column and a row term): computed once
    // per column and per row, so that a 12-megapixel photo is cheap to make.
    let columns: Vec<[f64; 4]> = (0..width)
        .map(|x| {
            let u = f64::from(x) / f64::from(width);
            [(6.0 * u + phase).sin(), (5.0 * u).cos(), (5.0 * u).sin(), u]
        })
        .collect();
    let rows: Vec<[f64; 4]> = (0..height)
        .map(|y| {
            let v = f64::from(y) / f64::from(height);
            [
                (3.0 * v).cos(),
                (4.0 * v - phase).sin(),
                (5.0 * v).cos(),
                (5.0 * v).sin(),
            ]
        })
        .collect();
    image::RgbImage::from_fn(width, height, |x, y| {
        let [sin6u, cos5u, sin5u, u] = columns[x as usize];
        let [cos3v, sin4v, cos5v, sin5v] = rows[y as usize];
        let v = f64::from(y) / f64::from(height);
        // Smooth shading.
        let base = [
            120.0 + 80.0 * sin6u * cos3v,
            110.0 + 70.0 * sin4v,
            100.0 + 60.0 * (cos5u * cos5v - sin5u * sin5v),
        ];
        // Objects: a bright disc and a dark bar, hard-edged.
        let disc = (u - 0.35).powi(2) + (v - 0.4).powi(2) < 0.04;
        let bar = (0.6..0.75).contains(&u) && (0.2..0.9).contains(&v);
        let mut rgb = [0u8; 3];
        for (c, value) in rgb.iter_mut().enumerate() {
            let mut p = base[c];
            if disc {
                p = 0.4 * p + 150.0;
            }
            if bar {
                p *= 0.3;
            }
            // Texture: +-12 of noise.
            p += f64::from(hash(x, y, c as u32) % 25) - 12.0;
            *value = p.round().clamp(0.0, 255.0) as u8;
        }
        image::Rgb(rgb)
    })
}

/// Uniform RGB noise (deterministic from `seed`).
pub fn noise_image(width: u32, height: u32, seed: u64) -> image::RgbImage {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    image::RgbImage::from_fn(width, height, |_, _| {
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        };
        image::Rgb([next(), next(), next()])
    })
}

/// Runs a future to completion on a fresh single-threaded runtime (time and I/O enabled).
pub fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}
