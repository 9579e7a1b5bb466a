//! The refit's last phase: the new snapshot's documents are written, then its rows are
//! projected and it is published — here, or fanned out through the refit queue.

use super::super::fit::Fit;
use super::super::index::IndexManifest;
use super::super::publish::{fan_out, project_all, publish, Publication, Published};
use super::super::{CurrentPointer, RefitOutcome};
use super::Refit;
use crate::error::Result;
use crate::manifest::ImageError;
use crate::ports::store::ObjectStore;
use engine::pca::PcaModel;

impl<S: ObjectStore, I: ObjectStore> Refit<'_, S, I> {
    /// The snapshot's documents but its summary: its model, error list and state (index
    /// manifest and sums).
    pub(super) async fn write_documents(
        &self,
        snapshot: &str,
        fit: &Fit,
        errors: &[ImageError],
        manifest: &IndexManifest,
    ) -> Result<()> {
        let (output, layout) = (self.output, &self.layout);
        if let Some(model) = &fit.model {
            output
                .put(
                    &layout.pca_model(snapshot),
                    serde_json::to_vec(model)?.into(),
                )
                .await?;
        }
        output
            .put(
                &layout.errors(snapshot),
                serde_json::to_vec_pretty(&errors)?.into(),
            )
            .await?;
        output
            .put(&layout.state_sums(snapshot), fit.sums.to_bytes().into())
            .await?;
        output
            .put(
                &layout.state_buckets(snapshot),
                serde_json::to_vec(manifest)?.into(),
            )
            .await?;
        Ok(())
    }

    /// The pointer to the new snapshot.
    pub(super) fn pointer(
        &self,
        snapshot: &str,
        seq: u64,
        has_model: bool,
        published_at: String,
    ) -> CurrentPointer {
        let layout = &self.layout;
        CurrentPointer {
            collection: self.collection.to_string(),
            snapshot: snapshot.to_string(),
            seq,
            results: layout.results_prefix(snapshot),
            results_pca: layout.pca_prefix(snapshot),
            pca_model: has_model.then(|| layout.pca_model(snapshot)),
            summary: layout.summary(snapshot),
            errors: layout.errors(snapshot),
            published_at,
            published_at_ms: crate::manifest::unix_now_ms(),
        }
    }

    /// Projects the snapshot's rows and publishes it. Past [`RefitOptions::fanout_parts`]
    /// parts, with a refit queue, the publication is stored and the projection fanned out
    /// ([`RefitOutcome::Projecting`]: the last message publishes it); else both happen here.
    ///
    /// [`RefitOptions::fanout_parts`]: super::super::RefitOptions::fanout_parts
    pub(super) async fn project_and_publish(
        &self,
        snapshot: String,
        seq: u64,
        mut publication: Publication,
        model: Option<&PcaModel>,
    ) -> Result<RefitOutcome> {
        if let Some(sender) = self.sender {
            if publication.parts.len() > self.options.fanout_parts {
                publication.summary.parts_fanned_out = publication.parts.len();
                publication.keep_model_bits(model);
                let (output, layout) = (self.output, &self.layout);
                output
                    .put(
                        &layout.state_publish(&snapshot),
                        serde_json::to_vec(&publication)?.into(),
                    )
                    .await?;
                let per = self.options.parts_per_message;
                let messages = fan_out(sender, self.collection, &publication, per).await?;
                return Ok(RefitOutcome::Projecting {
                    snapshot,
                    seq,
                    parts: publication.parts.len(),
                    messages,
                });
            }
        }
        let (output, layout) = (self.output, &self.layout);
        project_all(
            output,
            layout,
            &snapshot,
            &publication.parts,
            model,
            self.concurrency,
        )
        .await?;
        Ok(
            match publish(output, layout, &publication, self.options, self.sender).await? {
                Published::Ours(summary) => RefitOutcome::Published(summary),
                Published::Lost | Published::InDoubt => RefitOutcome::LostRace,
            },
        )
    }
}
