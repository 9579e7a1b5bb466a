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
use crate::layout::{request_binding, RunLayout};
use crate::limits::RequestLimits;
use crate::manifest::{
    derive_run_id, make_shards, now_rfc3339, run_fingerprint, validate_run_id, ImageRef,
    InputLocation, InvocationCost, Manifest, ReduceMessage, RunOptions, RunRequest, ShardMessage,
};
use crate::ports::queue::Queue;
use crate::ports::store::{ObjectStore, StoreError};

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

/// The prefixes of the pipeline's own objects in its bucket. When the input is that bucket
/// (a deployed stack), they are never listed as input, whatever the request's prefix, and a
/// request naming one of them is refused.
pub const INTERNAL_PREFIXES: [&str; 5] = [
    "runs/",
    "staging/",
    "Results/",
    "Results_PCA/",
    "collections/",
];

/// A validated request's input: its options, its normalized prefix and that prefix's URI,
/// and the images listed under it.
struct RequestListing {
    options: RunOptions,
    prefix: String,
    uri: String,
    images: Vec<ImageRef>,
}

/// Which run a request started (`runs/bindings/<digest>.json`): created once, before the
/// run's manifest, and read by every retry of the same request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestBinding {
    /// What identifies the request across its retries.
    pub identity: String,
    /// The run it started.
    pub run_id: String,
    /// The fingerprint of the listing the binding was made with.
    pub fingerprint: String,
    /// When (RFC 3339).
    pub bound_at: String,
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
    model_spec_sha256: Option<String>,
    reserved: Vec<String>,
    limits: RequestLimits,
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
            model_spec_sha256: None,
            reserved: Vec::new(),
            limits: RequestLimits::local(),
        }
    }

    /// The ceilings requests are held to (default: [`RequestLimits::local`]; a deployed
    /// splitter has the stack's).
    pub fn with_limits(mut self, limits: RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The sha256 of the model the featurizers run: recorded in the manifest and part of
    /// the run id (a featurizer with another model refuses the run's shards).
    pub fn with_model_sha256(mut self, sha256: impl Into<String>) -> Self {
        self.model_sha256 = sha256.into();
        self
    }

    /// The sha256 of the preprocessing spec, when it is not the model's built-in one
    /// (`--model-spec` with another preset or file): part of the run id, so the same images
    /// preprocessed another way make another run instead of resuming this one.
    pub fn with_model_spec_sha256(mut self, sha256: Option<String>) -> Self {
        self.model_spec_sha256 = sha256;
        self
    }

    /// What identifies the model in the run id: the file's sha256, and the spec's when it
    /// is not the built-in one (so that run ids made with the built-in spec do not change).
    fn model_identity(&self) -> String {
        match &self.model_spec_sha256 {
            Some(spec) => format!("{}+spec:{spec}", self.model_sha256),
            None => self.model_sha256.clone(),
        }
    }

    /// Records the bucket name in manifests (S3 inputs). The input is then the pipeline's
    /// own bucket: its [`INTERNAL_PREFIXES`] are reserved.
    pub fn with_input_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.input_bucket = Some(bucket.into());
        for prefix in INTERNAL_PREFIXES {
            self = self.with_reserved_prefix(prefix);
        }
        self
    }

    /// Never lists keys under `prefix` as input, and refuses requests inside it (the
    /// collections' inbox, the pipeline's own prefixes).
    pub fn with_reserved_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        if !prefix.is_empty() && !self.reserved.contains(&prefix) {
            self.reserved.push(prefix);
        }
        self
    }

    /// Refuses an input prefix inside a reserved one.
    fn check_reserved(&self, prefix: &str) -> Result<()> {
        match self
            .reserved
            .iter()
            .find(|r| prefix.starts_with(r.as_str()))
        {
            Some(reserved) => Err(Error::InvalidRequest(format!(
                "input_prefix {prefix:?} is inside {reserved:?}, where the pipeline keeps its own \
                 objects; requests may not read it (give the prefix of your images)"
            ))),
            None => Ok(()),
        }
    }

    /// Starts (or resumes) the run a request asks for. Nothing is written unless the request
    /// is valid and lists at least one image.
    pub async fn handle(&self, request: &RunRequest) -> Result<SplitOutcome> {
        self.handle_bound(request, None).await
    }

    /// [`Self::handle`] for a request with an identity that its retries share (an S3 event's
    /// key and sequencer, a client token, a Lambda request id). The first attempt binds the
    /// identity to its run id (a create-once object, before the manifest); a retry finds the
    /// binding and resumes that run — even when images landed or left in between, which would
    /// otherwise derive another run id and orphan the first run.
    pub async fn handle_bound(
        &self,
        request: &RunRequest,
        identity: Option<&str>,
    ) -> Result<SplitOutcome> {
        let bound = match identity {
            Some(identity) => self.binding(identity).await?,
            None => None,
        };
        if let Some(binding) = &bound {
            if let Some(resumed) = self.resume_bound(binding, identity).await? {
                return Ok(resumed);
            }
        }
        let started = Instant::now();
        let RequestListing {
            options,
            prefix,
            uri,
            images,
        } = self.list_request(request).await?;
        let fingerprint = run_fingerprint(&uri, &options, &images, &self.model_identity());
        let mut run_id = match &bound {
            Some(binding) => binding.run_id.clone(),
            None => request
                .run_id
                .clone()
                .unwrap_or_else(|| derive_run_id(&fingerprint)),
        };
        if let (Some(identity), None) = (identity, &bound) {
            run_id = self.bind(identity, &run_id, &fingerprint).await?;
        }
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
            request: identity.map(str::to_string),
        };
        manifest.splitter = Some(InvocationCost::since(started));
        let created = run_manifest::write(&self.output, &manifest, 16).await?;
        if !created {
            let existing = self.read_manifest(&layout).await?;
            // The run is ours to resume if it holds this listing, or if this request (a
            // concurrent or earlier delivery of it) created it, whatever the listing says now.
            let ours = existing.fingerprint == fingerprint
                || (identity.is_some() && existing.request.as_deref() == identity)
                || bound
                    .as_ref()
                    .is_some_and(|b| b.fingerprint == existing.fingerprint);
            if !ours {
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

    /// The run `binding` names, resumed, if its manifest exists and is this request's: one
    /// this request created, or one holding the very listing bound (a request refused for
    /// reusing another run's id stays refused on its retries). None: no manifest yet.
    async fn resume_bound(
        &self,
        binding: &RequestBinding,
        identity: Option<&str>,
    ) -> Result<Option<SplitOutcome>> {
        let layout = RunLayout::new(&binding.run_id);
        if !self.output.exists(&layout.manifest()).await? {
            return Ok(None);
        }
        let existing = self.read_manifest(&layout).await?;
        let ours =
            existing.request.as_deref() == identity || existing.fingerprint == binding.fingerprint;
        if !ours {
            return Err(Error::InvalidRequest(format!(
                "run {} already exists for other images, options or model \
                 (fingerprint {} vs {}); give another run_id, or none to derive one",
                binding.run_id,
                short(&existing.fingerprint),
                short(&binding.fingerprint)
            )));
        }
        info!(run_id = %binding.run_id, "request already bound to a run: resuming it");
        self.resume(&layout).await.map(Some)
    }

    /// Validates a request (its run id, options and input prefix) and lists its images,
    /// reserved prefixes left out; refuses an empty listing and one over the limits.
    async fn list_request(&self, request: &RunRequest) -> Result<RequestListing> {
        let options = request.options(&self.defaults);
        if let Some(id) = &request.run_id {
            validate_run_id(id)?;
        }
        let filter = ImageFilter::new(&options.image_glob)?;
        self.limits.check_options(&options)?;
        let prefix = normalize_prefix(&request.input_prefix)?;
        self.check_reserved(&prefix)?;
        self.limits.check_prefix(&prefix)?;
        let mut images = list_images(&self.input, &prefix, &filter, &root_name(&prefix)).await?;
        images.retain(|image| {
            let key = format!("{prefix}{}", image.path);
            !self.reserved.iter().any(|r| key.starts_with(r.as_str()))
        });
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
        self.limits.check_shards(images.len(), &options)?;
        self.limits
            .check_components(images.len(), self.feature_dim, &options)?;
        Ok(RequestListing {
            options,
            prefix,
            uri,
            images,
        })
    }

    /// The run a request identity is bound to, if any.
    async fn binding(&self, identity: &str) -> Result<Option<RequestBinding>> {
        match self.output.get(&request_binding(identity)).await {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Binds `identity` to `run_id` (create-once) and returns the run it is bound to: ours,
    /// or, when the create finds a binding (a concurrent retry won, or our own create landed
    /// and its answer was lost), the stored one — read back, never assumed.
    async fn bind(&self, identity: &str, run_id: &str, fingerprint: &str) -> Result<String> {
        let binding = RequestBinding {
            identity: identity.to_string(),
            run_id: run_id.to_string(),
            fingerprint: fingerprint.to_string(),
            bound_at: now_rfc3339(),
        };
        let key = request_binding(identity);
        if self
            .output
            .put_if_absent(&key, serde_json::to_vec_pretty(&binding)?.into())
            .await?
        {
            return Ok(binding.run_id);
        }
        let stored = self.binding(identity).await?.ok_or_else(|| {
            Error::RunState(format!("the binding {key} was refused, then not found"))
        })?;
        if stored.run_id != run_id {
            info!(ours = run_id, bound = %stored.run_id, "a retry of this request bound it first");
        }
        Ok(stored.run_id)
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
