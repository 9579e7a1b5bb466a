//! Inference over a shard's images: the engine (the CNN, or seeded synthetic vectors for the
//! simulator), decoding and preprocessing each image on a pool of threads with one model
//! session each, fed in order from a bounded channel while the fetcher fills it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use bytes::Bytes;

use crate::batch::guard::{catch_panic, ImageFailure};
use crate::error::{Error, Result};
use crate::manifest::StageTimings;
use engine::model::Model;
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
        images.get(i).map(|image| Fetched {
            index: i,
            image: image
                .clone()
                .map_err(|reason| ImageFailure::new(ImageErrorKind::Fetch, reason)),
            budget: None,
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

/// An image on its way from the fetcher to the inference threads: its index in the shard,
/// its bytes (or why it could not be read: [`crate::batch::guard::classify_fetch_error`]),
/// and the share of the shard's byte budget it holds until its features are computed.
#[derive(Debug)]
pub struct Fetched {
    /// Its index in the shard.
    pub index: usize,
    /// Its encoded bytes, or why it could not be read.
    pub image: Result<Bytes, ImageFailure>,
    /// Its permits of the shard's prefetch budget (KiB), released when it is done.
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The decoded pixels the inference threads may hold at once: an image's decoding waits
/// until its pixel count (from its header) fits, in arrival order, so that the decoded
/// images in memory stay under the budget however many threads there are. An image larger
/// than the whole budget waits for all the others and is then decoded alone (the pixel
/// limit refuses anything above `max_pixels`, which is the budget by default).
#[derive(Debug)]
pub struct PixelBudget {
    total: u64,
    state: Mutex<PixelState>,
    changed: Condvar,
}

#[derive(Debug)]
struct PixelState {
    left: u64,
    next_ticket: u64,
    serving: u64,
}

impl PixelBudget {
    /// A budget of `total` pixels (at least 1).
    pub fn new(total: u64) -> Self {
        let total = total.max(1);
        Self {
            total,
            state: Mutex::new(PixelState {
                left: total,
                next_ticket: 0,
                serving: 0,
            }),
            changed: Condvar::new(),
        }
    }

    /// Waits for `pixels` (at most the whole budget), first come first served; they are
    /// given back when the guard drops.
    pub fn acquire(&self, pixels: u64) -> PixelGuard<'_> {
        let pixels = pixels.min(self.total);
        let mut state = self.state.lock().expect("pixel budget");
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        while state.serving != ticket || state.left < pixels {
            state = self.changed.wait(state).expect("pixel budget");
        }
        state.serving += 1;
        state.left -= pixels;
        self.changed.notify_all();
        PixelGuard {
            budget: self,
            pixels,
        }
    }
}

/// Pixels held from a [`PixelBudget`].
#[derive(Debug)]
pub struct PixelGuard<'a> {
    budget: &'a PixelBudget,
    pixels: u64,
}

impl Drop for PixelGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.budget.state.lock().expect("pixel budget");
        state.left += self.pixels;
        self.budget.changed.notify_all();
    }
}

/// A shard's byte budget: a semaphore of KiB permits. Waiters are served in order (tokio's
/// semaphore is fair), so a large image is not overtaken for ever by small ones; a request
/// is capped at the whole budget.
pub(crate) struct ByteBudget {
    permits: Arc<tokio::sync::Semaphore>,
    total_kib: u32,
}

impl ByteBudget {
    pub(crate) fn new(bytes: u64) -> Self {
        let total_kib = Self::kib(bytes).max(1);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    fn kib(bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
    }

    /// Waits for `bytes` of the budget (at most all of it).
    pub(crate) async fn take(&self, bytes: u64) -> tokio::sync::OwnedSemaphorePermit {
        let n = Self::kib(bytes).clamp(1, self.total_kib);
        self.permits
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// Makes `permit` hold `bytes` (the body read): gives back what it does not need. A
    /// body larger than its listed size (only possible for an unconditional read, of a shard
    /// list written without versions) takes what is free of the rest, without waiting:
    /// waiting here, behind the later images' requests, could wait for ever.
    pub(crate) fn fit(&self, permit: &mut tokio::sync::OwnedSemaphorePermit, bytes: u64) {
        let want = Self::kib(bytes).clamp(1, self.total_kib) as usize;
        let held = permit.num_permits();
        if want < held {
            drop(permit.split(held - want));
        } else if want > held {
            let more = u32::try_from(want - held).unwrap_or(u32::MAX);
            if let Ok(extra) = self.permits.clone().try_acquire_many_owned(more) {
                permit.merge(extra);
            }
        }
    }
}

/// The pixel count an encoded image declares in its header (0 when it has none readable:
/// its decoding fails at once).
fn declared_pixels(bytes: &[u8]) -> u64 {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok())
        .map_or(0, |(w, h)| u64::from(w) * u64::from(h))
}

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
    // Decoded images in memory at once: at most `max_pixels` (one image at the limit).
    let pixels = PixelBudget::new(max_pixels);
    let totals: Mutex<StageTimings> = Mutex::new(StageTimings::default());
    // The model's preprocessing (resize, crop, normalization, channel order, layout).
    let spec = model.preprocessor();
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
                    let Some(fetched) = next() else { break };
                    let i = fetched.index;
                    timings.fetch_wait_s += waiting.elapsed().as_secs_f64();
                    let outcome = match fetched.image {
                        Err(failure) => ImageOutcome::Failed(failure.kind, failure.reason),
                        Ok(bytes) => {
                            // An image over the pixel limit is refused from its header,
                            // without decoding: it takes nothing.
                            let declared = declared_pixels(&bytes);
                            let _decoding =
                                pixels.acquire(if declared > max_pixels { 0 } else { declared });
                            featurize_one(
                                &mut session,
                                &mut input,
                                &bytes,
                                spec,
                                max_pixels,
                                &mut timings,
                            )
                        }
                    };
                    // Its bytes and their share of the prefetch budget go now.
                    drop(fetched.budget);
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
    preprocessor: &preprocess::Preprocessor,
    max_pixels: u64,
    timings: &mut StageTimings,
) -> ImageOutcome {
    let t0 = Instant::now();
    let decoded = match catch_panic("decoder", || preprocess::decode_rgb8(bytes, max_pixels)) {
        Ok(d) => d,
        Err(e) => return ImageOutcome::Failed(e.kind, e.reason),
    };
    let t1 = Instant::now();
    if let Err(e) = catch_panic("resize", || preprocessor.prepare(&decoded, input)) {
        return ImageOutcome::Failed(e.kind, e.reason);
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
    /// What ran the features, as a shard's done marker records it: the model's engine
    /// (`native (avx2)`, `tract`, ...) or `synthetic`.
    pub fn name(&self) -> String {
        match self {
            Engine::Model(model) => model.engine_name(),
            Engine::Synthetic { .. } => "synthetic".into(),
        }
    }

    /// sha256 of the model's preprocessing spec (`None` for synthetic features).
    pub(crate) fn spec_sha256(&self) -> Option<String> {
        match self {
            Engine::Model(model) => Some(model.spec().sha256()),
            Engine::Synthetic { .. } => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pixel_budget_holds_decodes_back_first_come_first_served() {
        let budget = PixelBudget::new(100);
        let first = budget.acquire(60);
        let order = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _second = budget.acquire(60);
                order.lock().unwrap().push("second");
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            order.lock().unwrap().push("first done");
            drop(first);
        });
        assert_eq!(*order.lock().unwrap(), ["first done", "second"]);
        // More than the whole budget waits for all of it, then runs alone.
        let huge = budget.acquire(1_000);
        assert_eq!(huge.pixels, 100);
        drop(huge);
        let _a = budget.acquire(50);
        let _b = budget.acquire(50);
    }

    #[test]
    fn the_byte_budget_holds_reads_back_and_gives_back_what_a_body_does_not_use() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let budget = ByteBudget::new(10 * 1024);
            let mut first = budget.take(8 * 1024).await;
            assert_eq!(budget.permits.available_permits(), 2);
            // Reserved 8 KiB, read 3 KiB: 5 KiB go back at once.
            budget.fit(&mut first, 3 * 1024);
            assert_eq!(budget.permits.available_permits(), 7);
            // A request above what is free waits until the first image is done.
            let waiting = budget.take(9 * 1024);
            tokio::pin!(waiting);
            let early =
                tokio::time::timeout(std::time::Duration::from_millis(20), &mut waiting).await;
            assert!(early.is_err(), "9 KiB while 7 are free: it waits");
            drop(first);
            let second = waiting.await;
            assert_eq!(second.num_permits(), 9);
            // More than the whole budget is capped at it (the largest image still fits).
            drop(second);
            assert_eq!(budget.take(1 << 30).await.num_permits(), 10);
        });
    }

    #[test]
    fn declared_pixels_come_from_the_header() {
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::new(30, 20))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(declared_pixels(&png), 600);
        assert_eq!(declared_pixels(b"not an image"), 0);
    }
}
