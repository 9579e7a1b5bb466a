//! Bring your own model (docs/model.md): every preprocessing option of the spec against an
//! independent Python reference, `infra/byo_reference.py` (Pillow + numpy + onnxruntime,
//! written from the spec's definition and torchvision's arithmetic), on small ONNX models it
//! generates (NCHW and NHWC, random weights, every pixel reaching the output) and on real
//! Fruits-360 images plus odd sizes: wide, tall, smaller than the crop, crops at exact halves.
//!
//! CI runs a sample (3 Fruits-360 images and the odd sizes per option); `infra/byo-matrix.sh`
//! runs the whole matrix (`BYO_MATRIX=full`: 60 Fruits-360 images per option) and prints the
//! table `docs/model.md` records.

use std::path::{Path, PathBuf};

use engine::model::{Model, ModelSpec};
use pipeline::batch::inference::{featurize_images, ImageOutcome};
use pipeline::parquet_io::{read_rows, Dataset};
use pipeline::ports::store::Bytes;
use serde_json::{json, Value};

use crate::common::*;

/// The features' limit against onnxruntime, absolute. The test models keep their features of
/// order 1 as real models do: the Caffe-style row's model (inputs in -124..152) has its first
/// layer's weights scaled to that range, as a model trained on such inputs has.
const MAX_DELTA: f32 = 1e-4;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `infra/byo_reference.py ARGS` with the test venv's Python.
fn reference(args: &[&str]) -> String {
    let script = repo().join("infra/byo_reference.py");
    let output = std::process::Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run infra/byo_reference.py");
    assert!(
        output.status.success(),
        "infra/byo_reference.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// A generated test model: NCHW with `pixel_values` -> `image_embeds` (a PyTorch export's
/// names), or NHWC with `input` -> `features` (the bundled spec's names).
fn make_model(dir: &Path, layout: &str) -> PathBuf {
    make_model_for_range(dir, layout, 1.0)
}

/// [`make_model`] for inputs spanning about `-range..range`: its first layer's weights are
/// divided by `range`, as those of a model trained on such inputs are.
fn make_model_for_range(dir: &Path, layout: &str, range: f32) -> PathBuf {
    let path = dir.join(format!("byo_{}_r{range}.onnx", layout.to_lowercase()));
    let range = range.to_string();
    let names: [&str; 4] = if layout == "NCHW" {
        [
            "--input-name",
            "pixel_values",
            "--output-name",
            "image_embeds",
        ]
    } else {
        ["--input-name", "input", "--output-name", "features"]
    };
    let mut args = vec!["make-model", path.to_str().unwrap(), "--layout", layout];
    args.extend(names);
    args.extend(["--input-range", &range]);
    reference(&args);
    path
}

/// Test images: Fruits-360 (`fruits` of them) and odd sizes, written to `dir`.
fn test_images(dir: &Path, fruits: usize) -> Vec<PathBuf> {
    let classes = fruits.div_ceil(3).max(1);
    let mut paths = Vec::new();
    for (i, (relative, bytes)) in fruit_images(classes, 3)
        .into_iter()
        .take(fruits)
        .enumerate()
    {
        let name = relative.replace(['/', ' '], "_");
        let path = dir.join(format!("fruit{i:03}_{name}"));
        std::fs::write(&path, bytes).unwrap();
        paths.push(path);
    }
    let png = image::ImageFormat::Png;
    let jpeg = image::ImageFormat::Jpeg;
    let photo = |w, h, seed| image::DynamicImage::ImageRgb8(synthetic_photo(w, h, seed));
    let odd = [
        ("wide_640x180.jpg", photo(640, 180, 1), jpeg),
        ("tall_150x520.png", photo(150, 520, 2), png),
        ("tiny_40x30.png", photo(40, 30, 3), png),
        // Shorter side 256: the long side becomes 385 and 387, crops at 80.5 and 81.5.
        ("half_301x200.png", photo(301, 200, 4), png),
        ("half_200x303.png", photo(200, 303, 5), png),
        (
            "noise_512x929.jpg",
            image::DynamicImage::ImageRgb8(noise_image(512, 929, 6)),
            jpeg,
        ),
    ];
    for (name, image, format) in odd {
        let path = dir.join(name);
        std::fs::write(&path, encode(image, format)).unwrap();
        paths.push(path);
    }
    paths
}

/// One row of the matrix: a spec (a preset name, or JSON over a base) on one of the models.
struct Case {
    option: &'static str,
    layout: &'static str,
    /// The span of the model's inputs (about `-range..range`), which its first layer's
    /// weights are scaled to: 1, or 128 for Caffe-style inputs (0..255 less the mean).
    range: f32,
    spec: Value,
}

/// A spec: 224x224 input, `pixel / 255`, the model's names (none given), with `fields` over it.
fn spec(layout: &str, fields: Value) -> Value {
    let mut base = json!({
        "name": "byo test", "layout": layout, "height": 224, "width": 224,
        "resize": "bicubic", "scale": 1.0 / 255.0, "offset": 0.0,
    });
    for (k, v) in fields.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn cases() -> Vec<Case> {
    let stretch = |filter: &str, layout: &'static str| spec(layout, json!({"resize": filter}));
    vec![
        Case {
            option: "resize nearest (stretch)",
            layout: "NHWC",
            range: 1.0,
            spec: stretch("nearest", "NHWC"),
        },
        Case {
            option: "resize bilinear (stretch)",
            layout: "NHWC",
            range: 1.0,
            spec: stretch("bilinear", "NHWC"),
        },
        Case {
            option: "resize bicubic (stretch), preset keras-mobilenet",
            layout: "NHWC",
            range: 1.0,
            spec: json!("keras-mobilenet"),
        },
        Case {
            option: "resize lanczos (stretch), NCHW",
            layout: "NCHW",
            range: 1.0,
            spec: stretch("lanczos", "NCHW"),
        },
        Case {
            option: "preset torchvision (shorter side 256 bilinear, crop 224, mean/std, NCHW)",
            layout: "NCHW",
            range: 1.0,
            spec: json!("torchvision"),
        },
        Case {
            option: "preset clip (shorter side 224 bicubic, crop 224, CLIP mean/std, NCHW)",
            layout: "NCHW",
            range: 1.0,
            spec: json!("clip"),
        },
        Case {
            option: "shorter side 200 < crop 224 (zero padding), nearest, BGR, Caffe mean",
            layout: "NHWC",
            range: 128.0,
            spec: spec(
                "NHWC",
                json!({"resize": "nearest", "resize_mode": "shorter_side", "resize_size": 200,
                       "crop": [224, 224], "scale": 1.0, "channel_order": "BGR",
                       "mean": [103.939, 116.779, 123.68]}),
            ),
        },
        Case {
            option: "shorter side 232 lanczos, crop 224, mean/std, NHWC",
            layout: "NHWC",
            range: 1.0,
            spec: spec(
                "NHWC",
                json!({"resize": "lanczos", "resize_mode": "shorter_side", "resize_size": 232,
                       "crop": [224, 224], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}),
            ),
        },
        Case {
            option: "stretch to 256 then crop 224, bilinear, BGR, std only, NCHW",
            layout: "NCHW",
            range: 1.0,
            spec: spec(
                "NCHW",
                json!({"resize": "bilinear", "resize_size": 256, "crop": [224, 224],
                       "channel_order": "BGR", "std": [0.25, 0.5, 0.75]}),
            ),
        },
    ]
}

/// The agreement of one option over its images.
struct Agreement {
    /// Largest |ours - reference| over every feature.
    max_delta: f32,
    /// Largest |reference feature| (the scale of `max_delta`).
    scale: f32,
    min_cosine: f64,
    /// Largest byte difference of the model's input image (resized, cropped).
    max_byte: u8,
    /// Input tensor values whose bits differ from the reference's.
    tensor_bits_differing: usize,
    images: usize,
}

impl Agreement {
    fn within_limits(&self) -> bool {
        self.max_delta <= MAX_DELTA && self.max_byte == 0 && self.tensor_bits_differing == 0
    }
}

fn from_hex(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// Our features and model-input bytes for `images` against the reference's.
fn compare(model_path: &Path, spec_arg: &str, images: &[PathBuf]) -> Agreement {
    let spec = ModelSpec::resolve(Path::new(spec_arg)).unwrap();
    let model = Model::load(model_path, spec).unwrap();
    let encoded: Vec<Result<Bytes, String>> = images
        .iter()
        .map(|p| Ok(Bytes::from(std::fs::read(p).unwrap())))
        .collect();
    let batch = featurize_images(&model, &encoded, 2, 50_000_000, None, None).unwrap();
    let tensors = tempfile::tempdir().unwrap();
    let mut args = vec!["features", model_path.to_str().unwrap(), spec_arg];
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    args.extend(["--tensors", tensors.path().to_str().unwrap()]);
    let theirs: Value = serde_json::from_str(&reference(&args)).unwrap();
    let rows = theirs["rows"].as_array().unwrap();
    assert_eq!(rows.len(), images.len());
    assert_eq!(
        theirs["input_name"].as_str(),
        Some(model.spec().input_name.as_str())
    );
    let mut agreement = Agreement {
        max_delta: 0.0,
        scale: 0.0,
        min_cosine: 1.0,
        max_byte: 0,
        tensor_bits_differing: 0,
        images: images.len(),
    };
    let preprocessor = model.preprocessor();
    for (i, ((path, outcome), row)) in images.iter().zip(&batch.outcomes).zip(rows).enumerate() {
        let ImageOutcome::Features(ours) = outcome else {
            panic!("{}: {outcome:?}", path.display())
        };
        let expected = floats(&row["features"]);
        assert_eq!(ours.len(), expected.len(), "{}", path.display());
        let delta = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        agreement.max_delta = agreement.max_delta.max(delta);
        agreement.scale = expected.iter().fold(agreement.scale, |m, v| m.max(v.abs()));
        agreement.min_cosine = agreement.min_cosine.min(cosine(ours, &expected));
        let decoded =
            engine::preprocess::decode_rgb8(&std::fs::read(path).unwrap(), 50_000_000).unwrap();
        let pixels = preprocessor.pixels(&decoded).unwrap();
        let mut tensor = vec![0f32; preprocessor.input_len()];
        preprocessor.tensor_into(&pixels, &mut tensor);
        let raw = std::fs::read(tensors.path().join(format!("{i}.f32"))).unwrap();
        assert_eq!(raw.len(), tensor.len() * 4, "{}", path.display());
        agreement.tensor_bits_differing += raw
            .chunks_exact(4)
            .zip(&tensor)
            .filter(|(b, v)| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != v.to_bits())
            .count();
        let pillow = from_hex(row["pixels_hex"].as_str().unwrap());
        assert_eq!(pixels.pixels.len(), pillow.len(), "{}", path.display());
        let byte = pixels
            .pixels
            .iter()
            .zip(&pillow)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        agreement.max_byte = agreement.max_byte.max(byte);
    }
    agreement
}

/// Every resize filter, both modes, crops (with padding and at exact halves), mean/std, BGR
/// and both layouts: the model's input bytes equal Pillow's, the features are within 1e-4 of
/// onnxruntime's on Pillow's preprocessing.
#[test]
fn every_preprocessing_option_matches_pillow_and_onnxruntime() {
    let full = std::env::var("BYO_MATRIX").is_ok_and(|v| v == "full");
    let dir = tempfile::tempdir().unwrap();
    let images = test_images(dir.path(), if full { 60 } else { 3 });
    let mut models = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    println!(
        "| option | test model | images | max abs delta | feature scale | min cosine | input \
         image max byte diff | input tensor values differing |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, case) in cases().iter().enumerate() {
        let spec_arg = match &case.spec {
            Value::String(preset) => preset.clone(),
            spec => {
                let path = dir.path().join(format!("spec{i}.json"));
                std::fs::write(&path, spec.to_string()).unwrap();
                path.to_str().unwrap().to_string()
            }
        };
        let model = models
            .entry((case.layout, case.range.to_string()))
            .or_insert_with(|| make_model_for_range(dir.path(), case.layout, case.range));
        let a = compare(model, &spec_arg, &images);
        let model_name = if case.range == 1.0 {
            case.layout.to_string()
        } else {
            format!("{}, first layer x 1/{}", case.layout, case.range)
        };
        println!(
            "| {} | {model_name} | {} | {:.1e} | {:.1} | {:.9} | {} | {} |",
            case.option,
            a.images,
            a.max_delta,
            a.scale,
            a.min_cosine,
            a.max_byte,
            a.tensor_bits_differing
        );
        if !a.within_limits() {
            failures.push(format!(
                "{}: max |delta| {:.2e} (feature scale {:.1}), model input max byte \
                 difference {}, input tensor values differing {}",
                case.option, a.max_delta, a.scale, a.max_byte, a.tensor_bits_differing
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "differ from Pillow + numpy + onnxruntime (limits: max |delta| {MAX_DELTA:.0e}, the \
         input image and tensor identical): {failures:?}"
    );
}

/// The acceptance run: `featurize run --model-spec torchvision` on a generated PyTorch-style
/// model gives, in its Parquet results, the reference's features within 1e-4.
#[test]
fn torchvision_preset_run_matches_the_python_reference() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("photos");
    let output = dir.path().join("out");
    std::fs::create_dir_all(input.join("odd")).unwrap();
    let images = test_images(&input.join("odd"), 4);
    let model = make_model(dir.path(), "NCHW");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args(["run", "--input", input.to_str().unwrap()])
        .args(["--output", output.to_str().unwrap()])
        .args([
            "--model",
            model.to_str().unwrap(),
            "--model-spec",
            "torchvision",
        ])
        .args(["--k", "2", "-q"])
        .env("CI", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "featurize run failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = Vec::new();
    for run in std::fs::read_dir(output.join("Results")).unwrap() {
        for part in std::fs::read_dir(run.unwrap().path()).unwrap() {
            let part = part.unwrap().path();
            if part.extension().is_some_and(|e| e == "parquet") {
                let bytes = Bytes::from(std::fs::read(&part).unwrap());
                rows.extend(read_rows(Dataset::Features, bytes).unwrap());
            }
        }
    }
    assert_eq!(rows.len(), images.len(), "one row per image");
    let mut args = vec!["features", model.to_str().unwrap(), "torchvision"];
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    let theirs: Value = serde_json::from_str(&reference(&args)).unwrap();
    let mut worst = 0f32;
    for (path, row) in images.iter().zip(theirs["rows"].as_array().unwrap()) {
        let relative = path.strip_prefix(&input).unwrap().to_str().unwrap();
        let ours = rows
            .iter()
            .find(|r| r.path == relative)
            .unwrap_or_else(|| panic!("no row for {relative}"));
        let expected = floats(&row["features"]);
        assert_eq!(ours.values.len(), expected.len(), "{relative}");
        for (a, b) in ours.values.iter().zip(&expected) {
            worst = worst.max((a - b).abs());
        }
    }
    println!(
        "featurize run --model-spec torchvision: {} images, max |delta| {worst:.2e} from the \
         Python reference",
        rows.len()
    );
    assert!(
        worst <= MAX_DELTA,
        "max |delta| {worst:.2e} > {MAX_DELTA:.0e}"
    );
    // The spec is part of the run id: the same images and model preprocessed another way
    // make another run (never resume this one), the same spec again finds this run.
    let runs = |spec: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
            .args(["run", "--input", input.to_str().unwrap()])
            .args(["--output", output.to_str().unwrap()])
            .args(["--model", model.to_str().unwrap(), "--model-spec", spec])
            .args(["--k", "2", "-q"])
            .env("CI", "true")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut ids: Vec<String> = std::fs::read_dir(output.join("Results"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(runs("clip").len(), 2, "another spec makes another run");
    assert_eq!(runs("torchvision").len(), 2, "the same spec finds its run");
}

/// A spec that does not fit the model's input is refused when the model loads, naming the
/// mismatch and the fix; `featurize run --help` lists the presets.
#[test]
fn mismatched_specs_are_refused_at_load_and_presets_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let nhwc = make_model(dir.path(), "NHWC");
    let torchvision = ModelSpec::preset("torchvision").unwrap();
    let e = Model::load(&nhwc, torchvision.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"input\" has shape [?, 224, 224, 3]") && e.contains("\"layout\": \"NHWC\""),
        "{e}"
    );
    let wrong_size = ModelSpec {
        layout: engine::model::Layout::NHWC,
        height: 256,
        width: 256,
        crop: Some([256, 256]),
        ..torchvision
    };
    let e = Model::load(&nhwc, wrong_size).unwrap_err().to_string();
    assert!(e.contains("set height, width"), "{e}");
    let e = ModelSpec::resolve(Path::new("resnet"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("keras-mobilenet, torchvision, clip"), "{e}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for preset in ["keras-mobilenet", "torchvision", "clip"] {
        assert!(help.contains(preset), "run --help lacks {preset}:\n{help}");
    }
}

/// `featurize ARGS` with `env` (and no engine from the caller's environment).
fn featurize(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"));
    command
        .args(args)
        .env("CI", "true")
        .env_remove(engine::model::Engine::ENV);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run featurize")
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "featurize failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one run of a local output folder, and a document of it.
fn only_run(output: &Path) -> String {
    let ids: Vec<String> = std::fs::read_dir(output.join("Results"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

fn run_document(output: &Path, run: &str, name: &str) -> Value {
    let path = output.join("runs").join(run).join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Which engine ran the model: `summary.json` counts the shards per engine, the report and
/// the CLI's output name it; `auto` is the native executor where this CPU has its kernels
/// (tract elsewhere), and `FEATURIZE_ENGINE=tract` (or `--engine tract`) forces tract. The
/// run records the built-in spec without changing its id.
#[test]
fn a_local_run_names_the_engine_that_ran_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("photos");
    write_tree(&input, &fruit_images(2, 3));
    let model_file = model_path();
    // What `auto` picks here for MobileNetV2.
    let auto = model().engine_name();
    for (forced, expected) in [(None, auto.as_str()), (Some("tract"), "tract")] {
        let output = dir.path().join(format!("out-{}", forced.unwrap_or("auto")));
        let env: Vec<(&str, &str)> = forced
            .map(|engine| (engine::model::Engine::ENV, engine))
            .into_iter()
            .collect();
        let out = featurize(
            &[
                "run",
                "--input",
                input.to_str().unwrap(),
                "--output",
                output.to_str().unwrap(),
                "--model",
                model_file.to_str().unwrap(),
                "--k",
                "2",
                "--shard-size",
                "3",
                "-q",
            ],
            &env,
        );
        assert_ok(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("engine {expected}\n")), "{stdout}");
        let run = only_run(&output);
        let summary = run_document(&output, &run, "summary.json");
        assert_eq!(
            summary["engines"],
            json!({ expected: 2 }),
            "both shards ran on {expected}"
        );
        let report =
            std::fs::read_to_string(output.join("runs").join(&run).join("report.html")).unwrap();
        assert!(
            report.contains(&format!("<span id=\"engine\">{expected}</span>")),
            "the report's header names {expected}"
        );
        assert!(
            report.contains(&format!("<th>engine</th><td>{expected}</td>")),
            "the report's parameters name {expected}"
        );
        let manifest = run_document(&output, &run, "manifest.json");
        assert_eq!(
            manifest["options"]["model_spec"],
            json!({"sha256": ModelSpec::builtin_sha256(), "builtin": true}),
            "the built-in spec is recorded by its sha256"
        );
    }
    let forced = featurize(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            dir.path().join("bad").to_str().unwrap(),
            "--engine",
            "neon",
        ],
        &[],
    );
    assert!(!forced.status.success());
    assert!(
        String::from_utf8_lossy(&forced.stderr).contains("auto, tract, avx512, avx2 or portable")
    );
}

/// The run records its spec (sha256, name, content); `featurize resume` with another spec is
/// refused, naming both, and with the same one goes on.
#[test]
fn resume_refuses_another_spec_and_accepts_the_recorded_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("photos");
    let output = dir.path().join("out");
    write_tree(&input, &fruit_images(2, 2));
    let model_file = make_model(dir.path(), "NCHW");
    let record = |preset: &str| {
        Model::load(&model_file, ModelSpec::preset(preset).unwrap())
            .unwrap()
            .record()
    };
    let (torchvision, clip) = (record("torchvision"), record("clip"));
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let args = |command: &str, spec: &str, run: Option<&str>| -> Vec<String> {
        let mut args = vec![command.to_string()];
        if let Some(run) = run {
            args.extend(["--run".into(), run.into()]);
        }
        args.extend([
            "--input".into(),
            path(&input),
            "--output".into(),
            path(&output),
            "--model".into(),
            path(&model_file),
            "--model-spec".into(),
            spec.into(),
        ]);
        if run.is_none() {
            args.extend(["--k".into(), "2".into(), "-q".into()]);
        }
        args
    };
    let call = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        featurize(&args, &[])
    };
    assert_ok(&call(args("run", "torchvision", None)));
    let run = only_run(&output);
    let manifest = run_document(&output, &run, "manifest.json");
    let recorded = &manifest["options"]["model_spec"];
    assert_eq!(
        recorded["sha256"].as_str(),
        Some(torchvision.spec_sha256.as_str())
    );
    assert_eq!(recorded["builtin"], false);
    assert_eq!(recorded["name"].as_str(), Some(torchvision.name.as_str()));
    assert_eq!(recorded["spec"]["resize_size"], 256);
    assert_eq!(recorded["spec"]["input_name"], "pixel_values");

    let refused = call(args("resume", "clip", Some(&run)));
    assert!(
        !refused.status.success(),
        "another spec must not resume the run"
    );
    let message = String::from_utf8_lossy(&refused.stderr);
    for part in [
        torchvision.spec_sha256.as_str(),
        torchvision.name.as_str(),
        clip.spec_sha256.as_str(),
        clip.name.as_str(),
        "--model-spec",
    ] {
        assert!(message.contains(part), "{part} is missing from: {message}");
    }
    let resumed = call(args("resume", "torchvision", Some(&run)));
    assert_ok(&resumed);
    assert!(
        String::from_utf8_lossy(&resumed.stdout).contains(&format!("run {run}: succeeded")),
        "{}",
        String::from_utf8_lossy(&resumed.stdout)
    );
}

/// The deployed stack knows the layer's spec: `ModelSpecSha256` defaults to the built-in
/// spec's sha256 (as `ModelSpec::sha256` computes it, recorded in
/// `models/model_spec.json.sha256` for `infra/build-layer.sh`), reaches the splitter (run
/// options and run id) and the featurizer (cold-start check), and is documented.
#[test]
fn the_stack_knows_the_layers_spec() {
    let builtin = ModelSpec::builtin_sha256();
    let read = |path: &str| std::fs::read_to_string(repo().join(path)).unwrap();
    let recorded = read("models/model_spec.json.sha256");
    assert_eq!(recorded.split_whitespace().next(), Some(builtin.as_str()));
    let t: serde_norway::Value = serde_norway::from_str(&read("template.yaml")).unwrap();
    let parameter = &t["Parameters"]["ModelSpecSha256"];
    assert_eq!(parameter["Default"].as_str(), Some(builtin.as_str()));
    assert_eq!(
        parameter["AllowedPattern"].as_str(),
        t["Parameters"]["ModelSha256"]["AllowedPattern"].as_str()
    );
    for (function, vars) in [
        ("SplitterFunction", &["MODEL_SHA256", "MODEL_SPEC_SHA256"]),
        ("FeaturizerFunction", &["MODEL_SHA256", "MODEL_SPEC_SHA256"]),
    ] {
        let env = &t["Resources"][function]["Properties"]["Environment"]["Variables"];
        for var in vars {
            let value = format!("{:?}", env[*var]);
            let parameter = if *var == "MODEL_SHA256" {
                "ModelSha256"
            } else {
                "ModelSpecSha256"
            };
            assert!(
                value.contains("Ref") && value.contains(&format!("\"{parameter}\"")),
                "{function}: {var} = {value}"
            );
        }
    }
    let docs = read("docs/configuration.md");
    for name in ["`MODEL_SPEC_SHA256`", "`ModelSpecSha256`", "`MODEL_SHA256`"] {
        assert!(docs.contains(name), "docs/configuration.md lacks {name}");
    }
    let script = read("infra/build-layer.sh");
    assert!(script.contains("ModelSpecSha256: $spec_sha"));
}
