//! The report's page, written with [`maud::html!`]: every interpolated value (run ids,
//! paths, labels, error reasons, numbers) is HTML-escaped by maud, so no file name or label
//! can inject markup. The only unescaped insertions are ours and marked with
//! [`PreEscaped`]: the stylesheet constant and the SVG charts drawn by plotters.
//!
//! One function per section of the page, in page order; [`render`] puts them together.

use std::collections::BTreeMap;

use base64::Engine as _;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::{charts, ReportData, Thumbnail, ThumbnailError};
use crate::batch::report::select::Selection;
use crate::batch::summary::Summary;
use crate::cost;
use crate::error::ReportError;
use crate::manifest::{rfc3339_to_unix_ms, DoneMarker, ImageError, Manifest};
use engine::pca::{components_for, PcaModel};

type Thumbnails = BTreeMap<String, Result<Thumbnail, ThumbnailError>>;

/// The page's stylesheet. Inserted with [`PreEscaped`]: it is a constant of ours, and the
/// content of `<style>` is raw text to browsers (entities are not decoded there), so
/// escaping it would break the quoted font name.
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

/// A chart's SVG, as plotters drew it. Trusted markup: plotters generates it from our
/// numbers and escapes the texts it draws (labels and axis names) itself, so it is inserted
/// as is; escaping it again would show the SVG source instead of the chart.
fn svg(chart: String) -> PreEscaped<String> {
    PreEscaped(chart)
}

/// Renders the page.
pub fn render(data: &ReportData<'_>) -> Result<String, ReportError> {
    let s = data.summary;
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "featurize report: " (s.run_id) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                (header(s, data.manifest))
                @if let Some(model) = data.model {
                    (variance(model)?)
                }
                @if let Some(sel) = data.selection {
                    (scatter(sel)?)
                    (nearest(sel, data.thumbnails))
                    (outliers(sel, data.thumbnails))
                }
                (time(data)?)
                (errors_section(&s.run_id, data.errors))
                (cost(data))
                (parameters(data.manifest, s))
                p.muted {
                    "Written by featurize. Self-contained: charts are inline SVG, thumbnails inline JPEG."
                }
            }
        }
    };
    Ok(page.into_string())
}

/// What the features are: the spec's name (the built-in MobileNetV2 when the run records no
/// other).
fn model_name(m: &Manifest) -> String {
    match &m.options.model_spec {
        Some(spec) if !spec.builtin => spec
            .name
            .clone()
            .unwrap_or_else(|| format!("model spec {}", short_sha(&spec.sha256))),
        _ => "MobileNetV2".into(),
    }
}

fn short_sha(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// The title, the status line (with the engine that ran the model), the failure and
/// warnings, and the key figures.
fn header(s: &Summary, m: &Manifest) -> Markup {
    let kpis = [
        ("images", s.images.to_string()),
        ("rows", s.rows.to_string()),
        (
            "errors",
            format!("{} ({:.2} %)", s.errors, s.error_rate * 100.0),
        ),
        ("shards", s.shards.to_string()),
        ("k", s.k.to_string()),
        (
            "explained variance",
            format!("{:.1} %", s.cumulative_explained_variance * 100.0),
        ),
    ];
    html! {
        h1 { "Run " code { (s.run_id) } ": " (s.status) }
        p.muted {
            (s.input) " · finished " (s.finished_at)
            " · " (model_name(m)) " features (dimension " (s.feature_dim) ") and their PCA"
            @if let Some(engines) = s.engines_line() {
                " · engine " span #engine { (engines) }
            }
        }
        @if let Some(reason) = &s.failure {
            p.fail { "Failed: " (reason) }
        }
        @for w in &s.warnings {
            p.warn { "Warning: " (w) }
        }
        div.kpi {
            @for (name, value) in &kpis {
                div { b { (value) } (name) }
            }
        }
    }
}

/// The explained variance: the spectrum, k and the components 90 % and 95 % take.
fn variance(model: &PcaModel) -> Result<Markup, ReportError> {
    let spectrum = if model.spectrum.is_empty() {
        &model.explained_variance_ratio
    } else {
        &model.spectrum
    };
    let k90 = components_for(spectrum, 0.90);
    let k95 = components_for(spectrum, 0.95);
    let takes = |k: Option<usize>| {
        k.map_or("more than the data has".into(), |k| {
            format!("{k} components")
        })
    };
    let chart = charts::variance(spectrum, model.k, k90, k95)?;
    Ok(html! {
        h2 { "Explained variance" }
        p {
            "k = " (model.k) " components explain "
            (format_args!("{:.1}", model.cumulative_explained_variance * 100.0))
            " % of the variance. 90 % takes " (takes(k90)) ", 95 % takes " (takes(k95))
            " (of the " (spectrum.len()) " components " (model.n) " rows of dimension "
            (model.dim) " allow)."
        }
        figure #variance data-k=(model.k) { (svg(chart)) }
    })
}

/// The PC1/PC2 scatter, one colour per label.
fn scatter(sel: &Selection) -> Result<Markup, ReportError> {
    let labels: Vec<String> = sel.labels.iter().map(|l| l.label.clone()).collect();
    let chart = charts::scatter(&sel.points, &labels)?;
    Ok(html! {
        h2 { "PC1 against PC2" }
        p {
            (sel.points.len()) " of " (sel.rows) " rows"
            @if sel.sampled {
                " (a deterministic sample, by a hash of each path)"
            }
            ", one colour per label (" (labels.len()) " labels)."
        }
        figure #scatter data-points=(sel.points.len()) data-labels=(labels.len()) {
            (svg(chart))
        }
    })
}

/// The thumbnails of the images nearest each label's centroid, a cell per label.
fn nearest(sel: &Selection, thumbs: &Thumbnails) -> Markup {
    let labels = sel.labels.len();
    let with_thumbs = sel.labels.iter().filter(|l| !l.nearest.is_empty()).count();
    html! {
        h2 { "Typical images per label" }
        p {
            "The images nearest each label's centroid in PCA space"
            @if sel.sampled {
                ", among a sample of each label's images"
            }
            @if with_thumbs < labels {
                "; the " (with_thumbs) " largest labels of " (labels) " are shown"
            }
            "."
        }
        div.grid #nearest {
            @for (i, group) in sel.labels.iter().enumerate() {
                @if !group.nearest.is_empty() {
                    div.cell data-label=(group.label) {
                        div.l {
                            span.sw
                                style={ "background:" (charts::css_color(&charts::label_color(i, labels))) } {}
                            (group.label) " "
                            span.muted { "(" (group.count) ")" }
                        }
                        @for pick in &group.nearest {
                            (thumb(&pick.path, thumbs))
                        }
                    }
                }
            }
        }
    }
}

/// The images farthest from every centroid, with their label, path and distance.
fn outliers(sel: &Selection, thumbs: &Thumbnails) -> Markup {
    html! {
        h2 { "Likely outliers" }
        p {
            "The images farthest from every label's centroid (distance to the nearest centroid, in PCA space)"
            @if sel.sampled {
                ", among the sampled rows"
            }
            ": mislabelled, damaged or unusual images are often among them."
        }
        div.out #outliers {
            @for pick in &sel.outliers {
                div.cell data-path=(pick.path) {
                    (thumb(&pick.path, thumbs))
                    div {
                        b { (pick.label) }
                        br;
                        (pick.path)
                        br;
                        span.muted { "distance " (format_args!("{:.2}", pick.distance)) }
                    }
                }
            }
        }
    }
}

/// An image's thumbnail as an inline JPEG, or a grey box saying why there is none.
fn thumb(path: &str, thumbs: &Thumbnails) -> Markup {
    match thumbs.get(path) {
        Some(Ok(t)) => html! {
            img src={ "data:image/jpeg;base64," (base64::engine::general_purpose::STANDARD.encode(&t.jpeg)) }
                width=(t.width) height=(t.height) alt=(path) title=(path);
        },
        Some(Err(e)) => missing(&format!("{path}: {e}")),
        None => missing(&format!(
            "{path}: the input was not readable when the report was built"
        )),
    }
}

/// The place of a missing thumbnail, the reason in its title.
fn missing(why: &str) -> Markup {
    html! { span.missing title=(why) { "no thumbnail" } }
}

/// The seconds of the stages that made the run, in the order they ran.
fn stages(s: &Summary) -> Vec<(String, f64)> {
    let t = &s.timings;
    vec![
        ("listing".into(), t.split_s),
        ("fetch".into(), t.featurize.fetch_s),
        ("decode".into(), t.featurize.decode_s),
        ("resize".into(), t.featurize.resize_s),
        ("inference".into(), t.featurize.infer_s),
        ("write".into(), t.featurize.write_s),
        ("reduce".into(), t.reduce_s),
    ]
}

/// The shards' wall times, summed.
fn shard_wall(markers: &[DoneMarker]) -> f64 {
    markers.iter().map(|mk| mk.timings.wall_s).sum()
}

/// Images done against seconds since the run was created (one point per finished shard),
/// the mean rate in images/s and the span in seconds.
type Throughput = (Vec<(f64, f64)>, f64, f64);

/// Images done against seconds since the run was created, one point per finished shard,
/// the mean rate and the span; none without a creation time or shard finish times.
fn throughput(m: &Manifest, markers: &[DoneMarker]) -> Option<Throughput> {
    let start = rfc3339_to_unix_ms(&m.created_at)?;
    let mut finishes: Vec<(u64, usize)> = markers
        .iter()
        .filter_map(|mk| mk.finished_at_ms.map(|f| (f, mk.images)))
        .collect();
    finishes.sort();
    let &(last, _) = finishes.last()?;
    if last <= start {
        return None;
    }
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

fn seconds(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} ms", s * 1000.0)
    }
}

/// The time per stage and the throughput: two charts and a table.
fn time(data: &ReportData<'_>) -> Result<Markup, ReportError> {
    let stages = stages(data.summary);
    let stages_chart = charts::stages(&stages)?;
    let throughput = match throughput(data.manifest, data.markers) {
        Some((points, rate, span)) => {
            let chart = charts::throughput(&points, data.manifest.total_images)?;
            Some((svg(chart), points.last().map_or(0.0, |p| p.1), rate, span))
        }
        None => None,
    };
    Ok(html! {
        h2 { "Time" }
        p {
            "Fetch, decode, resize, inference and write are summed over the shards and their threads "
            "(CPU-seconds, more than the wall time on several cores); listing and reduce are wall time. "
            "Inference: " (format_args!("{:.1}", data.summary.timings.infer_ms_per_image)) " ms per image."
        }
        div.charts {
            figure #stages { (svg(stages_chart)) }
            @if let Some((chart, _, _, _)) = &throughput {
                figure #throughput { (chart) }
            }
        }
        @match &throughput {
            Some((_, images, rate, span)) => p {
                (images) " images featurized in " (seconds(*span))
                " from the listing to the last shard: "
                b { (format_args!("{rate:.1}")) " images/s" } "."
            },
            None => p.muted { "No shard finish times recorded: no throughput chart." },
        }
        table {
            tr { th { "stage" } th { "seconds" } }
            @for (name, secs) in &stages {
                tr { td { (name) } td.n { (format_args!("{secs:.3}")) } }
            }
            tr {
                td { "shards' wall time, summed" }
                td.n { (format_args!("{:.3}", shard_wall(data.markers))) }
            }
        }
    })
}

/// The run's image errors by kind, with up to five examples each.
fn errors_section(run_id: &str, errors: &[ImageError]) -> Markup {
    let mut by_kind: BTreeMap<String, Vec<&ImageError>> = BTreeMap::new();
    for e in errors {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        by_kind.entry(kind).or_default().push(e);
    }
    html! {
        h2 { "Errors" }
        @if errors.is_empty() {
            p { "No image failed." }
        } @else {
            p {
                (errors.len()) " images are in " code { "runs/" (run_id) "/errors.json" }
                ", by kind:"
            }
            table #errors {
                tr { th { "kind" } th { "images" } th { "examples" } }
                @for (kind, list) in &by_kind {
                    tr data-kind=(kind) {
                        td { (kind) }
                        td.n { (list.len()) }
                        td {
                            @for e in list.iter().take(5) {
                                code { (e.path) } ": " (e.reason) br;
                            }
                            @if list.len() > 5 {
                                span.muted { "and " (list.len() - 5) " more" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The cost: measured on Lambda, or what the same run would cost there.
fn cost(data: &ReportData<'_>) -> Markup {
    let s = data.summary;
    let Some(c) = &s.cost else {
        let shards = data.markers.len().max(1) as f64;
        let shape = cost::RunShape {
            images: s.images as u64,
            shards: s.shards as u64,
            featurizer_s_per_shard: shard_wall(data.markers) / shards,
            featurizer_mb: 5308,
            splitter_s: s.timings.split_s,
            splitter_mb: 512,
            reducer_s: s.timings.reduce_s,
            reducer_mb: 4096,
            stored_bytes: 0,
        };
        let b = cost::breakdown(&shape, &cost::Prices::us_east_1(cost::Arch::Arm64));
        return html! {
            h2 { "Cost" }
            p {
                "Not run on Lambda. The same run on Lambda (arm64, us-east-1, the template's memory sizes, "
                "each shard billed for its wall time measured here, "
                (format_args!("{:.2}", shape.featurizer_s_per_shard)) " s): about "
                b { "$" (format_args!("{:.4}", b.total)) } ", "
                b { "$" (format_args!("{:.5}", b.per_1000_images)) " per 1,000 images" }
                " (Lambda $" (format_args!("{:.4}", b.featurizer + b.splitter_and_reducer + b.lambda_requests))
                ", S3 requests $" (format_args!("{:.4}", b.s3_get + b.s3_put))
                ", SQS $" (format_args!("{:.5}", b.sqs)) "; " code { "pipeline::cost" } ")."
            }
        };
    };
    html! {
        h2 { "Cost" }
        p {
            "Lambda compute, measured in each function: "
            b { "$" (format_args!("{:.5}", c.usd)) }
            " (" (format_args!("{:.1}", c.gb_seconds)) " GB-s, " (c.requests) " invocations), "
            b { "$" (format_args!("{:.5}", c.usd_per_1000_images)) " per 1,000 images" }
            " (at $" (c.pricing.per_gb_second) " per GB-s and $" (c.pricing.per_request)
            " per request; S3 and SQS requests not included)."
        }
    }
}

/// The run's parameters, those that are set.
fn parameters(m: &Manifest, s: &Summary) -> Markup {
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
        (
            "model spec",
            o.model_spec
                .as_ref()
                .map(|spec| match (&spec.name, spec.builtin) {
                    (_, true) => format!("keras-mobilenet (built-in), sha256 {}", spec.sha256),
                    (Some(name), false) => format!("{name}, sha256 {}", spec.sha256),
                    (None, false) => format!("sha256 {}", spec.sha256),
                })
                .unwrap_or_default(),
        ),
        ("engine", s.engines_line().unwrap_or_default()),
        ("fingerprint", m.fingerprint.clone()),
    ];
    params.retain(|(_, v)| !v.is_empty());
    html! {
        h2 { "Parameters" }
        table #parameters {
            @for (name, value) in &params {
                tr { th { (name) } td { (value) } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::report::select::{Collector, Limits};
    use engine::preprocess::ImageErrorKind;

    const LABEL: &str = "<b class='x'>\"cat\" & co</b>";
    const PATH: &str = "a/<img src=x onerror=alert(1)>.jpg";

    #[test]
    fn labels_paths_and_reasons_are_escaped() {
        let mut collector = Collector::new(Limits::default());
        collector.add(PATH, LABEL, &[1.0, 2.0]);
        collector.add("b/ok.jpg", LABEL, &[3.0, 1.0]);
        collector.add("c/dog.jpg", "dog", &[-2.0, 0.5]);
        let sel = collector.finish();
        let thumbs = Thumbnails::new();
        let errors = [ImageError {
            path: PATH.into(),
            label: LABEL.into(),
            kind: ImageErrorKind::Decode,
            reason: "<script>alert(1)</script>".into(),
        }];
        let page = [
            nearest(&sel, &thumbs),
            outliers(&sel, &thumbs),
            errors_section("run-<1>", &errors),
        ]
        .map(Markup::into_string)
        .concat();
        for raw in [LABEL, PATH, "<script>", "run-<1>"] {
            assert!(!page.contains(raw), "{raw} is not escaped in {page}");
        }
        assert!(page.contains("&lt;b class='x'&gt;&quot;cat&quot; &amp; co&lt;/b&gt;"));
        assert!(page.contains("data-path=\"a/&lt;img src=x onerror=alert(1)&gt;.jpg\""));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("<code>runs/run-&lt;1&gt;/errors.json</code>"));
        // The missing thumbnails say why, in an escaped title.
        assert!(page.contains(
            "title=\"a/&lt;img src=x onerror=alert(1)&gt;.jpg: the input was not readable"
        ));
    }

    #[test]
    fn seconds_reads_well() {
        assert_eq!(seconds(0.25), "250 ms");
        assert_eq!(seconds(12.34), "12.3 s");
        assert_eq!(seconds(123.4), "123 s");
    }
}
