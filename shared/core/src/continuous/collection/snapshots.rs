//! The files of a snapshot: its parts (with their projections), and how snapshots are
//! deleted.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use tracing::info;

use super::CollectionLayout;
use crate::error::Result;
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::ports::store::ObjectStore;
use engine::pca::PcaModel;

/// The name of the `n`th part of new rows in `snapshot`.
pub(super) fn part_name(snapshot: &str, n: usize) -> String {
    format!("part-{snapshot}-{n:05}.parquet")
}

/// Writes one `Results` part and its `Results_PCA` projection into a snapshot.
pub(super) async fn publish_part<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    snapshot: &str,
    name: &str,
    features: Bytes,
    rows: &[VectorRow],
    model: Option<&PcaModel>,
) -> Result<()> {
    output
        .put(
            &format!("{}{name}", layout.results_prefix(snapshot)),
            features,
        )
        .await?;
    let projected: Vec<VectorRow> = rows
        .iter()
        .map(|r| VectorRow {
            path: r.path.clone(),
            label: r.label.clone(),
            values: model.map(|m| m.project(&r.values)).unwrap_or_default(),
        })
        .collect();
    output
        .put(
            &format!("{}{name}", layout.pca_prefix(snapshot)),
            parquet_io::write_rows(Dataset::Pca, &projected)?,
        )
        .await?;
    Ok(())
}

pub(super) async fn delete_prefix<S: ObjectStore>(
    output: &S,
    prefix: &str,
    concurrency: usize,
) -> Result<()> {
    let objects = output.list(prefix).await?;
    stream::iter(objects.iter().map(|o| output.delete(&o.key)))
        .buffer_unordered(concurrency * 4)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Deletes all but the newest `keep` snapshots (and their states). Snapshot ids start with
/// their sequence number, so they sort by age.
pub(super) async fn expire_snapshots<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    current: &str,
    keep: usize,
    concurrency: usize,
) -> Result<()> {
    let prefix = layout.snapshots_prefix();
    let ids: BTreeSet<String> = output
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|o| {
            o.key
                .strip_prefix(&prefix)?
                .split('/')
                .next()
                .map(String::from)
        })
        .collect();
    let expired: Vec<&String> = ids
        .iter()
        .rev()
        .filter(|id| id.as_str() != current)
        .skip(keep.saturating_sub(1))
        .filter(|id| id.as_str() < current)
        .collect();
    for id in expired {
        delete_prefix(output, &layout.snapshot_prefix(id), concurrency).await?;
        delete_prefix(
            output,
            &format!("{}{id}/", layout.states_prefix()),
            concurrency,
        )
        .await?;
        info!(collection = layout.name(), snapshot = %id, "snapshot expired");
    }
    Ok(())
}
