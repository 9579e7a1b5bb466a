//! Inference over a shard's images: the engine (the CNN, or seeded synthetic vectors for the
//! simulator), decoding and preprocessing each image on a pool of threads with one model
//! session each, fed in order from a bounded channel while the fetcher fills it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use crate::batch::guard::{catch_panic, ImageFailure};
use crate::error::{Error, Result};
use crate::manifest::StageTimings;
use engine::model::{Layout, Model};
use engine::preprocess;
use engine::preprocess::ImageErrorKind;

/// Called with the number of images just finished (drives progress bars).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// What became of one image.
#[derive(Debug, Clone)]
pub enum ImageOutcome {
    /// Its feature vector.
    Features(Vec<f32>),
    /// Why it failed.
    Failed(ImageErrorKind, String),
}

/// The featurized images of a batch, in input order, with the time spent per stage.
#[derive(Debug)]
pub struct FeaturizedBatch {
    /// One outcome per input, same order.
    pub outcomes: Vec<ImageOutcome>,
    /// Summed stage times.
    pub timings: StageTimings,
}

/// Preprocesses and runs the model over `images` (encoded bytes) on `threads` threads, one
/// model session each. Stops early (returning `Error::Deadline`) when `deadline` is near.
pub fn featurize_images(
    model: &Model,
    images: &[Result<Bytes, String>],
    threads: usize,
    max_pixels: u64,
    deadline: Option<Instant>,
    progress: Option<&Progress>,
) -> Result<FeaturizedBatch> {
    let next = AtomicUsize::new(0);
    let source = || {
        let i = next.fetch_add(1, Ordering::Relaxed);
        images.get(i).map(|image| {
            let image = image
                .clone()
                .map_err(|reason| ImageFailure::new(ImageErrorKind::Fetch, reason));
            (i, image)
        })
    };
    featurize_from(
        model,
        images.len(),
        &source,
        threads,
        max_pixels,
        deadline,
        progress,
    )
}

/// An image on its way from the fetcher to the inference threads: its index in the shard
/// and its bytes (or why it could not be read: [`crate::batch::guard::classify_fetch_error`]).
pub type Fetched = (usize, Result<Bytes, ImageFailure>);

/// Like [`featurize_images`], but the images arrive through `images` while they are being
/// fetched (a bounded channel: the prefetch), so inference overlaps the downloads. The time
/// the inference threads wait for an image is recorded as `fetch_wait_s`.
pub fn featurize_streamed(
    model: &Model,
    count: usize,
    images: tokio::sync::mpsc::Receiver<Fetched>,
    threads: usize,
    max_pixels: u64,
    deadline: Option<Instant>,
    progress: Option<&Progress>,
) -> Result<FeaturizedBatch> {
    let images = Mutex::new(images);
    let source = || images.lock().expect("fetch channel lock").blocking_recv();
    featurize_from(
        model, count, &source, threads, max_pixels, deadline, progress,
    )
}

/// The inference loop: `threads` threads, one model session each, take images from `next`
/// until it returns `None` or the deadline is near.
fn featurize_from(
    model: &Model,
    count: usize,
    next: &(dyn Fn() -> Option<Fetched> + Sync),
    threads: usize,
    max_pixels: u64,
    deadline: Option<Instant>,
    progress: Option<&Progress>,
) -> Result<FeaturizedBatch> {
    let results: Mutex<Vec<Option<ImageOutcome>>> = Mutex::new(vec![None; count]);
    let totals: Mutex<StageTimings> = Mutex::new(StageTimings::default());
    let spec = model.spec();
    let threads = threads.clamp(1, count.max(1));
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..threads {
            handles.push(scope.spawn(|| -> Result<()> {
                let mut session = model.session()?;
                let mut input = vec![0f32; spec.input_len()];
                let mut timings = StageTimings::default();
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let waiting = Instant::now();
                    let Some((i, encoded)) = next() else { break };
                    timings.fetch_wait_s += waiting.elapsed().as_secs_f64();
                    let outcome = match encoded {
                        Err(failure) => ImageOutcome::Failed(failure.kind, failure.reason),
                        Ok(bytes) => featurize_one(
                            &mut session,
                            &mut input,
                            &bytes,
                            spec,
                            max_pixels,
                            &mut timings,
                        ),
                    };
                    if let Some(slot) = results.lock().expect("results lock").get_mut(i) {
                        *slot = Some(outcome);
                    }
                    if let Some(progress) = progress {
                        progress(1);
                    }
                }
                // Waiting is wall time of the shard (not CPU time summed over threads):
                // the mean over the threads.
                timings.fetch_wait_s /= threads as f64;
                totals.lock().expect("timings lock").add(&timings);
                Ok(())
            }));
        }
        for handle in handles {
            handle
                .join()
                .map_err(|_| Error::RunState("an inference thread panicked".into()))??;
        }
        Ok(())
    })?;
    let results = results.into_inner().expect("results lock");
    if results.iter().any(Option::is_none) {
        let remaining_ms = deadline
            .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64)
            .unwrap_or(0);
        return Err(Error::Deadline {
            remaining_ms,
            stage: "finishing the shard's images",
        });
    }
    let outcomes = results
        .into_iter()
        .map(|o| o.expect("every image was processed"))
        .collect();
    Ok(FeaturizedBatch {
        outcomes,
        timings: totals.into_inner().expect("timings lock"),
    })
}

/// One image: decode, resize and normalize (each under the per-image panic guard, so that a
/// decoder's panic is this image's error), then the model.
fn featurize_one(
    session: &mut engine::model::ModelSession,
    input: &mut [f32],
    bytes: &[u8],
    spec: &engine::model::ModelSpec,
    max_pixels: u64,
    timings: &mut StageTimings,
) -> ImageOutcome {
    let t0 = Instant::now();
    let decoded = match catch_panic("decoder", || preprocess::decode_rgb8(bytes, max_pixels)) {
        Ok(d) => d,
        Err(e) => return ImageOutcome::Failed(e.kind, e.reason),
    };
    let t1 = Instant::now();
    let resized = match catch_panic("resize", || {
        preprocess::resize_bicubic(&decoded, spec.width, spec.height)
    }) {
        Ok(r) => r,
        Err(e) => return ImageOutcome::Failed(e.kind, e.reason),
    };
    match spec.layout {
        Layout::NHWC => preprocess::normalize_into(&resized, spec.scale, spec.offset, input),
        Layout::NCHW => {
            let plane = (spec.width * spec.height) as usize;
            for (p, rgb) in resized.pixels.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    input[c * plane + p] = f32::from(rgb[c]) * spec.scale + spec.offset;
                }
            }
        }
    }
    let t2 = Instant::now();
    let outcome = match session.infer(input) {
        Ok(features) if features.iter().all(|v| v.is_finite()) => ImageOutcome::Features(features),
        Ok(_) => ImageOutcome::Failed(
            ImageErrorKind::Inference,
            "model output is not finite".into(),
        ),
        Err(e) => ImageOutcome::Failed(ImageErrorKind::Inference, e.to_string()),
    };
    let t3 = Instant::now();
    timings.decode_s += (t1 - t0).as_secs_f64();
    timings.resize_s += (t2 - t1).as_secs_f64();
    timings.infer_s += (t3 - t2).as_secs_f64();
    outcome
}

/// What turns a shard's images into feature vectors.
#[derive(Clone)]
pub enum Engine {
    /// The CNN.
    Model(Model),
    /// Seeded random vectors, no decoding and no CNN: `featurize simulate` drives the real
    /// bookkeeping (fetches, parts, statistics, commit, barrier) at scale with it.
    Synthetic {
        /// Feature dimension.
        dim: usize,
    },
}

/// The model id a synthetic featurizer records (runs are refused across engines).
pub const SYNTHETIC_MODEL_ID: &str = "synthetic-features";

impl Engine {
    /// Features of encoded images (each its bytes, or why it could not be read), in order,
    /// on `threads` threads: the very code path of a shard, so the same bytes give the same
    /// features bit for bit. `paths` seed the synthetic engine.
    pub fn featurize(
        &self,
        paths: &[String],
        images: &[Result<Bytes, String>],
        threads: usize,
        max_pixels: u64,
    ) -> Result<Vec<ImageOutcome>> {
        match self {
            Engine::Model(model) => {
                Ok(featurize_images(model, images, threads, max_pixels, None, None)?.outcomes)
            }
            Engine::Synthetic { dim } => Ok(paths
                .iter()
                .zip(images)
                .map(|(path, image)| match image {
                    Ok(_) => ImageOutcome::Features(synthetic_features(path, *dim)),
                    Err(reason) => ImageOutcome::Failed(ImageErrorKind::Fetch, reason.clone()),
                })
                .collect()),
        }
    }

    /// The feature dimension.
    pub fn dim(&self) -> usize {
        self.feature_dim()
    }

    pub(crate) fn sha256(&self) -> &str {
        match self {
            Engine::Model(model) => model.sha256(),
            Engine::Synthetic { .. } => SYNTHETIC_MODEL_ID,
        }
    }
    pub(crate) fn feature_dim(&self) -> usize {
        match self {
            Engine::Model(model) => model.feature_dim(),
            Engine::Synthetic { dim } => *dim,
        }
    }
}

/// Synthetic features of one image: uniform in [0, 6) (the range of ReLU6 features), seeded
/// by the image's path, so a shard's vectors are the same in every attempt.
pub fn synthetic_features(path: &str, dim: usize) -> Vec<f32> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(path.as_bytes());
    let seed = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..dim).map(|_| rng.f32() * 6.0).collect()
}
