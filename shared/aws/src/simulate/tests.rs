use super::*;

#[test]
fn a_small_simulation_runs_every_stage_and_counts_its_requests() {
    let dir = tempfile::tempdir().unwrap();
    let options = SimulationOptions {
        images: 2_500,
        shard_size: 1_000,
        dim: 64,
        labels: 7,
        k: 5,
        featurizer_concurrency: 2,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(simulate(&options, dir.path())).unwrap();
    assert_eq!(report.shards, 3);
    let [split, featurize, reduce] = &report.stages[..] else {
        panic!("three stages: {:?}", report.stages)
    };
    // The splitter lists 3 pages of keys and sends one message per shard.
    assert_eq!(split.usage.messages, 3);
    assert!(split.usage.s3_list >= 3, "{split:?}");
    // Each featurizer fetches its images, reads the header and its own list only.
    assert_eq!(featurize.invocations, 3);
    assert!(featurize.usage.s3_get >= 2_500, "{featurize:?}");
    assert!(
        featurize.max_invocation_read_bytes < report.manifest_bytes + 200 * 1_000,
        "a featurizer reads O(its shard): {featurize:?}"
    );
    assert_eq!(featurize.usage.messages, 1, "one reduce request");
    assert!(reduce.usage.bytes_read > 0);
    // Statistics: count, mean and a 64 x 64 co-moment per shard.
    assert!(report.stats_bytes_per_image > 0.0);
    assert!(report.feature_bytes_per_image > 64.0 * 4.0 * 0.9);
    assert!(report.cumulative_explained_variance > 0.0);
    let summary: Summary = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("runs")
                .join(report_run_id(dir.path()))
                .join("summary.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (summary.images, summary.rows, summary.errors),
        (2_500, 2_500, 0)
    );
    // The sweep plot draws every measured point (3 stages + 2 architectures per run).
    let svg = sweep_svg(&[report.clone(), report], 10_000).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
    assert_eq!(
        svg.matches("<circle").count(),
        2 * (3 + 2),
        "plus no legend circles"
    );
}

#[test]
fn linear_fit_recovers_a_line() {
    let (a, b) = linear_fit(&[(1.0, 5.0), (2.0, 7.0), (4.0, 11.0)]);
    assert!(
        (a - 3.0).abs() < 1e-12 && (b - 2.0).abs() < 1e-12,
        "{a} {b}"
    );
}

fn report_run_id(folder: &Path) -> String {
    std::fs::read_dir(folder.join("runs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n != "requests")
        .unwrap()
}
