//! PNG charts with `plotters` (bitmap backend; text drawn by `ab_glyph` from Debian's DejaVu
//! Sans, so no fontconfig or freetype is linked).

use std::path::Path;

use plotters::prelude::*;

use super::stats::Agg;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a TTF as "sans-serif"; false when none is found (then no charts are drawn).
pub fn init_font() -> bool {
    for p in FONT_PATHS {
        if let Ok(bytes) = std::fs::read(p) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// One line of a log-log chart: (x, median/min/max) points.
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub dashed: bool,
    pub points: Vec<(f64, Agg)>,
}

type Res = Result<(), Box<dyn std::error::Error>>;

/// Panels side by side, each log-x (users) and log-y.
pub fn loglog_panels(
    path: &Path,
    title: &str,
    y_label: &str,
    panels: &[(String, Vec<Series>)],
) -> Res {
    let root = BitMapBackend::new(path, (560 * panels.len() as u32, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, (name, series)) in areas.iter().zip(panels) {
        let ys: Vec<f64> = series
            .iter()
            .flat_map(|s| s.points.iter().flat_map(|(_, a)| [a.min, a.max]))
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min).min(1.0) / 2.0;
        let hi = ys.iter().copied().fold(0.0, f64::max).max(1.0) * 2.0;
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((0.7f64..1500f64).log_scale(), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("users (N)")
            .y_desc(y_label)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if *y >= 1.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y}")
                }
            })
            .draw()?;
        for s in series {
            let color = s.color;
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|(_, a)| a.median > 0.0 && a.median.is_finite())
                .map(|(x, a)| (*x, a.median))
                .collect();
            let style = if s.dashed {
                color.stroke_width(1)
            } else {
                color.stroke_width(3)
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(&s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
            // min–max whiskers
            for (x, a) in &s.points {
                if a.min > 0.0 && a.max > a.min {
                    chart.draw_series(LineSeries::new(vec![(*x, a.min), (*x, a.max)], color))?;
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Grouped bars: for each group (operation), one bar per target.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    targets: &[(String, RGBColor)],
    values: &[Vec<Option<Agg>>],
) -> Res {
    let root = BitMapBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let hi = values
        .iter()
        .flatten()
        .flatten()
        .map(|a| a.max)
        .fold(1.0, f64::max)
        * 1.15;
    let n = groups.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, (10f64..hi).log_scale())?;
    let g = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 && i < g.len() {
                g[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let width = 0.8 / targets.len() as f64;
    for (t, (label, color)) in targets.iter().enumerate() {
        let color = *color;
        let bars: Vec<_> = (0..n)
            .filter_map(|gi| {
                let a = values.get(gi)?.get(t)?.as_ref()?;
                let x0 = gi as f64 + 0.1 + t as f64 * width;
                Some(Rectangle::new(
                    [(x0, 10.0), (x0 + width * 0.9, a.median)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
        for gi in 0..n {
            if let Some(Some(a)) = values.get(gi).and_then(|v| v.get(t)) {
                let xm = gi as f64 + 0.1 + t as f64 * width + width * 0.45;
                chart.draw_series(LineSeries::new(vec![(xm, a.min), (xm, a.max)], BLACK))?;
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
