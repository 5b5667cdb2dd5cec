//! Charts as SVG text (plotters' SVG backend): pure functions, the caller writes the file.
//!
//! SVG needs no font files (text is drawn by the viewer), which keeps the build free of system
//! font libraries.

use plotters::prelude::*;

use crate::{Error, Result};

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// (x, y) points in order.
    pub points: Vec<(f64, f64)>,
}

/// One chart panel: a title, axis labels and its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Distinct, colour-blind-friendly line colours (Okabe-Ito).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(213, 94, 0),
    RGBColor(86, 180, 233),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Data(format!("cannot draw the chart: {e}"))
}

/// Draws `panels` in a grid of `cols` columns as one SVG document.
pub fn line_charts_svg(panels: &[Panel], cols: usize, panel_size: (u32, u32)) -> Result<String> {
    if panels.is_empty() {
        return Err(Error::Data("no panels to draw".into()));
    }
    let cols = cols.clamp(1, panels.len());
    let rows = panels.len().div_ceil(cols);
    let size = (panel_size.0 * cols as u32, panel_size.1 * rows as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let areas = root.split_evenly((rows, cols));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            draw_panel(panel, area)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn draw_panel<DB: DrawingBackend>(
    panel: &Panel,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points = panel.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(plot_err)?;
    // Whole numbers (rounds, trials) read better without a trailing ".0".
    let x_fmt = |x: &f64| {
        if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    chart
        .configure_mesh()
        .x_label_formatter(&x_fmt)
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(plot_err)?;
    for (i, s) in panel.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// A horizontal bar chart (one bar per label, values in `[0, max]`) as an SVG document.
pub fn bar_chart_svg(
    title: &str,
    x_label: &str,
    bars: &[(String, f64)],
    size: (u32, u32),
) -> Result<String> {
    if bars.is_empty() {
        return Err(Error::Data("no bars to draw".into()));
    }
    let max = bars
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let n = bars.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..max * 1.08, (0..n).into_segmented())
            .map_err(plot_err)?;
        let label_of = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                bars.get(*i).map(|b| b.0.clone()).unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&label_of)
            .x_desc(x_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                let v = if v.is_finite() { *v } else { 0.0 };
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (v, SegmentValue::Exact(i + 1)),
                    ],
                    PALETTE[i % PALETTE.len()].filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            }))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_grid_of_panels_with_legends() {
        let panel = |t: &str| Panel {
            title: t.into(),
            x_label: "round".into(),
            y_label: "accuracy".into(),
            series: vec![
                Series {
                    label: "fedavg".into(),
                    points: vec![(1.0, 0.5), (2.0, 0.7), (3.0, 0.8)],
                },
                Series {
                    label: "fedprox".into(),
                    points: vec![(1.0, 0.4), (2.0, f64::NAN), (3.0, 0.9)],
                },
            ],
        };
        let svg = line_charts_svg(&[panel("a"), panel("b"), panel("c")], 2, (400, 300)).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60]);
        assert!(
            svg.contains("fedprox") && svg.contains("round"),
            "legend and axis labels"
        );
        // Three panels, two lines each, plus legend swatches.
        assert!(svg.matches("<polyline").count() >= 6);
        assert!(line_charts_svg(&[], 2, (400, 300)).is_err());
    }

    #[test]
    fn draws_one_bar_per_label() {
        let bars = vec![("early".to_string(), 0.95), ("single m3".to_string(), 0.5)];
        let svg = bar_chart_svg("accuracy", "test accuracy", &bars, (600, 300)).unwrap();
        assert!(svg.contains("single m3") && svg.contains("early"));
        assert!(
            svg.matches("<rect").count() >= 3,
            "background plus two bars"
        );
        assert!(bar_chart_svg("x", "y", &[], (600, 300)).is_err());
    }
}
