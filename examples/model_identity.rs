//! The identity of a model and its spec, as a run records it and a deployed stack checks it:
//! loads the model with the spec (validating one against the other, as the featurizer does
//! at cold start) and prints one JSON object: `model_sha256` (the stack's `ModelSha256`),
//! `spec_sha256` (its `ModelSpecSha256`), the spec's name and tensor names, the feature
//! dimension and the engine that runs it here. `infra/build-layer.sh` runs it for a model or
//! spec of your own.
//!
//! ```sh
//! cargo run --quiet --example model_identity -- MODEL.onnx [SPEC.json|PRESET]
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};
use engine::model::{Model, ModelSpec};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_path, spec) = match args.as_slice() {
        [model] => (Path::new(model), None),
        [model, spec] => (Path::new(model), Some(Path::new(spec))),
        _ => bail!("usage: model_identity MODEL.onnx [SPEC.json|PRESET]"),
    };
    let spec = ModelSpec::for_model(model_path, spec)?;
    let model = Model::load(model_path, spec)
        .with_context(|| format!("loading {} with its spec", model_path.display()))?;
    let record = model.record();
    let identity = serde_json::json!({
        "model_sha256": record.sha256,
        "spec_sha256": record.spec_sha256,
        "spec_name": record.name,
        "builtin_spec": record.spec.is_builtin(),
        "input_name": record.spec.input_name,
        "output_name": record.spec.output_name,
        "feature_dim": model.feature_dim(),
        "engine": model.engine_name(),
    });
    println!("{}", serde_json::to_string_pretty(&identity)?);
    Ok(())
}
