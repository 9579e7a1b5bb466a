//! The run report (`runs/<run>/report.html`), `featurize report`, `status --watch` and the
//! gentler k: a folder with fewer images than k runs with k clamped.
//!
//! The report is parsed with html5ever (scraper), which must report no parse error; its
//! charts are counted (one SVG circle per scatter point, every label in the legend), its
//! thumbnails decoded from base64 as JPEG, and the images it calls nearest to each label's
//! centroid checked against centroids computed here from `Results_PCA`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use base64::Engine as _;
use pipeline::batch::summary::Summary;
use pipeline::manifest::RunRequest;
use pipeline::parquet_io::{read_rows, Dataset, VectorRow};
use pipeline::ports::store::Bytes;
use scraper::{Html, Selector};

use crate::aws::{endpoint, request_json, summary_of, Stack};
use crate::common::*;
use pipeline::ports::store::ObjectStore;

fn sel(css: &str) -> Selector {
    Selector::parse(css).unwrap()
}

fn featurize() -> Command {
    Command::new(env!("CARGO_BIN_EXE_featurize"))
}

fn pca_rows(output: &Path, summary: &Summary) -> Vec<VectorRow> {
    (0..summary.shards)
        .flat_map(|shard| {
            let part = std::fs::read(output.join(format!(
                "Results_PCA/{}/part-{shard:05}.parquet",
                summary.run_id
            )))
            .unwrap();
            read_rows(Dataset::Pca, Bytes::from(part)).unwrap()
        })
        .collect()
}

fn parse(html: &str) -> Html {
    let doc = Html::parse_document(html);
    assert!(
        doc.errors.is_empty(),
        "the report is not valid HTML: {:?}",
        doc.errors
    );
    doc
}

/// Decodes a thumbnail `<img>`: a base64 JPEG of at most 64 pixels a side.
fn decode_thumbnail(img: scraper::ElementRef<'_>) -> image::DynamicImage {
    let src = img.value().attr("src").expect("src");
    let data = src
        .strip_prefix("data:image/jpeg;base64,")
        .unwrap_or_else(|| panic!("not an inline JPEG: {}", &src[..src.len().min(60)]));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64");
    let image =
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).expect("a JPEG");
    assert!(image.width() <= 64 && image.height() <= 64 && image.width() > 0);
    assert_eq!(
        (image.width().to_string(), image.height().to_string()),
        (
            img.value().attr("width").unwrap().to_string(),
            img.value().attr("height").unwrap().to_string()
        )
    );
    image
}

/// Everything the report must hold, checked against the run's own outputs.
fn check_report(html: &str, output: &Path, summary: &Summary, expected_error_kinds: &[&str]) {
    let doc = parse(html);
    assert!(
        !html.contains("src=\"http") && !html.contains("<link") && !html.contains("<script"),
        "self-contained: no external resources"
    );
    let rows = pca_rows(output, summary);
    assert_eq!(rows.len(), summary.rows);
    let labels: BTreeSet<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    check_scatter(&doc, &rows, &labels);

    // Explained variance, with the k mark.
    let variance = doc
        .select(&sel("figure#variance svg"))
        .next()
        .expect("variance chart");
    let text: String = variance.text().collect();
    assert!(text.contains(&format!("k = {}", summary.k)), "{text}");

    let mut thumbnails = check_nearest(&doc, &rows, &labels, summary.k);
    // Outliers: 12 images, each with its thumbnail.
    let outliers: Vec<_> = doc.select(&sel("#outliers .cell")).collect();
    assert_eq!(outliers.len(), 12.min(rows.len()));
    for cell in &outliers {
        let img = cell.select(&sel("img")).next().expect("outlier thumbnail");
        decode_thumbnail(img);
        thumbnails += 1;
    }
    let info = summary.report.as_ref().expect("summary records the report");
    assert!(
        thumbnails >= info.thumbnails,
        "{thumbnails} img, {} built",
        info.thumbnails
    );
    check_stages(&doc);
    check_errors(&doc, expected_error_kinds);

    // Parameters and cost.
    let params: String = doc
        .select(&sel("#parameters"))
        .next()
        .expect("parameters")
        .text()
        .collect();
    assert!(
        params.contains("image glob") && params.contains("max error rate"),
        "{params}"
    );
    assert!(html.contains("per 1,000 images"), "a cost estimate");
}

/// The scatter: one circle per row (below the sampling limit), every label in the legend,
/// the points spread along PC1.
fn check_scatter(doc: &Html, rows: &[VectorRow], labels: &BTreeSet<&str>) {
    let scatter = doc
        .select(&sel("figure#scatter svg"))
        .next()
        .expect("scatter chart");
    let circles = scatter.select(&sel("circle")).count();
    assert_eq!(circles, rows.len(), "one point per row");
    let figure = doc.select(&sel("figure#scatter")).next().unwrap();
    assert_eq!(
        figure.value().attr("data-points"),
        Some(rows.len().to_string().as_str())
    );
    assert_eq!(
        figure.value().attr("data-labels"),
        Some(labels.len().to_string().as_str())
    );
    let texts: BTreeSet<String> = scatter
        .select(&sel("text"))
        .map(|t| t.text().collect::<String>().trim().to_string())
        .collect();
    for label in labels {
        assert!(
            texts.contains(*label),
            "label {label} in the legend: {texts:?}"
        );
    }
    // Point positions: plotters maps PC1 to x, so the circles' x order is PC1's.
    let mut xs: Vec<f64> = scatter
        .select(&sel("circle"))
        .map(|c| c.value().attr("cx").unwrap().parse().unwrap())
        .collect();
    xs.sort_by(f64::total_cmp);
    assert!(xs.first() < xs.last(), "points spread along PC1");
}

/// Thumbnails nearest each label's centroid, checked against centroids computed here.
/// Returns the number of thumbnails decoded.
fn check_nearest(doc: &Html, rows: &[VectorRow], labels: &BTreeSet<&str>, k: usize) -> usize {
    let mut centroids: BTreeMap<&str, (usize, Vec<f64>)> = BTreeMap::new();
    for r in rows {
        let (n, sum) = centroids
            .entry(r.label.as_str())
            .or_insert_with(|| (0, vec![0.0; k]));
        *n += 1;
        for (s, v) in sum.iter_mut().zip(&r.values) {
            *s += f64::from(*v);
        }
    }
    let cells: Vec<_> = doc.select(&sel("#nearest .cell")).collect();
    assert_eq!(cells.len(), labels.len(), "a cell per label");
    let mut thumbnails = 0;
    for cell in cells {
        let label = cell.value().attr("data-label").unwrap();
        let (n, sum) = &centroids[label];
        let centroid: Vec<f64> = sum.iter().map(|s| s / *n as f64).collect();
        let mut by_distance: Vec<(f64, &str)> = rows
            .iter()
            .filter(|r| r.label == label)
            .map(|r| {
                let d: f64 = r
                    .values
                    .iter()
                    .zip(&centroid)
                    .map(|(&v, c)| (f64::from(v) - c).powi(2))
                    .sum();
                (d.sqrt(), r.path.as_str())
            })
            .collect();
        by_distance.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        let want: Vec<&str> = by_distance.iter().take(3).map(|d| d.1).collect();
        let imgs: Vec<_> = cell.select(&sel("img")).collect();
        let got: Vec<&str> = imgs
            .iter()
            .map(|i| i.value().attr("alt").unwrap())
            .collect();
        assert_eq!(got, want, "the 3 images nearest {label}'s centroid");
        for img in imgs {
            decode_thumbnail(img);
            thumbnails += 1;
        }
    }
    thumbnails
}

/// Time per stage and throughput.
fn check_stages(doc: &Html) {
    let stages: String = doc
        .select(&sel("figure#stages svg text"))
        .map(|t| t.text().collect::<String>())
        .collect::<Vec<_>>()
        .join("|");
    for stage in [
        "listing",
        "fetch",
        "decode",
        "resize",
        "inference",
        "write",
        "reduce",
    ] {
        assert!(stages.contains(stage), "stage {stage} in {stages}");
    }
    assert!(
        doc.select(&sel("figure#throughput svg")).next().is_some(),
        "throughput chart"
    );
}

/// Errors grouped by kind, with examples.
fn check_errors(doc: &Html, expected_error_kinds: &[&str]) {
    let kinds: BTreeMap<String, String> = doc
        .select(&sel("#errors tr[data-kind]"))
        .map(|tr| {
            let count = tr
                .select(&sel("td.n"))
                .next()
                .unwrap()
                .text()
                .collect::<String>();
            (tr.value().attr("data-kind").unwrap().to_string(), count)
        })
        .collect();
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for kind in expected_error_kinds {
        *want.entry(kind.to_string()).or_default() += 1;
    }
    let want: BTreeMap<String, String> =
        want.into_iter().map(|(k, n)| (k, n.to_string())).collect();
    assert_eq!(kinds, want);
}

fn fruit_folder(classes: usize, per_class: usize) -> (tempfile::TempDir, usize) {
    let dir = tempfile::tempdir().unwrap();
    let files = fruit_images(classes, per_class);
    write_tree(dir.path(), &files);
    (dir, files.len())
}

#[test]
fn the_report_is_valid_html_with_every_point_label_and_thumbnail() {
    let (input, images) = fruit_folder(4, 12);
    // Two bad files, so the report has errors to group.
    write_tree(
        input.path(),
        &[
            ("bad/empty.jpg".to_string(), Vec::new()),
            ("bad/note.png".to_string(), b"not a png".to_vec()),
        ],
    );
    let output = tempfile::tempdir().unwrap();
    let report = run_local_blocking(
        input.path(),
        output.path(),
        RunRequest {
            k: Some(5),
            shard_size: Some(16),
            max_error_rate: Some(0.5),
            ..Default::default()
        },
    );
    let summary = report.summary;
    assert_eq!(
        (summary.images, summary.rows, summary.errors),
        (images + 2, images, 2)
    );
    let info = summary.report.clone().expect("report info in summary.json");
    let path = output.path().join(&info.key);
    assert_eq!(info.key, format!("runs/{}/report.html", summary.run_id));
    let html = std::fs::read_to_string(&path).unwrap();
    assert_eq!(html.len(), info.bytes);
    assert_eq!(info.points, images);
    assert_eq!(info.thumbnails, 4 * 3 + 12 - overlap(&html));
    assert!(
        info.build_s > 0.0 && info.build_s < 30.0,
        "{}",
        info.build_s
    );
    check_report(&html, output.path(), &summary, &["empty", "unsupported"]);

    // `featurize report` regenerates it from the stored outputs and the input it is given:
    // the same points and picks.
    std::fs::remove_file(&path).unwrap();
    let out = featurize()
        .args(["report", "--run", &summary.run_id, "--output"])
        .arg(output.path())
        .arg("--input")
        .arg(input.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.trim(), path.display().to_string());
    let again = std::fs::read_to_string(&path).unwrap();
    check_report(&again, output.path(), &summary, &["empty", "unsupported"]);
    let picks = |html: &str| -> Vec<String> {
        Html::parse_document(html)
            .select(&sel("#nearest img, #outliers img"))
            .map(|i| i.value().attr("alt").unwrap().to_string())
            .collect()
    };
    assert_eq!(
        picks(&again),
        picks(&html),
        "the same thumbnails, whoever builds it"
    );

    // An unknown run is a clear error.
    let out = featurize()
        .args(["report", "--run", "run-nope", "--output"])
        .arg(output.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no run run-nope"), "{err}");
}

/// Thumbnails shown twice (a nearest image that is also an outlier) are built once.
fn overlap(html: &str) -> usize {
    let doc = Html::parse_document(html);
    let nearest: BTreeSet<String> = doc
        .select(&sel("#nearest img"))
        .map(|i| i.value().attr("alt").unwrap().to_string())
        .collect();
    doc.select(&sel("#outliers img"))
        .filter(|i| nearest.contains(i.value().attr("alt").unwrap()))
        .count()
}

#[test]
fn a_folder_with_fewer_images_than_k_runs_with_k_clamped() {
    // 30 images, the default k = 50: featurized, and k = min(50, 30 - 1, 1280) = 29 fitted.
    let (input, images) = fruit_folder(3, 10);
    assert_eq!(images, 30);
    let output = tempfile::tempdir().unwrap();
    let out = featurize()
        .args(["run", "-q", "-j", "2", "--input"])
        .arg(input.path())
        .arg("--output")
        .arg(output.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .contains("warning: k = 50 asked for, but 30 rows of dimension 1280 allow at most 29"),
        "{stdout}"
    );
    assert!(stdout.contains("PCA k = 29"), "{stdout}");
    let run_dir = std::fs::read_dir(output.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("summary.json").is_file())
        .unwrap();
    let summary: Summary =
        serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.status, "succeeded");
    assert_eq!((summary.k, summary.k_requested), (29, Some(50)));
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    assert_eq!(summary.explained_variance_ratio.len(), 29);
    let rows = pca_rows(output.path(), &summary);
    assert_eq!(rows.len(), 30);
    assert!(rows.iter().all(|r| r.values.len() == 29));
    // The warning is in the report too.
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    let doc = parse(&html);
    let warnings: Vec<String> = doc
        .select(&sel("p.warn"))
        .map(|p| p.text().collect())
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("fitted k = 29")),
        "{warnings:?}"
    );

    // One image: no PCA is possible, refused before anything is featurized.
    let single = tempfile::tempdir().unwrap();
    write_tree(single.path(), &fruit_images(1, 1));
    let out = featurize()
        .args(["run", "-q", "--input"])
        .arg(single.path())
        .arg("--output")
        .arg(output.path().join("single"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a PCA needs at least 2"), "{err}");
}

/// Waits for a spawned run's manifest: its run id.
fn wait_for_manifest(output: &Path, run: &mut std::process::Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let found = std::fs::read_dir(output.join("runs")).ok().and_then(|dir| {
            dir.filter_map(|e| e.ok())
                .find(|e| e.path().join("manifest.json").is_file())
                .map(|e| e.file_name().to_string_lossy().to_string())
        });
        if let Some(id) = found {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "the run never wrote its manifest"
        );
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended before its manifest"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `status --watch --json` on a running run until it stops by itself (it must exit 0, and
/// the run succeed): the JSON lines it printed.
fn watch_json(
    output: &Path,
    run_id: &str,
    run: &mut std::process::Child,
) -> Vec<serde_json::Value> {
    // Its output goes to files: a pipe nobody reads while it runs would fill and block it.
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("out"), logs.path().join("err"));
    let mut watch = featurize()
        .args([
            "status",
            "--watch",
            "--json",
            "--interval",
            "0.5",
            "--run",
            run_id,
            "--output",
        ])
        .arg(output)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let code = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            watch.kill().unwrap();
            run.kill().unwrap();
            panic!("status --watch did not stop");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        code,
        Some(0),
        "{}",
        std::fs::read_to_string(&err_path).unwrap()
    );
    let run_status = run.wait().unwrap();
    assert!(run_status.success());
    std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn status_watch_follows_a_run_and_stops_when_it_completes() {
    let (input, images) = fruit_folder(3, 16);
    let output = tempfile::tempdir().unwrap();
    let mut run = featurize()
        .args([
            "run",
            "-q",
            "-j",
            "1",
            "--k",
            "5",
            "--shard-size",
            "8",
            "--input",
        ])
        .arg(input.path())
        .arg("--output")
        .arg(output.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the manifest, then watch.
    let run_id = wait_for_manifest(output.path(), &mut run);
    let lines = watch_json(output.path(), &run_id, &mut run);
    assert!(!lines.is_empty());
    let last = lines.last().unwrap();
    assert_eq!(last["reduced"], true, "stops only once the run is complete");
    assert_eq!(last["images_done"], images);
    assert_eq!(last["shards"], images.div_ceil(8));
    assert!(last["images_per_second"].as_f64().unwrap() > 0.0);
    // Every earlier refresh was of an unfinished run, with progress never going back.
    let mut done = 0;
    for line in &lines[..lines.len() - 1] {
        assert_eq!(line["reduced"], false);
        let now = line["images_done"].as_u64().unwrap();
        assert!(now >= done);
        done = now;
    }

    // On a finished run, the text view prints its line once and stops at once.
    let out = featurize()
        .args(["status", "--watch", "--run", &run_id, "--output"])
        .arg(output.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.contains(": complete")).count(),
        1,
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "shards {} done / 0 pending / 0 failed",
            images.div_ceil(8)
        )),
        "{text}"
    );
}

/// The Lambda path (splitter, featurizers, reducer on moto): 30 images with the default
/// k = 50 fit k = 29; the reducer writes the report, thumbnails read from the bucket; and
/// `featurize report --bucket` prints a presigned URL that serves it.
#[test]
fn on_the_lambda_path_k_is_clamped_and_the_report_is_served_presigned() {
    let files = fruit_images(3, 10);
    runtime().block_on(async {
        let stack = Stack::new("report").await;
        stack.upload("images/", &files).await;
        let request = RunRequest {
            input_prefix: "images/".into(),
            shard_size: Some(8),
            ..Default::default()
        };
        let run = stack.submit("small", &request_json(&request)).await.remove(0);
        assert!(run.created, "{run:?}");
        assert_eq!((run.images, run.shards), (30, 4));
        stack.pump_shards(stack.store(), 2).await;
        assert_eq!(stack.pump_reduce_with_images().await, 1);
        let summary = summary_of(&stack.store(), &run.run_id).await;
        assert_eq!(summary.status, "succeeded");
        assert_eq!((summary.k, summary.k_requested), (29, Some(50)));
        assert!(summary.warnings[0].contains("fitted k = 29"), "{:?}", summary.warnings);
        let info = summary.report.clone().expect("report");
        let html = String::from_utf8(stack.store().get(&info.key).await.unwrap().to_vec()).unwrap();
        assert_eq!(html.len(), info.bytes);
        let doc = parse(&html);
        assert_eq!(
            doc.select(&sel("figure#scatter svg circle")).count(),
            30,
            "every row a point"
        );
        let imgs: Vec<_> = doc.select(&sel("#nearest img, #outliers img")).collect();
        assert_eq!(imgs.len(), 3 * 3 + 12, "thumbnails read from the bucket");
        for img in imgs {
            decode_thumbnail(img);
        }

        let out = featurize()
            .args(["report", "--run", &run.run_id, "--bucket", &stack.bucket])
            .args(["--endpoint-url", &endpoint()])
            .envs([
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_REGION", "us-east-1"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(
            url.starts_with(&endpoint()) && url.contains(&info.key) && url.contains("X-Amz-Signature="),
            "{url}"
        );
        let served = run_python(
            "import sys, urllib.request\nsys.stdout.write(str(len(urllib.request.urlopen(sys.argv[1]).read())))",
            &[&url],
        );
        assert_eq!(served.trim(), html.len().to_string(), "the presigned URL serves the report");
    });
}

/// An output folder received from elsewhere may name any folder as its input: `report` and
/// `resume` read the folder the user names (`--input`), say when the manifest names another,
/// and without one `report` has no thumbnails and `resume` refuses, naming the recorded one.
#[test]
fn report_and_resume_read_the_input_the_user_names_not_the_manifests() {
    let (input, _) = fruit_folder(2, 4);
    let (elsewhere, _) = fruit_folder(1, 2);
    let output = tempfile::tempdir().unwrap();
    let report = run_local_blocking(
        input.path(),
        output.path(),
        RunRequest {
            k: Some(2),
            ..Default::default()
        },
    );
    let run = report.summary.run_id.clone();
    // The received folder's manifest names another folder.
    let manifest_path = output.path().join(format!("runs/{run}/manifest.json"));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let recorded = elsewhere.path().display().to_string();
    manifest["input"]["uri"] = serde_json::Value::String(recorded.clone());
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let report_html = output.path().join(format!("runs/{run}/report.html"));
    let thumbnails = || {
        let html = std::fs::read_to_string(&report_html).unwrap();
        Html::parse_document(&html)
            .select(&sel("#nearest img, #outliers img"))
            .count()
    };
    let featurize_quiet = |args: &[&str]| {
        let out = featurize()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let o = output.path().to_str().unwrap();
    let i = input.path().to_str().unwrap();
    let (code, text) = featurize_quiet(&["report", "--run", &run, "--output", o, "--regenerate"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no --input"), "{text}");
    assert_eq!(thumbnails(), 0, "nothing is read from the recorded folder");

    let (code, text) = featurize_quiet(&[
        "report",
        "--run",
        &run,
        "--output",
        o,
        "--input",
        i,
        "--regenerate",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("manifest names the input {recorded}")),
        "{text}"
    );
    assert!(thumbnails() > 0, "thumbnails from the named folder");

    let model = model_path();
    let m = model.to_str().unwrap();
    let (code, text) = featurize_quiet(&[
        "resume", "--run", &run, "--output", o, "--model", m, "-j", "1",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("give --input DIR") && text.contains(&recorded),
        "{text}"
    );
    let (code, text) = featurize_quiet(&[
        "resume", "--run", &run, "--output", o, "--input", i, "--model", m, "-j", "1",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("manifest names the input {recorded}")),
        "{text}"
    );
}
