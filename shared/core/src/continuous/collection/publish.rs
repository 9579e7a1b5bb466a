//! The end of a refit: projecting every `Results` part into `Results_PCA` (streamed, part by
//! part), then publishing — summary, `_SUCCESS`, the pointer (read back when its answer is
//! in doubt), and the clean-up. Past [`RefitOptions::fanout_parts`] parts the projection is
//! sent to the refit queue as [`ProjectMessage`]s; each projects its range (skipping parts
//! already projected, so duplicates and redeliveries are harmless, and a delivery stopped by
//! its deadline goes on where it stopped), and whichever finds every part projected
//! publishes, from the snapshot's publication document.

use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt, TryStreamExt};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::snapshots::{
    delete_prefix, expire, part_name, read_back_pointer, PointerWrite, Retention,
};
use super::{
    list_deltas, read_current, CollectionLayout, CurrentPointer, ProjectMessage, ProjectRange,
    RefitMessage, RefitOptions, RefitSummary,
};
use crate::error::{Error, Result};
use crate::parquet_io::{self, Dataset, VectorRow};
use crate::ports::queue::Queue;
use crate::ports::store::{ObjectStore, StoreError};
use engine::pca::PcaModel;

/// Where a refit sends its projection messages (the refit queue): any [`Queue`].
pub trait ProjectSender: Send + Sync {
    /// Sends the bodies.
    fn send_bodies(&self, bodies: Vec<String>) -> BoxFuture<'_, Result<()>>;
}

impl<Q: Queue> ProjectSender for Q {
    fn send_bodies(&self, bodies: Vec<String>) -> BoxFuture<'_, Result<()>> {
        async move { self.send_all(bodies).await.map_err(Error::from) }.boxed()
    }
}

/// What publishes a snapshot once its projection is complete:
/// `state/<id>/publish.json`, written before the projection messages are sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Publication {
    /// The pointer to write.
    pub pointer: CurrentPointer,
    /// The entity tag of the pointer it replaces (`None`: the first publication).
    pub replaces: Option<String>,
    /// The deltas it folded (deleted once it is published).
    pub deltas: Vec<String>,
    /// The `Results` parts to project, in order ([`ProjectRange`] indexes them).
    pub parts: Vec<String>,
    /// The summary (its publish and total times are set when it is published).
    pub summary: RefitSummary,
    /// When the refit started and when its publication started (Unix ms).
    pub started_at_ms: u64,
    /// When it started writing the snapshot (Unix ms).
    pub publish_started_at_ms: u64,
    /// The model's mean and components, bit for bit (JSON text does not give every float
    /// back to the last bit): each part is projected with exactly the fitted model.
    #[serde(default)]
    pub mean_bits: Vec<u64>,
    /// See `mean_bits`.
    #[serde(default)]
    pub component_bits: Vec<Vec<u64>>,
}

impl Publication {
    /// Records the model's floats exactly.
    pub fn keep_model_bits(&mut self, model: Option<&PcaModel>) {
        if let Some(m) = model {
            self.mean_bits = m.mean.iter().map(|x| x.to_bits()).collect();
            self.component_bits = m
                .components
                .iter()
                .map(|c| c.iter().map(|x| x.to_bits()).collect())
                .collect();
        }
    }

    /// Puts the exact floats back into a model read from its JSON.
    fn restore_model_bits(&self, model: &mut PcaModel) -> Result<()> {
        let fits = self.mean_bits.len() == model.mean.len()
            && self.component_bits.len() == model.components.len()
            && self
                .component_bits
                .iter()
                .zip(&model.components)
                .all(|(b, c)| b.len() == c.len());
        if !fits {
            return Err(Error::RunState(format!(
                "snapshot {}: the publication's model bits do not match its pca_model.json",
                self.pointer.snapshot
            )));
        }
        model.mean = self.mean_bits.iter().map(|&b| f64::from_bits(b)).collect();
        model.components = self
            .component_bits
            .iter()
            .map(|c| c.iter().map(|&b| f64::from_bits(b)).collect())
            .collect();
        Ok(())
    }
}

/// Projects rows with the model (empty vectors without one).
fn project_rows(rows: &[VectorRow], model: Option<&PcaModel>) -> Vec<VectorRow> {
    rows.iter()
        .map(|r| VectorRow {
            path: r.path.clone(),
            label: r.label.clone(),
            values: model.map(|m| m.project(&r.values)).unwrap_or_default(),
        })
        .collect()
}

/// Projects one `Results` part of `snapshot` into its `Results_PCA` part of the same name:
/// reads it, projects it, writes it. Memory: one part.
pub(super) async fn project_part<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    snapshot: &str,
    part: &str,
    model: Option<&PcaModel>,
) -> Result<()> {
    let features = output
        .get(&format!("{}{part}", layout.results_prefix(snapshot)))
        .await?;
    let rows = parquet_io::read_rows(Dataset::Features, features)?;
    let projected = project_rows(&rows, model);
    drop(rows);
    output
        .put(
            &format!("{}{part}", layout.pca_prefix(snapshot)),
            parquet_io::write_rows(Dataset::Pca, &projected)?,
        )
        .await?;
    Ok(())
}

/// Projects every part, `concurrency` at a time. A collection without rows gets one empty
/// part in each dataset, so that both are readable.
pub(super) async fn project_all<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    snapshot: &str,
    parts: &[String],
    model: Option<&PcaModel>,
    concurrency: usize,
) -> Result<()> {
    if parts.is_empty() {
        let name = part_name(snapshot, 0);
        let empty = parquet_io::write_rows(Dataset::Features, &[])?;
        output
            .put(&format!("{}{name}", layout.results_prefix(snapshot)), empty)
            .await?;
        output
            .put(
                &format!("{}{name}", layout.pca_prefix(snapshot)),
                parquet_io::write_rows(Dataset::Pca, &[])?,
            )
            .await?;
        return Ok(());
    }
    stream::iter(
        parts
            .iter()
            .map(|part| project_part(output, layout, snapshot, part, model).boxed())
            .collect::<Vec<_>>(),
    )
    .buffer_unordered(concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// Sends the projection of `publication`'s parts as messages of `per_message` parts.
pub(super) async fn fan_out(
    sender: &dyn ProjectSender,
    collection: &str,
    publication: &Publication,
    per_message: usize,
) -> Result<usize> {
    let per_message = per_message.max(1);
    let bodies = (0..publication.parts.len())
        .step_by(per_message)
        .map(|from| {
            serde_json::to_string(&ProjectMessage {
                collection: collection.to_string(),
                project: ProjectRange {
                    snapshot: publication.pointer.snapshot.clone(),
                    from,
                    to: (from + per_message).min(publication.parts.len()),
                },
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let n = bodies.len();
    sender.send_bodies(bodies).await?;
    Ok(n)
}

/// How a publication ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Published {
    /// The pointer names it (or named it: the published chain holds it).
    Ours(Box<RefitSummary>),
    /// Another refit published at its refit number: discarded.
    Lost,
    /// Cannot tell (the pointer moved past ours and the chain back to it is gone): left to
    /// retention.
    InDoubt,
}

/// Publishes a complete snapshot: its summary (with the publish and total times), its
/// `_SUCCESS`, then the pointer (if it is still the one the refit started from; read back
/// when the answer is in doubt). Ours: the folded deltas are deleted and retention runs.
/// Lost: the snapshot is discarded. A snapshot already published (a late or duplicated
/// projection message) is left as it is: a published snapshot never changes.
///
/// After a publication, changes that it did not fold may be waiting whose own refit ended
/// with a snapshot that retention removed (a fan-out that started on the same pointer and
/// had not published yet): `sender` (the refit queue) gets a refit message for them, so no
/// change waits for the next upload or reconcile.
pub(super) async fn publish<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    publication: &Publication,
    options: &RefitOptions,
    sender: Option<&dyn ProjectSender>,
) -> Result<Published> {
    let snapshot = &publication.pointer.snapshot;
    match read_back_pointer(output, layout, &publication.pointer).await? {
        PointerWrite::NotLanded => {}
        PointerWrite::Ours => {
            clean_up(output, layout, &publication.deltas, options).await?;
            // Only while the pointer is still ours: once it has moved on, the publication
            // that moved it ran this check itself (and a refit asked for now would race
            // the one in flight).
            let current = read_current(output, layout).await?;
            if current.is_some_and(|(p, _)| p.snapshot == *snapshot) {
                refit_waiting_changes(output, layout, sender).await?;
            }
            return Ok(Published::Ours(Box::new(publication.summary.clone())));
        }
        PointerWrite::Lost => {
            discard(output, layout, snapshot, options.concurrency).await?;
            return Ok(Published::Lost);
        }
        PointerWrite::Unknown => return Ok(Published::InDoubt),
    }
    let now = crate::manifest::unix_now_ms();
    let mut summary = publication.summary.clone();
    summary.publish_s = now.saturating_sub(publication.publish_started_at_ms) as f64 / 1000.0;
    summary.total_s = now.saturating_sub(publication.started_at_ms) as f64 / 1000.0;
    // If absent: two last projection messages finishing together both get here, and the
    // first one's documents are the snapshot's.
    output
        .put_if_absent(
            &layout.summary(snapshot),
            serde_json::to_vec_pretty(&summary)?.into(),
        )
        .await?;
    output
        .put_if_absent(&layout.success(snapshot), Bytes::new())
        .await?;
    match publish_pointer(
        output,
        layout,
        &publication.pointer,
        publication.replaces.as_deref(),
    )
    .await?
    {
        PointerWrite::Ours => {}
        PointerWrite::Lost => {
            discard(output, layout, snapshot, options.concurrency).await?;
            return Ok(Published::Lost);
        }
        // Never deleted when in doubt: retention removes it if no pointer names it.
        // (`publish_pointer` answers a write that did not land with an error.)
        PointerWrite::NotLanded | PointerWrite::Unknown => return Ok(Published::InDoubt),
    }
    info!(
        collection = layout.name(), %snapshot, seq = summary.seq, rows = summary.rows,
        errors = summary.errors, added = summary.added, replaced = summary.replaced,
        removed = summary.removed, buckets_rewritten = summary.buckets_rewritten,
        fit_s = summary.fit_s, publish_s = summary.publish_s, "collection published"
    );
    clean_up(output, layout, &publication.deltas, options).await?;
    refit_waiting_changes(output, layout, sender).await?;
    Ok(Published::Ours(Box::new(summary)))
}

/// Sends `sender` a refit message (not forced: the quiet time and the staleness bound
/// decide when it runs) if deltas are waiting after a publication.
async fn refit_waiting_changes<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    sender: Option<&dyn ProjectSender>,
) -> Result<()> {
    let Some(sender) = sender else {
        return Ok(());
    };
    if list_deltas(output, layout).await?.is_empty() {
        return Ok(());
    }
    info!(
        collection = layout.name(),
        "changes wait after the publication: a refit is asked for"
    );
    let body = serde_json::to_string(&RefitMessage {
        collection: layout.name().to_string(),
        force: false,
    })?;
    sender.send_bodies(vec![body]).await
}

/// Points `current.json` at the new snapshot if it is still the pointer the refit started
/// from (`replaces`; absent if there was none). An answer "changed" / "exists" or a
/// transient error is read back: S3 may have applied the write and lost its response (then
/// a retry finds the pointer already ours), so only the stored pointer and the published
/// chain say who won: ours (published), another at our refit number or a chain without
/// ours (lost), or a chain too short to tell (unknown: left to retention).
///
/// A write that did not land — the pointer is still older than ours — is an error, whatever
/// the answer: a transient failure, or "precondition failed" although nothing else was
/// published (S3 answers 409 `ConditionalRequestConflict` to a conditional write that raced
/// another one in progress, which may then fail too; or the pointer was deleted meanwhile).
/// The message is then delivered again and the publication retried: a projection message
/// finds the pointer not landed at the start of [`publish`] and writes it again with the
/// same `If-Match`; a refit message starts the refit over from the pointer as it is. Acked
/// instead, the folded deltas would wait with no message pending.
async fn publish_pointer<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    pointer: &CurrentPointer,
    replaces: Option<&str>,
) -> Result<PointerWrite> {
    let body: Bytes = serde_json::to_vec_pretty(pointer)?.into();
    let current = layout.current();
    let written = match replaces {
        Some(etag) => output.put_if_match(&current, body, etag).await,
        None => output.put_if_absent(&current, body).await,
    };
    let doubt = match written {
        Ok(true) => return Ok(PointerWrite::Ours),
        Ok(false) => None,
        Err(e) if e.is_transient() => Some(e),
        Err(e) => return Err(e.into()),
    };
    let read_back = read_back_pointer(output, layout, pointer).await?;
    match (read_back, doubt) {
        (PointerWrite::NotLanded, Some(e)) => Err(e.into()),
        (PointerWrite::NotLanded, None) => Err(not_landed(output, layout, pointer, replaces).await),
        (PointerWrite::Ours, _) => {
            info!(collection = layout.name(), snapshot = %pointer.snapshot,
                "the pointer write had landed (its answer was lost): published");
            Ok(PointerWrite::Ours)
        }
        (other @ (PointerWrite::Lost | PointerWrite::Unknown), _) => Ok(other),
    }
}

/// The error of a pointer write answered "precondition failed" that did not land: what
/// `current.json` holds now, and that the message is delivered again.
async fn not_landed<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    pointer: &CurrentPointer,
    replaces: Option<&str>,
) -> Error {
    let now = match read_current(output, layout).await {
        Ok(Some((p, etag))) if replaces == Some(etag.as_str()) => format!(
            "it still names snapshot {} (refit {}), with the entity tag this publication \
             replaces",
            p.snapshot, p.seq
        ),
        Ok(Some((p, etag))) => format!(
            "it names snapshot {} (refit {}), entity tag {etag}, not {}: it was rewritten \
             without moving on, and a retry with the same tag will be refused again",
            p.snapshot,
            p.seq,
            replaces.unwrap_or("(none: a first publication)")
        ),
        Ok(None) => "there is none".to_string(),
        Err(e) => format!("it cannot be read back: {e}"),
    };
    Error::RunState(format!(
        "collection {}: the pointer write of snapshot {} (refit {}) was answered \
         \"precondition failed\" but did not land ({}: {now}); not published — the message \
         will be delivered again and the publication retried",
        layout.name(),
        pointer.snapshot,
        pointer.seq,
        output.describe(&layout.current()),
    ))
}

/// Deletes the snapshot (and its state) of a refit that lost the race.
pub(super) async fn discard<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    snapshot: &str,
    concurrency: usize,
) -> Result<()> {
    info!(collection = layout.name(), %snapshot,
        "another refit published first: this snapshot is discarded");
    delete_prefix(output, &layout.snapshot_prefix(snapshot), concurrency).await?;
    delete_prefix(
        output,
        &format!("{}{snapshot}/", layout.states_prefix()),
        concurrency,
    )
    .await?;
    Ok(())
}

/// After publishing: deletes the consumed deltas (documents first: they are the commit
/// points), then what retention lets go (orphan snapshots first, then published ones past
/// their time, and orphan delta parts).
async fn clean_up<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    deltas: &[String],
    options: &RefitOptions,
) -> Result<()> {
    for id in deltas {
        output.delete(&layout.delta_doc(id)).await?;
        output.delete(&layout.delta_part(id)).await?;
    }
    let retention = Retention {
        keep: options.keep_snapshots.max(1),
        min_reader_ms: options.min_reader_ms,
        orphan_delta_grace_ms: options.orphan_delta_grace_ms,
        now_ms: crate::manifest::unix_now_ms(),
    };
    expire(output, layout, &retention, options.concurrency.max(1)).await?;
    Ok(())
}

/// What a projection message did.
#[derive(Debug, Clone, PartialEq)]
pub enum ProjectOutcome {
    /// Its parts are projected; others are still missing (their messages publish).
    Projected {
        /// Parts it projected now.
        projected: usize,
        /// Parts of the snapshot not projected yet.
        missing: usize,
    },
    /// Every part is projected and the snapshot is published (by this message, or it found
    /// it published).
    Published(Box<RefitSummary>),
    /// Another refit published first: the snapshot is discarded and a refit is asked for,
    /// to fold its changes on top of the winner's.
    LostRace,
    /// The snapshot is gone (discarded, or expired) or already published: nothing to do.
    Nothing,
    /// Whether the snapshot was published cannot be told (the pointer moved past it and the
    /// chain back to it is gone): it is left to retention. A pointer write that did not
    /// land is an error instead (the message is delivered again).
    InDoubt,
}

/// Handles a [`ProjectMessage`]: projects its parts (those not projected yet), stopping
/// before `deadline` minus [`RefitOptions::deadline_margin_ms`] after one part at least
/// ([`Error::Deadline`]: the message is delivered again and goes on from there); then, if
/// every part of the snapshot is projected, publishes it. `sender` (the refit queue) gets a
/// refit message when the snapshot lost the race.
pub async fn project<S: ObjectStore>(
    output: &S,
    message: &ProjectMessage,
    options: &RefitOptions,
    deadline: Option<Instant>,
    sender: Option<&dyn ProjectSender>,
) -> Result<ProjectOutcome> {
    let layout = CollectionLayout::new(&message.collection);
    let range = &message.project;
    let snapshot = &range.snapshot;
    let publication: Publication = match output.get(&layout.state_publish(snapshot)).await {
        Ok(body) => serde_json::from_slice(&body)?,
        Err(StoreError::NotFound(_)) => return Ok(ProjectOutcome::Nothing),
        Err(e) => return Err(e.into()),
    };
    let model = match &publication.pointer.pca_model {
        Some(key) => {
            let mut model: PcaModel = serde_json::from_slice(&output.get(key).await?)?;
            publication.restore_model_bits(&mut model)?;
            Some(model)
        }
        None => None,
    };
    let done = projected_parts(output, &layout, snapshot).await?;
    let mine: Vec<&String> = publication
        .parts
        .get(range.from..range.to.min(publication.parts.len()))
        .unwrap_or_default()
        .iter()
        .filter(|p| !done.contains(p.as_str()))
        .collect();
    let margin = std::time::Duration::from_millis(options.deadline_margin_ms);
    let mut projected = 0;
    for chunk in mine.chunks(options.concurrency.max(1)) {
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if projected > 0 && left < margin {
                return Err(Error::Deadline {
                    remaining_ms: left.as_millis() as u64,
                    stage: "collection projection",
                });
            }
        }
        stream::iter(
            chunk
                .iter()
                .map(|part| project_part(output, &layout, snapshot, part, model.as_ref()).boxed())
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(chunk.len())
        .try_collect::<Vec<()>>()
        .await?;
        projected += chunk.len();
    }
    let done = projected_parts(output, &layout, snapshot).await?;
    let missing = publication
        .parts
        .iter()
        .filter(|p| !done.contains(p.as_str()))
        .count();
    if missing > 0 {
        return Ok(ProjectOutcome::Projected { projected, missing });
    }
    Ok(
        match publish(output, &layout, &publication, options, sender).await? {
            Published::Ours(summary) => ProjectOutcome::Published(summary),
            Published::InDoubt => ProjectOutcome::InDoubt,
            Published::Lost => {
                if let Some(sender) = sender {
                    let body = serde_json::to_string(&RefitMessage {
                        collection: message.collection.clone(),
                        force: true,
                    })?;
                    sender.send_bodies(vec![body]).await?;
                }
                ProjectOutcome::LostRace
            }
        },
    )
}

/// The parts of `snapshot`'s `Results_PCA` written so far.
async fn projected_parts<S: ObjectStore>(
    output: &S,
    layout: &CollectionLayout,
    snapshot: &str,
) -> Result<std::collections::BTreeSet<String>> {
    let prefix = layout.pca_prefix(snapshot);
    Ok(output
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| o.key.strip_prefix(&prefix).map(String::from))
        .collect())
}
