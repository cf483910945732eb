//! `accuracy_vs_batch.{svg,png}`: test error against batch size, one line per norm, error bars
//! over seeds, log-2 batch axis — the layout of the Group Normalization paper's Figure 1.
//! Text is drawn with the embedded DejaVu Sans (see [`crate::font`]), so no system font is used.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::font;
use norm_train::{NormChoice, NormKind};

use crate::summary::{Axis, Summary};

/// Pixel size of both renderings.
pub const SIZE: (u32, u32) = (800, 520);

/// Width of the legend strip right of the chart: the legend never covers data.
pub const LEGEND_WIDTH: u32 = 150;

/// A norm's colour, fixed by its place among all norms (so it is the same in every plot); no
/// norm is grey.
pub fn colour(norm: NormChoice) -> RGBColor {
    const COLOURS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    match norm {
        NormChoice::None => RGBColor(127, 127, 127),
        NormChoice::Norm(k) => {
            let i = NormKind::ALL.iter().position(|&n| n == k).unwrap_or(0);
            COLOURS[i % COLOURS.len()]
        }
    }
}

/// One line of the plot: `(batch, mean error %, std %)` per point.
fn series(s: &Summary, norm: NormChoice) -> Vec<(usize, f64, f64)> {
    s.batches
        .iter()
        .filter_map(|&b| {
            s.get(norm, b)
                .map(|c| (b, 100.0 * (1.0 - c.mean), 100.0 * c.std.unwrap_or(0.0)))
        })
        .collect()
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, s: &Summary, title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let (w, _) = root.dim_in_pixel();
    let (root, legend_area) = root.split_horizontally(w.saturating_sub(LEGEND_WIDTH));
    let lx: Vec<f64> = s.batches.iter().map(|&b| (b as f64).log2()).collect();
    let (x0, x1) = match (lx.first(), lx.last()) {
        (Some(a), Some(b)) => (a - 0.4, b + 0.4),
        _ => (0.0, 1.0),
    };
    let all: Vec<(usize, f64, f64)> = s.norms.iter().flat_map(|&n| series(s, n)).collect();
    let lo = all.iter().map(|p| p.1 - p.2).fold(f64::INFINITY, f64::min);
    let hi = all
        .iter()
        .map(|p| p.1 + p.2)
        .fold(f64::NEG_INFINITY, f64::max);
    let (y0, y1) = if lo.is_finite() && hi.is_finite() {
        let pad = ((hi - lo) * 0.1).max(1.0);
        ((lo - pad).max(0.0), (hi + pad).min(100.0))
    } else {
        (0.0, 100.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (font::FAMILY, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let x_desc = match s.axis {
        Axis::Batch => "batch size (log₂ scale)".to_owned(),
        Axis::PerWorker { batch } => {
            format!("images per worker (log₂ scale), total batch {batch}")
        }
    };
    let free = s.split_free_norms();
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("test error (%)")
        // Ticks fall on nice numbers (halves at most); label the integer ones, i.e. the powers
        // of two, with the batch size.
        .x_labels(4 * lx.len().max(2))
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{}", x.round().exp2())
            } else {
                String::new()
            }
        })
        .disable_x_mesh()
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((font::FAMILY, 15))
        .axis_desc_style((font::FAMILY, 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    let k = s.norms.len() as f64;
    for (i, &norm) in s.norms.iter().enumerate() {
        let c = colour(norm);
        let pts = series(s, norm);
        // Dodge the lines a little sideways so that equal points and their error bars stay
        // visible.
        let dodge = 0.03 * (i as f64 - (k - 1.0) / 2.0);
        let xy: Vec<(f64, f64)> = pts
            .iter()
            .map(|&(b, e, _)| ((b as f64).log2() + dodge, e))
            .collect();
        // A norm that does not depend on the worker split ran once: a flat line across.
        let line = match (free.contains(&norm), xy.first()) {
            (true, Some(&(_, e))) => lx.iter().map(|&x| (x + dodge, e)).collect(),
            _ => xy.clone(),
        };
        chart
            .draw_series(LineSeries::new(line, c.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(xy.iter().map(|&(x, y)| Circle::new((x, y), 4, c.filled())))
            .map_err(err)?;
        chart
            .draw_series(pts.iter().filter(|p| p.2 > 0.0).map(|&(b, e, sd)| {
                ErrorBar::new_vertical(
                    (b as f64).log2() + dodge,
                    e - sd,
                    e,
                    e + sd,
                    c.stroke_width(1),
                    10,
                )
            }))
            .map_err(err)?;
    }
    let entries: Vec<(String, RGBColor)> = s
        .norms
        .iter()
        .map(|&n| (n.label().to_owned(), colour(n)))
        .collect();
    draw_legend(&legend_area, &entries, 60).map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A legend in its own drawing area (beside or above the charts, never on them): one entry
/// per line, a short stroke in the series' colour and its label, from `top` pixels down.
pub fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, RGBColor)],
    top: i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (i, (label, c)) in entries.iter().enumerate() {
        let y = top + 24 * i as i32;
        area.draw(&PathElement::new(vec![(8, y), (32, y)], c.stroke_width(3)))?;
        area.draw(&Text::new(
            label.clone(),
            (40, y - 8),
            (font::FAMILY, 15).into_font(),
        ))?;
    }
    Ok(())
}

fn title(s: &Summary) -> String {
    let mut seeds: Vec<usize> = s.cells.values().map(|c| c.seeds.len()).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let n = match seeds.as_slice() {
        [one] => format!("{one} seed(s)"),
        [lo, .., hi] => format!("{lo}–{hi} seeds"),
        [] => "no cells".into(),
    };
    match s.axis {
        Axis::Batch => format!("Test error vs batch size (mean ± std over {n})"),
        Axis::PerWorker { .. } => {
            format!("Test error vs images per worker (mean ± std over {n})")
        }
    }
}

/// Renders the plot as SVG text.
pub fn render_svg(s: &Summary) -> Result<String> {
    font::register();
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(),
        s,
        &title(s),
    )?;
    Ok(svg)
}

/// Renders the plot as PNG into `path` (atomically).
pub fn render_png(s: &Summary, path: &Path) -> Result<()> {
    font::register();
    crate::store::write_atomic_with(path, |tmp| {
        draw(
            BitMapBackend::new(tmp, SIZE).into_drawing_area(),
            s,
            &title(s),
        )
    })
}
