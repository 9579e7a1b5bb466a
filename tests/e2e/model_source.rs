//! The model from its public source: `models/get-model.sh --from-source` converts
//! google-coral/test_data's `mobilenet_v2_1.0_224_quant.tflite` (../shared's copy, or the same
//! bytes served by a local HTTP server: never the network) into the pinned
//! `mobilenet_v2_features.onnx`, which the native executor runs and whose features are
//! today's model's.
//!
//! The converter runs in its own venv (`models/requirements-convert.txt`), which
//! `infra/test.sh` sets up with `models/get-model.sh --setup-converter`; the tests run the
//! script with `CONVERT_OFFLINE=1`, so they fail with a clear message when it is missing
//! rather than installing anything.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use engine::executor::Isa;
use engine::model::{Engine, LoadOptions, Model, ModelSpec};

use crate::common::shared_dir;

const SOURCE_NAME: &str = "mobilenet_v2_1.0_224_quant.tflite";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared`'s copy of the public source file.
fn local_source() -> PathBuf {
    shared_dir().join("models/source").join(SOURCE_NAME)
}

/// Today's model (what the pipeline runs).
fn todays_model() -> PathBuf {
    shared_dir().join("models/mobilenet_v2_features.onnx")
}

/// The pinned sha256 of the model (`models/mobilenet_v2_features.onnx.sha256`).
fn pinned_sha256() -> String {
    let path = repo().join("models/mobilenet_v2_features.onnx.sha256");
    let text = std::fs::read_to_string(&path).unwrap();
    let pin = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(pin.len(), 64, "no sha256 in {}", path.display());
    pin
}

/// The converter's venv, as get-model.sh finds it (`CONVERT_VENV`, relative to the repo root,
/// default `build/venv-convert`); panics with the fix when it is missing.
fn converter_python() -> PathBuf {
    let venv = std::env::var_os("CONVERT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("build/venv-convert"));
    let python = repo().join(venv).join("bin/python");
    assert!(
        python.exists(),
        "the model converter's venv is missing ({}): run ./infra/test.sh, or \
         models/get-model.sh --setup-converter (it installs models/requirements-convert.txt)",
        python.display()
    );
    python
}

/// Runs `models/get-model.sh ARGS` offline (no venv install) with extra environment.
fn get_model(args: &[&str], env: &[(&str, &str)]) -> Output {
    converter_python();
    let mut command = Command::new(repo().join("models/get-model.sh"));
    command
        .args(args)
        .env("CONVERT_OFFLINE", "1")
        .env_remove("MODEL_SOURCE_URL")
        .env_remove("MODEL_URL");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run models/get-model.sh")
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The model built once from `../shared`'s source copy, in a folder kept for the whole run.
fn produced() -> &'static Path {
    static PRODUCED: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = PRODUCED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mobilenet_v2_features.onnx");
        let started = std::time::Instant::now();
        let output = get_model(
            &[
                "--from-source",
                local_source().to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(
            output.status.success(),
            "get-model.sh --from-source failed: {}",
            describe(&output)
        );
        println!(
            "converted in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
        (dir, out)
    });
    path
}

fn load(path: &Path, engine: Engine) -> Model {
    Model::load_with(
        path,
        ModelSpec::mobilenet_v2(),
        LoadOptions {
            engine,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("load {} with {engine:?}: {e}", path.display()))
}

/// sha256 of a file, as the engine computes it when it loads a model.
fn sha256_of(path: &Path) -> String {
    load(path, Engine::Native(Isa::Portable))
        .sha256()
        .to_string()
}

#[test]
fn from_source_builds_the_pinned_model_byte_for_byte() {
    let produced = produced();
    let pin = pinned_sha256();
    assert_eq!(
        sha256_of(produced),
        pin,
        "the converter's output is not the pinned model"
    );
    // Today's model is that same file: run ids (which include the model's sha256) are unchanged.
    assert!(
        std::fs::read(produced).unwrap() == std::fs::read(todays_model()).unwrap(),
        "the converter's output differs from {}",
        todays_model().display()
    );
    // The stack records the same sha256 (samconfig.toml passes ModelSha256 to sam deploy; the
    // template has no default), so the layer's model and the runs' ModelSha256 agree.
    let samconfig = std::fs::read_to_string(repo().join("samconfig.toml")).unwrap();
    let passed = samconfig.split("ModelSha256=").nth(1).map(|rest| {
        rest.chars()
            .take_while(char::is_ascii_hexdigit)
            .collect::<String>()
    });
    assert_eq!(
        passed.as_deref(),
        Some(pin.as_str()),
        "samconfig.toml's ModelSha256 should be the pinned model's sha256"
    );
}

#[test]
fn the_native_executor_runs_the_produced_model() {
    let produced = produced();
    let isa = Isa::detect();
    // An explicit native engine fails to load a graph the executor does not recognise.
    let native = load(produced, Engine::Native(isa));
    assert_eq!(native.engine_name(), format!("native ({})", isa.name()));
    let todays = load(&todays_model(), Engine::Native(isa));
    assert_eq!(
        native.executor().unwrap().step_kinds(),
        todays.executor().unwrap().step_kinds(),
        "the produced graph compiles to other steps than today's model"
    );
    // What production does (Engine::Auto) picks the executor wherever it has SIMD kernels.
    let auto = load(produced, Engine::Auto);
    if isa == Isa::Portable {
        assert_eq!(auto.engine_name(), "tract", "no SIMD kernels on this CPU");
    } else {
        assert_eq!(
            auto.engine_name(),
            format!("native ({})", isa.name()),
            "the produced model fell back to tract"
        );
    }
}

/// Features of images (paths under `../shared/data/fruits-360`) with a model.
fn features(model: &Model, images: &[PathBuf]) -> Vec<Vec<f32>> {
    let spec = model.spec();
    let mut session = model.session().unwrap();
    images
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).unwrap();
            let rgb = engine::preprocess::decode_rgb8(&bytes, 50_000_000).unwrap();
            let resized =
                engine::preprocess::resize_bicubic(&rgb, spec.width, spec.height).unwrap();
            let mut input = vec![0f32; spec.input_len()];
            engine::preprocess::normalize_into(&resized, spec.scale, spec.offset, &mut input);
            session.infer(&input).unwrap()
        })
        .collect()
}

#[test]
fn the_produced_model_gives_todays_features_on_golden_images() {
    let produced = produced();
    let golden = shared_dir().join("golden/seed72/images.txt");
    let listed = std::fs::read_to_string(&golden).unwrap();
    // Every 12th of the 72 golden images: 6 images from 6 classes.
    let images: Vec<PathBuf> = listed
        .lines()
        .filter(|l| !l.trim().is_empty())
        .step_by(12)
        .map(|l| shared_dir().join("data/fruits-360").join(l.trim()))
        .collect();
    assert_eq!(images.len(), 6, "{}", golden.display());
    let ours = features(&load(produced, Engine::Auto), &images);
    let todays = features(&load(&todays_model(), Engine::Auto), &images);
    let mut max_delta = 0f32;
    for ((path, a), b) in images.iter().zip(&ours).zip(&todays) {
        assert_eq!(a.len(), 1280, "{}", path.display());
        assert_eq!(a.len(), b.len());
        let delta = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        max_delta = max_delta.max(delta);
    }
    println!(
        "max |delta| between the produced and today's model on {} golden images: {max_delta:e}",
        images.len()
    );
    assert!(max_delta <= 1e-6, "max |delta| {max_delta:e} > 1e-6");
}

/// `python -m http.server` on a free loopback port, serving one folder; killed on drop.
struct FileServer {
    child: Child,
    port: u16,
}

impl FileServer {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(converter_python())
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python -m http.server");
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            panic!("http.server did not report its port: {line:?}");
        };
        Self { child, port }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn from_source_downloads_the_pinned_file_and_checks_its_sha256() {
    let served = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(local_source()).unwrap();
    std::fs::write(served.path().join(SOURCE_NAME), &bytes).unwrap();
    let mut tampered = bytes.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 1;
    std::fs::write(served.path().join("tampered.tflite"), &tampered).unwrap();
    let server = FileServer::start(served.path());
    let out_dir = tempfile::tempdir().unwrap();

    // The download path: fetched, checked against the pinned sha256, converted.
    let out = out_dir.path().join("downloaded.onnx");
    let output = get_model(
        &["--from-source", "--out", out.to_str().unwrap()],
        &[("MODEL_SOURCE_URL", &server.url(SOURCE_NAME))],
    );
    assert!(
        output.status.success(),
        "download path: {}",
        describe(&output)
    );
    assert_eq!(sha256_of(&out), pinned_sha256());
    // Deterministic: the same bytes as the conversion of the local copy.
    assert!(std::fs::read(&out).unwrap() == std::fs::read(produced()).unwrap());

    // A file that is not the pinned source is refused before any conversion, and nothing is
    // written.
    let refused = out_dir.path().join("tampered.onnx");
    let output = get_model(
        &["--from-source", "--out", refused.to_str().unwrap()],
        &[("MODEL_SOURCE_URL", &server.url("tampered.tflite"))],
    );
    assert!(
        !output.status.success(),
        "tampered source accepted: {}",
        describe(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sha256 mismatch"), "{}", describe(&output));
    assert!(!refused.exists());

    // A download that fails (404) fails the script.
    let output = get_model(
        &["--from-source", "--out", refused.to_str().unwrap()],
        &[("MODEL_SOURCE_URL", &server.url("missing.tflite"))],
    );
    assert!(
        !output.status.success(),
        "404 accepted: {}",
        describe(&output)
    );
    assert!(!refused.exists());
    // No temporary file is left beside the output.
    let left: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("downloaded.onnx")]);
}
