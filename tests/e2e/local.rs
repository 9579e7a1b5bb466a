//! The embedded pipeline: fidelity against the independent Python reference, PCA against the
//! golden fit, bad inputs and their accounting, and the output read back by pyarrow.

use std::collections::BTreeMap;
use std::path::Path;

use engine::pca::PcaOptions;
use engine::pca::{fit, PcaModel};
use engine::stats::ShardStats;
use pipeline::batch::inference::{featurize_images, ImageOutcome};
use pipeline::manifest::{ImageError, RunRequest};
use pipeline::parquet_io::{read_rows, Dataset};
use pipeline::ports::store::Bytes;

use crate::common::*;

fn golden_dir() -> std::path::PathBuf {
    shared_dir().join("golden/seed72")
}

fn golden_features() -> Vec<pipeline::parquet_io::VectorRow> {
    let bytes = std::fs::read(golden_dir().join("features.parquet")).unwrap();
    read_rows(Dataset::Features, Bytes::from(bytes)).unwrap()
}

#[test]
fn features_match_the_golden_reference() {
    let golden = golden_features();
    assert_eq!(golden.len(), 72);
    let data = shared_dir().join("data/fruits-360");
    let encoded: Vec<Result<Bytes, String>> = golden
        .iter()
        .map(|row| Ok(Bytes::from(std::fs::read(data.join(&row.path)).unwrap())))
        .collect();
    let model = model();
    let batch = featurize_images(&model, &encoded, 2, 50_000_000, None, None).unwrap();
    let (mut min_cos, mut sum_cos, mut max_delta) = (f64::MAX, 0.0, 0f32);
    for (row, outcome) in golden.iter().zip(&batch.outcomes) {
        let ImageOutcome::Features(ours) = outcome else {
            panic!("{} failed: {outcome:?}", row.path)
        };
        assert_eq!(ours.len(), row.values.len());
        let cos = cosine(ours, &row.values);
        min_cos = min_cos.min(cos);
        sum_cos += cos;
        for (a, b) in ours.iter().zip(&row.values) {
            max_delta = max_delta.max((a - b).abs());
        }
    }
    let mean_cos = sum_cos / golden.len() as f64;
    println!(
        "golden fidelity: cosine min {min_cos:.7} mean {mean_cos:.7}, max |delta| {max_delta:.2e}"
    );
    assert!(min_cos >= 0.9999, "min cosine {min_cos}");
    assert!(max_delta <= 1e-2, "max |delta| {max_delta}");
}

/// The fidelity bar: whatever engine runs the model (tract, or the native executor
/// with each instruction set this CPU has), the golden images keep cosine >= 0.9999998 and
/// the native engines' max |delta| stays within 1e-3 of tract's.
#[test]
fn golden_fidelity_holds_on_every_engine() {
    use engine::executor::Isa;
    use engine::model::{Engine, LoadOptions, Model, ModelSpec};
    let golden = golden_features();
    let data = shared_dir().join("data/fruits-360");
    let encoded: Vec<Result<Bytes, String>> = golden
        .iter()
        .map(|row| Ok(Bytes::from(std::fs::read(data.join(&row.path)).unwrap())))
        .collect();
    let path = model_path();
    let engines =
        std::iter::once(Engine::Tract).chain(Isa::all_available().into_iter().map(Engine::Native));
    let mut tract_delta = None;
    for engine in engines {
        let options = LoadOptions {
            engine,
            ..Default::default()
        };
        let model = Model::load_with(&path, ModelSpec::mobilenet_v2(), options).unwrap();
        let batch = featurize_images(&model, &encoded, 2, 50_000_000, None, None).unwrap();
        let (mut min_cos, mut max_delta) = (f64::MAX, 0f32);
        for (row, outcome) in golden.iter().zip(&batch.outcomes) {
            let ImageOutcome::Features(ours) = outcome else {
                panic!("{} failed: {outcome:?}", row.path)
            };
            min_cos = min_cos.min(cosine(ours, &row.values));
            for (a, b) in ours.iter().zip(&row.values) {
                max_delta = max_delta.max((a - b).abs());
            }
        }
        println!(
            "golden fidelity, {:16} cosine min {min_cos:.9}, max |delta| {max_delta:.3e}",
            model.engine_name()
        );
        assert!(
            min_cos >= 0.9999998,
            "{}: min cosine {min_cos}",
            model.engine_name()
        );
        match tract_delta {
            None => tract_delta = Some(max_delta),
            Some(t) => assert!(
                max_delta <= t + 1e-3,
                "{}: max |delta| {max_delta} vs tract's {t}",
                model.engine_name()
            ),
        }
    }
}

#[test]
fn pca_matches_the_golden_fit() {
    let golden = golden_features();
    let dim = golden[0].values.len();
    // Fit from statistics merged over uneven shards, as the reducer does.
    let mut merged = ShardStats::empty(dim);
    for chunk in golden.chunks(17) {
        let rows: Vec<&[f32]> = chunk.iter().map(|r| r.values.as_slice()).collect();
        merged.merge(&ShardStats::from_rows(&rows, dim)).unwrap();
    }
    let ours = fit(
        &merged,
        &PcaOptions {
            k: 50,
            ..Default::default()
        },
    )
    .unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden_dir().join("pca_model.json")).unwrap())
            .unwrap();
    let ratio: Vec<f64> =
        serde_json::from_value(reference["explained_variance_ratio"].clone()).unwrap();
    let components: Vec<Vec<f64>> =
        serde_json::from_value(reference["components"].clone()).unwrap();
    assert_eq!(ours.k, ratio.len());
    let max_ratio_delta = ours
        .explained_variance_ratio
        .iter()
        .zip(&ratio)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let min_abs_cos = (0..10)
        .map(|i| {
            ours.components[i]
                .iter()
                .zip(&components[i])
                .map(|(a, b)| a * b)
                .sum::<f64>()
                .abs()
        })
        .fold(f64::MAX, f64::min);
    println!(
        "golden PCA: max |ratio delta| {max_ratio_delta:.2e}, top-10 min |cos| {min_abs_cos:.9}, cumulative {:.4}",
        ours.cumulative_explained_variance
    );
    assert!(
        max_ratio_delta <= 1e-6,
        "explained_variance_ratio differs by {max_ratio_delta}"
    );
    assert!(
        min_abs_cos >= 0.9999,
        "top-10 components: min |cos| {min_abs_cos}"
    );

    // Projections of the top 10 components agree up to each component's sign.
    let projected = read_rows(
        Dataset::Pca,
        Bytes::from(std::fs::read(golden_dir().join("pca.parquet")).unwrap()),
    )
    .unwrap();
    for (row, reference_row) in golden.iter().zip(&projected) {
        assert_eq!(row.path, reference_row.path);
        let mine = ours.project(&row.values);
        for c in 0..10 {
            let sign = ours.components[c]
                .iter()
                .zip(&components[c])
                .map(|(a, b)| a * b)
                .sum::<f64>()
                .signum() as f32;
            let delta = (mine[c] - sign * reference_row.values[c]).abs();
            assert!(
                delta <= 1e-3 * (1.0 + reference_row.values[c].abs()),
                "{} component {c}: {delta}",
                row.path
            );
        }
    }
}

fn bad_input_folder() -> (tempfile::TempDir, usize, BTreeMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<(String, Vec<u8>)> = fruit_images(3, 6);
    let real = files[0].1.clone();
    let mut expected_errors = BTreeMap::new();
    for (name, bytes, kind) in bad_files(&real) {
        files.push((name.to_string(), bytes));
        expected_errors.insert(name.to_string(), kind.to_string());
    }
    for (name, bytes) in unusual_valid_images() {
        files.push((name.to_string(), bytes));
    }
    files.push(("Pommé rouge/a b ü.JPG".to_string(), real));
    files.push((
        "notes/readme.txt".to_string(),
        b"not selected by the glob".to_vec(),
    ));
    write_tree(dir.path(), &files);
    let images = files.len() - 1;
    (dir, images, expected_errors)
}

fn request(k: usize, shard_size: usize, max_error_rate: f64) -> RunRequest {
    RunRequest {
        k: Some(k),
        shard_size: Some(shard_size),
        max_pixels: Some(50_000),
        max_error_rate: Some(max_error_rate),
        ..Default::default()
    }
}

#[test]
fn bad_inputs_are_listed_and_nothing_is_lost() {
    let (input, images, expected_errors) = bad_input_folder();
    let output = tempfile::tempdir().unwrap();
    let report = run_local_blocking(input.path(), output.path(), request(5, 8, 0.5));
    let summary = &report.summary;
    assert_eq!(summary.status, "succeeded");
    assert_eq!(
        summary.images, images,
        "every selected file is an input image"
    );
    assert_eq!(summary.errors, expected_errors.len());
    assert_eq!(
        summary.rows + summary.errors,
        summary.images,
        "images in = rows + errors"
    );
    assert_eq!(summary.shards, images.div_ceil(8));
    assert_eq!(summary.k, 5);

    let run = &summary.run_id;
    assert_errors_listed(output.path(), run, &expected_errors);

    // Rows: every non-failed image exactly once, with its label; PCA rows the same paths.
    let (rows, pca_rows) = read_run_parts(output.path(), run, summary.shards);
    assert_eq!(rows.len(), summary.rows);
    assert!(rows
        .iter()
        .any(|r| r.path == "Pommé rouge/a b ü.JPG" && r.label == "Pommé rouge"));
    assert!(rows
        .iter()
        .any(|r| r.path == "odd formats/deep 16-bit.png" && r.label == "odd formats"));
    assert!(rows
        .iter()
        .all(|r| r.values.len() == 1280 && !expected_errors.contains_key(&r.path)));
    assert_eq!(
        pca_rows.iter().map(|r| &r.path).collect::<Vec<_>>(),
        rows.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(pca_rows.iter().all(|r| r.values.len() == 5));
    for marker in ["Results", "Results_PCA"] {
        assert!(output
            .path()
            .join(format!("{marker}/{run}/_SUCCESS"))
            .is_file());
    }
    let model: PcaModel = serde_json::from_slice(
        &std::fs::read(output.path().join(format!("runs/{run}/pca_model.json"))).unwrap(),
    )
    .unwrap();
    let first_projection = model.project(&rows[0].values);
    assert_eq!(first_projection, pca_rows[0].values);

    // pyarrow reads each folder as one dataset, with the schema we promise.
    assert_pyarrow_reads_the_run(output.path(), run, summary.rows, &rows);
}

/// Asserts that the run's error list names exactly `expected` (path -> kind), each error
/// with a reason and the label `bad`.
fn assert_errors_listed(output: &Path, run: &str, expected: &BTreeMap<String, String>) {
    let errors: Vec<ImageError> = serde_json::from_slice(
        &std::fs::read(output.join(format!("runs/{run}/errors.json"))).unwrap(),
    )
    .unwrap();
    let got: BTreeMap<String, String> = errors
        .iter()
        .map(|e| {
            (
                e.path.clone(),
                serde_json::to_value(e.kind)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(&got, expected, "error kinds: {errors:#?}");
    assert!(errors
        .iter()
        .all(|e| !e.reason.is_empty() && e.label == "bad"));
}

/// The rows of the run's `Results` and `Results_PCA` parts, shard by shard.
fn read_run_parts(
    output: &Path,
    run: &str,
    shards: usize,
) -> (
    Vec<pipeline::parquet_io::VectorRow>,
    Vec<pipeline::parquet_io::VectorRow>,
) {
    let mut rows = Vec::new();
    let mut pca_rows = Vec::new();
    for shard in 0..shards {
        let part =
            std::fs::read(output.join(format!("Results/{run}/part-{shard:05}.parquet"))).unwrap();
        rows.extend(read_rows(Dataset::Features, Bytes::from(part)).unwrap());
        let part = std::fs::read(output.join(format!("Results_PCA/{run}/part-{shard:05}.parquet")))
            .unwrap();
        pca_rows.extend(read_rows(Dataset::Pca, Bytes::from(part)).unwrap());
    }
    (rows, pca_rows)
}

/// Asserts that pyarrow reads `Results` and `Results_PCA` of the run as one dataset each,
/// with the schema we promise: `summary_rows` rows, and the first (by path) of `rows`.
fn assert_pyarrow_reads_the_run(
    output: &Path,
    run: &str,
    summary_rows: usize,
    rows: &[pipeline::parquet_io::VectorRow],
) {
    let check = r#"
import sys, json, pyarrow.dataset as ds
out = {}
for name, column in (("Results", "features"), ("Results_PCA", "pca_features")):
    d = ds.dataset(sys.argv[1] + "/" + name + "/" + sys.argv[2], format="parquet")
    t = d.to_table().sort_by("path")
    f = t.schema.field(column)
    out[name] = {
        "rows": t.num_rows,
        "schema": [str(x.type) + ("" if x.nullable else " not null") for x in t.schema],
        "item_nullable": f.type.value_field.nullable,
        "first_path": t["path"][0].as_py(),
        "first": t[column][0].as_py(),
    }
print(json.dumps(out))
"#;
    let out = run_python(check, &[output.to_str().unwrap(), run]);
    let read: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let results = &read["Results"];
    assert_eq!(results["rows"], summary_rows);
    assert_eq!(results["schema"][0], "string not null");
    assert_eq!(results["schema"][1], "string not null");
    assert!(
        results["schema"][2]
            .as_str()
            .unwrap()
            .starts_with("list<element: float not null>"),
        "{}",
        results["schema"]
    );
    assert_eq!(results["item_nullable"], false);
    let mut sorted = rows.to_vec();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(results["first_path"].as_str().unwrap(), sorted[0].path);
    let first: Vec<f32> = serde_json::from_value(results["first"].clone()).unwrap();
    assert_eq!(first, sorted[0].values, "pyarrow reads the same vector");
    assert_eq!(read["Results_PCA"]["rows"], summary_rows);
    assert_eq!(read["Results_PCA"]["first"].as_array().unwrap().len(), 5);
}

#[test]
fn too_many_errors_fail_the_run_without_pca_and_rerun_is_idempotent() {
    let (input, _, _) = bad_input_folder();
    let output = tempfile::tempdir().unwrap();
    let run = |max_error_rate| {
        run_local_blocking(input.path(), output.path(), request(3, 16, max_error_rate))
    };
    let failed = run(0.1);
    assert_eq!(failed.summary.status, "failed");
    assert!(failed
        .summary
        .failure
        .as_deref()
        .unwrap()
        .contains("above max_error_rate"));
    let id = &failed.summary.run_id;
    assert!(!output
        .path()
        .join(format!("Results_PCA/{id}/_SUCCESS"))
        .exists());

    let first = run(0.5);
    assert_eq!(first.summary.status, "succeeded");
    assert!(first.split.created);
    let again = run(0.5);
    assert_eq!(
        again.split.run_id, first.split.run_id,
        "same input + options = same run"
    );
    assert!(!again.split.created && again.split.already_complete);
    assert_eq!(again.summary, first.summary);
}

#[test]
fn cli_reports_clear_errors_and_exit_codes() {
    let model_path = shared_dir().join("models/mobilenet_v2_features.onnx");
    let model = model_path.to_str().unwrap();
    // `featurize run --input I --output O --model M -q EXTRA...`: (exit code, stdout + stderr).
    let run = |input: &Path, output: &Path, model: &str, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
            .args([
                "run",
                "--input",
                input.to_str().unwrap(),
                "--output",
                output.to_str().unwrap(),
            ])
            .args(["--model", model, "-q"])
            .args(extra)
            .env("CI", "true")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let empty = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();

    let (code, text) = run(Path::new("/nonexistent/folder"), output.path(), model, &[]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("input folder /nonexistent/folder does not exist"),
        "{text}"
    );

    let (code, text) = run(empty.path(), output.path(), model, &[]);
    assert_eq!(code, Some(1));
    assert!(text.contains("no images under"), "{text}");

    let (code, text) = run(empty.path(), output.path(), "/no/model.onnx", &[]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("model file /no/model.onnx not found"),
        "{text}"
    );

    let (input, images, _) = bad_input_folder();
    let extra = [
        "--k",
        "4",
        "--max-pixels",
        "50000",
        "--max-error-rate",
        "0.5",
    ];
    let (code, text) = run(input.path(), output.path(), model, &extra);
    assert_eq!(code, Some(2), "some images failed: exit 2\n{text}");
    assert!(
        text.contains(&format!("images {images}  rows {}  errors 5", images - 5)),
        "{text}"
    );
}

/// A path or key with control characters (a terminal escape sequence) reaches the terminal
/// escaped, in the errors the CLI prints.
#[test]
fn control_characters_in_paths_are_escaped_in_cli_errors() {
    let output = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_featurize"))
        .args([
            "run",
            "--input",
            "/nonexistent/\u{1b}[2Jevil\u{7}",
            "--output",
        ])
        .arg(output.path())
        .args(["-q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "raw control characters: {stderr:?}"
    );
    assert!(
        stderr.contains("/nonexistent/\\u{1b}[2Jevil\\u{7}"),
        "{stderr}"
    );
}
