//! Unit tests of refits whose cost grows with what changed: buckets copied server-side, the
//! index in shards (and the old single-file index still read, then migrated), the
//! projection fanned out through the queue (duplicates, redeliveries, deadlines), and the
//! refusal to mix two models. Every final view is checked against the live files: features
//! bit-identical to what a batch run computes for them, PCA within 1e-6 of a fit from
//! scratch.

use std::collections::BTreeMap;

use bytes::Bytes;
use engine::pca::PcaOptions;

use super::*;
use crate::batch::inference::synthetic_features;
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::ports::counting::{Counters, CountingStore};
use crate::ports::queue::InProcessQueue;
use crate::ports::store::{FsStore, ObjectStore};
use crate::test_util::block;

const DIM: usize = 6;

fn ingestor(
    input: FsStore,
    output: FsStore,
    queue: &InProcessQueue,
) -> crate::continuous::ingest::Ingestor<FsStore, FsStore, &InProcessQueue> {
    crate::continuous::ingest::Ingestor::new(
        input,
        output,
        queue,
        crate::batch::inference::Engine::Synthetic { dim: DIM },
        crate::continuous::ingest::IngestSettings {
            inbox: "inbox/".into(),
            filter: crate::batch::listing::ImageFilter::new("*.jpg").unwrap(),
            max_pixels: 1 << 20,
            threads: 1,
            fetch_concurrency: 8,
            quiet_s: 0,
        },
    )
}

/// Small buckets, so that a few hundred files make many parts.
fn options() -> RefitOptions {
    RefitOptions {
        pca: PcaOptions {
            k: 3,
            ..Default::default()
        },
        part_rows: 16,
        ..Default::default()
    }
}

fn key(i: usize) -> String {
    format!("inbox/c/l{}/{i:04}.jpg", i % 3)
}

/// A collection of `n` files, ingested and published once.
async fn collection(n: usize) -> (tempfile::TempDir, FsStore, FsStore, InProcessQueue) {
    let dir = tempfile::tempdir().unwrap();
    let input = FsStore::new(dir.path().join("in"));
    let output = FsStore::new(dir.path().join("out"));
    let queue = InProcessQueue::new();
    let keys: Vec<String> = (0..n).map(key).collect();
    for k in &keys {
        input.put(k, Bytes::from(k.clone())).await.unwrap();
    }
    ingestor(input.clone(), output.clone(), &queue)
        .ingest(&keys)
        .await
        .unwrap();
    let RefitOutcome::Published(s) = refit(&output, &input, "inbox/", "c", &options())
        .await
        .unwrap()
    else {
        panic!("not published")
    };
    assert_eq!(s.rows, n);
    while queue.pop().is_some() {}
    (dir, input, output, queue)
}

/// Every row of a Parquet folder, by path.
async fn folder<S: ObjectStore>(
    store: &S,
    prefix: &str,
    dataset: Dataset,
) -> BTreeMap<String, VectorRow> {
    let mut rows = BTreeMap::new();
    for o in store.list(prefix).await.unwrap() {
        for r in parquet_io::read_rows(dataset, store.get(&o.key).await.unwrap()).unwrap() {
            assert!(rows.insert(r.path.clone(), r).is_none(), "one row per path");
        }
    }
    rows
}

/// The published view holds exactly the live files of the inbox: their features bit for bit
/// (the synthetic engine's, as a batch run computes them), their labels, and a PCA within
/// 1e-6 of one fitted from scratch over them (components up to sign, projections).
async fn assert_view_exact(output: &FsStore, input: &FsStore) {
    let layout = CollectionLayout::new("c");
    let (pointer, _) = read_current(output, &layout).await.unwrap().unwrap();
    assert!(output
        .exists(&layout.success(&pointer.snapshot))
        .await
        .unwrap());
    let features = folder(output, &pointer.results, Dataset::Features).await;
    let live: Vec<String> = input
        .list("inbox/c/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.strip_prefix("inbox/c/").unwrap().to_string())
        .collect();
    assert_eq!(features.keys().cloned().collect::<Vec<_>>(), live);
    for (path, row) in &features {
        let expected = synthetic_features(path, DIM);
        assert!(
            row.values
                .iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{path}: features are not bit-identical"
        );
        assert_eq!(row.label, crate::batch::listing::label_for(path, "c"));
    }
    let refs: Vec<&[f32]> = features.values().map(|r| r.values.as_slice()).collect();
    let direct = engine::pca::fit(
        &engine::stats::ShardStats::from_rows(&refs, DIM),
        &options().pca,
    )
    .unwrap();
    let model: engine::pca::PcaModel = serde_json::from_slice(
        &output
            .get(pointer.pca_model.as_ref().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((model.k, model.n), (direct.k, direct.n));
    let signs: Vec<f64> = model
        .components
        .iter()
        .zip(&direct.components)
        .map(|(a, b)| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let sign = dot.signum();
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - sign * y).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-6, "component differs by {worst:e}");
            sign
        })
        .collect();
    let pca = folder(output, &pointer.results_pca, Dataset::Pca).await;
    assert_eq!(
        pca.keys().collect::<Vec<_>>(),
        features.keys().collect::<Vec<_>>()
    );
    for (path, row) in &pca {
        let expected = direct.project(&features[path].values);
        for ((a, b), s) in row.values.iter().zip(&expected).zip(&signs) {
            let (a, b) = (f64::from(*a), s * f64::from(*b));
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{path}: {a} vs {b}"
            );
        }
    }
}

/// A refit after one change on a collection of many buckets reads and writes one bucket
/// (its index shard and its part) and copies the others server-side; only the projection,
/// O(n) by nature, reads every part — once.
#[test]
fn one_change_rewrites_one_bucket_and_copies_the_others() {
    block(async {
        let (_dir, input, output, queue) = collection(400).await;
        let layout = CollectionLayout::new("c");
        let (first, _) = read_current(&output, &layout).await.unwrap().unwrap();
        let StoredIndex::Buckets(manifest) = read_stored_index(&output, &layout, &first.snapshot)
            .await
            .unwrap()
        else {
            panic!("a bucketed index")
        };
        let n = manifest.buckets.len();
        assert_eq!(
            n, 32,
            "400 files at 16 per bucket: 32 buckets (no more than twice full)"
        );
        let part_bytes: u64 = output
            .list(&first.results)
            .await
            .unwrap()
            .iter()
            .map(|o| o.size)
            .sum();

        input
            .put(&key(7), Bytes::from_static(b"new content"))
            .await
            .unwrap();
        ingestor(input.clone(), output.clone(), &queue)
            .ingest(&[key(7)])
            .await
            .unwrap();
        // The refit's own invocation, its projection sent to the queue.
        let counters = Counters::new();
        let counted = CountingStore::new(output.clone(), counters.clone());
        let sender = InProcessQueue::new();
        let fanning = RefitOptions {
            fanout_parts: 0,
            parts_per_message: 8,
            ..options()
        };
        let outcome = refit_with(&counted, &input, "inbox/", "c", &fanning, Some(&sender))
            .await
            .unwrap();
        let RefitOutcome::Projecting {
            parts, messages, ..
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!((parts, messages), (n, n.div_ceil(8)));
        let refit_usage = counters.usage();
        let one_bucket = part_bytes / n as u64;
        assert_eq!(
            refit_usage.s3_copy as usize,
            2 * (n - 1),
            "every other bucket's part and index shard copied: {refit_usage:?}"
        );
        assert!(
            refit_usage.bytes_read < 3 * one_bucket + 20_000,
            "the refit reads O(changed): {} bytes, one bucket is {one_bucket} bytes; {refit_usage:?}",
            refit_usage.bytes_read
        );
        assert!(
            refit_usage.bytes_written < 4 * one_bucket + 20_000,
            "{refit_usage:?}"
        );
        assert!(
            refit_usage.bytes_copied >= part_bytes - 2 * one_bucket,
            "{refit_usage:?}"
        );

        // The projection messages: each part read once, then published.
        let project_counters = Counters::new();
        let counted = CountingStore::new(output.clone(), project_counters.clone());
        let mut published = None;
        while let Some(body) = sender.pop() {
            let message: ProjectMessage = serde_json::from_str(&body).unwrap();
            if let ProjectOutcome::Published(s) =
                project(&counted, &message, &fanning, None, Some(&sender))
                    .await
                    .unwrap()
            {
                published = Some(s);
            }
        }
        let s = published.expect("the last projection message publishes");
        assert_eq!(
            (s.rows, s.replaced, s.buckets, s.buckets_rewritten),
            (400, 1, n, 1)
        );
        assert_eq!(s.parts_fanned_out, n);
        let reads = project_counters.usage().bytes_read;
        assert!(
            reads >= part_bytes - 2 * one_bucket && reads < part_bytes + 4 * one_bucket + 50_000,
            "the projection reads every part once: {reads} vs {part_bytes}"
        );
        assert_view_exact(&output, &input).await;
    });
}

/// Projection messages delivered twice, one redelivered after the snapshot was published
/// (its acknowledgement lost), and one stopped by its deadline and delivered again: one
/// publication, the exact view, nothing left behind.
#[test]
fn fanned_out_projection_survives_duplicates_ack_loss_and_deadlines() {
    block(async {
        let (_dir, input, output, queue) = collection(200).await;
        for i in [3, 50, 120] {
            input
                .put(&key(i), Bytes::from(format!("changed {i}")))
                .await
                .unwrap();
        }
        input.delete(&key(9)).await.unwrap();
        for i in 200..230 {
            input.put(&key(i), Bytes::from(key(i))).await.unwrap();
        }
        let mut changed: Vec<String> = [3, 50, 120, 9].into_iter().map(key).collect();
        changed.extend((200..230).map(key));
        ingestor(input.clone(), output.clone(), &queue)
            .ingest(&changed)
            .await
            .unwrap();
        let sender = InProcessQueue::new();
        let fanning = RefitOptions {
            fanout_parts: 2,
            parts_per_message: 3,
            concurrency: 1,
            deadline_margin_ms: 60_000,
            ..options()
        };
        let RefitOutcome::Projecting {
            messages, snapshot, ..
        } = refit_with(&output, &input, "inbox/", "c", &fanning, Some(&sender))
            .await
            .unwrap()
        else {
            panic!("fanned out")
        };
        let layout = CollectionLayout::new("c");
        let bodies: Vec<String> = std::iter::from_fn(|| sender.pop()).collect();
        assert_eq!(bodies.len(), messages);
        let message = |i: usize| serde_json::from_str::<ProjectMessage>(&bodies[i]).unwrap();
        // The first message, past its deadline: one part, then it stops (delivered again).
        let past = Some(std::time::Instant::now());
        let e = project(&output, &message(0), &fanning, past, None)
            .await
            .unwrap_err();
        assert!(matches!(e, crate::error::Error::Deadline { .. }), "{e}");
        assert_eq!(
            output
                .list(&layout.pca_prefix(&snapshot))
                .await
                .unwrap()
                .len(),
            1
        );
        // Every message, the first again (going on) and the second twice.
        let mut outcomes = Vec::new();
        for i in (0..bodies.len()).chain([1]) {
            outcomes.push(
                project(&output, &message(i), &fanning, None, None)
                    .await
                    .unwrap(),
            );
        }
        let published = outcomes
            .iter()
            .filter(|o| matches!(o, ProjectOutcome::Published(_)))
            .count();
        assert!(published >= 1, "{outcomes:?}");
        let (pointer, _) = read_current(&output, &layout).await.unwrap().unwrap();
        assert_eq!(pointer.snapshot, snapshot);
        // A delivery whose acknowledgement was lost comes back after the publication: it
        // changes nothing.
        let again = project(&output, &message(0), &fanning, None, None)
            .await
            .unwrap();
        assert!(
            matches!(
                again,
                ProjectOutcome::Published(_) | ProjectOutcome::Nothing
            ),
            "{again:?}"
        );
        assert_eq!(
            read_current(&output, &layout).await.unwrap().unwrap().0,
            pointer
        );
        assert!(
            list_deltas(&output, &layout).await.unwrap().is_empty(),
            "deltas consumed"
        );
        assert_view_exact(&output, &input).await;
        // The next refit starts from it.
        input
            .put(&key(4), Bytes::from_static(b"again"))
            .await
            .unwrap();
        ingestor(input.clone(), output.clone(), &queue)
            .ingest(&[key(4)])
            .await
            .unwrap();
        let RefitOutcome::Published(s) = refit(&output, &input, "inbox/", "c", &options())
            .await
            .unwrap()
        else {
            panic!("not published")
        };
        assert_eq!((s.rows, s.replaced, s.buckets_rewritten), (229, 1, 1));
        assert_view_exact(&output, &input).await;
    });
}

/// A collection whose state is one `index.json` (before the buckets) is still read, by the
/// refit and by the readers, and its next refit migrates it to buckets.
#[test]
fn an_old_single_file_index_is_read_and_migrated() {
    block(async {
        let (_dir, input, output, queue) = collection(100).await;
        let layout = CollectionLayout::new("c");
        let (pointer, _) = read_current(&output, &layout).await.unwrap().unwrap();
        // Rewrite its state as the old format: one index.json, no buckets.
        let whole = read_index(&output, &layout, &pointer.snapshot)
            .await
            .unwrap();
        assert_eq!(whole.entries.len(), 100);
        output
            .put(
                &layout.state_index(&pointer.snapshot),
                serde_json::to_vec(&whole).unwrap().into(),
            )
            .await
            .unwrap();
        output
            .delete(&layout.state_buckets(&pointer.snapshot))
            .await
            .unwrap();
        for o in output
            .list(&format!(
                "{}{}/index/",
                layout.states_prefix(),
                pointer.snapshot
            ))
            .await
            .unwrap()
        {
            output.delete(&o.key).await.unwrap();
        }
        assert!(matches!(
            read_stored_index(&output, &layout, &pointer.snapshot)
                .await
                .unwrap(),
            StoredIndex::Legacy(_)
        ));
        assert_eq!(
            read_index(&output, &layout, &pointer.snapshot)
                .await
                .unwrap(),
            whole
        );
        assert!(collection_status(&output, "c")
            .await
            .unwrap()
            .stuck
            .is_none());

        input.delete(&key(5)).await.unwrap();
        ingestor(input.clone(), output.clone(), &queue)
            .ingest(&[key(5)])
            .await
            .unwrap();
        let RefitOutcome::Published(s) = refit(&output, &input, "inbox/", "c", &options())
            .await
            .unwrap()
        else {
            panic!("not published")
        };
        assert_eq!((s.rows, s.removed), (99, 1));
        assert_eq!(
            s.buckets_rewritten, s.buckets,
            "migrated: every bucket written"
        );
        assert!(matches!(
            read_stored_index(&output, &layout, &s.snapshot)
                .await
                .unwrap(),
            StoredIndex::Buckets(_)
        ));
        assert_view_exact(&output, &input).await;
    });
}

/// Features of a second model (a layer updated to another model) are refused by the refit,
/// which names both models and the remedy, and `status --collection` says the collection is
/// stuck, and why.
#[test]
fn a_refit_refuses_to_mix_two_models_and_status_says_why() {
    block(async {
        let (_dir, input, output, _queue) = collection(20).await;
        let layout = CollectionLayout::new("c");
        let (before, _) = read_current(&output, &layout).await.unwrap().unwrap();
        let summary: RefitSummary =
            serde_json::from_slice(&output.get(&before.summary).await.unwrap()).unwrap();
        let first_model = crate::batch::inference::SYNTHETIC_MODEL_ID;
        assert_eq!(summary.model_sha256.as_deref(), Some(first_model));

        let path = "l0/new.jpg";
        input
            .put(&format!("inbox/c/{path}"), Bytes::from_static(b"x"))
            .await
            .unwrap();
        let other = "b".repeat(64);
        let delta = Delta {
            collection: "c".into(),
            id: new_delta_id(),
            written_at_ms: crate::manifest::unix_now_ms(),
            entries: vec![DeltaEntry::Upsert {
                path: path.into(),
                label: "l0".into(),
                etag: input.head(&format!("inbox/c/{path}")).await.unwrap(),
                row: 0,
            }],
            model_sha256: Some(other.clone()),
        };
        let row = VectorRow {
            path: path.into(),
            label: "l0".into(),
            values: vec![1.0; DIM],
        };
        write_delta(&output, &delta, &[row]).await.unwrap();
        let e = refit(&output, &input, "inbox/", "c", &options())
            .await
            .unwrap_err()
            .to_string();
        for needle in [first_model, other.as_str(), "--rebuild", "different models"] {
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
        assert_eq!(
            read_current(&output, &layout).await.unwrap().unwrap().0,
            before,
            "nothing published"
        );
        let status = collection_status(&output, "c").await.unwrap();
        let stuck = status.stuck.expect("stuck");
        assert_eq!(stuck.kind, crate::stuck::StuckKind::ModelsMixed);
        assert!(
            stuck.reason.contains(&other) && stuck.reason.contains(first_model),
            "{stuck:?}"
        );
        assert!(stuck.remedy.contains("--rebuild"), "{stuck:?}");

        // The remedy: `featurize reconcile --rebuild` forgets the view and ingests every
        // image again with the current model; the collection is whole and one model's.
        crate::continuous::reconcile::forget_view(&output, "c")
            .await
            .unwrap();
        let queue = InProcessQueue::new();
        let ingestor = ingestor(input.clone(), output.clone(), &queue);
        let repair = crate::continuous::reconcile::InProcessRepair {
            ingestor: &ingestor,
            options: options(),
        };
        let filter = crate::batch::listing::ImageFilter::new("*.jpg").unwrap();
        let record = crate::continuous::reconcile::reconcile(
            &input, &output, "inbox/", "c", &filter, &repair,
        )
        .await
        .unwrap();
        assert_eq!(record.listed, 21, "{record:?}");
        let status = collection_status(&output, "c").await.unwrap();
        assert!(status.stuck.is_none(), "{:?}", status.stuck);
        assert_eq!(
            status.summary.unwrap().model_sha256.as_deref(),
            Some(first_model)
        );
        assert_view_exact(&output, &input).await;
    });
}
