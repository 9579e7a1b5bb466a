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
pub mod select;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use base64::Engine as _;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::cost;
use crate::error::{Error, Result};
use crate::layout::RunLayout;
use crate::manifest::{rfc3339_to_unix_ms, DoneMarker, ImageError, Manifest};
use crate::parquet_io::{self, Dataset};
use crate::pca::{components_for, PcaModel};
use crate::reducer::Summary;
use crate::store::{ObjectStore, StoreError};

pub use select::{Collector, Limits, Selection};

/// Longest side of a thumbnail, pixels.
pub const THUMBNAIL_SIDE: u32 = 64;
/// JPEG quality of the thumbnails.
pub const THUMBNAIL_QUALITY: u8 = 70;
/// Images read and shrunk at once for the thumbnails.
pub const THUMBNAIL_CONCURRENCY: usize = 16;

/// Why the report could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// plotters failed to draw a chart.
    #[error("drawing the {chart} chart: {source}")]
    Chart {
        /// Which chart.
        chart: &'static str,
        /// plotters' error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

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

/// Shrinks an image to fit [`THUMBNAIL_SIDE`] (never enlarged) and encodes it as JPEG.
pub fn thumbnail(bytes: &[u8], max_pixels: u64) -> Result<Thumbnail, ThumbnailError> {
    let rgb = crate::preprocess::decode_rgb8(bytes, max_pixels)
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
    let max_pixels = manifest.options.max_pixels;
    stream::iter(paths.iter().map(|path| async move {
        let key = format!("{}{}", manifest.input.prefix, path);
        let result = async {
            let bytes = input.get(&key).await?;
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

use crate::status::get_json;

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
    let manifest: Manifest = crate::run_manifest::read_header(output, &layout).await?;
    let summary: Summary = get_json(output, &layout.summary()).await?.ok_or_else(|| {
        Error::RunState(format!(
            "run {run_id} has not finished: no {} yet (see `featurize status --run {run_id}`)",
            output.describe(&layout.summary())
        ))
    })?;
    let model: Option<PcaModel> = get_json(output, &layout.pca_model()).await?;
    let errors: Vec<ImageError> = get_json(output, &layout.errors()).await?.unwrap_or_default();
    let mut markers = Vec::new();
    for shard in &manifest.shards {
        if let Some(marker) = get_json::<_, DoneMarker>(output, &layout.done_marker(shard.id)).await? {
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

/// Escapes text for HTML.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1060px;color:#222;line-height:1.4}\
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}\
.muted{color:#666}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px;margin:6px 0}\
.fail{background:#fdecea;border-left:4px solid #d93025;padding:6px 10px;margin:6px 0}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px;vertical-align:top}\
th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.kpi{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}.kpi div{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:6px 12px}\
.kpi b{display:block;font-size:18px}figure{margin:10px 0}figure svg{max-width:100%;height:auto}\
.charts{display:flex;flex-wrap:wrap;gap:8px}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px}\
.cell{border:1px solid #e1e4e8;border-radius:6px;padding:6px;font-size:12px}.cell img{margin:1px;vertical-align:middle}\
.cell .l{font-weight:600;display:flex;align-items:center;gap:4px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}\
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;flex:none}.missing{display:inline-block;width:64px;height:64px;background:#eee;font-size:10px;text-align:center}\
.out{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:8px}.out .cell{display:flex;gap:8px;align-items:center;word-break:break-all}\
code{font-size:12px}";

fn thumb_html(
    path: &str,
    thumbs: &BTreeMap<String, Result<Thumbnail, ThumbnailError>>,
) -> String {
    match thumbs.get(path) {
        Some(Ok(t)) => format!(
            "<img src=\"data:image/jpeg;base64,{}\" width=\"{}\" height=\"{}\" alt=\"{}\" title=\"{}\">",
            base64::engine::general_purpose::STANDARD.encode(&t.jpeg),
            t.width,
            t.height,
            esc(path),
            esc(path)
        ),
        Some(Err(e)) => format!(
            "<span class=\"missing\" title=\"{}\">no thumbnail</span>",
            esc(&format!("{path}: {e}"))
        ),
        None => format!(
            "<span class=\"missing\" title=\"{}\">no thumbnail</span>",
            esc(&format!("{path}: the input was not readable when the report was built"))
        ),
    }
}

fn seconds(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} ms", s * 1000.0)
    }
}

/// Renders the page.
pub fn render(data: &ReportData<'_>) -> Result<String, ReportError> {
    let s = data.summary;
    let m = data.manifest;
    let mut h = String::with_capacity(256 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>featurize report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&s.run_id)
    );
    let _ = write!(
        h,
        "<h1>Run <code>{}</code>: {}</h1>\n<p class=\"muted\">{} · finished {} · MobileNetV2 features (dimension {}) and their PCA</p>\n",
        esc(&s.run_id),
        esc(&s.status),
        esc(&s.input),
        esc(&s.finished_at),
        s.feature_dim
    );
    if let Some(reason) = &s.failure {
        let _ = write!(h, "<p class=\"fail\">Failed: {}</p>\n", esc(reason));
    }
    for w in &s.warnings {
        let _ = write!(h, "<p class=\"warn\">Warning: {}</p>\n", esc(w));
    }
    let _ = write!(h, "<div class=\"kpi\">");
    let kpis = [
        ("images", s.images.to_string()),
        ("rows", s.rows.to_string()),
        ("errors", format!("{} ({:.2} %)", s.errors, s.error_rate * 100.0)),
        ("shards", s.shards.to_string()),
        ("k", s.k.to_string()),
        (
            "explained variance",
            format!("{:.1} %", s.cumulative_explained_variance * 100.0),
        ),
    ];
    for (name, value) in kpis {
        let _ = write!(h, "<div><b>{}</b>{}</div>", esc(&value), name);
    }
    let _ = write!(h, "</div>\n");

    // Explained variance.
    if let Some(model) = data.model {
        let spectrum = if model.spectrum.is_empty() {
            &model.explained_variance_ratio
        } else {
            &model.spectrum
        };
        let k90 = components_for(spectrum, 0.90);
        let k95 = components_for(spectrum, 0.95);
        let _ = write!(
            h,
            "<h2>Explained variance</h2>\n<p>k = {} components explain {:.1} % of the variance. \
             90 % takes {}, 95 % takes {} (of the {} components {} rows of dimension {} allow).</p>\n\
             <figure id=\"variance\" data-k=\"{}\">{}</figure>\n",
            model.k,
            model.cumulative_explained_variance * 100.0,
            k90.map_or("more than the data has".into(), |k| format!("{k} components")),
            k95.map_or("more than the data has".into(), |k| format!("{k} components")),
            spectrum.len(),
            model.n,
            model.dim,
            model.k,
            charts::variance(spectrum, model.k, k90, k95)?
        );
    }

    // Scatter and thumbnails.
    if let Some(sel) = data.selection {
        let labels: Vec<String> = sel.labels.iter().map(|l| l.label.clone()).collect();
        let _ = write!(
            h,
            "<h2>PC1 against PC2</h2>\n<p>{} of {} rows{}, one colour per label ({} labels).</p>\n\
             <figure id=\"scatter\" data-points=\"{}\" data-labels=\"{}\">{}</figure>\n",
            sel.points.len(),
            sel.rows,
            if sel.sampled {
                " (a deterministic sample, by a hash of each path)"
            } else {
                ""
            },
            labels.len(),
            sel.points.len(),
            labels.len(),
            charts::scatter(&sel.points, &labels)?
        );
        let with_thumbs = sel.labels.iter().filter(|l| !l.nearest.is_empty()).count();
        let _ = write!(
            h,
            "<h2>Typical images per label</h2>\n<p>The images nearest each label's centroid in PCA space{}{}.</p>\n<div class=\"grid\" id=\"nearest\">\n",
            if sel.sampled {
                ", among a sample of each label's images"
            } else {
                ""
            },
            if with_thumbs < labels.len() {
                format!(
                    "; the {with_thumbs} largest labels of {} are shown",
                    labels.len()
                )
            } else {
                String::new()
            }
        );
        for (i, group) in sel.labels.iter().enumerate() {
            if group.nearest.is_empty() {
                continue;
            }
            let _ = write!(
                h,
                "<div class=\"cell\" data-label=\"{}\"><div class=\"l\"><span class=\"sw\" style=\"background:{}\"></span>{} <span class=\"muted\">({})</span></div>",
                esc(&group.label),
                charts::css_color(&charts::label_color(i, labels.len())),
                esc(&group.label),
                group.count
            );
            for pick in &group.nearest {
                h.push_str(&thumb_html(&pick.path, data.thumbnails));
            }
            h.push_str("</div>\n");
        }
        h.push_str("</div>\n");
        let _ = write!(
            h,
            "<h2>Likely outliers</h2>\n<p>The images farthest from every label's centroid (distance to the nearest centroid, in PCA space){}: \
             mislabelled, damaged or unusual images are often among them.</p>\n<div class=\"out\" id=\"outliers\">\n",
            if sel.sampled { ", among the sampled rows" } else { "" }
        );
        for pick in &sel.outliers {
            let _ = write!(
                h,
                "<div class=\"cell\" data-path=\"{}\">{}<div><b>{}</b><br>{}<br><span class=\"muted\">distance {:.2}</span></div></div>\n",
                esc(&pick.path),
                thumb_html(&pick.path, data.thumbnails),
                esc(&pick.label),
                esc(&pick.path),
                pick.distance
            );
        }
        h.push_str("</div>\n");
    }

    // Time.
    let t = &s.timings;
    let stages: Vec<(String, f64)> = vec![
        ("listing".into(), t.split_s),
        ("fetch".into(), t.featurize.fetch_s),
        ("decode".into(), t.featurize.decode_s),
        ("resize".into(), t.featurize.resize_s),
        ("inference".into(), t.featurize.infer_s),
        ("write".into(), t.featurize.write_s),
        ("reduce".into(), t.reduce_s),
    ];
    let _ = write!(
        h,
        "<h2>Time</h2>\n<p>Fetch, decode, resize, inference and write are summed over the shards and their threads \
         (CPU-seconds, more than the wall time on several cores); listing and reduce are wall time. \
         Inference: {:.1} ms per image.</p>\n<div class=\"charts\"><figure id=\"stages\">{}</figure>\n",
        t.infer_ms_per_image,
        charts::stages(&stages)?
    );
    let start = rfc3339_to_unix_ms(&m.created_at);
    let mut finishes: Vec<(u64, usize)> = data
        .markers
        .iter()
        .filter_map(|mk| mk.finished_at_ms.map(|f| (f, mk.images)))
        .collect();
    finishes.sort();
    let throughput = match (start, finishes.last()) {
        (Some(start), Some(&(last, _))) if last > start => {
            let mut done = 0usize;
            let points: Vec<(f64, f64)> = finishes
                .iter()
                .map(|&(f, n)| {
                    done += n;
                    (f.saturating_sub(start) as f64 / 1000.0, done as f64)
                })
                .collect();
            let span = (last - start) as f64 / 1000.0;
            Some((points, done as f64 / span, span))
        }
        _ => None,
    };
    match throughput {
        Some((points, rate, span)) => {
            let _ = write!(
                h,
                "<figure id=\"throughput\">{}</figure></div>\n<p>{} images featurized in {} from the listing to the last shard: <b>{:.1} images/s</b>.</p>\n",
                charts::throughput(&points, m.total_images)?,
                points.last().map_or(0.0, |p| p.1),
                seconds(span),
                rate
            );
        }
        None => {
            h.push_str("</div>\n<p class=\"muted\">No shard finish times recorded: no throughput chart.</p>\n");
        }
    }
    h.push_str("<table><tr><th>stage</th><th>seconds</th></tr>");
    for (name, secs) in &stages {
        let _ = write!(h, "<tr><td>{name}</td><td class=\"n\">{secs:.3}</td></tr>");
    }
    let shard_wall: f64 = data.markers.iter().map(|mk| mk.timings.wall_s).sum();
    let _ = write!(
        h,
        "<tr><td>shards' wall time, summed</td><td class=\"n\">{shard_wall:.3}</td></tr></table>\n"
    );

    // Errors.
    let _ = write!(h, "<h2>Errors</h2>\n");
    if data.errors.is_empty() {
        h.push_str("<p>No image failed.</p>\n");
    } else {
        let mut by_kind: BTreeMap<String, Vec<&ImageError>> = BTreeMap::new();
        for e in data.errors {
            let kind = serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            by_kind.entry(kind).or_default().push(e);
        }
        let _ = write!(
            h,
            "<p>{} images are in <code>runs/{}/errors.json</code>, by kind:</p>\n<table id=\"errors\"><tr><th>kind</th><th>images</th><th>examples</th></tr>\n",
            data.errors.len(),
            esc(&s.run_id)
        );
        for (kind, list) in &by_kind {
            let _ = write!(
                h,
                "<tr data-kind=\"{}\"><td>{}</td><td class=\"n\">{}</td><td>",
                esc(kind),
                esc(kind),
                list.len()
            );
            for e in list.iter().take(5) {
                let _ = write!(h, "<code>{}</code>: {}<br>", esc(&e.path), esc(&e.reason));
            }
            if list.len() > 5 {
                let _ = write!(h, "<span class=\"muted\">and {} more</span>", list.len() - 5);
            }
            h.push_str("</td></tr>\n");
        }
        h.push_str("</table>\n");
    }

    // Cost.
    h.push_str("<h2>Cost</h2>\n");
    match &s.cost {
        Some(c) => {
            let _ = write!(
                h,
                "<p>Lambda compute, measured in each function: <b>${:.5}</b> ({:.1} GB-s, {} invocations), \
                 <b>${:.5} per 1,000 images</b> (at ${} per GB-s and ${} per request; S3 and SQS requests not included).</p>\n",
                c.usd, c.gb_seconds, c.requests, c.usd_per_1000_images, c.pricing.per_gb_second, c.pricing.per_request
            );
        }
        None => {
            let shards = data.markers.len().max(1) as f64;
            let shape = cost::RunShape {
                images: s.images as u64,
                shards: s.shards as u64,
                featurizer_s_per_shard: shard_wall / shards,
                featurizer_mb: 5308,
                splitter_s: t.split_s,
                splitter_mb: 512,
                reducer_s: t.reduce_s,
                reducer_mb: 4096,
                stored_bytes: 0,
            };
            let b = cost::breakdown(&shape, &cost::Prices::us_east_1(cost::Arch::Arm64));
            let _ = write!(
                h,
                "<p>Not run on Lambda. The same run on Lambda (arm64, us-east-1, the template's memory sizes, \
                 each shard billed for its wall time measured here, {:.2} s): about <b>${:.4}</b>, \
                 <b>${:.5} per 1,000 images</b> (Lambda ${:.4}, S3 requests ${:.4}, SQS ${:.5}; <code>shared::cost</code>).</p>\n",
                shape.featurizer_s_per_shard,
                b.total,
                b.per_1000_images,
                b.featurizer + b.splitter_and_reducer + b.lambda_requests,
                b.s3_get + b.s3_put,
                b.sqs
            );
        }
    }

    // Parameters.
    let o = &m.options;
    let mut params: Vec<(&str, String)> = vec![
        ("input", m.input.uri.clone()),
        ("created", m.created_at.clone()),
        ("image glob", o.image_glob.clone()),
        (
            "shards",
            match o.shard_count {
                Some(c) => format!("{} (--shards {c})", s.shards),
                None => format!("{} of {} images", s.shards, o.shard_size),
            },
        ),
        (
            "PCA",
            match (o.pca.variance, s.k_requested) {
                (Some(v), _) => format!("variance target {v} → k = {}", s.k),
                (None, Some(req)) if req != s.k => format!("k = {req} requested, {} fitted", s.k),
                _ => format!("k = {}", o.pca.k),
            },
        ),
        ("projection", s.convention.clone()),
        ("max pixels", o.max_pixels.to_string()),
        ("max error rate", o.max_error_rate.to_string()),
        ("model sha256", m.model_sha256.clone()),
        ("fingerprint", m.fingerprint.clone()),
    ];
    params.retain(|(_, v)| !v.is_empty());
    h.push_str("<h2>Parameters</h2>\n<table id=\"parameters\">");
    for (name, value) in params {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", name, esc(&value));
    }
    h.push_str("</table>\n<p class=\"muted\">Written by featurize. Self-contained: charts are inline SVG, thumbnails inline JPEG.</p>\n</body>\n</html>\n");
    Ok(h)
}
