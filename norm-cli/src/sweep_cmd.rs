//! `norm-cli sweep`: train every norm × batch × seed cell with one recipe, resumably.
//! The bookkeeping lives in [`crate::sweep`]; this module trains the cells and shows progress.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use norm_train::{EpochStats, Progress, TrainError};

use crate::cli::SweepArgs;
use crate::store::{CellResult, CellStatus, Divergence, RecalibratedAcc};
use crate::summary::{Summary, render_markdown};
use crate::sweep::{Cell, SweepDir, all_cells, per_worker_cells, run_missing};
use crate::train_cmd::{self, clean, config, in_pool, load_data, overall_images_per_sec};

/// Ticks of the overall bar per cell (progress inside a cell moves it too).
const TICKS: u64 = 1000;

fn check_lists(a: &SweepArgs) -> Result<()> {
    if a.norms.is_empty() {
        bail!("--norms is empty");
    }
    if a.batches.is_empty() {
        bail!("--batches is empty");
    }
    let mut seen = HashSet::new();
    if let Some(n) = a.norms.iter().find(|n| !seen.insert(**n)) {
        bail!("--norms lists {} twice", n.name());
    }
    let mut seen = HashSet::new();
    if let Some(b) = a.batches.iter().find(|b| !seen.insert(**b)) {
        bail!("--batches lists {b} twice");
    }
    if let (Some(ks), Some(batch)) = (&a.per_worker, a.batch) {
        if ks.is_empty() {
            bail!("--per-worker is empty");
        }
        let mut seen = HashSet::new();
        if let Some(k) = ks.iter().find(|k| !seen.insert(**k)) {
            bail!("--per-worker lists {k} twice");
        }
        if let Some(k) = ks.iter().find(|&&k| k == 0 || batch % k != 0) {
            bail!("--per-worker {k} does not divide --batch {batch} into equal worker shares");
        }
    }
    Ok(())
}

/// The (batch, workers) pairs the sweep runs: `--batches` with one worker each, or the total
/// `--batch` over `batch / k` workers for each `--per-worker k`.
fn shapes(a: &SweepArgs) -> Vec<(usize, usize)> {
    match (&a.per_worker, a.batch) {
        (Some(ks), Some(b)) => ks.iter().map(|&k| (b, b / k)).collect(),
        _ => a.batches.iter().map(|&b| (b, 1)).collect(),
    }
}

/// The note about a partial last line cut on open: it says "runs again" only when that cell is
/// among the cells this run will train.
fn partial_note(sd: &SweepDir, cells: &[Cell], path: &str) -> String {
    let head = format!(
        "note: cut a partial last line ({} bytes) of {path} left by an interrupted run",
        sd.dropped_partial
    );
    match &sd.dropped_cell {
        &Some((norm, batch, per_worker, seed)) => {
            let cell = Cell {
                norm,
                batch,
                per_worker,
                seed,
            };
            if sd.is_done(&cell) {
                format!("{head}; it repeated {cell}, which is done")
            } else if cells.contains(&cell) {
                format!("{head}; that cell ({cell}) runs again")
            } else {
                format!("{head}; its cell ({cell}) is not part of this run")
            }
        }
        None => format!("{head} (too short to tell which cell it was)"),
    }
}

/// Test accuracies of a trained cell's model with its running statistics re-estimated from the
/// first `images` training images with the training augmentation `augment` (the distribution
/// the statistics of training came from), over batches of its images per worker and of its whole
/// batch (`None` for a norm without running statistics). Each re-estimate replaces the statistics
/// outright, so the model's own are gone afterwards.
fn recalibrate(
    model: &mut norm_train::Model,
    cell: &Cell,
    split: &norm_train::data::Split,
    images: usize,
    augment: norm_train::data::Augment,
) -> Result<Option<RecalibratedAcc>> {
    if !model.config().norm.is_some_and(|n| n.tracks_running()) {
        return Ok(None);
    }
    let norm = norm_train::data::Normalizer::from_dataset(&split.train);
    let mut acc_at = |batch: usize| -> Result<f64> {
        model.set_workers(1, norm_train::RunningFrom::Worker0)?;
        model.recalibrate_batch_norm(
            &split.train,
            &norm,
            norm_train::Recalibrate {
                images,
                batch,
                augment,
            },
        )?;
        Ok(clean(model.evaluate(&split.test, &norm)?))
    };
    Ok(Some(RecalibratedAcc {
        images,
        per_worker: acc_at(cell.per_worker.unwrap_or(cell.batch))?,
        whole_batch: acc_at(cell.batch)?,
        augmented: augment != norm_train::data::Augment::NONE,
    }))
}

/// Runs `norm-cli sweep`.
pub fn run(a: &SweepArgs) -> Result<()> {
    check_lists(a)?;
    train_cmd::check_recipe(&a.recipe)?;
    let norms = &a.norms;
    // Every cell's settings are checked before any data is made or any cell runs.
    let validate_all = |train_len: usize| -> Result<()> {
        for &n in norms {
            for (b, w) in shapes(a) {
                let mut c = config(&a.recipe, n, b, 0);
                c.workers = w;
                c.validate(train_len)
                    .map_err(|e| anyhow::anyhow!("{n} norm, batch {b}: {e}"))?;
            }
        }
        Ok(())
    };
    if let Some(n) = train_cmd::planned_train_len(&a.recipe) {
        validate_all(n)?;
    }
    in_pool(a.run.threads, || -> Result<()> {
        let (split, info) = load_data(&a.recipe)?;
        validate_all(split.train.len())?;
        if let Some(n) = a.recalibrate_bn
            && (n == 0 || n > split.train.len())
        {
            bail!(
                "--recalibrate-bn {n}: needs 1 to {} images (the training set's size)",
                split.train.len()
            );
        }
        let base = config(&a.recipe, norms[0], shapes(a)[0].0, 0);
        let mut recipe = train_cmd::recipe(&base, &info)?;
        // A per-worker sweep fixes the total batch: it belongs to the recipe (and keeps such a
        // folder from mixing with a batch sweep's).
        if let (Some(b), Some(obj)) = (
            a.batch.filter(|_| a.per_worker.is_some()),
            recipe.as_object_mut(),
        ) {
            obj.insert("batch".into(), b.into());
        }
        let mut sd = SweepDir::open(&a.out, &recipe)?;
        let results_path = a.out.join(crate::store::RESULTS_FILE);
        for d in &sd.duplicates {
            eprintln!("{}", d.warning(&results_path));
        }
        let all = match (&a.per_worker, a.batch) {
            (Some(ks), Some(b)) => per_worker_cells(norms, b, ks, &a.seeds.0, |n| {
                n.kind().is_some_and(norm_train::split_matters)
            }),
            _ => all_cells(norms, &a.batches, &a.seeds.0),
        };
        // --cells wins; without it, a Slurm array task takes its own share.
        let from_env = match a.cells {
            Some(_) => None,
            None => crate::sweep::share_from_env(|k| std::env::var(k).ok())?,
        };
        if let Some((_, why)) = &from_env {
            eprintln!("sweep: {why}");
        }
        let share_used = a.cells.or(from_env.map(|(s, _)| s));
        let cells = match share_used {
            Some(share) => share.select(&all),
            None => all.clone(),
        };
        if sd.dropped_partial > 0 {
            eprintln!(
                "{}",
                partial_note(&sd, &cells, &results_path.display().to_string())
            );
        }
        let done = cells.iter().filter(|c| sd.is_done(c)).count();
        let share = share_used
            .map(|s| format!(" (share {}/{} of {})", s.i, s.k, all.len()))
            .unwrap_or_default();
        eprintln!(
            "sweep: {} cell(s){share}, {done} already in {}, {} to run; {} threads, SIMD {}",
            cells.len(),
            a.out.display(),
            cells.len() - done,
            rayon::current_num_threads(),
            norm_kernels::simd_level()
        );
        let todo = (cells.len() - done) as u64;
        let bar = if todo == 0 {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(Some(todo * TICKS), ProgressDrawTarget::stderr())
        };
        bar.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] [{bar:30}] {msg} · ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let visible = !bar.is_hidden();
        crate::interrupt::set_bar(Some(bar.clone()));
        let kept = |n: usize| {
            format!(
                "the {n} finished cell(s) are kept in {}; run the same command to resume",
                results_path.display()
            )
        };
        let before = sd.results().len();
        crate::interrupt::set_kept(kept(before));
        let epochs = a.recipe.epochs;
        let run_cell = |cell: &Cell, i: usize, n: usize| -> Result<CellResult> {
            let mut cfg = config(&a.recipe, cell.norm, cell.batch, cell.seed);
            cfg.workers = cell.workers();
            let label = format!("{i}/{n} cells done · running {cell}");
            bar.set_message(label.clone());
            crate::interrupt::set_task(format!("sweep stopped while running {cell}"));
            let t0 = Instant::now();
            let mut finished: Vec<EpochStats> = Vec::new();
            let trained = norm_train::train(&cfg, &split, &mut |p| {
                crate::interrupt::park_if_requested(|| {
                    bar.finish_and_clear();
                    visible
                });
                match p {
                    Progress::Step {
                        epoch,
                        step,
                        steps,
                        loss,
                    } => {
                        let frac =
                            (*epoch as f64 + (*step + 1) as f64 / *steps as f64) / epochs as f64;
                        bar.set_position(i as u64 * TICKS + (frac * TICKS as f64) as u64);
                        bar.set_message(format!(
                            "{label}, epoch {}/{epochs}, loss {loss:.3}",
                            epoch + 1
                        ));
                    }
                    Progress::Epoch(e) => finished.push(e.clone()),
                }
            });
            let mut recalibrated = None;
            let (status, diverged, final_acc, ips) = match trained {
                Ok(mut outcome) => {
                    if a.save_models {
                        let dir = a.out.join("models");
                        let path = dir.join(format!("{}.safetensors", cell.file_stem()));
                        let meta = norm_train::checkpoint::CheckpointMeta {
                            normalizer: norm_train::data::Normalizer::from_dataset(&split.train),
                            data: Some(info.identity()),
                        };
                        std::fs::create_dir_all(&dir)
                            .with_context(|| format!("cannot create {}", dir.display()))?;
                        crate::interrupt::critical(|| {
                            norm_train::checkpoint::save(&path, &outcome.model, &meta)
                        })
                        .with_context(|| format!("cannot save the model to {}", path.display()))?;
                    }
                    if let Some(images) = a.recalibrate_bn {
                        bar.set_message(format!("{label}, re-estimating running statistics"));
                        recalibrated =
                            recalibrate(&mut outcome.model, cell, &split, images, cfg.augment)?;
                    }
                    (
                        CellStatus::Ok,
                        None,
                        Some(clean(outcome.final_test_acc())),
                        overall_images_per_sec(&outcome.epochs),
                    )
                }
                // A diverged cell is a result of the recipe, not a failure of the sweep: record
                // it and go on with the next cell.
                Err(TrainError::Diverged {
                    epoch, step, lr, ..
                }) => (
                    CellStatus::Diverged,
                    Some(Divergence {
                        epoch,
                        step,
                        lr: clean(lr),
                    }),
                    None,
                    overall_images_per_sec(&finished),
                ),
                Err(e) => return Err(e.into()),
            };
            let seconds = t0.elapsed().as_secs_f64();
            let r = CellResult {
                norm: cell.norm,
                batch: cell.batch,
                per_worker: cell.per_worker,
                seed: cell.seed,
                status,
                diverged,
                recipe: recipe.clone(),
                test_acc_per_epoch: finished.iter().map(|e| clean(e.test_acc)).collect(),
                train_loss_per_epoch: finished.iter().map(|e| clean(e.train_loss)).collect(),
                final_test_acc: final_acc,
                recalibrated,
                images_per_sec: ips.round(),
                seconds: (seconds * 1000.0).round() / 1000.0,
                simd: norm_kernels::simd_level().to_owned(),
                threads: rayon::current_num_threads(),
            };
            bar.set_position((i as u64 + 1) * TICKS);
            Ok(r)
        };
        // Reported only once the line is on disk, so "done" means it survives a kill.
        let recorded = |r: &CellResult, i: usize, n: usize| {
            let per_worker = r
                .per_worker
                .map(|k| format!(" ({k} per worker)"))
                .unwrap_or_default();
            let outcome = match (&r.final_test_acc, &r.diverged) {
                (Some(acc), _) => format!("test acc {:.1} %", 100.0 * acc),
                (None, Some(d)) => format!(
                    "diverged at epoch {}, step {} (lr {}), recorded as diverged",
                    d.epoch,
                    d.step,
                    norm_train::short_num(&(d.lr as f32))
                ),
                (None, None) => "no accuracy".into(),
            };
            let line = format!(
                "done {}/{n}: {} norm, batch {}{per_worker}, seed {}: {outcome} ({:.1} s)",
                i + 1,
                r.norm,
                r.batch,
                r.seed,
                r.seconds
            );
            if visible {
                bar.println(line)
            } else {
                eprintln!("{line}")
            }
            crate::interrupt::set_kept(kept(before + i + 1));
        };
        let ran = run_missing(&mut sd, &cells, run_cell, recorded);
        bar.finish_and_clear();
        crate::interrupt::set_bar(None);
        ran?;
        crate::interrupt::critical(|| sd.write_outputs())?;
        let s = Summary::from_results(sd.results());
        crate::stdout::print(&render_markdown(&s, &recipe))?;
        let files: Vec<String> = std::iter::once(crate::store::RESULTS_FILE)
            .chain(crate::outputs::FILES)
            .map(|f| sd.dir().join(f).display().to_string())
            .collect();
        eprintln!("wrote {}", files.join(", "));
        Ok(())
    })?
}
