//! The report's charts, drawn with plotters' SVG backend (each a standalone `<svg>` string
//! to inline in the page).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::HSLColor;

use super::select::Point;
use crate::error::ReportError;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn chart_error<E>(chart: &'static str) -> impl Fn(E) -> ReportError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| ReportError::Chart {
        chart,
        source: Box::new(e),
    }
}

const FONT: &str = "sans-serif";
const ACCENT: RGBColor = RGBColor(31, 119, 180);

/// The colour of the `i`-th of `n` labels: hues spread around the wheel, lightness varied
/// so that neighbours differ even with a hundred labels.
pub fn label_color(i: usize, n: usize) -> HSLColor {
    let n = n.max(1);
    let hue = (i as f64 * 0.618_033_988_75).fract();
    let lightness = [0.38, 0.52, 0.30][i % 3];
    let saturation = if n <= 10 { 0.75 } else { 0.65 };
    HSLColor(hue, saturation, lightness)
}

/// CSS `rgb()` of a label colour (for the HTML swatches beside the thumbnails).
pub fn css_color(color: &HSLColor) -> String {
    let (r, g, b) = color.rgb();
    format!("rgb({r},{g},{b})")
}

/// Scree plot (explained-variance ratio per component) and cumulative explained variance
/// with marks at k and where 90 % and 95 % are reached, side by side.
pub fn variance(
    spectrum: &[f64],
    k: usize,
    k90: Option<usize>,
    k95: Option<usize>,
) -> Result<String, ReportError> {
    let err = chart_error("explained variance");
    let shown = spectrum
        .len()
        .min((k.max(k95.unwrap_or(0)) * 3 / 2).max(20))
        .max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (980, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let (left, right) = root.split_horizontally(490);
        scree_panel(&left, &spectrum[..shown], k)?;
        cumulative_panel(&right, &spectrum[..shown], k, k90, k95)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

/// The scree panel: the ratio of each shown component, the kept ones in the accent colour.
fn scree_panel(left: &Area<'_>, spectrum: &[f64], k: usize) -> Result<(), ReportError> {
    let err = chart_error("explained variance");
    let shown = spectrum.len();
    let top = spectrum.first().copied().unwrap_or(1.0).max(1e-9) * 1.05;
    let mut scree = ChartBuilder::on(left)
        .caption("Scree: variance per component", (FONT, 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.5f64..shown as f64 + 0.5, 0f64..top)
        .map_err(&err)?;
    scree
        .configure_mesh()
        .x_desc("component")
        .y_desc("explained variance ratio")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()
        .map_err(&err)?;
    let points: Vec<(f64, f64)> = spectrum
        .iter()
        .enumerate()
        .map(|(i, &r)| ((i + 1) as f64, r))
        .collect();
    scree
        .draw_series(LineSeries::new(
            points.iter().copied(),
            ACCENT.stroke_width(2),
        ))
        .map_err(&err)?;
    scree
        .draw_series(points.iter().map(|&p| {
            let kept = p.0 <= k as f64;
            Rectangle::new(
                [
                    (p.0 - 0.2, p.1 - top * 0.006),
                    (p.0 + 0.2, p.1 + top * 0.006),
                ],
                if kept {
                    ACCENT.filled()
                } else {
                    RGBColor(170, 170, 170).filled()
                },
            )
        }))
        .map_err(&err)?;

    Ok(())
}

/// The cumulative panel: the running sum of the shown components, with marks at k and where
/// 90 % and 95 % are reached.
fn cumulative_panel(
    right: &Area<'_>,
    spectrum: &[f64],
    k: usize,
    k90: Option<usize>,
    k95: Option<usize>,
) -> Result<(), ReportError> {
    let err = chart_error("explained variance");
    let shown = spectrum.len();
    let mut cumulative = ChartBuilder::on(right)
        .caption("Cumulative explained variance", (FONT, 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.5f64..shown as f64 + 0.5, 0f64..1.0)
        .map_err(&err)?;
    cumulative
        .configure_mesh()
        .x_desc("components")
        .y_desc("cumulative share")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()
        .map_err(&err)?;
    let mut total = 0.0;
    let curve: Vec<(f64, f64)> = spectrum
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            total += r;
            ((i + 1) as f64, total)
        })
        .collect();
    cumulative
        .draw_series(LineSeries::new(curve, ACCENT.stroke_width(2)))
        .map_err(&err)?
        .label("cumulative")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], ACCENT.stroke_width(2)));
    let marks = [
        (Some(k), format!("k = {k}"), RGBColor(214, 39, 40)),
        (
            k90,
            format!("90 % at {}", k90.unwrap_or(0)),
            RGBColor(44, 160, 44),
        ),
        (
            k95,
            format!("95 % at {}", k95.unwrap_or(0)),
            RGBColor(148, 103, 189),
        ),
    ];
    for (at, name, color) in marks {
        let Some(at) = at.filter(|&a| a >= 1 && a <= shown) else {
            continue;
        };
        let x = at as f64;
        cumulative
            .draw_series(LineSeries::new(
                vec![(x, 0.0), (x, 1.0)],
                color.stroke_width(2),
            ))
            .map_err(&err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    cumulative
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .draw()
        .map_err(&err)?;
    Ok(())
}

/// PC1 against PC2, one colour per label, with a legend of every label. `labels` are all
/// the run's labels in legend order; every point's label is one of them.
pub fn scatter(points: &[Point], labels: &[String]) -> Result<String, ReportError> {
    let err = chart_error("PC1/PC2 scatter");
    let columns = match labels.len() {
        0..=30 => 1,
        31..=80 => 2,
        _ => 3,
    };
    let rows_per_column = labels.len().div_ceil(columns).max(1);
    let column_width = 150u32;
    let legend_width = column_width * columns as u32 + 20;
    let plot_size = 620u32;
    let height = plot_size.max(rows_per_column as u32 * 13 + 50);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (plot_size + legend_width, height))
            .into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let (plot, legend) = root.split_horizontally(plot_size);
        let (x_range, y_range) = ranges(points);
        let mut chart = ChartBuilder::on(&plot)
            .caption("PC1 against PC2, by label", (FONT, 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(x_range, y_range)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc("PC1")
            .y_desc("PC2")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(&err)?;
        let index: std::collections::HashMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        chart
            .draw_series(points.iter().map(|p| {
                let i = index.get(p.label.as_str()).copied().unwrap_or(0);
                Circle::new(
                    (f64::from(p.coords[0]), f64::from(p.coords[1])),
                    2,
                    label_color(i, labels.len()).filled(),
                )
            }))
            .map_err(&err)?;
        legend_entries(&legend, labels, rows_per_column, column_width).map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

fn legend_entries(
    area: &Area<'_>,
    labels: &[String],
    rows_per_column: usize,
    column_width: u32,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    area.draw(&Text::new("Labels", (10, 12), (FONT, 13).into_font()))?;
    for (i, label) in labels.iter().enumerate() {
        let x = 10 + (i / rows_per_column) as i32 * column_width as i32;
        let y = 34 + (i % rows_per_column) as i32 * 13;
        area.draw(&Rectangle::new(
            [(x, y), (x + 8, y + 8)],
            label_color(i, labels.len()).filled(),
        ))?;
        let name: String = if label.chars().count() > 22 {
            label.chars().take(21).chain(std::iter::once('…')).collect()
        } else {
            label.clone()
        };
        area.draw(&Text::new(name, (x + 12, y - 1), (FONT, 10).into_font()))?;
    }
    Ok(())
}

fn ranges(points: &[Point]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let span = |axis: usize| {
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                let v = f64::from(p.coords[axis]);
                (lo.min(v), hi.max(v))
            });
        if !lo.is_finite() {
            return -1.0..1.0;
        }
        let pad = ((hi - lo) * 0.05).max(1e-3);
        lo - pad..hi + pad
    };
    (span(0), span(1))
}

/// Time per stage as bars. `stages` are (name, seconds).
pub fn stages(stages: &[(String, f64)]) -> Result<String, ReportError> {
    let err = chart_error("time per stage");
    let max = stages.iter().map(|s| s.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (620, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Time per stage (s)", (FONT, 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d((0..stages.len()).into_segmented(), 0f64..max)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(stages.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => {
                    stages.get(*i).map(|s| s.0.clone()).unwrap_or_default()
                }
                _ => String::new(),
            })
            .y_desc("seconds")
            .draw()
            .map_err(&err)?;
        chart
            .draw_series(stages.iter().enumerate().map(|(i, (_, s))| {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *s),
                    ],
                    ACCENT.filled(),
                );
                bar.set_margin(0, 0, 8, 8);
                bar
            }))
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

/// Images done over the run: (seconds since the run started, images done by then).
pub fn throughput(points: &[(f64, f64)], total_images: usize) -> Result<String, ReportError> {
    let err = chart_error("throughput");
    let end = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-3) * 1.05;
    let top = (total_images as f64).max(1.0) * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (620, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Images done over the run", (FONT, 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..end, 0f64..top)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the run started")
            .y_desc("images")
            .draw()
            .map_err(&err)?;
        let mut line = vec![(0.0, 0.0)];
        line.extend(points.iter().copied());
        chart
            .draw_series(LineSeries::new(line, ACCENT.stroke_width(2)))
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_draws_one_circle_per_point_and_names_every_label() {
        let labels: Vec<String> = (0..45).map(|i| format!("label & {i}")).collect();
        let points: Vec<Point> = (0..300)
            .map(|i| Point {
                path: format!("p{i}"),
                label: labels[i % 45].clone(),
                coords: vec![i as f32, (i % 7) as f32],
            })
            .collect();
        let svg = scatter(&points, &labels).unwrap();
        assert_eq!(svg.matches("<circle").count(), 300);
        for l in &labels {
            // plotters writes each text on its own line, escaped.
            assert!(
                svg.contains(&format!(">\nlabel &amp; {}\n<", &l[8..])),
                "{l} in the legend"
            );
        }
        let colors: std::collections::HashSet<String> =
            (0..45).map(|i| css_color(&label_color(i, 45))).collect();
        assert_eq!(colors.len(), 45, "every label its own colour");
    }

    #[test]
    fn other_charts_render() {
        let spectrum: Vec<f64> = (0..60).map(|i| 0.5f64.powi(i / 4 + 1) / 2.0).collect();
        let svg = variance(&spectrum, 10, Some(12), Some(15)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("k = 10") && svg.contains("95 % at 15"));
        let svg = stages(&[("fetch".into(), 1.0), ("inference".into(), 4.5)]).unwrap();
        assert!(svg.contains(">\ninference\n<"));
        let svg = throughput(&[(1.0, 10.0), (2.5, 30.0)], 30).unwrap();
        assert!(svg.contains("<polyline") || svg.contains("<path"));
    }
}
