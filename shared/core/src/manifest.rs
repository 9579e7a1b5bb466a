//! The run's documents: the request that starts it, the options, the manifest the splitter
//! writes, the queue messages, per-image errors and per-shard done markers.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use engine::pca::{PcaConvention, PcaOptions};
use engine::preprocess::ImageErrorKind;

use crate::error::{Error, Result};
pub use crate::limits::{
    RequestLimits, DEFAULT_MAX_PCA_K, DEFAULT_MAX_SHARDS_PER_RUN, DEFAULT_MAX_SHARD_SIZE,
    DEFAULT_MIN_SHARD_SIZE, LOCAL_MAX_IMAGE_BYTES, LOCAL_MAX_PIXELS,
};

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
        crate::batch::listing::ImageFilter::new(&self.image_glob)?;
        Ok(())
    }
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
    hasher.update(serde_json::to_vec(options).expect("options serialize"));
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
    &["requests", "request-results", crate::health::HEALTH_RUN_ID];

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
mod tests {
    use super::*;

    fn images(n: usize) -> Vec<ImageRef> {
        (0..n)
            .map(|i| ImageRef {
                path: format!("c/{i:03}.jpg"),
                label: "c".into(),
                version: format!("etag-{i}"),
                size: 0,
            })
            .collect()
    }

    #[test]
    fn shards_by_size_and_by_count() {
        let mut o = RunOptions {
            shard_size: 4,
            ..Default::default()
        };
        let s = make_shards(images(10), &o);
        assert_eq!(
            s.iter().map(|s| s.images.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert_eq!(s[2].id, 2);
        o.shard_count = Some(3);
        let s = make_shards(images(10), &o);
        assert_eq!(
            s.iter().map(|s| s.images.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        o.shard_count = Some(20);
        assert_eq!(make_shards(images(10), &o).len(), 10);
        assert!(make_shards(Vec::new(), &o).is_empty());
    }

    #[test]
    fn run_id_is_stable_and_sensitive() {
        let o = RunOptions::default();
        let id = |uri: &str, o: &RunOptions, images: &[ImageRef], model: &str| {
            derive_run_id(&run_fingerprint(uri, o, images, model))
        };
        let a = id("/in", &o, &images(3), "m1");
        assert_eq!(a, id("/in", &o, &images(3), "m1"));
        assert_ne!(a, id("/in", &o, &images(4), "m1"));
        assert_ne!(
            a,
            id("/in", &o, &images(3), "m2"),
            "the model is part of it"
        );
        let mut overwritten = images(3);
        overwritten[1].version = "etag-new".into();
        assert_ne!(
            a,
            id("/in", &o, &overwritten, "m1"),
            "so is each image's version"
        );
        let bumped = derive_run_id(&fingerprint_with_code(
            "/in",
            &o,
            &images(3),
            "m1",
            engine::FEATURIZER_VERSION + 1,
        ));
        assert_ne!(a, bumped, "so is the featurizing code's version");
        assert!(validate_run_id("requests").is_err());
        assert!(validate_run_id("request-results").is_err());
        let o2 = RunOptions {
            pca: PcaOptions {
                k: 10,
                ..Default::default()
            },
            ..o.clone()
        };
        assert_ne!(a, id("/in", &o2, &images(3), "m1"));
        assert!(validate_run_id(&a).is_ok());
        assert!(validate_run_id("../x").is_err());
    }

    #[test]
    fn run_ids_colliding_with_reserved_keys_are_rejected() {
        for reserved in RESERVED_RUN_IDS {
            let msg = validate_run_id(reserved).unwrap_err().to_string();
            assert!(msg.contains("is reserved"), "{msg}");
        }
        assert!(validate_run_id("requests-2").is_ok());
        assert!(
            validate_run_id("Requests").is_ok(),
            "S3 keys are case-sensitive"
        );
    }

    #[test]
    fn request_rejects_unknown_fields_and_validates() {
        let err = serde_json::from_str::<RunRequest>(r#"{"input_prefix":"a/","kk":3}"#);
        assert!(err.is_err());
        let req: RunRequest = serde_json::from_str(r#"{"input_prefix":"a/","k":2000}"#).unwrap();
        let o = req.options(&RunOptions::default());
        let msg = o.validate(1280, 5000).unwrap_err().to_string();
        assert!(
            msg.contains("larger than the feature dimension 1280"),
            "{msg}"
        );
        let req: RunRequest =
            serde_json::from_str(r#"{"input_prefix":"a/","variance":0.95}"#).unwrap();
        assert!(req
            .options(&RunOptions::default())
            .validate(1280, 3)
            .is_ok());
    }

    #[test]
    fn fewer_images_than_k_is_accepted_but_one_image_is_not() {
        let o = RunOptions::default();
        assert_eq!(o.pca.k, 50);
        assert!(o.validate(1280, 30).is_ok(), "the reducer clamps k instead");
        let msg = o.validate(1280, 1).unwrap_err().to_string();
        assert!(msg.contains("a PCA needs at least 2"), "{msg}");
    }

    #[test]
    fn shard_lists_keep_versions_and_read_old_lists() {
        let listed = images(2);
        let json = serde_json::to_string(&listed).unwrap();
        assert!(json.contains("etag-1"), "{json}");
        let back: Vec<ImageRef> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, listed);
        let old: Vec<ImageRef> =
            serde_json::from_str(r#"[{"path":"c/000.jpg","label":"c"}]"#).unwrap();
        assert_eq!(
            old[0].version, "",
            "a list written before versions were kept"
        );
    }

    #[test]
    fn done_markers_keep_the_error_list_and_read_old_markers() {
        let marker = DoneMarker {
            shard: 3,
            attempt: "a1".into(),
            part_sha256: "00".into(),
            images: 2,
            rows: 1,
            errors: 1,
            timings: StageTimings::default(),
            cost: InvocationCost {
                duration_ms: 1.0,
                memory_mb: None,
            },
            finished_at_ms: None,
            stats_sha256: Some("11".into()),
            errors_sha256: None,
            error_list: vec![ImageError {
                path: "c/1.jpg".into(),
                label: "c".into(),
                kind: ImageErrorKind::Archived,
                reason: "archived".into(),
            }],
        };
        let json = serde_json::to_value(&marker).unwrap();
        assert_eq!(json["error_list"][0]["kind"], "archived");
        let back: DoneMarker = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, marker);
        assert_eq!(json["stats_sha256"], "11");
        assert!(json.get("errors_sha256").is_none(), "None is left out");
        let mut old = json;
        old.as_object_mut().unwrap().remove("error_list");
        old.as_object_mut().unwrap().remove("stats_sha256");
        let old: DoneMarker = serde_json::from_value(old).unwrap();
        assert!(old.error_list.is_empty());
        assert_eq!(old.stats_sha256, None, "a marker from before the checksums");
    }

    #[test]
    fn the_image_size_limit_keeps_old_run_ids_and_reads_old_manifests() {
        let o = RunOptions::default();
        let json = serde_json::to_value(&o).unwrap();
        assert!(
            json.get("max_image_bytes").is_none(),
            "the default is left out, so run ids made before it existed stay the same"
        );
        let back: RunOptions = serde_json::from_value(json).unwrap();
        assert_eq!(back.max_image_bytes, DEFAULT_MAX_IMAGE_BYTES);
        let smaller = RunOptions {
            max_image_bytes: 1 << 20,
            ..o.clone()
        };
        assert_eq!(
            serde_json::to_value(&smaller).unwrap()["max_image_bytes"],
            1 << 20
        );
        assert_ne!(
            run_fingerprint("/in", &o, &images(3), "m"),
            run_fingerprint("/in", &smaller, &images(3), "m"),
            "another limit is another run"
        );
        let req: RunRequest =
            serde_json::from_str(r#"{"input_prefix":"a/","max_image_bytes":1000}"#).unwrap();
        assert_eq!(req.options(&o).max_image_bytes, 1000);
        let zero = RunOptions {
            max_image_bytes: 0,
            ..o
        };
        assert!(zero.validate(1280, 10).is_err());
    }

    #[test]
    fn rfc3339_round_trip() {
        let ms = rfc3339_to_unix_ms("2026-01-02T03:04:05.250Z").unwrap();
        assert_eq!(ms, 1_767_323_045_250);
        assert!(rfc3339_to_unix_ms("yesterday").is_none());
        let now = rfc3339_to_unix_ms(&now_rfc3339()).unwrap();
        assert!(now.abs_diff(unix_now_ms()) < 5_000);
    }
}
