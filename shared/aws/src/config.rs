//! Configuration of the Lambdas, from the environment variables the SAM template sets,
//! read once at cold start.

use std::path::PathBuf;
use std::time::Duration;

use engine::pca::PcaConvention;
use pipeline::batch::featurizer::FeaturizerSettings;
use pipeline::batch::reducer::{Pricing, ReducerSettings};
use pipeline::batch::splitter::INTERNAL_PREFIXES;
use pipeline::error::{Error, Result};
use pipeline::limits::RequestLimits;
use pipeline::manifest::{RunOptions, DEFAULT_IMAGE_GLOB};
use pipeline::stuck::{defaults as stall, StallPolicy};

/// Everything the three functions read from their environment. Queue URLs are optional
/// here; each function asks for the ones it needs with a clear error.
#[derive(Debug, Clone)]
pub struct Config {
    /// `BUCKET`: the data bucket (inputs, runs, results).
    pub bucket: String,
    /// `SHARD_QUEUE_URL`: the shard queue (splitter sends).
    pub shard_queue_url: Option<String>,
    /// `REDUCE_QUEUE_URL`: the reduce queue (featurizer and splitter send).
    pub reduce_queue_url: Option<String>,
    /// `MODEL_PATH`: the ONNX file (from the layer).
    pub model_path: PathBuf,
    /// `MODEL_SPEC_PATH`: its spec.
    pub model_spec_path: PathBuf,
    /// `FEATURE_DIM`: the model's output size, for the splitter's request validation.
    pub feature_dim: usize,
    /// `MODEL_SHA256`: the deployed model's checksum, recorded by the splitter in each run
    /// (featurizers refuse the shards of a run made for another model).
    pub model_sha256: String,
    /// `MODEL_SPEC_SHA256`: the sha256 of the layer's preprocessing spec (the stack's
    /// `ModelSpecSha256`; unset: the built-in MobileNetV2 spec's). The splitter records it in
    /// each run and, when it is not the built-in one, in the run id; the featurizer's cold
    /// start checks its layer's spec against it.
    pub model_spec_sha256: String,
    /// Default run options (`SHARD_SIZE`, `PCA_K`, `PCA_VARIANCE`, `PCA_CONVENTION`,
    /// `IMAGE_GLOB`, `MAX_PIXELS`, `MAX_ERROR_RATE`, `MAX_IMAGE_BYTES`).
    pub run_defaults: RunOptions,
    /// The ceilings of run requests ([`limits_from`]): `INPUT_PREFIXES`, `MIN_SHARD_SIZE`,
    /// `MAX_SHARD_SIZE`, `MAX_SHARDS_PER_RUN`, `MAX_PCA_K`, and `MAX_PIXELS` and
    /// `MAX_IMAGE_BYTES` (each both the default and the ceiling).
    pub limits: RequestLimits,
    /// `FETCH_CONCURRENCY`, `WORKER_THREADS`, `DEADLINE_MARGIN_SECS`.
    pub featurizer: FeaturizerSettings,
    /// `REDUCE_CONCURRENCY`, the lock's stale time ([`lock_stale_after`]), `PRICE_PER_GB_SECOND`,
    /// `PRICE_PER_REQUEST`.
    pub reducer: ReducerSettings,
    /// `INBOX_PREFIX`: images created under `<inbox>/<collection>/` are ingested (default `inbox/`).
    pub inbox_prefix: String,
    /// `REFIT_QUEUE_URL`: the refit queue (the featurizer sends delayed refit messages).
    pub refit_queue_url: Option<String>,
    /// `QUIET_SECS`: a collection is refitted once no change landed for this long (<= 900).
    pub quiet_secs: u32,
    /// `MAX_STALENESS_SECS`: a collection's change is published within this plus one refit.
    pub max_staleness_secs: u64,
    /// When a run or a collection is stuck (the scheduled checker): `FEATURIZER_TIMEOUT_SECS`,
    /// `SHARD_VISIBILITY_SECS`, `REDUCER_TIMEOUT_SECS`, `REDUCE_VISIBILITY_SECS`,
    /// `MAX_RECEIVE_COUNT`, `STUCK_GRACE_SECS`, `STUCK_MARGIN_SECS`, `MAX_STALENESS_SECS`.
    pub stall: StallPolicy,
    /// `INGEST_QUEUE_URL`: the ingest queue (the checker's scheduled reconcile sends to it).
    pub ingest_queue_url: Option<String>,
    /// `STACK_NAME`: the stack, the dimension of the checker's metrics.
    pub stack_name: String,
    /// `CHECKER_MAX_ITEMS`: runs (and collections) the checker examines per invocation.
    pub checker_max_items: usize,
}

/// The reducer's lock stale time: `REDUCE_LOCK_STALE_SECS` when set, else
/// `REDUCER_TIMEOUT_SECS` + `REDUCE_LOCK_MARGIN_SECS` (default 60) when the timeout is known,
/// else 900 s. A lock younger than the reducer's timeout may belong to a live reducer, so a
/// stale time at or below a known timeout is refused.
pub fn lock_stale_after(
    stale_secs: Option<u64>,
    reducer_timeout_secs: Option<u64>,
    margin_secs: u64,
) -> Result<Duration> {
    if margin_secs == 0 {
        return Err(Error::Config(
            "REDUCE_LOCK_MARGIN_SECS must be at least 1 s".into(),
        ));
    }
    let stale = match (stale_secs, reducer_timeout_secs) {
        (Some(stale), Some(timeout)) if stale <= timeout => {
            return Err(Error::Config(format!(
                "REDUCE_LOCK_STALE_SECS={stale} must be greater than the reducer's timeout                  (REDUCER_TIMEOUT_SECS={timeout}): a live reducer's lock could be taken over"
            )))
        }
        (Some(stale), _) => stale,
        (None, Some(timeout)) => timeout + margin_secs,
        (None, None) => ReducerSettings::default().lock_stale_after.as_secs(),
    };
    Ok(Duration::from_secs(stale))
}

fn optional<T: std::str::FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    var(name)
        .map(|text| {
            text.parse()
                .map_err(|e| Error::Config(format!("{name}={text:?}: {e}")))
        })
        .transpose()
}

/// The stuck bounds from the environment (defaults: the template's).
fn stall_from_env(reducer_timeout: Option<u64>, max_staleness: u64) -> Result<StallPolicy> {
    let secs = |name: &str, default: u64| parsed(name, default).map(Duration::from_secs);
    let start_grace = secs("STUCK_GRACE_SECS", stall::START_GRACE_S)?;
    Ok(StallPolicy {
        featurizer_timeout: secs("FEATURIZER_TIMEOUT_SECS", stall::FEATURIZER_TIMEOUT_S)?,
        shard_visibility: secs("SHARD_VISIBILITY_SECS", stall::SHARD_VISIBILITY_S)?,
        reducer_timeout: Duration::from_secs(reducer_timeout.unwrap_or(stall::REDUCER_TIMEOUT_S)),
        reduce_visibility: secs("REDUCE_VISIBILITY_SECS", stall::REDUCE_VISIBILITY_S)?,
        max_receive_count: parsed("MAX_RECEIVE_COUNT", stall::MAX_RECEIVE_COUNT)?,
        start_grace,
        claim_unanswered_after: start_grace,
        margin: secs("STUCK_MARGIN_SECS", stall::MARGIN_S)?,
        max_staleness: Duration::from_secs(max_staleness),
    })
}

/// The request ceilings from the variables `get` reads, over the stack's defaults
/// ([`RequestLimits::stack_defaults`]); `MAX_PIXELS` and `MAX_IMAGE_BYTES` are the run
/// defaults' values. Refused: a bound below 1, a minimum above its maximum, defaults outside
/// the bounds, and an input prefix inside the pipeline's own ones.
pub fn limits_from(
    get: &dyn Fn(&str) -> Option<String>,
    run_defaults: &RunOptions,
) -> Result<RequestLimits> {
    let number = |name: &str, default: usize| -> Result<usize> {
        match get(name) {
            None => Ok(default),
            Some(text) => match text.parse::<usize>() {
                Ok(0) => Err(Error::Config(format!("{name}=0: must be at least 1"))),
                Ok(v) => Ok(v),
                Err(e) => Err(Error::Config(format!("{name}={text:?}: {e}"))),
            },
        }
    };
    let stack = RequestLimits::stack_defaults();
    let mut input_prefixes = Vec::new();
    for prefix in get("INPUT_PREFIXES").unwrap_or_default().split(',') {
        let prefix = prefix.trim();
        if prefix.is_empty() {
            continue;
        }
        let prefix = pipeline::batch::splitter::normalize_prefix(prefix)
            .map_err(|e| Error::Config(format!("INPUT_PREFIXES: {e}")))?;
        if let Some(internal) = INTERNAL_PREFIXES
            .iter()
            .find(|i| prefix.starts_with(**i) || i.starts_with(prefix.as_str()))
        {
            return Err(Error::Config(format!(
                "INPUT_PREFIXES: {prefix:?} overlaps the pipeline's own prefix {internal:?}"
            )));
        }
        input_prefixes.push(prefix);
    }
    let limits = RequestLimits {
        input_prefixes,
        min_shard_size: number("MIN_SHARD_SIZE", stack.min_shard_size)?,
        max_shard_size: number("MAX_SHARD_SIZE", stack.max_shard_size)?,
        max_shards_per_run: number("MAX_SHARDS_PER_RUN", stack.max_shards_per_run)?,
        max_pca_k: number("MAX_PCA_K", stack.max_pca_k)?,
        max_pixels: run_defaults.max_pixels,
        max_image_bytes: run_defaults.max_image_bytes,
        from_stack: true,
    };
    if limits.min_shard_size > limits.max_shard_size {
        return Err(Error::Config(format!(
            "MIN_SHARD_SIZE={} is above MAX_SHARD_SIZE={}",
            limits.min_shard_size, limits.max_shard_size
        )));
    }
    limits
        .check_options(run_defaults)
        .map_err(|e| Error::Config(format!("the default run options break the ceilings: {e}")))?;
    Ok(limits)
}

/// `MODEL_SPEC_SHA256`'s value: 64 lowercase hex digits, or the built-in spec's sha256 when
/// unset.
pub fn model_spec_sha256_from(value: Option<String>) -> Result<String> {
    match value {
        None => Ok(engine::model::ModelSpec::builtin_sha256()),
        Some(sha)
            if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(sha)
        }
        Some(other) => Err(Error::Config(format!(
            "MODEL_SPEC_SHA256={other:?} is not a sha256 (64 lowercase hex digits): set the \
             stack's ModelSpecSha256 to the value infra/build-layer.sh prints"
        ))),
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn parsed<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|e| Error::Config(format!("{name}={text:?}: {e}"))),
    }
}

impl Config {
    /// Reads the environment. `BUCKET` is required; the rest has defaults.
    pub fn from_env() -> Result<Self> {
        let bucket = var("BUCKET")
            .ok_or_else(|| Error::Config("BUCKET is not set (the data bucket name)".into()))?;
        let model_path = PathBuf::from(
            var("MODEL_PATH").unwrap_or_else(|| "/opt/model/mobilenet_v2_features.onnx".into()),
        );
        let model_spec_path = var("MODEL_SPEC_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| model_path.with_file_name("model_spec.json"));
        let defaults = RunOptions::default();
        let mut run_defaults = RunOptions {
            image_glob: var("IMAGE_GLOB").unwrap_or_else(|| DEFAULT_IMAGE_GLOB.into()),
            shard_size: parsed("SHARD_SIZE", defaults.shard_size)?,
            max_pixels: parsed("MAX_PIXELS", defaults.max_pixels)?,
            max_error_rate: parsed("MAX_ERROR_RATE", defaults.max_error_rate)?,
            max_image_bytes: parsed("MAX_IMAGE_BYTES", defaults.max_image_bytes)?,
            ..defaults
        };
        run_defaults.pca.k = parsed("PCA_K", run_defaults.pca.k)?;
        if let Some(v) = var("PCA_VARIANCE") {
            run_defaults.pca.variance = Some(
                v.parse()
                    .map_err(|e| Error::Config(format!("PCA_VARIANCE={v:?}: {e}")))?,
            );
        }
        if let Some(c) = var("PCA_CONVENTION") {
            run_defaults.pca.convention =
                PcaConvention::parse(&c).map_err(|e| Error::Config(e.to_string()))?;
        }
        let limits = limits_from(&|name: &str| var(name), &run_defaults)?;
        let featurizer = FeaturizerSettings {
            fetch_concurrency: parsed("FETCH_CONCURRENCY", 16usize)?,
            worker_threads: parsed("WORKER_THREADS", 0usize)?,
            deadline_margin: Duration::from_secs(parsed("DEADLINE_MARGIN_SECS", 20u64)?),
            // Set by Lambda: the byte budget is a share of the function's memory.
            prefetch_bytes: pipeline::batch::featurizer::prefetch_bytes_for_memory(optional(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            )?),
        };
        let pricing = Pricing::default();
        let reducer_timeout = optional::<u64>("REDUCER_TIMEOUT_SECS")?;
        let reducer = ReducerSettings {
            concurrency: parsed("REDUCE_CONCURRENCY", 4usize)?,
            lock_stale_after: lock_stale_after(
                optional("REDUCE_LOCK_STALE_SECS")?,
                reducer_timeout,
                parsed("REDUCE_LOCK_MARGIN_SECS", 60u64)?,
            )?,
            pricing: Pricing {
                per_gb_second: parsed("PRICE_PER_GB_SECOND", pricing.per_gb_second)?,
                per_request: parsed("PRICE_PER_REQUEST", pricing.per_request)?,
            },
            ..ReducerSettings::default()
        };
        let max_staleness_secs = parsed("MAX_STALENESS_SECS", stall::MAX_STALENESS_S)?;
        Ok(Self {
            bucket,
            shard_queue_url: var("SHARD_QUEUE_URL"),
            reduce_queue_url: var("REDUCE_QUEUE_URL"),
            model_path,
            model_spec_path,
            feature_dim: parsed("FEATURE_DIM", 1280usize)?,
            model_sha256: var("MODEL_SHA256").unwrap_or_default(),
            model_spec_sha256: model_spec_sha256_from(var("MODEL_SPEC_SHA256"))?,
            run_defaults,
            limits,
            featurizer,
            reducer,
            inbox_prefix: var("INBOX_PREFIX").unwrap_or_else(|| "inbox/".into()),
            refit_queue_url: var("REFIT_QUEUE_URL"),
            quiet_secs: parsed("QUIET_SECS", 60u32)?.min(900),
            max_staleness_secs,
            stall: stall_from_env(reducer_timeout, max_staleness_secs)?,
            ingest_queue_url: var("INGEST_QUEUE_URL"),
            stack_name: var("STACK_NAME").unwrap_or_else(|| "featurize".into()),
            checker_max_items: parsed("CHECKER_MAX_ITEMS", 200usize)?.max(1),
        })
    }

    /// What the splitter records of the layer's spec in each run (its sha256 only: the
    /// splitter has no layer).
    pub fn model_spec_record(&self) -> pipeline::manifest::ModelSpecRecord {
        pipeline::manifest::ModelSpecRecord::of_sha256(&self.model_spec_sha256)
    }

    /// `SHARD_QUEUE_URL`, or a clear error.
    pub fn shard_queue_url(&self) -> Result<&str> {
        self.shard_queue_url
            .as_deref()
            .ok_or_else(|| Error::Config("SHARD_QUEUE_URL is not set".into()))
    }

    /// `REFIT_QUEUE_URL`, or a clear error.
    pub fn refit_queue_url(&self) -> Result<&str> {
        self.refit_queue_url
            .as_deref()
            .ok_or_else(|| Error::Config("REFIT_QUEUE_URL is not set".into()))
    }

    /// `INGEST_QUEUE_URL`, or a clear error.
    pub fn ingest_queue_url(&self) -> Result<&str> {
        self.ingest_queue_url
            .as_deref()
            .ok_or_else(|| Error::Config("INGEST_QUEUE_URL is not set".into()))
    }

    /// `REDUCE_QUEUE_URL`, or a clear error.
    pub fn reduce_queue_url(&self) -> Result<&str> {
        self.reduce_queue_url
            .as_deref()
            .ok_or_else(|| Error::Config("REDUCE_QUEUE_URL is not set".into()))
    }
}

/// The four functions, for [`env_vars`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Starts runs.
    Splitter,
    /// Featurizes shards.
    Featurizer,
    /// Fits and writes the PCA.
    Reducer,
    /// On a schedule: finds stuck runs and collections (metrics for the alarms), and
    /// reconciles the collections.
    Checker,
}

/// The environment variables each function's behaviour depends on: the SAM template must set
/// every one of them (checked by the template test). `PCA_VARIANCE` is optional by design.
pub fn env_vars(role: Role) -> &'static [&'static str] {
    match role {
        Role::Splitter => &[
            "BUCKET",
            "SHARD_QUEUE_URL",
            "REDUCE_QUEUE_URL",
            "FEATURE_DIM",
            "MODEL_SHA256",
            "MODEL_SPEC_SHA256",
            "SHARD_SIZE",
            "PCA_K",
            "PCA_CONVENTION",
            "IMAGE_GLOB",
            "MAX_PIXELS",
            "MAX_ERROR_RATE",
            "MAX_IMAGE_BYTES",
            "INPUT_PREFIXES",
            "MIN_SHARD_SIZE",
            "MAX_SHARD_SIZE",
            "MAX_SHARDS_PER_RUN",
            "MAX_PCA_K",
            "LOG_FORMAT",
            "RUST_LOG",
        ],
        Role::Featurizer => &[
            "BUCKET",
            "REDUCE_QUEUE_URL",
            "MODEL_PATH",
            "MODEL_SPEC_PATH",
            "MODEL_SHA256",
            "MODEL_SPEC_SHA256",
            "FETCH_CONCURRENCY",
            "WORKER_THREADS",
            "DEADLINE_MARGIN_SECS",
            "INBOX_PREFIX",
            "REFIT_QUEUE_URL",
            "QUIET_SECS",
            "IMAGE_GLOB",
            "MAX_PIXELS",
            "MAX_IMAGE_BYTES",
            "LOG_FORMAT",
            "RUST_LOG",
        ],
        Role::Reducer => &[
            "BUCKET",
            "REDUCE_CONCURRENCY",
            "REDUCER_TIMEOUT_SECS",
            "REDUCE_LOCK_MARGIN_SECS",
            "PRICE_PER_GB_SECOND",
            "PRICE_PER_REQUEST",
            "INBOX_PREFIX",
            "QUIET_SECS",
            "MAX_STALENESS_SECS",
            "REFIT_QUEUE_URL",
            "PCA_K",
            "PCA_CONVENTION",
            "MAX_IMAGE_BYTES",
            "LOG_FORMAT",
            "RUST_LOG",
        ],
        Role::Checker => &[
            "BUCKET",
            "STACK_NAME",
            "FEATURIZER_TIMEOUT_SECS",
            "SHARD_VISIBILITY_SECS",
            "REDUCER_TIMEOUT_SECS",
            "REDUCE_VISIBILITY_SECS",
            "MAX_RECEIVE_COUNT",
            "STUCK_GRACE_SECS",
            "STUCK_MARGIN_SECS",
            "MAX_STALENESS_SECS",
            "CHECKER_MAX_ITEMS",
            "INBOX_PREFIX",
            "IMAGE_GLOB",
            "INGEST_QUEUE_URL",
            "REFIT_QUEUE_URL",
            "LOG_FORMAT",
            "RUST_LOG",
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_stale_time_exceeds_a_known_reducer_timeout() {
        let secs = |d: Duration| d.as_secs();
        // Derived: the timeout plus the margin.
        assert_eq!(
            lock_stale_after(None, Some(300), 60).map(secs).unwrap(),
            360
        );
        // Explicit and longer than the timeout: kept.
        assert_eq!(
            lock_stale_after(Some(301), Some(300), 60)
                .map(secs)
                .unwrap(),
            301
        );
        // Explicit at or below the timeout: refused.
        for stale in [300, 60] {
            let e = lock_stale_after(Some(stale), Some(300), 60).unwrap_err();
            assert!(
                e.to_string().contains("greater than the reducer's timeout"),
                "{e}"
            );
        }
        // No timeout known: the explicit value, else the reducer's default.
        assert_eq!(
            lock_stale_after(Some(120), None, 60).map(secs).unwrap(),
            120
        );
        assert_eq!(lock_stale_after(None, None, 60).map(secs).unwrap(), 900);
        assert!(lock_stale_after(None, Some(300), 0).is_err());
    }

    #[test]
    fn the_spec_sha256_defaults_to_the_builtin_spec_and_is_checked() {
        let builtin = engine::model::ModelSpec::builtin_sha256();
        assert_eq!(model_spec_sha256_from(None).unwrap(), builtin);
        let custom = "0123456789abcdef".repeat(4);
        assert_eq!(
            model_spec_sha256_from(Some(custom.clone())).unwrap(),
            custom
        );
        let upper = "A".repeat(64);
        for bad in ["F0558D", "torchvision", upper.as_str()] {
            let e = model_spec_sha256_from(Some(bad.into()))
                .unwrap_err()
                .to_string();
            assert!(e.contains("ModelSpecSha256"), "{e}");
        }
        let record = pipeline::manifest::ModelSpecRecord::of_sha256(&builtin);
        assert!(record.builtin && record.custom_sha256().is_none());
        let record = pipeline::manifest::ModelSpecRecord::of_sha256(&custom);
        assert_eq!(record.custom_sha256(), Some(custom));
    }

    #[test]
    fn request_ceilings_are_read_and_checked() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let defaults = RunOptions::default();
        let stack = limits_from(&env(&[]), &defaults).unwrap();
        assert_eq!(stack, RequestLimits::stack_defaults());
        let limits = limits_from(
            &env(&[
                ("INPUT_PREFIXES", "images/, datasets"),
                ("MIN_SHARD_SIZE", "32"),
                ("MAX_SHARD_SIZE", "4096"),
                ("MAX_SHARDS_PER_RUN", "100"),
                ("MAX_PCA_K", "64"),
            ]),
            &defaults,
        )
        .unwrap();
        assert_eq!(limits.input_prefixes, vec!["images/", "datasets/"]);
        assert_eq!((limits.min_shard_size, limits.max_shard_size), (32, 4096));
        assert_eq!((limits.max_shards_per_run, limits.max_pca_k), (100, 64));
        assert_eq!(limits.max_pixels, defaults.max_pixels);
        for bad in [
            &[("INPUT_PREFIXES", "runs/")][..],
            &[("INPUT_PREFIXES", "images/,staging/x/")],
            &[("MIN_SHARD_SIZE", "0")],
            &[("MIN_SHARD_SIZE", "100"), ("MAX_SHARD_SIZE", "10")],
            // The default shard size (4096) above the maximum.
            &[("MAX_SHARD_SIZE", "1000")],
            &[("MAX_PCA_K", "x")],
        ] {
            assert!(limits_from(&env(bad), &defaults).is_err(), "{bad:?}");
        }
    }
}
