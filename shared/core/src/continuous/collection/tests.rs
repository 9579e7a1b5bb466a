//! Unit tests of the collection module as a whole: ingest (synthetic features) and refits on
//! a local store.

use std::collections::BTreeSet;

use bytes::Bytes;
use engine::pca::PcaOptions;
use engine::stats::RunningSums;

use super::*;
use crate::parquet_io::{self, Dataset};
use crate::ports::store::ObjectStore;

#[test]
fn collection_names_are_one_segment() {
    assert!(valid_collection("fruits-360"));
    assert!(!valid_collection(""));
    assert!(!valid_collection("a/b"));
    assert!(!valid_collection(".."));
}

use crate::test_util::block;

/// Ingest (synthetic features) → refit → changes → refit, on a local store: the view
/// holds exactly the live files, the running sums equal the statistics of the live rows,
/// redelivered events change nothing, and a refit racing on a stale pointer loses.
#[test]
fn refits_follow_changes_and_keep_one_row_per_live_file() {
    use crate::ports::queue::InProcessQueue;
    use crate::ports::store::FsStore;
    block(async {
        let dir = tempfile::tempdir().unwrap();
        let input = FsStore::new(dir.path().join("in"));
        let output = FsStore::new(dir.path().join("out"));
        let queue = InProcessQueue::new();
        let ingestor = synthetic_ingestor(input.clone(), output.clone(), &queue);
        let (keys, all) = seed_inbox(&input).await;
        let first = ingestor.ingest(&all).await.unwrap();
        assert_eq!((first.upserts, first.ignored), (8, 2));
        assert_eq!(queue.len(), 1, "one delayed refit message per collection");
        let options = k2();
        // Not quiet yet with a long quiet time.
        let patient = RefitOptions {
            quiet_ms: Some(3_600_000),
            ..options.clone()
        };
        assert!(matches!(
            refit(&output, &input, "inbox/", "c", &patient)
                .await
                .unwrap(),
            RefitOutcome::NotQuiet { .. }
        ));
        let RefitOutcome::Published(s1) = refit(&output, &input, "inbox/", "c", &options)
            .await
            .unwrap()
        else {
            panic!("not published")
        };
        assert_eq!((s1.rows, s1.added, s1.k), (8, 8, 2));
        let layout = CollectionLayout::new("c");
        let (stale_pointer, stale_etag) = read_current(&output, &layout).await.unwrap().unwrap();

        // Replace one, delete one, add an empty one; redeliver the first batch.
        let changed = change_inbox(&input, &keys).await;
        ingestor.ingest(&changed).await.unwrap();
        ingestor.ingest(&all).await.unwrap();
        let RefitOutcome::Published(s2) = refit(&output, &input, "inbox/", "c", &options)
            .await
            .unwrap()
        else {
            panic!("not published")
        };
        assert_eq!(
            (s2.rows, s2.replaced, s2.removed, s2.added),
            (8, 1, 1, 1),
            "{s2:?}"
        );
        assert_eq!(
            refit(&output, &input, "inbox/", "c", &options)
                .await
                .unwrap(),
            RefitOutcome::NothingToDo
        );
        // The view: exactly the live files, each once, with its current features.
        let (pointer, _) = read_current(&output, &layout).await.unwrap().unwrap();
        let rows = read_view(&output, &pointer).await;
        let mut paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
        paths.sort();
        let expected = live_paths_after_changes(&keys);
        // The empty file is featurized by the synthetic engine (no decoding): a row too.
        assert_eq!(
            paths,
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );
        let replaced = rows
            .iter()
            .find(|r| format!("inbox/c/{}", r.path) == keys[0])
            .unwrap();
        assert_eq!(
            replaced.values,
            crate::batch::inference::synthetic_features("l0/0.jpg", 6)
        );
        // The running sums are the statistics of exactly these rows.
        assert_sums_are_the_statistics_of(&output, &layout, &pointer.snapshot, &rows).await;
        assert!(
            list_deltas(&output, &layout).await.unwrap().is_empty(),
            "deltas consumed"
        );
        // A pointer update from a stale refit is refused.
        assert!(!output
            .put_if_match(
                &layout.current(),
                serde_json::to_vec(&stale_pointer).unwrap().into(),
                &stale_etag
            )
            .await
            .unwrap());
        assert_eq!(stale_pointer.seq, 1);
        assert_eq!(pointer.seq, 2);
    });
}

/// Puts 8 images (two labels) and a file that is no image into the inbox of collection `c`;
/// returns the images' keys, and every key of the first batch of events: those, the other
/// file and a key outside the inbox.
async fn seed_inbox(input: &crate::ports::store::FsStore) -> (Vec<String>, Vec<String>) {
    let keys: Vec<String> = (0..8)
        .map(|i| format!("inbox/c/l{}/{i}.jpg", i % 2))
        .collect();
    for k in &keys {
        input.put(k, Bytes::from(k.clone())).await.unwrap();
    }
    input
        .put("inbox/c/notes.txt", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let mut all = keys.clone();
    all.push("inbox/c/notes.txt".into());
    all.push("elsewhere/x.jpg".into());
    (keys, all)
}

/// Replaces `keys[0]`, deletes `keys[1]` and adds an empty image; returns the changed keys.
async fn change_inbox(input: &crate::ports::store::FsStore, keys: &[String]) -> Vec<String> {
    input
        .put(&keys[0], Bytes::from_static(b"new content"))
        .await
        .unwrap();
    input.delete(&keys[1]).await.unwrap();
    input
        .put("inbox/c/l0/empty.jpg", Bytes::from_static(b""))
        .await
        .unwrap();
    vec![
        keys[0].clone(),
        keys[1].clone(),
        "inbox/c/l0/empty.jpg".into(),
    ]
}

/// The paths (relative to the collection) live after [`change_inbox`], sorted.
fn live_paths_after_changes(keys: &[String]) -> Vec<String> {
    keys.iter()
        .filter(|k| *k != &keys[1])
        .map(|k| k.strip_prefix("inbox/c/").unwrap().to_string())
        .chain(std::iter::once("l0/empty.jpg".to_string()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Every row of the snapshot `pointer` points at: its `Results` parts.
async fn read_view(
    output: &crate::ports::store::FsStore,
    pointer: &CurrentPointer,
) -> Vec<crate::parquet_io::VectorRow> {
    let mut rows = Vec::new();
    for o in output.list(&pointer.results).await.unwrap() {
        rows.extend(
            parquet_io::read_rows(Dataset::Features, output.get(&o.key).await.unwrap()).unwrap(),
        );
    }
    rows
}

/// Asserts that the running sums of `snapshot` are the statistics of exactly `rows`.
async fn assert_sums_are_the_statistics_of(
    output: &crate::ports::store::FsStore,
    layout: &CollectionLayout,
    snapshot: &str,
    rows: &[crate::parquet_io::VectorRow],
) {
    let sums_key = layout.state_sums(snapshot);
    let sums = RunningSums::from_bytes(&output.get(&sums_key).await.unwrap(), &sums_key).unwrap();
    let refs: Vec<&[f32]> = rows.iter().map(|r| r.values.as_slice()).collect();
    let direct = engine::stats::ShardStats::from_rows(&refs, 6);
    let got = sums.to_stats();
    assert_eq!(got.count, direct.count);
    for (a, b) in got.comoment.iter().zip(&direct.comoment) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }
}

fn synthetic_ingestor<I: ObjectStore, Q: crate::ports::queue::Queue>(
    input: I,
    output: crate::ports::store::FsStore,
    queue: Q,
) -> crate::continuous::ingest::Ingestor<I, crate::ports::store::FsStore, Q> {
    crate::continuous::ingest::Ingestor::new(
        input,
        output,
        queue,
        crate::batch::inference::Engine::Synthetic { dim: 6 },
        crate::continuous::ingest::IngestSettings {
            inbox: "inbox/".into(),
            filter: crate::batch::listing::ImageFilter::new("*.jpg").unwrap(),
            max_pixels: 1 << 20,
            threads: 1,
            fetch_concurrency: 4,
            quiet_s: 0,
        },
    )
}

fn k2() -> RefitOptions {
    RefitOptions {
        pca: PcaOptions {
            k: 2,
            ..Default::default()
        },
        ..Default::default()
    }
}
