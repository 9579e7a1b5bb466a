//! Embedded mode: the whole job on a local folder with no AWS — the same splitter, featurizer
//! and reducer, over a local-filesystem store and in-process queues.
//!
//! A local run or resume holds the output folder's OS file lock ([`OutputLock`]) from start
//! to end: a second command on the same folder is refused with who holds it, and the lock
//! dies with the process (SIGKILL included). Holding it, the run's reducer may take over any
//! reduce lock it finds at once (no other local process can be reducing there; a lock left
//! by a killed one is stale by definition).

use std::path::{Path, PathBuf};

use crate::batch::featurizer::{FeaturizerSettings, ShardFeaturizer};

use crate::batch::inference::Progress;
use crate::batch::output_lock::OutputLock;
use crate::batch::reducer::{ReduceOutcome, Reducer, ReducerSettings};
use crate::batch::splitter::{SplitOutcome, Splitter};
use crate::batch::summary::Summary;
use crate::error::{Error, Result};
use crate::layout::RunLayout;
use crate::manifest::{ModelSpecRecord, ReduceMessage, RunOptions, RunRequest, ShardMessage};
use crate::ports::queue::InProcessQueue;
use crate::ports::store::{FsStore, ObjectStore};
use engine::model::Model;

/// Called once the splitter has listed the run (the CLI sizes its progress bar with it).
pub type OnStart = Box<dyn Fn(&SplitOutcome) + Send + Sync>;

/// A local run's inputs.
pub struct LocalRun {
    /// Folder of images (walked recursively).
    pub input: PathBuf,
    /// Output folder: `Results/`, `Results_PCA/`, `runs/`.
    pub output: PathBuf,
    /// The request (its `input_prefix` is ignored: the whole input folder is listed).
    pub request: RunRequest,
    /// Featurizer tuning (threads).
    pub featurizer: FeaturizerSettings,
    /// Progress callback: called once with the run's image count, then per finished image.
    pub on_start: Option<OnStart>,
    /// Per-image progress.
    pub progress: Option<Progress>,
}

/// What a local run produced.
#[derive(Debug)]
pub struct LocalReport {
    /// The splitter's outcome (run id, shards, resumed or not).
    pub split: SplitOutcome,
    /// The summary written by the reducer (also for a run that was already complete).
    pub summary: Summary,
}

/// Runs splitter → featurizers → reducer over a local folder.
pub async fn run_local(run: LocalRun, model: Model) -> Result<LocalReport> {
    let exclusive = OutputLock::acquire(&run.output, "featurize run")?;
    check_input_folder(&run.input)?;
    // The absolute path, so that the same folder is the same run from any working directory.
    let input_root = std::fs::canonicalize(&run.input)
        .map_err(|e| Error::io(format!("input folder {}", run.input.display()), e))?;
    let mut request = run.request.clone();
    request.input_prefix = String::new();
    drive(
        run,
        FsStore::new(&input_root),
        model,
        Start::New(request),
        exclusive,
    )
    .await
}

/// How a local run starts.
enum Start {
    /// A new (or repeated) request.
    New(RunRequest),
    /// An existing run, by its layout.
    Resume(RunLayout),
}

/// Resumes a local run by its id (`featurize resume --run ID --output DIR --input IN`): the
/// images are read from `run.input`, the folder the user names, never from the one the
/// manifest records (an output folder received from elsewhere could name any folder; the
/// shard lists' versions still make a file that is not the listed one a `changed` error).
/// An empty `run.input` is refused, naming the manifest's folder. Shards that are not done
/// are featurized, then the reduce runs (also when it was claimed and never ran, or its
/// reducer died).
pub async fn resume_local(run: LocalRun, run_id: &str, model: Model) -> Result<LocalReport> {
    let exclusive = OutputLock::acquire(&run.output, "featurize resume")?;
    let output = FsStore::new(&run.output);
    let layout = RunLayout::new(run_id);
    let manifest = crate::batch::run_manifest::read_header(&output, &layout)
        .await
        .map_err(|e| match e {
            Error::RunState(_) => Error::RunState(format!(
                "no run {run_id} in {} (no {})",
                run.output.display(),
                output.describe(&layout.manifest())
            )),
            other => other,
        })?;
    if run.input.as_os_str().is_empty() {
        return Err(Error::InvalidRequest(format!(
            "give --input DIR, the folder of run {run_id}'s images (its manifest names {}, \
             which is not read unless you name it)",
            manifest.input.uri
        )));
    }
    // The spec the run was made with, before anything is featurized or reduced with another.
    ModelSpecRecord::check_same(
        manifest.options.model_spec.as_ref(),
        &ModelSpecRecord::of(&model.record()),
        run_id,
    )?;
    let input_root = run.input.clone();
    check_input_folder(&input_root)?;
    drive(
        run,
        FsStore::new(&input_root),
        model,
        Start::Resume(layout),
        exclusive,
    )
    .await
}

/// The run, start to end, holding the output folder's lock (`_exclusive`, dropped at the
/// end).
async fn drive(
    run: LocalRun,
    input: FsStore,
    model: Model,
    start: Start,
    _exclusive: OutputLock,
) -> Result<LocalReport> {
    let output = FsStore::new(&run.output);
    let shard_queue = InProcessQueue::new();
    let reduce_queue = InProcessQueue::new();
    // The run's options record the spec; its sha256 is in the run id when it is not the
    // built-in one (runs with the built-in spec keep their ids).
    let spec = ModelSpecRecord::of(&model.record());
    let splitter = Splitter::new(
        input.clone(),
        output.clone(),
        &shard_queue,
        &reduce_queue,
        RunOptions {
            model_spec: Some(spec.clone()),
            ..RunOptions::default()
        },
        model.feature_dim(),
    )
    .with_model_sha256(model.sha256())
    .with_model_spec_sha256(spec.custom_sha256());
    let split = match start {
        Start::New(request) => splitter.handle(&request).await?,
        Start::Resume(layout) => splitter.resume(&layout).await?,
    };
    if let Some(on_start) = &run.on_start {
        on_start(&split);
    }
    let mut featurizer = ShardFeaturizer::new(
        input.clone(),
        output.clone(),
        &reduce_queue,
        model,
        run.featurizer,
    );
    if let Some(progress) = run.progress.clone() {
        featurizer = featurizer.with_progress(progress);
    }
    while let Some(body) = shard_queue.pop() {
        let message: ShardMessage = serde_json::from_str(&body)?;
        featurizer.process(&message, None, None).await?;
    }
    // The output lock excludes every other local writer: any reduce lock here is stale.
    let settings = ReducerSettings {
        lock_stale_after: std::time::Duration::ZERO,
        ..ReducerSettings::default()
    };
    let reducer = Reducer::new(output.clone(), settings).with_input(input);
    while let Some(body) = reduce_queue.pop() {
        let message: ReduceMessage = serde_json::from_str(&body)?;
        if let ReduceOutcome::Failed(summary) = reducer.process(&message, "local").await? {
            return Ok(LocalReport {
                split,
                summary: *summary,
            });
        }
    }
    let layout = RunLayout::new(&split.run_id);
    let summary_bytes = crate::ports::store::ObjectStore::get(&output, &layout.summary())
        .await
        .map_err(|e| {
            Error::RunState(format!(
                "run {} finished without a summary: {e}",
                split.run_id
            ))
        })?;
    Ok(LocalReport {
        split,
        summary: serde_json::from_slice(&summary_bytes)?,
    })
}

fn check_input_folder(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("input folder {}", path.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::InvalidRequest(format!(
            "input {} is not a folder",
            path.display()
        )));
    }
    std::fs::read_dir(path)
        .map_err(|e| Error::io(format!("reading input folder {}", path.display()), e))?;
    Ok(())
}
