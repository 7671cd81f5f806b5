//! Pictures as SVG (plotters): line panels (training curves), histograms
//! (feature densities) and heatmaps (learned scalars). Knows no caller's
//! types: each takes plain numbers and labels. SVG needs no font files, so it works on a bare
//! machine and opens in any browser.

use plotters::prelude::*;

use crate::error::{Error, Result};

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("cannot draw plot: {e}"))
}

/// One panel of [`panels_svg`]: a named line of `(x, y)` points, on a log
/// y axis when `log` (non-positive points are then left out).
pub struct Panel<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub log: bool,
}

/// Line panels in a 2 × 2 grid (the first four of `panels`) sharing the x
/// axis `0..x_max`, described as `x_desc`.
pub fn panels_svg(panels: Vec<Panel>, x_max: f64, x_desc: &str, title: &str) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(plot_error)?;
        let areas = root.split_evenly((2, 2));
        for (area, panel) in areas.iter().zip(panels) {
            let log = panel.log;
            let points: Vec<(f64, f64)> = panel
                .points
                .into_iter()
                .filter(|(_, y)| y.is_finite() && (!log || *y > 0.0))
                .collect();
            let (lo, hi) = points
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                    (lo.min(p.1), hi.max(p.1))
                });
            let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
            let pad = ((hi - lo) * 0.05).max(1e-12);
            let mut chart = ChartBuilder::on(area);
            chart
                .caption(panel.name, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(64);
            if log {
                let mut c = chart
                    .build_cartesian_2d(0.0..x_max, (lo * 0.9..hi * 1.1).log_scale())
                    .map_err(plot_error)?;
                c.configure_mesh()
                    .x_desc(x_desc)
                    .draw()
                    .map_err(plot_error)?;
                c.draw_series(LineSeries::new(points, &BLUE))
                    .map_err(plot_error)?;
            } else {
                let lo = if lo >= 0.0 {
                    (lo - pad).max(0.0)
                } else {
                    lo - pad
                };
                let mut c = chart
                    .build_cartesian_2d(0.0..x_max, lo..hi + pad)
                    .map_err(plot_error)?;
                c.configure_mesh()
                    .x_desc(x_desc)
                    .draw()
                    .map_err(plot_error)?;
                c.draw_series(LineSeries::new(points, &BLUE))
                    .map_err(plot_error)?;
            }
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Histogram of `values` (already on the axis they are drawn on), with
/// `bins` equal bins between their min and max, and a count of the values
/// left out (e.g. never-firing latents on a log axis) in the title.
pub fn histogram_svg(values: &[f64], bins: usize, title: &str, x_desc: &str) -> Result<String> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let left_out = values.len() - finite.len();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo, hi.max(lo + 1e-9))
    } else {
        (0.0, 1.0)
    };
    let bins = bins.max(1);
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for v in &finite {
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let caption = if left_out > 0 {
        format!("{title} ({left_out} not shown)")
    } else {
        title.to_string()
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(lo..hi, 0u32..top + top / 10 + 1)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("latents")
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x0 = lo + i as f64 * width;
                Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.6).filled())
            }))
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Labelled values for a heatmap: `values[row][col]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub values: Vec<Vec<f64>>,
}

/// A grid of values as coloured cells (rows top to bottom, columns left to
/// right), diverging around 1: red above, blue below, white at 1, with the
/// colour saturating at the largest distance from 1. Cells print their value.
pub fn heatmap_svg(grid: &Grid, title: &str) -> Result<String> {
    heatmap_around_svg(grid, title, 1.0)
}

/// [`heatmap_svg`] diverging around `center` instead of 1.
pub fn heatmap_around_svg(grid: &Grid, title: &str, center: f64) -> Result<String> {
    let Grid { rows, cols, values } = grid;
    let (n_rows, n_cols) = (rows.len(), cols.len());
    if values.len() != n_rows
        || values.iter().any(|r| r.len() != n_cols)
        || n_rows == 0
        || n_cols == 0
    {
        return Err(Error::InvalidArgument(
            "heatmap values do not match its labels".into(),
        ));
    }
    let spread = values
        .iter()
        .flatten()
        .map(|v| (v - center).abs())
        .fold(1e-9, f64::max);
    let cell = 38i32;
    let (left, top) = (60i32, 50i32);
    let width = (left + cell * n_cols as i32 + 20) as u32;
    let height = (top + cell * n_rows as i32 + 140) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width.max(400), height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        root.draw(&Text::new(title.to_string(), (10, 15), ("sans-serif", 18)))
            .map_err(plot_error)?;
        for (r, row) in values.iter().enumerate() {
            let y = top + r as i32 * cell;
            root.draw(&Text::new(
                rows[r].clone(),
                (8, y + cell / 3),
                ("sans-serif", 12),
            ))
            .map_err(plot_error)?;
            for (c, v) in row.iter().enumerate() {
                let x = left + c as i32 * cell;
                let t = ((v - center) / spread).clamp(-1.0, 1.0);
                let fade = |x: f64| (255.0 * (1.0 - x.abs())) as u8;
                let color = if t >= 0.0 {
                    RGBColor(255, fade(t), fade(t))
                } else {
                    RGBColor(fade(t), fade(t), 255)
                };
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    color.filled(),
                ))
                .map_err(plot_error)?;
                root.draw(&Text::new(
                    format!("{v:.2}"),
                    (x + 3, y + cell / 3),
                    ("sans-serif", 10),
                ))
                .map_err(plot_error)?;
            }
        }
        let bottom = top + n_rows as i32 * cell + 8;
        for (c, name) in cols.iter().enumerate() {
            let x = left + c as i32 * cell + cell / 3;
            let style =
                TextStyle::from(("sans-serif", 11).into_font()).transform(FontTransform::Rotate90);
            root.draw(&Text::new(name.clone(), (x, bottom), style))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// A square or rectangular matrix as cells coloured from white (its
/// minimum) to dark blue (its maximum), with `labels` on both axes when there
/// are few enough rows to read them (an RDM).
pub fn matrix_svg(values: &[Vec<f64>], labels: &[String], title: &str) -> Result<String> {
    let n_rows = values.len();
    let n_cols = values.first().map_or(0, Vec::len);
    if n_rows == 0 || n_cols == 0 || values.iter().any(|r| r.len() != n_cols) {
        return Err(Error::InvalidArgument(
            "a matrix plot needs equal, non-empty rows".into(),
        ));
    }
    let (lo, hi) = values
        .iter()
        .flatten()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let cell = (640 / n_rows.max(n_cols)).clamp(2, 24) as i32;
    let show_labels = labels.len() == n_rows && cell >= 10;
    let margin = if show_labels { 150 } else { 20 };
    let (width, height) = (
        margin + cell * n_cols as i32 + 20,
        40 + cell * n_rows as i32 + 40,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width.max(360) as u32, height as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        root.draw(&Text::new(title.to_string(), (10, 12), ("sans-serif", 16)))
            .map_err(plot_error)?;
        for (r, row) in values.iter().enumerate() {
            let y = 40 + r as i32 * cell;
            if show_labels {
                root.draw(&Text::new(
                    labels[r].clone(),
                    (4, y + cell / 4),
                    ("sans-serif", 10),
                ))
                .map_err(plot_error)?;
            }
            for (c, v) in row.iter().enumerate() {
                let x = margin + c as i32 * cell;
                let t = if v.is_finite() {
                    ((v - lo) / span).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let shade = |full: f64| (255.0 - t * (255.0 - full)) as u8;
                let color = RGBColor(shade(8.0), shade(48.0), shade(107.0));
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    color.filled(),
                ))
                .map_err(plot_error)?;
            }
        }
        let legend = format!("white = {lo:.3}, blue = {hi:.3}");
        root.draw(&Text::new(
            legend,
            (margin, 40 + cell * n_rows as i32 + 12),
            ("sans-serif", 12),
        ))
        .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Named lines of `(x, y)` points in one chart, with a legend.
pub fn lines_svg(
    series: &[(String, Vec<(f64, f64)>)],
    x_desc: &str,
    y_desc: &str,
    title: &str,
) -> Result<String> {
    let points = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|p| p.1.is_finite())
    };
    let (x_lo, x_hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let (y_lo, y_hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    if !x_lo.is_finite() || !y_lo.is_finite() {
        return Err(Error::InvalidArgument(
            "a line plot needs finite points".into(),
        ));
    }
    let pad = ((y_hi - y_lo) * 0.08).max(1e-3);
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(x_lo..x_hi.max(x_lo + 1.0), y_lo - pad..y_hi + pad)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(plot_error)?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = palette[i % palette.len()];
            let finite: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(finite, color.stroke_width(2)))
                .map_err(plot_error)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// `log10` of each latent's firing frequency; never-firing latents give −∞.
pub fn log10_densities(frequencies: &[f64]) -> Vec<f64> {
    frequencies.iter().map(|f| f.log10()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_documents_with_their_titles() {
        let panels = ["FVU", "L0", "dead", "lr"]
            .map(|name| Panel {
                name,
                points: (0..5).map(|i| (i as f64, 1.0 / (i + 1) as f64)).collect(),
                log: name == "FVU",
            })
            .into_iter()
            .collect();
        let svg = panels_svg(panels, 5.0, "tokens", "run A").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("run A") && svg.contains("FVU"));
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let m = matrix_svg(&[vec![0.0, 1.0], vec![1.0, 0.0]], &labels, "RDM x").unwrap();
        assert!(m.contains("RDM x") && m.contains("blue = 1.000"));
        assert!(matrix_svg(&[vec![0.0, 1.0], vec![1.0]], &labels, "bad").is_err());
        let series = vec![("rho".to_string(), vec![(0.0, 0.1), (1.0, 0.4)])];
        let l = lines_svg(&series, "layer", "Spearman", "RSA").unwrap();
        assert!(l.contains("RSA") && l.contains("rho"));
        let hist =
            histogram_svg(&log10_densities(&[0.1, 0.01, 0.0]), 10, "density", "log10").unwrap();
        assert!(hist.contains("1 not shown"), "{}", &hist[..200]);
    }
}
