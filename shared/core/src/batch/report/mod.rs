//! The run report, `runs/<run>/report.html`: one self-contained page (no network needed)
//! with the explained variance, the PC1/PC2 scatter by label, thumbnails of the images
//! nearest each label's centroid and of the likely outliers, the time per stage and the
//! throughput, the errors by kind, the cost and the run's parameters.
//!
//! Charts are inline SVG drawn with plotters ([`charts`]); thumbnails are small inline JPEGs
//! made from the images themselves. Which rows are shown is chosen by the pure functions of
//! [`select`], fed row by row while the reducer projects the parts (or, for `featurize
//! report`, from the stored `Results_PCA`).

pub mod charts;
mod html;
pub mod select;

use std::collections::BTreeMap;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::batch::summary::Summary;
use crate::error::{Error, ReportError, Result};
use crate::layout::RunLayout;
use crate::manifest::{DoneMarker, ImageError, Manifest};
use crate::parquet_io::{self, Dataset};
use crate::ports::store::{ObjectStore, StoreError};
use engine::pca::PcaModel;

pub use html::render;
pub use select::{Collector, Limits, Selection};

/// Longest side of a thumbnail, pixels.
pub const THUMBNAIL_SIDE: u32 = 64;
/// JPEG quality of the thumbnails.
pub const THUMBNAIL_QUALITY: u8 = 70;
/// Images read and shrunk at once for the thumbnails: each holds at most the run's
/// `max_image_bytes` of encoded bytes and [`THUMBNAIL_MAX_PIXELS`] decoded pixels.
pub const THUMBNAIL_CONCURRENCY: usize = 4;
/// The most pixels a thumbnail's image is decoded to: a JPEG is decoded at 1/8 to 8/8 of its
/// size by its DCT scaling (a 50-megapixel photo at 1/8: 0.8 Mpx), other images whole, so a
/// PNG above this gets no thumbnail ("too large"). 4 Mpx: 12 MB of RGB.
pub const THUMBNAIL_MAX_PIXELS: u64 = 4_000_000;

/// Why one thumbnail is missing (the report says so in its place).
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// The image could not be read from the input.
    #[error("reading the image: {0}")]
    Fetch(#[from] StoreError),
    /// It did not decode.
    #[error("decoding the image: {0}")]
    Decode(String),
    /// The thumbnail could not be encoded.
    #[error("encoding the thumbnail: {0}")]
    Encode(#[from] image::ImageError),
    /// The decoding task failed.
    #[error("thumbnail task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A small JPEG of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    /// The JPEG bytes.
    pub jpeg: Vec<u8>,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// Where the report is and what it cost to build, recorded in `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInfo {
    /// Its key (`runs/<run>/report.html`).
    pub key: String,
    /// Its size in bytes.
    pub bytes: usize,
    /// Seconds spent building it (thumbnails included).
    pub build_s: f64,
    /// Points in the scatter.
    pub points: usize,
    /// Thumbnails embedded.
    pub thumbnails: usize,
}

/// A built report.
#[derive(Debug, Clone)]
pub struct BuiltReport {
    /// The page.
    pub html: String,
    /// Its size, build time, points and thumbnails.
    pub info: ReportInfo,
}

/// Shrinks an image to fit [`THUMBNAIL_SIDE`] (never enlarged) and encodes it as JPEG. It is
/// decoded small ([`engine::preprocess::decode_thumbnail_rgb8`]: a JPEG by its DCT scaling),
/// to at most `max_pixels` pixels.
pub fn thumbnail(bytes: &[u8], max_pixels: u64) -> Result<Thumbnail, ThumbnailError> {
    let rgb = engine::preprocess::decode_thumbnail_rgb8(bytes, THUMBNAIL_SIDE, max_pixels)
        .map_err(|e| ThumbnailError::Decode(e.reason))?;
    let (w, h) = (rgb.width, rgb.height);
    let image = image::RgbImage::from_raw(w, h, rgb.pixels)
        .ok_or_else(|| ThumbnailError::Decode(format!("{w}x{h} pixels do not fit the buffer")))?;
    let scale = (f64::from(THUMBNAIL_SIDE) / f64::from(w.max(h))).min(1.0);
    let (tw, th) = (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    );
    let small = if (tw, th) == (w, h) {
        image
    } else {
        image::imageops::thumbnail(&image, tw, th)
    };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, THUMBNAIL_QUALITY)
        .encode_image(&small)?;
    Ok(Thumbnail {
        jpeg,
        width: tw,
        height: th,
    })
}

/// Reads and shrinks the images at `paths` (relative to the run's input), a few at a time.
/// A missing or undecodable image gets its error instead of a thumbnail.
pub async fn thumbnails<S: ObjectStore>(
    input: &S,
    manifest: &Manifest,
    paths: &[String],
) -> BTreeMap<String, Result<Thumbnail, ThumbnailError>> {
    let max_pixels = THUMBNAIL_MAX_PIXELS.min(manifest.options.max_pixels);
    let max_bytes = manifest.options.max_image_bytes;
    stream::iter(paths.iter().map(|path| async move {
        let key = format!("{}{}", manifest.input.prefix, path);
        let result = async {
            let bytes = input.get_bounded(&key, "", max_bytes).await?.body;
            tokio::task::spawn_blocking(move || thumbnail(&bytes, max_pixels)).await?
        }
        .await;
        if let Err(e) = &result {
            tracing::warn!(path, error = %e, "no thumbnail for the report");
        }
        (path.clone(), result)
    }))
    .buffer_unordered(THUMBNAIL_CONCURRENCY)
    .collect()
    .await
}

/// What a report is made of.
pub struct ReportData<'a> {
    /// The run's manifest.
    pub manifest: &'a Manifest,
    /// Its summary.
    pub summary: &'a Summary,
    /// The PCA (absent when the run failed before fitting).
    pub model: Option<&'a PcaModel>,
    /// The shards' done markers.
    pub markers: &'a [DoneMarker],
    /// The run's image errors.
    pub errors: &'a [ImageError],
    /// The points and picks (absent without a PCA).
    pub selection: Option<&'a Selection>,
    /// Thumbnails by path.
    pub thumbnails: &'a BTreeMap<String, Result<Thumbnail, ThumbnailError>>,
}

/// Builds the report: thumbnails from `input` (none without it), then the page.
#[allow(clippy::too_many_arguments)]
pub async fn build<S: ObjectStore>(
    input: Option<&S>,
    manifest: &Manifest,
    summary: &Summary,
    model: Option<&PcaModel>,
    markers: &[DoneMarker],
    errors: &[ImageError],
    selection: Option<&Selection>,
) -> Result<BuiltReport, ReportError> {
    let started = Instant::now();
    let paths = selection.map(|s| s.thumbnail_paths()).unwrap_or_default();
    let thumbs = match input {
        Some(input) => thumbnails(input, manifest, &paths).await,
        None => BTreeMap::new(),
    };
    let html = render(&ReportData {
        manifest,
        summary,
        model,
        markers,
        errors,
        selection,
        thumbnails: &thumbs,
    })?;
    let info = ReportInfo {
        key: RunLayout::new(&manifest.run_id).report(),
        bytes: html.len(),
        build_s: started.elapsed().as_secs_f64(),
        points: selection.map_or(0, |s| s.points.len()),
        thumbnails: thumbs.values().filter(|t| t.is_ok()).count(),
    };
    tracing::info!(run_id = %manifest.run_id, bytes = info.bytes, build_s = info.build_s,
        points = info.points, thumbnails = info.thumbnails, "report built");
    Ok(BuiltReport { html, info })
}

use crate::batch::status::get_json;

/// Builds the report of a finished run again from what it stored (manifest, summary, PCA
/// model, errors, done markers and `Results_PCA`), reading thumbnails from `input`, and
/// writes it to `runs/<run>/report.html` in `output`.
pub async fn regenerate<S: ObjectStore>(
    output: &S,
    input: Option<&S>,
    run_id: &str,
) -> Result<BuiltReport> {
    let layout = RunLayout::new(run_id);
    // The header is enough: the report needs the run's options, input and shard ids.
    let manifest: Manifest = crate::batch::run_manifest::read_header(output, &layout).await?;
    let summary: Summary = get_json(output, &layout.summary()).await?.ok_or_else(|| {
        Error::RunState(format!(
            "run {run_id} has not finished: no {} yet (see `featurize status --run {run_id}`)",
            output.describe(&layout.summary())
        ))
    })?;
    let model: Option<PcaModel> = get_json(output, &layout.pca_model()).await?;
    let errors: Vec<ImageError> = get_json(output, &layout.errors())
        .await?
        .unwrap_or_default();
    let mut markers = Vec::new();
    for shard in &manifest.shards {
        if let Some(marker) =
            get_json::<_, DoneMarker>(output, &layout.done_marker(shard.id)).await?
        {
            markers.push(marker);
        }
    }
    let selection = match &model {
        Some(_) => {
            let mut collector = Collector::new(Limits::default());
            for shard in &manifest.shards {
                let part = match output.get(&layout.pca_part(shard.id)).await {
                    Ok(part) => part,
                    Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                for row in parquet_io::read_rows(Dataset::Pca, part)? {
                    collector.add(&row.path, &row.label, &row.values);
                }
            }
            Some(collector.finish())
        }
        None => None,
    };
    let report = build(
        input,
        &manifest,
        &summary,
        model.as_ref(),
        &markers,
        &errors,
        selection.as_ref(),
    )
    .await?;
    output
        .put(&layout.report(), report.html.clone().into_bytes().into())
        .await?;
    Ok(report)
}
