//! The derived files of a sweep folder, rebuilt from its results: `summary.md`,
//! `summary.csv`, `accuracy_vs_batch.{svg,png}` and `training_curves.{svg,png}`. Each is
//! replaced atomically, so a kill while rewriting leaves the previous version.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::store::{CellResult, write_atomic};
use crate::summary::{Summary, render_csv, render_markdown};
use crate::{curves, plot};

/// Names of the files [`write_all`] writes, in order.
pub const FILES: [&str; 6] = [
    "summary.md",
    "summary.csv",
    "accuracy_vs_batch.svg",
    "accuracy_vs_batch.png",
    "training_curves.svg",
    "training_curves.png",
];

/// Writes all six files into `dir`.
pub fn write_all(dir: &Path, results: &[CellResult], recipe: &Value) -> Result<()> {
    let s = Summary::from_results(results);
    write_atomic(
        &dir.join("summary.md"),
        render_markdown(&s, recipe).as_bytes(),
    )?;
    write_atomic(&dir.join("summary.csv"), render_csv(&s).as_bytes())?;
    write_atomic(
        &dir.join("accuracy_vs_batch.svg"),
        plot::render_svg(&s)?.as_bytes(),
    )?;
    plot::render_png(&s, &dir.join("accuracy_vs_batch.png"))?;
    curves::write(
        &curves::from_results(results, &s.norms),
        &dir.join("training_curves.svg"),
        &dir.join("training_curves.png"),
    )
}
