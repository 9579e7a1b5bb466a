//! Fidelity on images larger than the model's input (the resize shrinks them): features
//! against an independent Pillow + onnxruntime pipeline (Pillow decode, `convert("RGB")`,
//! `resize((224, 224), Image.BICUBIC)`, the spec's scale and offset, NHWC), on synthetic
//! photos and noise saved as PNG and JPEG.

use pipeline::batch::inference::{featurize_images, ImageOutcome};
use pipeline::parquet_io::{read_rows, Dataset};
use pipeline::ports::store::Bytes;

use crate::common::*;

/// The reference pipeline; fails with a clear message when onnxruntime or Pillow is missing.
const REFERENCE: &str = r#"
import json, sys
try:
    import numpy as np
    import onnxruntime as ort
    import PIL
    from PIL import Image
except ImportError as e:
    sys.exit(f"the fidelity reference needs onnxruntime, Pillow and numpy in the test venv ({e}): "
             "run ./infra/test.sh, which installs infra/requirements-test.txt")
model, spec_path, *paths = sys.argv[1:]
spec = json.load(open(spec_path))
options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
rows = []
for path in paths:
    image = Image.open(path).convert("RGB").resize((spec["width"], spec["height"]), Image.BICUBIC)
    x = np.asarray(image, dtype=np.float32) * np.float32(spec["scale"]) + np.float32(spec["offset"])
    features = session.run([spec["output_name"]], {spec["input_name"]: x[None]})[0][0]
    rows.append({"resized_hex": image.tobytes().hex(),
                 "features": [float(v) for v in features]})
json.dump({"pillow": PIL.__version__, "onnxruntime": ort.__version__, "rows": rows}, sys.stdout)
"#;

#[test]
fn shrunk_photos_match_pillow_and_onnxruntime() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let png = image::ImageFormat::Png;
    let jpeg = image::ImageFormat::Jpeg;
    let photo = |w, h, seed| image::DynamicImage::ImageRgb8(synthetic_photo(w, h, seed));
    let noise = |w, h, seed| image::DynamicImage::ImageRgb8(noise_image(w, h, seed));
    let cases = [
        ("photo 512x929.png", photo(512, 929, 1), png),
        ("photo 512x929.jpg", photo(512, 929, 1), jpeg),
        ("noise 512x929.png", noise(512, 929, 2), png),
        ("photo 4000x3000.jpg", photo(4000, 3000, 3), jpeg),
        ("photo 3000x4000.png", photo(3000, 4000, 4), png),
        ("photo 1200x300.jpg", photo(1200, 300, 5), jpeg),
    ];
    let mut paths = Vec::new();
    let mut files = Vec::new();
    for (name, image, format) in &cases {
        let bytes = encode(image.clone(), *format);
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        paths.push(path.to_string_lossy().into_owned());
        files.push(bytes);
    }
    let encoded: Vec<Result<Bytes, String>> =
        files.iter().map(|b| Ok(Bytes::from(b.clone()))).collect();

    let made = started.elapsed().as_secs_f64();
    let model = model();
    let spec = model.spec();
    let batch = featurize_images(&model, &encoded, 2, 50_000_000, None, None).unwrap();

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_path = shared_dir().join("models/mobilenet_v2_features.onnx");
    let spec_path = root.join("models/model_spec.json");
    let mut args = vec![model_path.to_str().unwrap(), spec_path.to_str().unwrap()];
    args.extend(paths.iter().map(String::as_str));
    let ours = started.elapsed().as_secs_f64();
    let reference: serde_json::Value =
        serde_json::from_str(&run_python(REFERENCE, &args)).expect("reference output");
    println!(
        "reference: Pillow {}, onnxruntime {}; images made in {made:.1} s, featurized by us in \
         {:.1} s, by the reference in {:.1} s",
        reference["pillow"],
        reference["onnxruntime"],
        ours - made,
        started.elapsed().as_secs_f64() - ours
    );
    let rows = reference["rows"].as_array().unwrap();
    assert_eq!(rows.len(), cases.len());

    let mut failures = Vec::new();
    for ((((name, _, _), outcome), row), bytes) in
        cases.iter().zip(&batch.outcomes).zip(rows).zip(&files)
    {
        let ImageOutcome::Features(ours) = outcome else {
            panic!("{name} failed: {outcome:?}")
        };
        let theirs: Vec<f32> = row["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(ours.len(), theirs.len());
        let cos = cosine(ours, &theirs);
        let max_delta = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // The model's input bytes (decode + resize), ours against Pillow's.
        let decoded = engine::preprocess::decode_rgb8(bytes, 50_000_000).unwrap();
        let resized =
            engine::preprocess::resize_bicubic(&decoded, spec.width, spec.height).unwrap();
        let pillow = from_hex(row["resized_hex"].as_str().unwrap());
        assert_eq!(resized.pixels.len(), pillow.len());
        let max_byte = resized
            .pixels
            .iter()
            .zip(&pillow)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!(
            "{name:20} cosine {cos:.9}  max |delta| {max_delta:.2e}  \
             224x224 input max byte difference {max_byte}"
        );
        if cos < 0.999_999_8 || max_delta > 5e-3 || max_byte != 0 {
            failures.push(format!(
                "{name}: cosine {cos:.9}, max |delta| {max_delta:.2e}, model input max byte \
                 difference {max_byte}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "differ from Pillow + onnxruntime (limits: cosine >= 0.9999998, max |delta| <= 5e-3, \
         the 224x224 input identical to Pillow's): {failures:?}"
    );
}

fn from_hex(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// Odd formats, against Pillow's `Image.open(...).convert("RGB")`: a CMYK JPEG (Adobe,
/// inverted, as Pillow and Photoshop write them; decoded by the `image` crate, whose IDCT and
/// CMYK conversion round differently: 2 levels at most on this image, limit 3) and a JPEG
/// with an EXIF orientation (neither Pillow's `Image.open` nor our decoder rotates it).
const ODD_FORMATS: &str = r#"
import io, json, sys
import numpy as np
from PIL import Image
out = sys.argv[1]
y, x = np.mgrid[0:256, 0:320]
cmyk = np.stack([x * 255 // 319, y, (x + y) * 3 % 256, (x // 20 + y // 20) % 2 * 90 + x * y % 37], -1)
Image.frombytes("CMYK", (320, 256), cmyk.astype(np.uint8).tobytes()).save(out + "/cmyk.jpg", quality=95)
rgb = np.stack([x % 256, y, (x * y) % 251], -1).astype(np.uint8)
exif = Image.Exif()
exif[0x0112] = 6  # rotate 90 degrees clockwise to display
Image.frombytes("RGB", (320, 256), rgb.tobytes()).save(out + "/exif6.jpg", quality=95, exif=exif)
result = {}
for name in ("cmyk.jpg", "exif6.jpg"):
    image = Image.open(out + "/" + name)
    result[name] = {"mode": image.mode, "size": image.size,
                    "rgb_hex": image.convert("RGB").tobytes().hex()}
json.dump(result, sys.stdout)
"#;

#[test]
fn odd_formats_decode_as_pillow() {
    let dir = tempfile::tempdir().unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&run_python(ODD_FORMATS, &[dir.path().to_str().unwrap()]))
            .expect("reference output");
    for (name, limit) in [("cmyk.jpg", 3u8), ("exif6.jpg", 0)] {
        let pillow = &reference[name];
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        let ours = engine::preprocess::decode_rgb8(&bytes, 50_000_000).unwrap();
        let size = [
            pillow["size"][0].as_u64().unwrap() as u32,
            pillow["size"][1].as_u64().unwrap() as u32,
        ];
        assert_eq!([ours.width, ours.height], size, "{name}: size");
        let expected = from_hex(pillow["rgb_hex"].as_str().unwrap());
        let max_byte = ours
            .pixels
            .iter()
            .zip(&expected)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!(
            "{name} (Pillow mode {}): {}x{}, max byte difference from Pillow's RGB {max_byte}",
            pillow["mode"], ours.width, ours.height
        );
        assert!(
            max_byte <= limit,
            "{name}: differs from Pillow's convert(\"RGB\") by {max_byte} (limit {limit})"
        );
    }
}

/// `n` values uniform in `[-scale, scale)`, from a seed.
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| (rng.f32() * 2.0 - 1.0) * scale).collect()
}

/// Within 2e-5 of the largest magnitude (at least 1), as the executor's unit tests require.
fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    let worst = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 2e-5 * scale,
        "{what}: max |delta| {worst} (scale {scale})"
    );
}

/// The real model: the native executor against tract on random inputs in the model's range,
/// with every instruction set (moved from the engine's unit tests, which run without
/// `../shared`).
#[test]
fn mobilenet_v2_matches_tract() {
    let path = shared_dir().join("models/mobilenet_v2_features.onnx");
    let spec = engine::model::ModelSpec::mobilenet_v2();
    let tract_model = engine::model::Model::load_with(
        &path,
        spec.clone(),
        engine::model::LoadOptions {
            engine: engine::model::Engine::Tract,
            ..Default::default()
        },
    )
    .unwrap();
    let mut tract_session = tract_model.session().unwrap();
    let inputs: Vec<Vec<f32>> = (0..2)
        .map(|s| random(spec.input_len(), 77 + s, 1.0))
        .collect();
    let expected: Vec<Vec<f32>> = inputs
        .iter()
        .map(|x| tract_session.infer(x).unwrap())
        .collect();
    for isa in engine::executor::Isa::all_available() {
        let native = engine::model::Model::load_with(
            &path,
            spec.clone(),
            engine::model::LoadOptions {
                engine: engine::model::Engine::Native(isa),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(native.engine_name(), format!("native ({})", isa.name()));
        assert_eq!(native.feature_dim(), 1280);
        let kinds = native.executor().unwrap().step_kinds();
        // 52 convolutions (10 residual adds fused into them) and the pool: 53 steps, less 8
        // for the four blocks fused at 112x112 and 56x56 (the stem fused into the first).
        assert_eq!(kinds.len(), 45, "{kinds:?}");
        let fused = kinds
            .iter()
            .filter(|(k, _)| k.starts_with("fused block"))
            .count();
        assert_eq!(fused, 4, "{kinds:?}");
        let mut session = native.session().unwrap();
        for (x, theirs) in inputs.iter().zip(&expected) {
            let ours = session.infer(x).unwrap();
            let dot: f64 = ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let cos = dot / (norm(&ours) * norm(theirs));
            assert!(cos > 0.9999999, "{isa:?}: cosine {cos}");
            assert_close(&ours, theirs, &format!("{isa:?}"));
        }
    }
}

/// How the featurizer-version fixture is regenerated (after bumping the version).
const REGENERATE_FIXTURE: &str =
    "UPDATE_FEATURIZER_FIXTURE=1 cargo test --test e2e fidelity::featurizer_version";
/// How far a fixture value may move without a version bump: above the engines' rounding
/// differences (the native executor on each instruction set and tract agree within 2e-5 of
/// the features' scale), far below what any change to decoding, resizing or the model does.
const FEATURIZER_TOLERANCE: f32 = 1e-4;
/// Golden images the fixture records (indices in `features.parquet`) and values per image.
const FIXTURE_IMAGES: [usize; 4] = [0, 23, 47, 71];
const FIXTURE_VALUES: usize = 16;

/// The fixture's record of one golden image: its first values and its mean feature.
fn fixture_entry(path: &str, features: &[f32]) -> serde_json::Value {
    let mean = features.iter().map(|&v| f64::from(v)).sum::<f64>() / features.len() as f64;
    serde_json::json!({
        "path": path,
        "first": features[..FIXTURE_VALUES].to_vec(),
        "mean": mean,
    })
}

/// `engine::FEATURIZER_VERSION` is part of every run id, so that features from code that
/// computes them differently never resume, or mix into, an older run. This test ties it to
/// the golden features: `tests/fixtures/featurizer_version.json` records the version with
/// the first values and the mean of the features of four golden images; when the current
/// code moves any of them beyond 1e-4 while the version is unchanged, it fails until the
/// version is bumped and the fixture regenerated.
#[test]
fn featurizer_version_is_bumped_when_the_golden_features_move() {
    let golden = read_rows(
        Dataset::Features,
        Bytes::from(std::fs::read(shared_dir().join("golden/seed72/features.parquet")).unwrap()),
    )
    .unwrap();
    let data = shared_dir().join("data/fruits-360");
    let paths: Vec<&str> = FIXTURE_IMAGES
        .iter()
        .map(|&i| golden[i].path.as_str())
        .collect();
    let encoded: Vec<Result<Bytes, String>> = paths
        .iter()
        .map(|p| Ok(Bytes::from(std::fs::read(data.join(p)).unwrap())))
        .collect();
    let batch = featurize_images(&model(), &encoded, 2, 50_000_000, None, None).unwrap();
    let current: Vec<serde_json::Value> = paths
        .iter()
        .zip(&batch.outcomes)
        .map(|(path, outcome)| match outcome {
            ImageOutcome::Features(values) => fixture_entry(path, values),
            other => panic!("{path} failed: {other:?}"),
        })
        .collect();
    let fixture_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/featurizer_version.json");
    if std::env::var_os("UPDATE_FEATURIZER_FIXTURE").is_some() {
        let fixture = serde_json::json!({
            "featurizer_version": engine::FEATURIZER_VERSION,
            "regenerate": REGENERATE_FIXTURE,
            "images": current,
        });
        let text = serde_json::to_string_pretty(&fixture).unwrap() + "\n";
        std::fs::write(&fixture_path, text).unwrap();
        println!("wrote {}", fixture_path.display());
    }
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&fixture_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; create it with {REGENERATE_FIXTURE}",
                fixture_path.display()
            )
        }))
        .unwrap();
    let recorded = fixture["featurizer_version"].as_u64().unwrap();
    assert_eq!(
        recorded,
        u64::from(engine::FEATURIZER_VERSION),
        "the fixture records FEATURIZER_VERSION {recorded}, the code is at {}: regenerate the \
         fixture with `{REGENERATE_FIXTURE}`",
        engine::FEATURIZER_VERSION
    );
    let entries = fixture["images"].as_array().unwrap();
    assert_eq!(entries.len(), current.len());
    let mut worst = 0f32;
    for (want, got) in entries.iter().zip(&current) {
        assert_eq!(want["path"], got["path"]);
        let values = |v: &serde_json::Value| -> Vec<f32> {
            let mut out: Vec<f32> = v["first"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            out.push(v["mean"].as_f64().unwrap() as f32);
            out
        };
        for (a, b) in values(want).iter().zip(values(got)) {
            worst = worst.max((a - b).abs());
        }
    }
    println!(
        "featurizer version {}: golden fixture values within {worst:.2e} (limit {FEATURIZER_TOLERANCE:.0e})",
        engine::FEATURIZER_VERSION
    );
    assert!(
        worst <= FEATURIZER_TOLERANCE,
        "the golden features moved by {worst:.2e} (limit {FEATURIZER_TOLERANCE:.0e}) while \
         engine::FEATURIZER_VERSION is still {}: bump FEATURIZER_VERSION \
         (shared/engine/src/lib.rs) and regenerate the fixture with `{REGENERATE_FIXTURE}`",
        engine::FEATURIZER_VERSION
    );
}
