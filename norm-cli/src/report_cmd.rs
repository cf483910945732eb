//! `norm-cli report DIR...`: merge one or more sweep folders (or `results.jsonl` files) and
//! rebuild summary and plots.
//!
//! Inputs must share one recipe; a cell (norm, batch, seed) present in several inputs counts
//! once (the first seen). The output folder becomes a sweep folder of its own: cells it lacks
//! are appended to its `results.jsonl` (never rewritten, so a sweep still running there loses
//! nothing), its `recipe.json` is written if missing, then summary and plots are rebuilt.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cli::ReportArgs;
use crate::outputs;
use crate::store::{self, CellKey, CellResult, RECIPE_FILE, RESULTS_FILE, ResultsFile};

/// What a merge did, for the one-line report.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged {
    /// Distinct cells in the output.
    pub cells: usize,
    /// Cells appended to the output's results.jsonl.
    pub appended: usize,
    /// Cells seen more than once and counted once.
    pub duplicates: usize,
}

fn results_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join(RESULTS_FILE)
    } else {
        p.to_owned()
    }
}

fn acc_text(r: &CellResult) -> String {
    r.final_test_acc
        .map_or_else(|| "diverged".into(), |a| a.to_string())
}

/// Runs the command.
pub fn run(args: &ReportArgs) -> Result<()> {
    let out = match (&args.out, args.inputs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) if one.is_dir() => one.clone(),
        (None, [one]) => one
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from(".")),
        (None, _) => bail!("several inputs: say where to write the merged report with --out DIR"),
    };
    let m = merge(&args.inputs, &out)?;
    eprintln!(
        "report: {} cell(s) in {} ({} appended to its results.jsonl, {} duplicate(s) skipped)",
        m.cells,
        out.display(),
        m.appended,
        m.duplicates
    );
    Ok(())
}

/// Merges `inputs` into the sweep folder `out` and rebuilds its outputs.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<Merged> {
    let mut recipe: Option<(Value, String)> = None;
    let mut check = |r: &Value, from: String| -> Result<()> {
        match &recipe {
            None => recipe = Some((r.clone(), from)),
            Some((first, first_from)) => store::check_same_recipe(first, r, |diff| {
                format!("refusing to mix recipes: {from} differs from {first_from} ({diff})")
            })?,
        }
        Ok(())
    };
    let mut all: Vec<CellResult> = Vec::new();
    for input in inputs {
        let path = results_path(input);
        if !path.is_file() {
            bail!(
                "{} has no results ({} not found)",
                input.display(),
                path.display()
            );
        }
        let (rs, rep) = store::read_results(&path)?;
        for d in &rep.duplicates {
            eprintln!("{}", d.warning(&path));
        }
        if rep.partial_tail > 0 {
            eprintln!(
                "warning: ignoring a partial last line ({} bytes) of {}",
                rep.partial_tail,
                path.display()
            );
        }
        if let Some(dir) = path.parent()
            && let Some(r) = store::read_recipe(&dir.join(RECIPE_FILE))?
        {
            check(&r, dir.join(RECIPE_FILE).display().to_string())?;
        }
        for (i, r) in rs.into_iter().enumerate() {
            check(&r.recipe, format!("{} line {}", path.display(), i + 1))?;
            all.push(r);
        }
    }
    fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let out_recipe = out.join(RECIPE_FILE);
    if let Some(r) = store::read_recipe(&out_recipe)? {
        check(&r, out_recipe.display().to_string())?;
    }
    let (mut file, existing, _) = ResultsFile::open(&out.join(RESULTS_FILE))?;
    for (i, r) in existing.iter().enumerate() {
        check(
            &r.recipe,
            format!("{} line {}", out.join(RESULTS_FILE).display(), i + 1),
        )?;
    }
    let Some((recipe, _)) = recipe else {
        bail!(
            "no finished cells in {}",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let mut seen: HashSet<CellKey> = HashSet::new();
    let mut merged = Vec::new();
    let mut duplicates = 0;
    for r in &existing {
        if seen.insert(r.key()) {
            merged.push(r.clone());
        }
    }
    let mut appended = 0;
    let existing_keys = seen.clone();
    for r in all {
        let key = r.key();
        if seen.insert(key) {
            file.append(&r)?;
            appended += 1;
            merged.push(r);
        } else {
            if let Some(kept) = merged.iter().find(|m| m.key() == r.key())
                && kept.final_test_acc != r.final_test_acc
            {
                eprintln!(
                    "warning: {} norm, batch {}, seed {} has different accuracies in the \
                     inputs ({} vs {}); kept the first",
                    r.norm,
                    r.batch,
                    r.seed,
                    acc_text(kept),
                    acc_text(&r)
                );
            }
            if !existing_keys.contains(&key) {
                duplicates += 1;
            }
        }
    }
    if !out_recipe.exists() {
        let text = serde_json::to_string_pretty(&recipe)? + "\n";
        store::write_atomic(&out_recipe, text.as_bytes())?;
    }
    outputs::write_all(out, &merged, &recipe)?;
    Ok(Merged {
        cells: merged.len(),
        appended,
        duplicates,
    })
}
