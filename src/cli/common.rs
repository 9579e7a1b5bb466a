//! Options and helpers several subcommands share: where the model is (`ModelArgs`), the PCA
//! (`PcaArgs`), a run's options (`RunOptionArgs`), and where a run or a collection lives
//! (`AwsArgs`, `LocationArgs`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::model::{Model, ModelSpec};
use engine::pca::PcaConvention;
use pipeline::manifest::RunRequest;

/// Model location, shared by the subcommands that run it.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// The ONNX model (default: models/mobilenet_v2_features.onnx, else ../shared/models/...).
    #[arg(long, env = "MODEL_PATH")]
    pub model: Option<PathBuf>,
    /// Its preprocessing spec: a JSON file (docs/model.md) or a preset: keras-mobilenet (the
    /// bundled MobileNetV2's), torchvision (shorter side 256 bilinear, crop 224, ImageNet
    /// mean/std, NCHW), clip (shorter side 224 bicubic, crop 224, CLIP mean/std, NCHW).
    /// Default: model_spec.json beside the model, else keras-mobilenet.
    #[arg(long, env = "MODEL_SPEC_PATH", value_name = "FILE|PRESET")]
    pub model_spec: Option<PathBuf>,
}

impl ModelArgs {
    /// Resolves the model path: the flag, `MODEL_PATH`, or the usual places.
    pub fn model_path(&self) -> Result<PathBuf> {
        if let Some(path) = &self.model {
            return Ok(path.clone());
        }
        let candidates = [
            "models/mobilenet_v2_features.onnx",
            "../shared/models/mobilenet_v2_features.onnx",
        ];
        candidates
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "no model found at {} — run models/get-model.sh or pass --model PATH",
                    candidates.join(" or ")
                )
            })
    }

    /// Loads and optimizes the model.
    pub fn load(&self) -> Result<Model> {
        self.load_with(engine::model::LoadOptions::default())
    }

    /// Loads and optimizes the model with explicit graph options.
    pub fn load_with(&self, options: engine::model::LoadOptions) -> Result<Model> {
        let path = self.model_path()?;
        let spec = ModelSpec::for_model(&path, self.model_spec.as_deref())?;
        Model::load_with(&path, spec, options)
            .with_context(|| format!("loading model {}", path.display()))
    }
}

/// The PCA's options, shared by runs (`run`, `submit`) and collections (`watch`, `refit`).
#[derive(Args, Clone)]
pub struct PcaArgs {
    /// Number of principal components.
    #[arg(long, default_value_t = 50, conflicts_with = "variance")]
    k: usize,
    /// Instead of k: keep the fewest components that explain this share of the variance (e.g. 0.95).
    #[arg(long)]
    variance: Option<f64>,
    /// Projection: centered = (x - mean) @ components.T (scikit-learn); uncentered = components @ x (Spark ML).
    #[arg(long, default_value = "centered", value_parser = parse_convention)]
    convention: PcaConvention,
}

impl PcaArgs {
    /// A collection's refit options with these PCA settings.
    pub fn refit_options(&self) -> pipeline::continuous::collection::RefitOptions {
        pipeline::continuous::collection::RefitOptions {
            pca: engine::pca::PcaOptions {
                k: self.k,
                variance: self.variance,
                convention: self.convention,
            },
            ..Default::default()
        }
    }
}

/// Options of a run, shared by `run` and `submit`.
#[derive(Args, Clone)]
pub struct RunOptionArgs {
    #[command(flatten)]
    pca: PcaArgs,
    /// Images per shard.
    #[arg(long, default_value_t = pipeline::manifest::DEFAULT_SHARD_SIZE)]
    shard_size: usize,
    /// Number of shards (instead of --shard-size).
    #[arg(long, conflicts_with = "shard_size")]
    shards: Option<usize>,
    /// Which files are images: a glob on the file name, case-insensitive.
    #[arg(long, default_value = "*.{jpg,jpeg,png}")]
    glob: String,
    /// Reject images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = 50_000_000)]
    max_pixels: u64,
    /// Fail the run (no PCA) when more than this share of images fails.
    #[arg(long, default_value_t = 0.05)]
    max_error_rate: f64,
    /// Images larger than this many bytes are errors ("too large"), refused before they are
    /// read (default: 64 MiB).
    #[arg(long)]
    max_image_bytes: Option<u64>,
    /// Run id (default: derived from the input and options, so re-running resumes the same run).
    #[arg(long)]
    run_id: Option<String>,
}

impl RunOptionArgs {
    pub fn request(&self, input_prefix: String) -> RunRequest {
        RunRequest {
            input_prefix,
            run_id: self.run_id.clone(),
            k: self.pca.variance.is_none().then_some(self.pca.k),
            variance: self.pca.variance,
            convention: Some(self.pca.convention),
            shard_size: Some(self.shard_size),
            shard_count: self.shards,
            image_glob: Some(self.glob.clone()),
            max_pixels: Some(self.max_pixels),
            max_error_rate: Some(self.max_error_rate),
            max_image_bytes: self.max_image_bytes,
        }
    }
}

fn parse_convention(text: &str) -> Result<PcaConvention, String> {
    PcaConvention::parse(text).map_err(|e| e.to_string())
}

#[derive(Args)]
pub struct AwsArgs {
    /// The data bucket.
    #[arg(long, env = "BUCKET")]
    pub bucket: String,
    /// S3/SQS endpoint (an emulator such as moto); also read from AWS_ENDPOINT_URL.
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

#[cfg(feature = "aws")]
impl AwsArgs {
    pub async fn sdk(&self) -> aws::sdk::SdkConfig {
        aws::sdk::sdk_config_with_endpoint(self.endpoint_url.as_deref()).await
    }
}

/// The error of a command on S3 or SQS (`command`: `"submit"`, `"status --bucket"`, ...) in
/// a featurize built without the `aws` feature: the AWS SDK is opt-in, since it is a large
/// part of a cold build and the local commands never use it (docs/architecture.md).
#[cfg(not(feature = "aws"))]
pub fn needs_aws(command: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`featurize {command}` talks to AWS, and this featurize was built without it: \
         build it with `cargo build --release --bin featurize --features aws`"
    )
}

/// Where a run or a collection lives: an output folder here (embedded runs, `featurize
/// watch`), or a deployed stack's bucket.
#[derive(Args)]
pub struct LocationArgs {
    /// A local output folder (`featurize run --output`, `featurize watch --output`).
    #[arg(long, conflicts_with = "bucket")]
    pub output: Option<PathBuf>,
    /// The data bucket of a deployed stack.
    #[arg(long, env = "BUCKET")]
    pub bucket: Option<String>,
    /// S3/SQS endpoint (an emulator such as moto).
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

/// The input folder of a local run that `report` or `resume` reads: the one the user names
/// (`--input`), else, on a terminal, the one they type when asked; never the one an output
/// folder's manifest names (`recorded`), since an output folder received from elsewhere can
/// name any folder. When the named folder is not the recorded one, says so. `None`: none
/// was named (and stdin is not a terminal, or the answer was empty).
pub fn named_input(given: Option<&Path>, recorded: &str, run: &str) -> Option<PathBuf> {
    use std::io::{BufRead, IsTerminal, Write};
    let named = match given {
        Some(dir) => Some(dir.to_path_buf()),
        None if std::io::stdin().is_terminal() => {
            eprint!(
                "Folder of run {run}'s images (its manifest says {}; Enter for none): ",
                terminal_safe(recorded)
            );
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            let _ = std::io::stdin().lock().read_line(&mut answer);
            let answer = answer.trim();
            (!answer.is_empty()).then(|| PathBuf::from(answer))
        }
        None => None,
    }?;
    let same = std::fs::canonicalize(&named)
        .ok()
        .zip(std::fs::canonicalize(recorded).ok())
        .is_some_and(|(a, b)| a == b);
    if !same {
        eprintln!(
            "note: run {run}'s manifest names the input {}; reading {} as you asked",
            terminal_safe(recorded),
            terminal_safe(&named.display().to_string())
        );
    }
    Some(named)
}

/// `text` with its control characters escaped (`\n`, `\t`, `\u{1b}`, ...), for printing
/// keys, paths and reasons that come from the data (an S3 key may hold any character,
/// terminal escape sequences included). Printable text, non-ASCII included, is unchanged.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(text, false)
}

/// [`terminal_safe`] for a message of several lines: its line breaks are kept.
pub fn terminal_safe_lines(text: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(text, true)
}

fn escape_controls(text: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() && !(keep_newlines && c == '\n');
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The parent folder and the name of a watched folder.
pub fn collection_root(input: &std::path::Path) -> Result<(PathBuf, String)> {
    let dir = std::fs::canonicalize(input)
        .with_context(|| format!("{} is not a folder", input.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a folder", input.display());
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the folder has no usable name")?
        .to_string();
    if !pipeline::continuous::collection::valid_collection(&name) {
        bail!("{name:?} cannot be a collection name");
    }
    let root = dir
        .parent()
        .context("the folder has no parent")?
        .to_path_buf();
    Ok((root, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(terminal_safe("images/a b/ü.jpg"), "images/a b/ü.jpg");
        assert!(matches!(
            terminal_safe("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            terminal_safe("in/\u{1b}[2J\u{1b}]0;pwned\u{7}x.jpg"),
            "in/\\u{1b}[2J\\u{1b}]0;pwned\\u{7}x.jpg"
        );
        assert_eq!(terminal_safe("a\nb\r\tc\u{0}"), "a\\nb\\r\\tc\\u{0}");
        // C1 controls (U+0080..U+009F) too: some terminals read U+009B as CSI.
        assert_eq!(terminal_safe("x\u{9b}31m"), "x\\u{9b}31m");
        assert_eq!(
            terminal_safe_lines("line 1\nkey \u{1b}[31m\r"),
            "line 1\nkey \\u{1b}[31m\\r"
        );
    }
}
