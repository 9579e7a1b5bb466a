//! The run's documents: the request that starts it, the options, the manifest the splitter
//! writes, the queue messages, per-image errors and per-shard done markers.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use engine::pca::{PcaConvention, PcaOptions};
use engine::preprocess::ImageErrorKind;

use crate::error::{Error, Result};

/// Default number of images per shard: about 20 s of compute for a 3-vCPU featurizer
/// (14.7 ms per image and core), long enough that per-invocation overhead is small and that
/// a shard's statistics (6.5 MB, a 1280-d co-moment) weigh 1.6 kB per image, less than the
/// features' own 5 kB; short enough that a failed shard is retried within minutes.
/// docs/scale.md has the measurements.
pub const DEFAULT_SHARD_SIZE: usize = 4096;
/// Default image filter (case-insensitive).
pub const DEFAULT_IMAGE_GLOB: &str = "*.{jpg,jpeg,png}";
/// Default decompression-bomb guard: 50 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;
/// Default share of images allowed to fail before the run is declared failed.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.05;
/// Default largest image object, in bytes: 64 MiB. A larger object is that image's error
/// ("too large"), never a failed shard.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 64 * 1024 * 1024;

fn default_max_image_bytes() -> u64 {
    DEFAULT_MAX_IMAGE_BYTES
}

/// Left out of the serialized options when it is the default, so that runs created before
/// the option existed keep their fingerprint (and id).
fn is_default_max_image_bytes(v: &u64) -> bool {
    *v == DEFAULT_MAX_IMAGE_BYTES
}

/// Everything that shapes a run's outputs; part of the run id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// Which files are images (glob on the file name, case-insensitive).
    pub image_glob: String,
    /// Images per shard (used unless `shard_count` is set).
    pub shard_size: usize,
    /// Exact number of shards instead of a size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_count: Option<usize>,
    /// PCA options.
    pub pca: PcaOptions,
    /// Images with more pixels than this are rejected before decoding.
    pub max_pixels: u64,
    /// Share of failed images above which the run fails (no PCA is written).
    pub max_error_rate: f64,
    /// Images larger than this many bytes are rejected before (or while) reading them.
    #[serde(
        default = "default_max_image_bytes",
        skip_serializing_if = "is_default_max_image_bytes"
    )]
    pub max_image_bytes: u64,
    /// The model's preprocessing spec the run is featurized with (its sha256, and its name
    /// and content when known): a featurizer or a `resume` with another spec refuses the run.
    /// Not hashed with the other options: the spec reaches the fingerprint through the
    /// model's identity, and only when it is not the built-in one, so that runs made with the
    /// built-in spec keep their ids. `None` in manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_spec: Option<ModelSpecRecord>,
}

/// What a run records about its model's preprocessing spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpecRecord {
    /// sha256 of the spec's canonical JSON ([`engine::model::ModelSpec::sha256`]; on AWS the
    /// stack's `ModelSpecSha256`, which the featurizers check their layer's spec against).
    pub sha256: String,
    /// The built-in MobileNetV2 spec (`keras-mobilenet`).
    #[serde(default)]
    pub builtin: bool,
    /// The spec's name, when not the built-in one and known (local runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The spec itself (input and output names resolved), when not the built-in one and known
    /// (local runs; a deployed splitter knows only `ModelSpecSha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<engine::model::ModelSpec>,
}

impl ModelSpecRecord {
    /// The record of a loaded model's spec.
    pub fn of(record: &engine::model::ModelRecord) -> Self {
        let builtin = record.spec.is_builtin();
        Self {
            sha256: record.spec_sha256.clone(),
            builtin,
            name: (!builtin).then(|| record.name.clone()),
            spec: (!builtin).then(|| record.spec.clone()),
        }
    }

    /// The record of a spec known by its sha256 only (a deployed splitter's
    /// `ModelSpecSha256`).
    pub fn of_sha256(sha256: &str) -> Self {
        Self {
            sha256: sha256.to_string(),
            builtin: sha256 == engine::model::ModelSpec::builtin_sha256(),
            name: None,
            spec: None,
        }
    }

    /// The spec's sha256 for the run id: `None` for the built-in spec (run ids made with it
    /// stay as they were before the spec was part of them).
    pub fn custom_sha256(&self) -> Option<String> {
        (!self.builtin).then(|| self.sha256.clone())
    }

    /// How the spec reads in messages: its name (or "built-in keras-mobilenet") and sha256.
    pub fn describe(&self) -> String {
        let name = match (&self.name, self.builtin) {
            (_, true) => "the built-in keras-mobilenet spec".to_string(),
            (Some(name), false) => format!("spec {name:?}"),
            (None, false) => "a custom spec".to_string(),
        };
        format!("{name} (sha256 {})", self.sha256)
    }

    /// Refuses to go on with `run_id` (recorded with `recorded`, `None` in manifests written
    /// before specs were recorded: not checked) with the spec `current`: the message names
    /// both specs and what to do.
    pub fn check_same(recorded: Option<&Self>, current: &Self, run_id: &str) -> Result<()> {
        match recorded {
            Some(recorded) if recorded.sha256 != current.sha256 => {
                Err(Error::InvalidRequest(format!(
                    "run {run_id} was made with {}, but this model is preprocessed with {}: \
                     resume it with the spec it was made with (--model-spec), or start a new run \
                     with this one (`featurize run`, which gives it another run id)",
                    recorded.describe(),
                    current.describe()
                )))
            }
            _ => Ok(()),
        }
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            image_glob: DEFAULT_IMAGE_GLOB.to_string(),
            shard_size: DEFAULT_SHARD_SIZE,
            shard_count: None,
            pca: PcaOptions::default(),
            max_pixels: DEFAULT_MAX_PIXELS,
            max_error_rate: DEFAULT_MAX_ERROR_RATE,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            model_spec: None,
        }
    }
}

impl RunOptions {
    /// Checks the options against the data: `feature_dim` from the model, `images` listed.
    pub fn validate(&self, feature_dim: usize, images: usize) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if self.shard_size == 0 {
            return bad("shard_size must be at least 1".into());
        }
        if self.shard_count == Some(0) {
            return bad("shard_count must be at least 1".into());
        }
        if let Some(v) = self.pca.variance {
            if !(v > 0.0 && v <= 1.0) {
                return bad(format!("variance must be in (0, 1], got {v}"));
            }
        } else {
            if self.pca.k == 0 {
                return bad("k must be at least 1".into());
            }
            if self.pca.k > feature_dim {
                return bad(format!(
                    "k = {} is larger than the feature dimension {feature_dim}",
                    self.pca.k
                ));
            }
            // A k above what the images allow (at most n - 1 components) is not refused: the
            // reducer fits min(k, n - 1, dimension) components and records a warning.
        }
        if images == 1 {
            return bad(
                "only 1 image: a PCA needs at least 2 (add images, or check the input)".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return bad(format!(
                "max_error_rate must be in [0, 1], got {}",
                self.max_error_rate
            ));
        }
        if self.max_pixels == 0 {
            return bad("max_pixels must be at least 1".into());
        }
        if self.max_image_bytes == 0 {
            return bad("max_image_bytes must be at least 1".into());
        }
        compile_image_glob(&self.image_glob)?;
        Ok(())
    }
}

/// Compiles an image glob (`RunOptions::image_glob`): tried on file names,
/// case-insensitively (`*.{jpg,jpeg,png}`); a bad glob is an invalid request naming it.
pub fn compile_image_glob(glob: &str) -> Result<globset::GlobMatcher> {
    Ok(globset::GlobBuilder::new(glob)
        .case_insensitive(true)
        .literal_separator(false)
        .build()
        .map_err(|e| Error::InvalidRequest(format!("image glob {glob:?}: {e}")))?
        .compile_matcher())
}

/// A request to run the job, as dropped in `runs/requests/<name>.json`, sent to the splitter
/// directly, or built by the CLI. Unknown fields are rejected so typos fail loudly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Where the images are: a key prefix in the bucket (or a folder, locally).
    pub input_prefix: String,
    /// An explicit run id (otherwise derived from the input and options).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Number of PCA components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Explained-variance target instead of k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance: Option<f64>,
    /// `centered` (default) or `uncentered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convention: Option<PcaConvention>,
    /// Images per shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_size: Option<usize>,
    /// Number of shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_count: Option<usize>,
    /// Image filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_glob: Option<String>,
    /// Decompression-bomb guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pixels: Option<u64>,
    /// Failure threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Largest image object, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_image_bytes: Option<u64>,
}

impl RunRequest {
    /// The options this request asks for, on top of `defaults`.
    pub fn options(&self, defaults: &RunOptions) -> RunOptions {
        let mut o = defaults.clone();
        if let Some(v) = &self.image_glob {
            o.image_glob = v.clone();
        }
        if let Some(v) = self.shard_size {
            o.shard_size = v;
        }
        if self.shard_count.is_some() {
            o.shard_count = self.shard_count;
        }
        if let Some(v) = self.k {
            o.pca.k = v;
            o.pca.variance = None;
        }
        if self.variance.is_some() {
            o.pca.variance = self.variance;
        }
        if let Some(v) = self.convention {
            o.pca.convention = v;
        }
        if let Some(v) = self.max_pixels {
            o.max_pixels = v;
        }
        if let Some(v) = self.max_error_rate {
            o.max_error_rate = v;
        }
        if let Some(v) = self.max_image_bytes {
            o.max_image_bytes = v;
        }
        o
    }
}

/// One input image: its key relative to the input root, and its label (parent folder name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Path relative to the input root, `/`-separated (the `path` column).
    pub path: String,
    /// The parent folder's name (the `label` column).
    pub label: String,
    /// The listed version of the object (ETag, or size and mtime): part of the run's
    /// fingerprint, and kept in the shard lists so that the featurizer reads exactly this
    /// content (`If-Match`; another is a `changed` image error). Empty in lists written
    /// before versions were kept: those images are read unconditionally.
    #[serde(default)]
    pub version: String,
    /// The listed size in bytes: an object over the run's `max_image_bytes` is that image's
    /// error without being read, and the featurizer budgets its prefetch with it. 0 when
    /// unknown (lists written before sizes were kept): the read checks its `Content-Length`.
    /// Not part of the fingerprint (the version covers the content).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One shard of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    /// Shard number, from 0.
    pub id: usize,
    /// Number of images in the shard.
    #[serde(default)]
    pub count: usize,
    /// Its images, in order. Empty in `manifest.json`: each shard's list is an object of its
    /// own (`RunLayout::shard_list`), so a featurizer reads O(its shard), not O(the run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageRef>,
}

/// Where a run's images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputLocation {
    /// Human-readable root: a folder path or `s3://bucket/prefix`.
    pub uri: String,
    /// Bucket, for S3 inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key prefix in the input store that image paths are relative to.
    pub prefix: String,
}

impl InputLocation {
    /// The store key of an image.
    pub fn key_of(&self, image: &ImageRef) -> String {
        format!("{}{}", self.prefix, image.path)
    }
}

/// The run manifest, `runs/<run>/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The run id.
    pub run_id: String,
    /// When the splitter created it (RFC 3339).
    pub created_at: String,
    /// Input location.
    pub input: InputLocation,
    /// Options in force.
    pub options: RunOptions,
    /// Number of images listed.
    pub total_images: usize,
    /// The shards.
    pub shards: Vec<Shard>,
    /// How long the splitter took, and on how much memory (for the cost estimate).
    #[serde(default)]
    pub splitter: Option<InvocationCost>,
    /// sha256 of the model file the run is featurized with; a featurizer with another
    /// model refuses the run's shards, so one PCA never mixes two models.
    #[serde(default)]
    pub model_sha256: String,
    /// sha256 over everything that determines the outputs: input location, each key with
    /// its version, the options and the model. The run id is derived from it; a request
    /// reusing an explicit run id with another fingerprint is refused.
    #[serde(default)]
    pub fingerprint: String,
    /// The identity of the request that created the run, when it was bound
    /// ([`crate::batch::splitter::Splitter::handle_bound`]): only that request's retries
    /// resume the run whatever the listing says now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

impl Manifest {
    /// The manifest without the shards' image lists (what `manifest.json` holds).
    pub fn header(&self) -> Manifest {
        Manifest {
            shards: self
                .shards
                .iter()
                .map(|s| Shard {
                    id: s.id,
                    count: s.count,
                    images: Vec::new(),
                })
                .collect(),
            ..self.clone()
        }
    }
}

/// Billed time of one invocation, for the run's cost estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InvocationCost {
    /// Wall time in milliseconds.
    pub duration_ms: f64,
    /// Memory configured for the function, MB (None when not on Lambda).
    pub memory_mb: Option<u64>,
}

impl InvocationCost {
    /// Measures from `start`, reading the Lambda memory size from the environment.
    pub fn since(start: std::time::Instant) -> Self {
        Self {
            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
            memory_mb: std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .ok()
                .and_then(|m| m.parse().ok()),
        }
    }
}

/// The shard-queue message: small, it references the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMessage {
    /// The run.
    pub run_id: String,
    /// The shard number.
    pub shard: usize,
}

/// The reduce-queue message, sent once by the barrier's winner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReduceMessage {
    /// The run.
    pub run_id: String,
    /// The shard whose featurizer won the claim.
    pub claimed_by_shard: usize,
}

/// One image that failed, with the reason: a row of the run's error list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageError {
    /// The image path (as in `Results.path`).
    pub path: String,
    /// Its label.
    pub label: String,
    /// The kind of failure.
    pub kind: ImageErrorKind,
    /// A specific message.
    pub reason: String,
}

/// Seconds spent per stage, summed over images (threads overlap, so these add up to more
/// than wall time on several cores).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimings {
    /// Reading objects.
    pub fetch_s: f64,
    /// Decoding images.
    pub decode_s: f64,
    /// Resizing and normalizing.
    pub resize_s: f64,
    /// Running the model.
    pub infer_s: f64,
    /// Writing the Parquet part, statistics and markers.
    pub write_s: f64,
    /// Wall time of the shard.
    pub wall_s: f64,
    /// Wall time the inference threads sat idle waiting for an image to arrive (fetching
    /// overlaps inference; this is what the overlap did not hide).
    #[serde(default)]
    pub fetch_wait_s: f64,
}

impl StageTimings {
    /// Adds another shard's timings.
    pub fn add(&mut self, other: &StageTimings) {
        self.fetch_s += other.fetch_s;
        self.decode_s += other.decode_s;
        self.resize_s += other.resize_s;
        self.infer_s += other.infer_s;
        self.write_s += other.write_s;
        self.wall_s += other.wall_s;
        self.fetch_wait_s += other.fetch_wait_s;
    }
}

/// A shard's done marker, its commit point: created once, it names the one attempt whose
/// part, statistics and errors are the shard's, and what the reducer checks them against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneMarker {
    /// The shard number.
    pub shard: usize,
    /// The committed attempt (its objects are under `runs/<run>/attempts/shard-N/<attempt>/`).
    pub attempt: String,
    /// sha256 of the committed Parquet part.
    pub part_sha256: String,
    /// Images in the shard.
    pub images: usize,
    /// Rows written to `Results`.
    pub rows: usize,
    /// Images in the error list.
    pub errors: usize,
    /// Per-stage time.
    pub timings: StageTimings,
    /// The invocation's cost inputs.
    pub cost: InvocationCost,
    /// When the shard finished (Unix milliseconds): the report's throughput over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The shard's error list (as the attempt's `errors.json`), kept in the marker so that it
    /// outlives the `staging/` lifecycle. Empty in markers written before it was kept: their
    /// readers fall back to the committed attempt's `errors.json`.
    #[serde(default)]
    pub error_list: Vec<ImageError>,
    /// sha256 (hex) of the attempt's `stats.bin`, which the reducer checks before using it
    /// ("tampered or corrupt" otherwise). `None` in markers written before it was kept: the
    /// reducer then does not trust the file and recomputes the statistics from the part,
    /// which `part_sha256` verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_sha256: Option<String>,
    /// sha256 (hex) of the attempt's `errors.json` (the JSON of `error_list`), checked by the
    /// reducer against the list it uses. `None` in markers written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_sha256: Option<String>,
    /// The engine that ran the model in this shard (`native (avx2)`, `tract`, ...: each
    /// featurizer may run on another CPU). `None` in markers written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

/// The fingerprint of a run: sha256 (hex) over the input location, every listed key with
/// its version (ETag, or size and mtime), the options, the model's sha256 and the version of
/// the featurizing code ([`engine::FEATURIZER_VERSION`]). The same request over unchanged
/// images, model and code is the same run; any change makes a new one.
pub fn run_fingerprint(
    input_uri: &str,
    options: &RunOptions,
    images: &[ImageRef],
    model_sha256: &str,
) -> String {
    fingerprint_with_code(
        input_uri,
        options,
        images,
        model_sha256,
        engine::FEATURIZER_VERSION,
    )
}

/// [`run_fingerprint`] with the featurizing code's version given.
fn fingerprint_with_code(
    input_uri: &str,
    options: &RunOptions,
    images: &[ImageRef],
    model_sha256: &str,
    featurizer_version: u32,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"featurizer ");
    hasher.update(featurizer_version.to_le_bytes());
    hasher.update([0]);
    hasher.update(input_uri.as_bytes());
    hasher.update([0]);
    // The spec is hashed through the model's identity (custom specs only), not here.
    let options = RunOptions {
        model_spec: None,
        ..options.clone()
    };
    hasher.update(serde_json::to_vec(&options).expect("options serialize"));
    hasher.update([0]);
    hasher.update(model_sha256.as_bytes());
    for image in images {
        hasher.update([0]);
        hasher.update(image.path.as_bytes());
        hasher.update([1]);
        hasher.update(image.version.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The run id derived from a fingerprint.
pub fn derive_run_id(fingerprint: &str) -> String {
    format!("run-{}", &fingerprint[..16.min(fingerprint.len())])
}

/// Names under `runs/` that are not runs: `runs/requests/` (run requests; the S3 event that
/// starts the splitter fires on `runs/requests/*.json`, so a run's own JSON there would start
/// it), `runs/request-results/` (the splitter's record of each request) and `runs/_health/`
/// (the functions' health records, [`crate::health`]).
pub const RESERVED_RUN_IDS: &[&str] =
    &["requests", "request-results", crate::layout::HEALTH_RUN_ID];

/// Checks an explicit run id: it becomes part of keys, so keep it to a safe alphabet, and
/// away from the keys under `runs/` that are not runs ([`RESERVED_RUN_IDS`]).
pub fn validate_run_id(run_id: &str) -> Result<()> {
    if RESERVED_RUN_IDS.contains(&run_id) {
        return Err(Error::InvalidRequest(format!(
            "run id {run_id:?} is reserved (runs/{run_id}/ holds {}); choose another",
            match run_id {
                "requests" => "run requests",
                "request-results" => "the splitter's request results",
                _ => "the functions' health records",
            }
        )));
    }
    let ok = !run_id.is_empty()
        && run_id.len() <= 128
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !run_id.starts_with('.');
    if !ok {
        return Err(Error::InvalidRequest(format!(
            "run id {run_id:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

/// Cuts the sorted images into shards.
pub fn make_shards(images: Vec<ImageRef>, options: &RunOptions) -> Vec<Shard> {
    if images.is_empty() {
        return Vec::new();
    }
    let size = match options.shard_count {
        Some(count) => images.len().div_ceil(count.max(1)),
        None => options.shard_size.max(1),
    };
    images
        .chunks(size)
        .enumerate()
        .map(|(id, chunk)| Shard {
            id,
            count: chunk.len(),
            images: chunk.to_vec(),
        })
        .collect()
}

/// The current time, Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current time, Unix milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix milliseconds of an RFC 3339 time (as [`now_rfc3339`] writes), if it parses.
pub fn rfc3339_to_unix_ms(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The current time, RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
