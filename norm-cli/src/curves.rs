//! `training_curves.{svg,png}`: test accuracy and train loss per epoch. A sweep draws one column
//! of two panels per batch size, one line per norm (the mean over its seeds) with a band of
//! ± one sample standard deviation; `train` draws its single run the same way. The legend sits
//! in a strip above the panels, never on the data.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, anyhow};
use norm_train::EpochStats;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::font;
use crate::plot::{colour, draw_legend};
use crate::store::{CellResult, CellStatus};
use norm_train::NormChoice;

/// Mean and spread of one quantity at one epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Mean over the seeds.
    pub mean: f64,
    /// Sample standard deviation (0 for one seed).
    pub std: f64,
}

/// One line of a column: a norm's mean curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The norm.
    pub norm: NormChoice,
    /// Seeds averaged.
    pub seeds: usize,
    /// Test accuracy, %.
    pub test_acc: Vec<Point>,
    /// Train loss.
    pub train_loss: Vec<Point>,
}

/// One column of panels (one batch size, or the single run of `train`).
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// Heading above the column (`batch 8`).
    pub heading: String,
    /// Its lines.
    pub series: Vec<Series>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, std)
}

/// Mean and std per epoch over `runs` (each a per-epoch list), `scale`d; epochs past the
/// shortest run are left out.
fn points(runs: &[&[f64]], scale: f64) -> Vec<Point> {
    let len = runs.iter().map(|r| r.len()).min().unwrap_or(0);
    (0..len)
        .map(|e| {
            let v: Vec<f64> = runs.iter().map(|r| scale * r[e]).collect();
            let (mean, std) = mean_std(&v);
            Point {
                epoch: e + 1,
                mean,
                std,
            }
        })
        .collect()
}

/// A sweep's columns: one per batch size, a series per norm over its finished seeds (diverged
/// cells are left out; a cell seen twice counts once, the first).
pub fn from_results(results: &[CellResult], norm_order: &[NormChoice]) -> Vec<Column> {
    let mut by: BTreeMap<usize, BTreeMap<NormChoice, BTreeMap<u64, &CellResult>>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.status == CellStatus::Ok) {
        by.entry(r.batch)
            .or_default()
            .entry(r.norm)
            .or_default()
            .entry(r.seed)
            .or_insert(r);
    }
    by.into_iter()
        .map(|(batch, norms)| Column {
            heading: format!("batch {batch}"),
            series: norm_order
                .iter()
                .filter_map(|n| norms.get(n).map(|seeds| (n, seeds)))
                .map(|(n, seeds)| {
                    let acc: Vec<&[f64]> =
                        seeds.values().map(|r| &r.test_acc_per_epoch[..]).collect();
                    let loss: Vec<&[f64]> = seeds
                        .values()
                        .map(|r| &r.train_loss_per_epoch[..])
                        .collect();
                    Series {
                        norm: *n,
                        seeds: seeds.len(),
                        test_acc: points(&acc, 100.0),
                        train_loss: points(&loss, 1.0),
                    }
                })
                .collect(),
        })
        .collect()
}

/// The single column of one `train` run.
pub fn from_epochs(norm: NormChoice, batch: usize, epochs: &[EpochStats]) -> Vec<Column> {
    let acc: Vec<f64> = epochs.iter().map(|e| f64::from(e.test_acc)).collect();
    let loss: Vec<f64> = epochs.iter().map(|e| f64::from(e.train_loss)).collect();
    vec![Column {
        heading: format!("batch {batch}"),
        series: vec![Series {
            norm,
            seeds: 1,
            test_acc: points(&[&acc], 100.0),
            train_loss: points(&[&loss], 1.0),
        }],
    }]
}

const PANEL: (u32, u32) = (300, 250);
const TITLE_H: u32 = 40;
const LEGEND_H: u32 = 34;

/// Pixel size for `columns`.
pub fn size(columns: &[Column]) -> (u32, u32) {
    let cols = columns.len().max(1) as u32;
    ((cols * PANEL.0).max(640), TITLE_H + LEGEND_H + 2 * PANEL.1)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    columns: &[Column],
    title: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the curves: {e}");
    root.fill(&WHITE).map_err(err)?;
    let (title_area, rest) = root.split_vertically(TITLE_H);
    title_area
        .draw(&Text::new(
            title.to_owned(),
            (12, 10),
            (font::FAMILY, 20).into_font(),
        ))
        .map_err(err)?;
    let (legend_area, panels) = rest.split_vertically(LEGEND_H);
    // The legend: every norm that appears, in a row above the panels.
    let mut norms: Vec<NormChoice> = Vec::new();
    for s in columns.iter().flat_map(|c| &c.series) {
        if !norms.contains(&s.norm) {
            norms.push(s.norm);
        }
    }
    let colours: Vec<(NormChoice, RGBColor)> = norms.iter().map(|&n| (n, colour(n))).collect();
    let colour_of = |n: NormChoice| colour(n);
    let (w, _) = legend_area.dim_in_pixel();
    let per = (w / norms.len().max(1) as u32).min(170);
    for (i, (n, c)) in colours.iter().enumerate() {
        let (_, right) = legend_area.split_horizontally(12 + per * i as u32);
        draw_legend(&right, &[(n.label().to_owned(), *c)], 16).map_err(err)?;
    }
    let ncol = columns.len().max(1);
    let cells = panels.split_evenly((2, ncol));
    let epochs = columns
        .iter()
        .flat_map(|c| &c.series)
        .map(|s| s.test_acc.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let (x0, x1) = if epochs == 1 {
        (0.5, 1.5)
    } else {
        (1.0, epochs as f64)
    };
    let max_loss = columns
        .iter()
        .flat_map(|c| &c.series)
        .flat_map(|s| &s.train_loss)
        .map(|p| p.mean + p.std)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let loss_top = if max_loss > 0.0 { max_loss * 1.05 } else { 1.0 };
    // Accuracy up to the next 10 % above the highest band, so low accuracies are not squashed.
    let max_acc = columns
        .iter()
        .flat_map(|c| &c.series)
        .flat_map(|s| &s.test_acc)
        .map(|p| p.mean + p.std)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let acc_top = ((max_acc / 10.0).floor() * 10.0 + 10.0).min(100.0);
    for (j, col) in columns.iter().enumerate() {
        for (row, (what, top)) in [("test accuracy (%)", acc_top), ("train loss", loss_top)]
            .into_iter()
            .enumerate()
        {
            let area = &cells[row * ncol + j];
            let mut chart = ChartBuilder::on(area)
                .caption(
                    if row == 0 {
                        col.heading.clone()
                    } else {
                        String::new()
                    },
                    (font::FAMILY, 16),
                )
                .margin(8)
                .x_label_area_size(34)
                .y_label_area_size(44)
                .build_cartesian_2d(x0..x1, 0.0..top)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(what)
                .x_labels(epochs.min(8))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| {
                    if row == 0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y:.1}")
                    }
                })
                .label_style((font::FAMILY, 12))
                .axis_desc_style((font::FAMILY, 13))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(err)?;
            for s in &col.series {
                let c = colour_of(s.norm);
                let pts = if row == 0 { &s.test_acc } else { &s.train_loss };
                if s.seeds > 1 {
                    let mut band: Vec<(f64, f64)> = pts
                        .iter()
                        .map(|p| (p.epoch as f64, (p.mean + p.std).min(top)))
                        .collect();
                    band.extend(
                        pts.iter()
                            .rev()
                            .map(|p| (p.epoch as f64, (p.mean - p.std).max(0.0))),
                    );
                    chart
                        .draw_series(std::iter::once(Polygon::new(band, c.mix(0.18).filled())))
                        .map_err(err)?;
                }
                let line: Vec<(f64, f64)> = pts.iter().map(|p| (p.epoch as f64, p.mean)).collect();
                chart
                    .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))
                    .map_err(err)?;
                if line.len() == 1 {
                    chart
                        .draw_series(
                            line.iter()
                                .map(|&(x, y)| Circle::new((x, y), 3, c.filled())),
                        )
                        .map_err(err)?;
                }
            }
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// The title: what is drawn and over how many seeds.
pub fn title(columns: &[Column]) -> String {
    let mut seeds: Vec<usize> = columns
        .iter()
        .flat_map(|c| &c.series)
        .map(|s| s.seeds)
        .collect();
    seeds.sort_unstable();
    seeds.dedup();
    match seeds.as_slice() {
        [1] => "Test accuracy and train loss per epoch".into(),
        [n] => format!("Test accuracy and train loss per epoch (mean ± std over {n} seeds)"),
        [lo, .., hi] => {
            format!("Test accuracy and train loss per epoch (mean ± std over {lo}–{hi} seeds)")
        }
        [] => "Test accuracy and train loss per epoch (no finished cell)".into(),
    }
}

/// Renders the curves as SVG text.
pub fn render_svg(columns: &[Column]) -> Result<String> {
    font::register();
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, size(columns)).into_drawing_area(),
        columns,
        &title(columns),
    )?;
    Ok(svg)
}

/// Renders the curves as PNG into `path` (atomically).
pub fn render_png(columns: &[Column], path: &Path) -> Result<()> {
    font::register();
    crate::store::write_atomic_with(path, |tmp| {
        draw(
            BitMapBackend::new(tmp, size(columns)).into_drawing_area(),
            columns,
            &title(columns),
        )
    })
}

/// Writes the SVG and the PNG (atomically).
pub fn write(columns: &[Column], svg: &Path, png: &Path) -> Result<()> {
    crate::store::write_atomic(svg, render_svg(columns)?.as_bytes())?;
    render_png(columns, png)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cell(norm: &str, batch: usize, seed: u64, acc: [f64; 2], status: CellStatus) -> CellResult {
        CellResult {
            norm: norm.parse().unwrap(),
            batch,
            per_worker: None,
            seed,
            status,
            diverged: None,
            recipe: json!({}),
            test_acc_per_epoch: acc.to_vec(),
            train_loss_per_epoch: vec![2.0, 1.0 + seed as f64],
            final_test_acc: Some(acc[1]),
            recalibrated: None,
            images_per_sec: 1.0,
            seconds: 1.0,
            simd: String::new(),
            threads: 1,
        }
    }

    #[test]
    fn mean_and_band_over_seeds_per_batch_and_norm() {
        let rs = [
            cell("group", 4, 0, [0.2, 0.5], CellStatus::Ok),
            cell("group", 4, 1, [0.4, 0.7], CellStatus::Ok),
            cell("group", 4, 1, [0.9, 0.9], CellStatus::Ok), // duplicate: first kept
            cell("batch", 4, 0, [0.1, 0.3], CellStatus::Ok),
            cell("batch", 2, 0, [0.1, 0.3], CellStatus::Diverged),
            cell("batch", 2, 1, [0.2, 0.4], CellStatus::Ok),
        ];
        let order: Vec<NormChoice> = vec!["batch".parse().unwrap(), "group".parse().unwrap()];
        let cols = from_results(&rs, &order);
        assert_eq!(cols.len(), 2);
        assert_eq!(cols[0].heading, "batch 2");
        assert_eq!(cols[0].series.len(), 1);
        assert_eq!(cols[0].series[0].seeds, 1, "the diverged seed is left out");
        let g = &cols[1].series[1];
        assert_eq!((g.norm.name(), g.seeds), ("group", 2));
        assert!((g.test_acc[1].mean - 60.0).abs() < 1e-9);
        assert!((g.test_acc[1].std - 200f64.sqrt()).abs() < 1e-9);
        assert!((g.train_loss[1].mean - 1.5).abs() < 1e-12);
        let svg = render_svg(&cols).unwrap();
        assert!(svg.contains("batch 4") && svg.contains("GroupNorm") && svg.contains("<polygon"));
        assert_eq!(
            title(&cols),
            "Test accuracy and train loss per epoch (mean ± std over 1–2 seeds)"
        );
    }
}
