//! `norm-cli eval`: the test accuracy of a checkpoint in eval mode, on the data it was trained on
//! (regenerated from the checkpoint's data identity) or on the data options given, and
//! optionally after re-estimating BatchNorm's running statistics ("precise BN").
//!
//! The evaluation is the one `train` runs after its last epoch — same images, same stored input
//! normalisation, same batches of 250 — so it reproduces `train`'s final test accuracy bit for
//! bit.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use norm_train::checkpoint::{self, CheckpointMeta, DataIdentity};
use norm_train::{Recalibrate, Recalibration};
use serde::Serialize;

use crate::cli::{DataSource, EvalArgs};
use crate::train_cmd::{DataChoice, DataInfo, check_writable_parent, in_pool, load_choice};

/// Accuracy before and after a recalibration.
#[derive(Clone, Debug, Serialize)]
pub struct Recalibrated {
    /// Training images used.
    pub images: usize,
    /// Forward passes averaged.
    pub batches: usize,
    /// Images per pass.
    pub batch: usize,
    /// Whether those images had the training augmentation (crop and flip).
    pub augmented: bool,
    /// Test accuracy with the statistics from training, 0..1.
    pub test_acc_before: f32,
    /// Test accuracy with the re-estimated statistics, 0..1.
    pub test_acc_after: f32,
}

/// What `eval` reports (`--json` prints it as one object).
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// Its model configuration.
    pub model: norm_train::ModelConfig,
    /// The data evaluated on.
    pub data: DataInfo,
    /// Whether that is the data the checkpoint was trained on (same fingerprint); `None` when
    /// the checkpoint does not say.
    pub same_data_as_training: Option<bool>,
    /// Test accuracy, 0..1 (after recalibration when there was one).
    pub test_acc: f32,
    /// The recalibration, if asked for.
    pub recalibrated: Option<Recalibrated>,
    /// Where the recalibrated model was written.
    pub saved: Option<PathBuf>,
}

/// The data options, each defaulting to what the checkpoint was trained on.
fn choice(a: &EvalArgs, trained: Option<&DataIdentity>) -> Result<DataChoice> {
    let source = match (a.data, trained.map(|d| d.source.as_str())) {
        (Some(d), _) => d,
        (None, Some("cifar10")) => DataSource::Cifar10,
        (None, Some("synthetic")) | (None, None) => DataSource::Synthetic,
        (None, Some(other)) => bail!(
            "{} was trained on data `{other}`, which this version does not know; pass --data",
            a.checkpoint.display()
        ),
    };
    let same_source = trained.is_some_and(|d| {
        d.source
            == match source {
                DataSource::Synthetic => "synthetic",
                DataSource::Cifar10 => "cifar10",
            }
    });
    let from = |f: fn(&DataIdentity) -> usize| trained.filter(|_| same_source).map(f);
    if source == DataSource::Cifar10 && a.data_dir.is_none() {
        bail!(
            "{} needs --data-dir DIR with the CIFAR-10 files{}",
            a.checkpoint.display(),
            if same_source {
                " (it was trained on CIFAR-10; the folder is not stored)"
            } else {
                ""
            }
        );
    }
    Ok(DataChoice {
        data: source,
        data_dir: a.data_dir.clone(),
        train_size: a.train_size.or(from(|d| d.train_size)),
        test_size: a.test_size.or(from(|d| d.test_size)),
        data_seed: a
            .data_seed
            .or(trained.filter(|_| same_source).and_then(|d| d.seed))
            .unwrap_or(0),
    })
}

/// The text report.
pub fn render(r: &EvalReport) -> String {
    let mut out = String::new();
    let m = &r.model;
    let _ = writeln!(
        out,
        "checkpoint {}: {}, {} widths {:?}",
        r.checkpoint.display(),
        m.norm_label(),
        m.arch,
        m.stage_widths()
    );
    let seed = r
        .data
        .seed
        .map(|s| format!(" (seed {s})"))
        .unwrap_or_default();
    let same = match r.same_data_as_training {
        Some(true) => ", the data it was trained on",
        Some(false) => ", other data than it was trained on",
        None => "",
    };
    let _ = writeln!(
        out,
        "data: {}{seed}, {} train / {} test images{same}",
        r.data.source, r.data.train_size, r.data.test_size
    );
    let pct = |x: f32| format!("{:.1} %", 100.0 * x);
    match &r.recalibrated {
        None => {
            let _ = writeln!(out, "test accuracy        {}  (eval mode)", pct(r.test_acc));
        }
        Some(c) => {
            let _ = writeln!(
                out,
                "BatchNorm statistics re-estimated from {} train images ({} batch(es) of {}{}, \
                 cumulative average, weights fixed)",
                c.images,
                c.batches,
                c.batch,
                if c.augmented { ", augmented" } else { "" }
            );
            let _ = writeln!(
                out,
                "test accuracy before {}  (running statistics from training)",
                pct(c.test_acc_before)
            );
            let _ = writeln!(
                out,
                "test accuracy after  {}  ({:+.1} points)",
                pct(c.test_acc_after),
                100.0 * (c.test_acc_after - c.test_acc_before)
            );
        }
    }
    if let Some(p) = &r.saved {
        let _ = writeln!(out, "recalibrated model saved to {}", p.display());
    }
    out
}

/// Runs `norm-cli eval`.
pub fn run(a: &EvalArgs) -> Result<()> {
    if let Some(p) = &a.save {
        check_writable_parent(p)?;
    }
    let report = in_pool(a.run.threads, || -> Result<EvalReport> {
        let ckpt = checkpoint::load(&a.checkpoint)?;
        let mut model = ckpt.model;
        let trained = ckpt.meta.data.clone();
        let tracks = model.config().norm.is_some_and(|n| n.tracks_running());
        if a.recalibrate_bn.is_some() && !tracks {
            bail!(
                "--recalibrate-bn needs a model whose norm keeps running statistics (BatchNorm); \
                 {} has {}",
                a.checkpoint.display(),
                model.config().norm_label()
            );
        }
        let (split, info) = load_choice(&choice(a, trained.as_ref())?)?;
        let same = trained.as_ref().map(|d| d.fingerprint == info.fingerprint);
        let norm = &ckpt.meta.normalizer;
        let before = model.evaluate(&split.test, norm)?;
        let mut recalibrated = None;
        let mut saved = None;
        let mut acc = before;
        if let Some(n) = a.recalibrate_bn {
            let Recalibration {
                images,
                batches,
                batch,
            } = model
                .recalibrate_batch_norm(
                    &split.train,
                    norm,
                    Recalibrate {
                        images: n,
                        batch: a.recalibrate_batch,
                        augment: if a.recalibrate_augment {
                            norm_train::data::Augment::CIFAR
                        } else {
                            norm_train::data::Augment::NONE
                        },
                    },
                )
                .with_context(|| format!("--recalibrate-bn {n}"))?;
            acc = model.evaluate(&split.test, norm)?;
            recalibrated = Some(Recalibrated {
                images,
                augmented: a.recalibrate_augment,
                batches,
                batch,
                test_acc_before: before,
                test_acc_after: acc,
            });
            if let Some(p) = &a.save {
                let meta = CheckpointMeta {
                    normalizer: *norm,
                    data: ckpt.meta.data.clone(),
                };
                crate::interrupt::critical(|| checkpoint::save(p, &model, &meta))
                    .with_context(|| format!("cannot save the model to {}", p.display()))?;
                saved = Some(p.clone());
            }
        }
        Ok(EvalReport {
            checkpoint: a.checkpoint.clone(),
            model: model.config().clone(),
            data: info,
            same_data_as_training: same,
            test_acc: acc,
            recalibrated,
            saved,
        })
    })??;
    if report.same_data_as_training == Some(false) && !a.json {
        eprintln!(
            "note: {} was trained on other data (fingerprint differs); the accuracy is on the data given",
            a.checkpoint.display()
        );
    }
    if a.json {
        crate::stdout::println(&serde_json::to_string(&report)?)
    } else {
        crate::stdout::print(&render(&report))
    }
}
