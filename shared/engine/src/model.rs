//! The model: a machine-readable spec (input name, layout, size, normalization, output name)
//! and a tract-onnx plan, loaded and optimized once per process, run with one state per thread.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tract_onnx::prelude::*;

use crate::executor::{Executor, ExecutorSession, Isa, Unsupported};
use crate::preprocess::Preprocessor;

/// Failures of the model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The model file is missing.
    #[error("model file {0} not found (set --model or MODEL_PATH; see models/README.md)")]
    Missing(String),
    /// The spec file is missing or invalid.
    #[error("model spec {path}: {reason}")]
    Spec {
        /// Spec path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// tract could not load, optimize or run the model.
    #[error("{context}: {source}")]
    Tract {
        /// What was being done.
        context: String,
        /// tract's error chain.
        #[source]
        source: anyhow_tract::Error,
    },
    /// The model does not fit the spec (names, shapes).
    #[error("model does not match its spec: {0}")]
    Mismatch(String),
    /// The native executor was asked for but cannot run this model on this CPU.
    #[error(transparent)]
    Native(#[from] Unsupported),
}

/// tract reports errors as `anyhow::Error`; re-exported under a distinct name so the
/// library itself does not depend on anyhow.
mod anyhow_tract {
    pub type Error = tract_onnx::prelude::TractError;
}

mod spec;

pub use spec::{
    ChannelOrder, Layout, ModelRecord, ModelSpec, ResizeFilter, ResizeMode, DEFAULT_SPEC_JSON,
    PRESETS,
};

type Plan = TypedRunnableModel;

/// Which engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The native executor ([`crate::executor`]) with this CPU's best kernels where
    /// they are SIMD (AVX-512 or AVX2 + FMA on x86_64) and the graph is one it knows; tract
    /// otherwise (other models, other CPUs: tract's own kernels, e.g. NEON on arm64, are
    /// faster than the executor's portable ones).
    #[default]
    Auto,
    /// tract's optimized plan.
    Tract,
    /// The native executor with these kernels (an error if the graph or CPU cannot).
    Native(Isa),
}

impl Engine {
    /// The environment variable `featurize run` and `featurize resume` read the engine from
    /// (`--engine` overrides it): `auto`, `tract`, `avx512`, `avx2` or `portable`.
    pub const ENV: &'static str = "FEATURIZE_ENGINE";

    /// Parses `auto`, `tract`, or a native executor's kernels (`avx512`, `avx2`, `portable`).
    pub fn parse(name: &str) -> Option<Engine> {
        match name {
            "auto" => Some(Engine::Auto),
            "tract" => Some(Engine::Tract),
            isa => Isa::parse(isa).map(Engine::Native),
        }
    }
}

/// Graph rewrites and engine choice applied at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// With tract: run the convolutions channels-last (NHWC), see [`channels_last`].
    pub channels_last: bool,
    /// The engine.
    pub engine: Engine,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            channels_last: true,
            engine: Engine::Auto,
        }
    }
}

/// Switches every channels-first convolution (NCHW, or CHW once tract has dropped the batch
/// axis) to channels-last by propagating an axis move with tract's
/// `change_axes`, which also removes the input transpose of a channels-last model. tract only
/// does this by itself where it has a channels-last depthwise kernel (not on x86), but on
/// MobileNetV2 the NHWC graph is faster everywhere (fewer layout changes around the
/// depthwise and pointwise convolutions). Returns the number of rewrites.
pub fn channels_last(model: &mut TypedModel) -> TractResult<usize> {
    use std::collections::HashSet;
    use tract_onnx::tract_core::ops::change_axes::{AxisChange, AxisOp};
    use tract_onnx::tract_core::ops::cnn::Conv;
    use tract_onnx::tract_core::ops::nn::DataFormat;
    use tract_onnx::tract_core::optim::change_axes::change_axes;

    let mut rewrites = 0;
    let mut tried: HashSet<usize> = HashSet::new();
    loop {
        let mut interfaces = model.output_outlets()?.to_vec();
        interfaces.extend(model.input_outlets()?.iter());
        let candidate = model.eval_order()?.into_iter().find(|&id| {
            !tried.contains(&id)
                && model.node(id).op_as::<Conv>().is_some_and(|c| {
                    matches!(c.pool_spec.data_format, DataFormat::NCHW | DataFormat::CHW)
                })
        });
        let Some(id) = candidate else { break };
        tried.insert(id);
        let node = model.node(id);
        let rank = model.outlet_fact(node.inputs[0])?.rank();
        let c_axis = if node
            .op_as::<Conv>()
            .is_some_and(|c| c.pool_spec.data_format == DataFormat::NCHW)
        {
            1
        } else {
            0
        };
        let change = AxisChange {
            outlet: node.inputs[0],
            op: AxisOp::Move(c_axis, rank - 1),
        };
        if let Some((patch, _)) =
            change_axes(model, &change, &interfaces, &[], &mut HashSet::new())?
        {
            patch.apply(model)?;
            rewrites += 1;
            // Node ids are stable under patches only for untouched nodes: start over.
            tried.clear();
        }
    }
    model.declutter()?;
    Ok(rewrites)
}

/// A loaded, optimized model. Cheap to share between threads; each thread runs its own
/// [`ModelSession`] because one tract plan runs single-threaded.
#[derive(Clone)]
pub struct Model {
    runner: Runner,
    spec: Arc<ModelSpec>,
    preprocessor: Arc<Preprocessor>,
    feature_dim: usize,
    load_time: Duration,
    channels_last_convs: usize,
    sha256: Arc<str>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("spec", &self.spec.name)
            .field("feature_dim", &self.feature_dim)
            .finish()
    }
}

/// What runs the model.
#[derive(Clone)]
enum Runner {
    Tract(Arc<Plan>),
    Native(Arc<Executor>),
}

fn tract<T>(context: &str, r: TractResult<T>) -> Result<T, ModelError> {
    r.map_err(|source| ModelError::Tract {
        context: context.to_string(),
        source,
    })
}

/// Selects the spec's input and output (the model's first input and first output where the
/// spec names none), checks the input's declared shape against the spec, and returns the
/// spec with both names filled in.
fn resolve_io(model: &mut InferenceModel, mut spec: ModelSpec) -> Result<ModelSpec, ModelError> {
    let outlets = tract("inputs", model.input_outlets().map(|o| o.to_vec()))?;
    let input_names: Vec<String> = outlets
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    if spec.input_name.is_empty() {
        spec.input_name = input_names
            .first()
            .cloned()
            .ok_or_else(|| ModelError::Mismatch("the model has no input".into()))?;
    }
    let Some(index) = input_names.iter().position(|n| *n == spec.input_name) else {
        return Err(ModelError::Mismatch(format!(
            "no input named {:?} (inputs: {input_names:?})",
            spec.input_name
        )));
    };
    let declared = tract("input fact", model.input_fact(index).cloned())?;
    if !declared.shape.is_open() {
        use tract_onnx::tract_hir::infer::Factoid;
        let dims: Vec<Option<usize>> = declared
            .shape
            .dims()
            .map(|d| {
                d.concretize()
                    .and_then(|d| d.as_i64())
                    .and_then(|d| usize::try_from(d).ok())
            })
            .collect();
        spec.check_input_shape(&spec.input_name, &dims)
            .map_err(ModelError::Mismatch)?;
    }
    tract(
        "selecting input",
        model.set_input_names([spec.input_name.as_str()]),
    )?;
    if spec.output_name.is_empty() {
        let first = tract(
            "outputs",
            model.output_outlets().map(|o| o.first().copied()),
        )?;
        let first = first.ok_or_else(|| ModelError::Mismatch("the model has no output".into()))?;
        // The ONNX output's tensor name (what onnxruntime calls it), else tract's node name.
        spec.output_name = model
            .outlet_label(first)
            .map(str::to_string)
            .unwrap_or_else(|| model.node(first.node).name.clone());
    }
    tract(
        "selecting output",
        model.select_outputs_by_name([spec.output_name.as_str()]),
    )
    .map_err(|e| ModelError::Mismatch(format!("output {:?}: {e}", spec.output_name)))?;
    Ok(spec)
}

impl Model {
    /// Loads the ONNX file, fixes the input to one image of the spec's shape, selects the
    /// spec's output, and optimizes. The feature dimension is read from the model.
    pub fn load(path: &Path, spec: ModelSpec) -> Result<Self, ModelError> {
        Self::load_with(path, spec, LoadOptions::default())
    }

    /// [`Model::load`] with explicit graph options (the benchmark compares them).
    pub fn load_with(
        path: &Path,
        spec: ModelSpec,
        options: LoadOptions,
    ) -> Result<Self, ModelError> {
        let start = Instant::now();
        let preprocessor = Arc::new(spec.preprocessor()?);
        if !path.is_file() {
            return Err(ModelError::Missing(path.display().to_string()));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| ModelError::Missing(format!("{}: {e}", path.display())))?;
        // The checksum on a second thread while tract parses the file (by its path, so that
        // tensors stored beside it are found).
        let (sha256, parsed) = std::thread::scope(|scope| {
            let sha256 = scope.spawn(|| {
                use sha2::{Digest, Sha256};
                Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            });
            let parsed = tract_onnx::onnx().model_for_path(path);
            let sha256 = sha256
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (sha256, parsed)
        });
        let sha256: Arc<str> = sha256.into();
        drop(bytes);
        let mut model = tract("loading ONNX", parsed)?;
        let spec = resolve_io(&mut model, spec)?;
        let fact = f32::fact(spec.input_shape());
        let model = tract("setting input shape", model.with_input_fact(0, fact.into()))?;
        let typed = tract("typing", model.into_typed())?;
        let mut typed = tract("decluttering", typed.into_decluttered())?;
        let native_isa = match options.engine {
            Engine::Tract => None,
            Engine::Native(isa) => Some(isa),
            Engine::Auto => Some(Isa::detect()).filter(|&isa| isa != Isa::Portable),
        };
        if let Some(isa) = native_isa {
            let compiled = if spec.layout == Layout::NHWC {
                Executor::compile(&typed, isa)
            } else {
                Err(Unsupported("the input is not channels-last".into()))
            };
            match compiled {
                Ok(executor) => {
                    let feature_dim = executor.output_len();
                    if feature_dim == 0 || executor.input_len() != spec.input_len() {
                        return Err(ModelError::Mismatch(format!(
                            "input of {} values, output of {feature_dim}",
                            executor.input_len()
                        )));
                    }
                    return Ok(Self {
                        runner: Runner::Native(Arc::new(executor)),
                        spec: Arc::new(spec),
                        preprocessor,
                        feature_dim,
                        load_time: start.elapsed(),
                        channels_last_convs: 0,
                        sha256,
                    });
                }
                Err(e) if options.engine == Engine::Auto => {
                    tracing::debug!(reason = %e, "native executor unavailable: tract runs the model");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let rewrites = if options.channels_last {
            tract("channels-last pass", channels_last(&mut typed))?
        } else {
            0
        };
        tracing::debug!(rewrites, "channels-last convolutions");
        let typed = tract("optimizing", typed.into_optimized())?;
        let output = tract("output fact", typed.output_fact(0).cloned())?;
        let dims = output.shape.as_concrete().ok_or_else(|| {
            ModelError::Mismatch(format!("output shape {:?} is not concrete", output.shape))
        })?;
        let feature_dim: usize = dims.iter().skip(1).product();
        if dims.first() != Some(&1) || feature_dim == 0 {
            return Err(ModelError::Mismatch(format!(
                "unexpected output shape {dims:?}"
            )));
        }
        let plan = tract("planning", typed.into_runnable())?;
        Ok(Self {
            runner: Runner::Tract(plan),
            spec: Arc::new(spec),
            preprocessor,
            feature_dim,
            load_time: start.elapsed(),
            channels_last_convs: rewrites,
            sha256,
        })
    }

    /// Length of one feature vector (1280 for MobileNetV2), read from the model.
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// The spec the model was loaded with (input and output names filled in).
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The spec's preprocessing, ready to run: decoded image to this model's input tensor.
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// sha256 (hex) of the model file: runs record it, and a featurizer refuses the shards
    /// of a run made for another model.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The model's record for a run: name, file sha256, spec and spec sha256.
    pub fn record(&self) -> ModelRecord {
        ModelRecord {
            name: self.spec.name.clone(),
            sha256: self.sha256.to_string(),
            spec_sha256: self.spec.sha256(),
            spec: (*self.spec).clone(),
        }
    }

    /// The engine that runs the model: `tract`, or `native (avx512)` and the like.
    pub fn engine_name(&self) -> String {
        match &self.runner {
            Runner::Tract(_) => "tract".into(),
            Runner::Native(e) => format!("native ({})", e.isa().name()),
        }
    }

    /// The native executor, when it runs the model.
    pub fn executor(&self) -> Option<&Arc<Executor>> {
        match &self.runner {
            Runner::Native(e) => Some(e),
            Runner::Tract(_) => None,
        }
    }

    /// tract's plan, when tract runs the model.
    pub fn tract_plan(&self) -> Option<&Arc<TypedRunnableModel>> {
        match &self.runner {
            Runner::Tract(p) => Some(p),
            Runner::Native(_) => None,
        }
    }

    /// How many convolutions the channels-last pass rewrote.
    pub fn channels_last_convs(&self) -> usize {
        self.channels_last_convs
    }

    /// How long loading and optimizing took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// A per-thread runner.
    pub fn session(&self) -> Result<ModelSession, ModelError> {
        let state = match &self.runner {
            Runner::Tract(plan) => SessionState::Tract(tract("spawning state", plan.spawn())?),
            Runner::Native(e) => SessionState::Native(e.session()),
        };
        Ok(ModelSession {
            state,
            shape: self.spec.input_shape(),
            feature_dim: self.feature_dim,
        })
    }
}

enum SessionState {
    Tract(TypedSimpleState),
    Native(ExecutorSession),
}

/// One thread's runner: keeps the engine's state (scratch buffers) between images.
pub struct ModelSession {
    state: SessionState,
    shape: [usize; 4],
    feature_dim: usize,
}

impl ModelSession {
    /// Runs the model on one preprocessed image (`input` in the spec's layout).
    pub fn infer(&mut self, input: &[f32]) -> Result<Vec<f32>, ModelError> {
        let state = match &mut self.state {
            SessionState::Native(session) => {
                if input.len() != self.shape.iter().product::<usize>() {
                    return Err(ModelError::Mismatch(format!(
                        "input of {} values for shape {:?}",
                        input.len(),
                        self.shape
                    )));
                }
                return Ok(session.run(input));
            }
            SessionState::Tract(state) => state,
        };
        let tensor = tract("input tensor", Tensor::from_shape(&self.shape, input))?;
        let outputs = tract("running the model", state.run(tvec!(tensor.into())))?;
        let view = tract("reading output", outputs[0].try_as_plain_ram())?;
        let features = tract("output as f32", view.as_slice::<f32>())?;
        if features.len() != self.feature_dim {
            return Err(ModelError::Mismatch(format!(
                "output has {} values, expected {}",
                features.len(),
                self.feature_dim
            )));
        }
        Ok(features.to_vec())
    }
}
