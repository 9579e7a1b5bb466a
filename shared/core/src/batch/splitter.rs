//! The splitter: validates a run request, lists the input (all pages), cuts it into shards,
//! writes the manifest once (conditional create: a re-sent request is the same run) and sends
//! one small message per shard. A re-submitted run resumes: only shards without a done
//! marker are sent again, and a run whose shards are all done is sent to the reducer.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::batch::listing::{list_images, root_name, ImageFilter};
use crate::batch::run_manifest;
use crate::error::{Error, Result};
use crate::layout::RunLayout;
use crate::manifest::{
    derive_run_id, make_shards, now_rfc3339, run_fingerprint, validate_run_id, InputLocation,
    InvocationCost, Manifest, ReduceMessage, RunOptions, RunRequest, ShardMessage,
};
use crate::ports::queue::Queue;
use crate::ports::store::ObjectStore;

/// What the splitter did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitOutcome {
    /// The run.
    pub run_id: String,
    /// Images in the run.
    pub images: usize,
    /// Shards in the run.
    pub shards: usize,
    /// A new run was created (false: an existing one was resumed).
    pub created: bool,
    /// Shard messages sent now.
    pub shards_sent: usize,
    /// A reduce was requested because every shard was already done.
    pub reduce_sent: bool,
    /// The run was already complete: nothing sent.
    pub already_complete: bool,
}

/// The splitter handler, generic over the store and the two queues.
pub struct Splitter<S, Q, R> {
    input: S,
    output: S,
    shard_queue: Q,
    reduce_queue: R,
    defaults: RunOptions,
    feature_dim: usize,
    input_bucket: Option<String>,
    model_sha256: String,
}

impl<S: ObjectStore, Q: Queue, R: Queue> Splitter<S, Q, R> {
    /// A splitter listing images in `input` and writing runs to `output`. `feature_dim` is
    /// the model's output size (requests asking for more components are rejected).
    pub fn new(
        input: S,
        output: S,
        shard_queue: Q,
        reduce_queue: R,
        defaults: RunOptions,
        feature_dim: usize,
    ) -> Self {
        Self {
            input,
            output,
            shard_queue,
            reduce_queue,
            defaults,
            feature_dim,
            input_bucket: None,
            model_sha256: String::new(),
        }
    }

    /// The sha256 of the model the featurizers run: recorded in the manifest and part of
    /// the run id (a featurizer with another model refuses the run's shards).
    pub fn with_model_sha256(mut self, sha256: impl Into<String>) -> Self {
        self.model_sha256 = sha256.into();
        self
    }

    /// Records the bucket name in manifests (S3 inputs).
    pub fn with_input_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.input_bucket = Some(bucket.into());
        self
    }

    /// Starts (or resumes) the run a request asks for. Nothing is written unless the request
    /// is valid and lists at least one image.
    pub async fn handle(&self, request: &RunRequest) -> Result<SplitOutcome> {
        let started = Instant::now();
        let options = request.options(&self.defaults);
        if let Some(id) = &request.run_id {
            validate_run_id(id)?;
        }
        let filter = ImageFilter::new(&options.image_glob)?;
        let prefix = normalize_prefix(&request.input_prefix)?;
        let images = list_images(&self.input, &prefix, &filter, &root_name(&prefix)).await?;
        let uri = match &self.input_bucket {
            Some(bucket) => format!("s3://{bucket}/{prefix}"),
            None => self.input.describe(&prefix),
        };
        if images.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "no images under {uri} (filter {:?}); check input_prefix",
                options.image_glob
            )));
        }
        options.validate(self.feature_dim, images.len())?;
        let fingerprint = run_fingerprint(&uri, &options, &images, &self.model_sha256);
        let run_id = request
            .run_id
            .clone()
            .unwrap_or_else(|| derive_run_id(&fingerprint));
        let layout = RunLayout::new(&run_id);
        let total_images = images.len();
        let shards = make_shards(images, &options);
        let mut manifest = Manifest {
            run_id: run_id.clone(),
            created_at: now_rfc3339(),
            input: InputLocation {
                uri,
                bucket: self.input_bucket.clone(),
                prefix,
            },
            options,
            total_images,
            shards,
            splitter: None,
            model_sha256: self.model_sha256.clone(),
            fingerprint: fingerprint.clone(),
        };
        manifest.splitter = Some(InvocationCost::since(started));
        let created = run_manifest::write(&self.output, &manifest, 16).await?;
        if !created {
            let existing = self.read_manifest(&layout).await?;
            if existing.fingerprint != fingerprint {
                return Err(Error::InvalidRequest(format!(
                    "run {run_id} already exists for other images, options or model \
                     (fingerprint {} vs {}); give another run_id, or none to derive one",
                    short(&existing.fingerprint),
                    short(&fingerprint)
                )));
            }
            return self.resume(&layout).await;
        }
        let messages = manifest
            .shards
            .iter()
            .map(|s| {
                serde_json::to_string(&ShardMessage {
                    run_id: run_id.clone(),
                    shard: s.id,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sent = messages.len();
        self.shard_queue.send_all(messages).await?;
        info!(%run_id, images = total_images, shards = sent, "run created");
        Ok(SplitOutcome {
            run_id,
            images: total_images,
            shards: sent,
            created: true,
            shards_sent: sent,
            reduce_sent: false,
            already_complete: false,
        })
    }

    async fn read_manifest(&self, layout: &RunLayout) -> Result<Manifest> {
        run_manifest::read_header(&self.output, layout).await
    }

    /// Resumes an existing run (`featurize resume`, or the same request again): re-sends the
    /// shards that are not done, or, when all are, the reduce — which also recovers a run
    /// whose reduce message was lost or dead-lettered, or whose reducer died.
    pub async fn resume(&self, layout: &RunLayout) -> Result<SplitOutcome> {
        let manifest = self.read_manifest(layout).await?;
        let mut outcome = SplitOutcome {
            run_id: manifest.run_id.clone(),
            images: manifest.total_images,
            shards: manifest.shards.len(),
            created: false,
            shards_sent: 0,
            reduce_sent: false,
            already_complete: false,
        };
        if self.output.exists(&layout.pca_success()).await? {
            info!(run_id = %manifest.run_id, "run already complete");
            outcome.already_complete = true;
            return Ok(outcome);
        }
        let done: std::collections::BTreeSet<usize> = self
            .output
            .list(&layout.done_prefix())
            .await?
            .iter()
            .filter_map(|o| crate::layout::shard_of_done_marker(&o.key))
            .collect();
        let missing: Vec<String> = manifest
            .shards
            .iter()
            .filter(|s| !done.contains(&s.id))
            .map(|s| {
                serde_json::to_string(&ShardMessage {
                    run_id: manifest.run_id.clone(),
                    shard: s.id,
                })
            })
            .collect::<Result<_, _>>()?;
        if missing.is_empty() {
            let message = ReduceMessage {
                run_id: manifest.run_id.clone(),
                claimed_by_shard: usize::MAX,
            };
            self.reduce_queue
                .send_all(vec![serde_json::to_string(&message)?])
                .await?;
            outcome.reduce_sent = true;
        } else {
            outcome.shards_sent = missing.len();
            self.shard_queue.send_all(missing).await?;
        }
        info!(run_id = %manifest.run_id, shards_sent = outcome.shards_sent, reduce_sent = outcome.reduce_sent, "run resumed");
        Ok(outcome)
    }
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..12.min(fingerprint.len())]
}

/// `""` stays the root; otherwise the prefix exactly as given, with a trailing `/` added
/// when missing (so `images` does not also select `images2/`). No slash is stripped or
/// merged: S3 keys may begin with `/` or contain `//`, and those are other keys. `..` is
/// refused.
pub fn normalize_prefix(prefix: &str) -> Result<String> {
    if prefix.split('/').any(|p| p == "..") {
        return Err(Error::InvalidRequest(format!(
            "input_prefix {prefix:?} must not contain '..'"
        )));
    }
    if prefix.is_empty() {
        return Ok(String::new());
    }
    Ok(if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_kept_as_given() {
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert_eq!(normalize_prefix("images").unwrap(), "images/");
        assert_eq!(normalize_prefix("images/").unwrap(), "images/");
        assert_eq!(normalize_prefix("/images/").unwrap(), "/images/");
        assert_eq!(normalize_prefix("a//b/").unwrap(), "a//b/");
        assert!(normalize_prefix("a/../b").is_err());
    }
}
