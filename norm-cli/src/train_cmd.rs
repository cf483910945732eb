//! `norm-cli train`, and what `sweep` shares with it: building a [`TrainConfig`] from the
//! arguments, loading the data, the recipe, the rayon pool, the per-epoch progress bar and the
//! end-of-run report (rendered by a pure function, snapshot-tested).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use norm_train::data::{self, Dataset, Split};
use norm_train::{
    Arch, EpochStats, NormChoice, Progress, TrainConfig, TrainError, TrainOutcome, model_norm,
};
use serde::Serialize;
use serde_json::Value;

use crate::cli::{DataSource, RecipeArgs, TrainArgs};

/// Where the images came from, as stored in the recipe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataInfo {
    /// `synthetic` or `cifar10`.
    pub source: &'static str,
    /// Seed of the synthetic set (absent for CIFAR-10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Train images.
    pub train_size: usize,
    /// Test images.
    pub test_size: usize,
    /// FNV-1a 64 of all labels and pixels (train then test), in hex: two runs with the same
    /// fingerprint saw the same images.
    pub fingerprint: String,
}

impl DataInfo {
    /// What a checkpoint stores about the data.
    pub fn identity(&self) -> norm_train::checkpoint::DataIdentity {
        norm_train::checkpoint::DataIdentity {
            source: self.source.to_owned(),
            seed: self.seed,
            train_size: self.train_size,
            test_size: self.test_size,
            fingerprint: self.fingerprint.clone(),
        }
    }
}

/// 64-bit FNV-1a over the labels and images of both splits.
pub fn fingerprint(split: &Split) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for d in [&split.train, &split.test] {
        for b in d.labels.iter().chain(&d.images) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn first(d: &Dataset, n: usize) -> Dataset {
    Dataset {
        images: d.images[..n * data::IMAGE_BYTES].to_vec(),
        labels: d.labels[..n].to_vec(),
    }
}

/// Number of train images the arguments ask for, when it is known before loading (synthetic).
pub fn planned_train_len(r: &RecipeArgs) -> Option<usize> {
    match r.data {
        DataSource::Synthetic => Some(r.train_size.unwrap_or(data::DEFAULT_TRAIN)),
        DataSource::Cifar10 => None,
    }
}

/// Which images to use: the data options of `train`, `sweep` and `eval`.
#[derive(Clone, Debug)]
pub struct DataChoice {
    /// Synthetic or CIFAR-10.
    pub data: DataSource,
    /// The CIFAR-10 folder.
    pub data_dir: Option<PathBuf>,
    /// Train images (None: the default or all).
    pub train_size: Option<usize>,
    /// Test images (None: the default or all).
    pub test_size: Option<usize>,
    /// Seed of the synthetic set.
    pub data_seed: u64,
}

impl From<&RecipeArgs> for DataChoice {
    fn from(r: &RecipeArgs) -> Self {
        Self {
            data: r.data,
            data_dir: r.data_dir.clone(),
            train_size: r.train_size,
            test_size: r.test_size,
            data_seed: r.data_seed,
        }
    }
}

/// Generates or reads the data set the arguments describe.
pub fn load_data(r: &RecipeArgs) -> Result<(Split, DataInfo)> {
    load_choice(&DataChoice::from(r))
}

/// Generates or reads the data set `r` describes.
pub fn load_choice(r: &DataChoice) -> Result<(Split, DataInfo)> {
    let (split, source, seed) = match r.data {
        DataSource::Synthetic => {
            let train = r.train_size.unwrap_or(data::DEFAULT_TRAIN);
            let test = r.test_size.unwrap_or(data::DEFAULT_TEST);
            (
                data::synthetic(r.data_seed, train, test),
                "synthetic",
                Some(r.data_seed),
            )
        }
        DataSource::Cifar10 => {
            let dir = r
                .data_dir
                .as_ref()
                .context("--data cifar10 needs --data-dir DIR")?;
            let full = data::load_cifar10(dir)
                .with_context(|| format!("cannot load CIFAR-10 from {}", dir.display()))?;
            let take = |d: &Dataset, n: Option<usize>, what: &str| -> Result<Dataset> {
                match n {
                    None => Ok(d.clone()),
                    Some(n) if n <= d.len() => Ok(first(d, n)),
                    Some(n) => bail!(
                        "--{what}-size {n} is more than the {} {what} images in {}",
                        d.len(),
                        dir.display()
                    ),
                }
            };
            let split = Split {
                train: take(&full.train, r.train_size, "train")?,
                test: take(&full.test, r.test_size, "test")?,
            };
            (split, "cifar10", None)
        }
    };
    if split.test.is_empty() {
        bail!("the test set is empty (--test-size 0): there would be no accuracy to report");
    }
    let info = DataInfo {
        source,
        seed,
        train_size: split.train.len(),
        test_size: split.test.len(),
        fingerprint: fingerprint(&split),
    };
    Ok((split, info))
}

/// Rejects out-of-range recipe values by the option that set them (`--lr -1 is invalid: ...`),
/// before norm-train would reject them by its field names.
pub fn check_recipe(r: &RecipeArgs) -> Result<()> {
    check_norm_set(r)?;
    let checks: [(&str, f32, bool, &str); 5] = [
        (
            "--lr",
            r.lr,
            r.lr.is_finite() && r.lr > 0.0,
            "finite and positive",
        ),
        (
            "--warmup",
            r.warmup,
            r.warmup.is_finite() && r.warmup >= 0.0,
            "finite and non-negative",
        ),
        (
            "--momentum",
            r.momentum,
            (0.0..1.0).contains(&r.momentum),
            "in [0, 1)",
        ),
        (
            "--weight-decay",
            r.weight_decay,
            r.weight_decay.is_finite() && r.weight_decay >= 0.0,
            "finite and non-negative",
        ),
        (
            "--eps",
            r.eps,
            r.eps.is_finite() && r.eps >= 0.0,
            "finite and non-negative",
        ),
    ];
    for (flag, value, ok, expected) in checks {
        if !ok {
            bail!("{flag} {value} is invalid: must be {expected}");
        }
    }
    Ok(())
}

/// `norm` with every `--norm-set KEY=VALUE` whose key it has ([`check_norm_set`] has checked
/// them).
fn with_settings(mut norm: norm_train::Norm, r: &RecipeArgs) -> norm_train::Norm {
    for kv in &r.norm_set {
        if let Some((k, v)) = kv.split_once('=')
            && norm.keys().contains(&k.trim())
        {
            let _ = norm.set(k.trim(), v.trim());
        }
    }
    norm
}

/// Each `--norm-set` is KEY=VALUE with a key some norm has and a value every such norm takes.
pub fn check_norm_set(r: &RecipeArgs) -> Result<()> {
    for kv in &r.norm_set {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--norm-set {kv}: expected KEY=VALUE");
        };
        let mut known = false;
        for &kind in norm_train::NormKind::ALL {
            let mut n = norm_train::Norm::new(kind);
            if n.keys().contains(&k.trim()) {
                known = true;
                n.set(k.trim(), v.trim())
                    .map_err(|e| anyhow::anyhow!("--norm-set {kv}: {e}"))?;
            }
        }
        if !known {
            bail!("--norm-set {kv}: no norm has a setting `{}`", k.trim());
        }
    }
    Ok(())
}

/// The training configuration for one run (one worker; callers set `workers`).
pub fn config(r: &RecipeArgs, norm: NormChoice, batch: usize, seed: u64) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.model.arch = r.model.into();
    c.model.width = r.width.unwrap_or(1.0);
    c.running_from = r.running_from.into();
    c.model.widths = r.widths.0;
    c.model.norm = norm
        .kind()
        .map(|k| with_settings(model_norm(k, r.groups, r.eps), r));
    c.norm_ramp = r.norm_ramp;
    c.grad_noise = r.grad_noise;
    c.grad_noise_on = r.grad_noise_on.into();
    c.epochs = r.epochs;
    c.batch = batch;
    c.base_lr = r.lr;
    c.lr_ref_batch = r.lr_ref_batch;
    c.momentum = r.momentum;
    c.weight_decay = r.weight_decay;
    c.warmup_epochs = r.warmup;
    c.schedule = r.schedule.into();
    if r.no_augment {
        c.augment = data::Augment::NONE;
    }
    c.seed = seed;
    c
}

/// The recipe: the configuration without norm, batch and seed, plus the data description.
/// Built through JSON text so it compares equal to a recipe read back from disk.
pub fn recipe(cfg: &TrainConfig, data: &DataInfo) -> Result<Value> {
    let text = serde_json::to_string(cfg).context("cannot serialise the configuration")?;
    let mut v: Value = serde_json::from_str(&text)?;
    let obj = v
        .as_object_mut()
        .context("the configuration is not a JSON object")?;
    obj.remove("batch");
    obj.remove("seed");
    obj.remove("workers");
    if let Some(Value::Object(m)) = obj.get_mut("model") {
        m.remove("norm");
        // The plain CNN's recipe reads as before the ResNets, so older sweep folders resume.
        if cfg.model.arch == Arch::Plain && cfg.model.width == 1.0 {
            m.remove("arch");
            m.remove("width");
        }
    }
    let data = serde_json::to_string(data)?;
    obj.insert("data".into(), serde_json::from_str(&data)?);
    Ok(v)
}

/// Runs `f` on a worker thread of a rayon pool of `threads` threads (the global pool when
/// `None`). Running on a worker matters: each rayon call made from a thread outside the pool
/// hands its work over to the pool and sleeps until it is done, and a training step makes
/// dozens of them; at batch 2 that cost 40 % of the throughput (1,642 against 2,840 img/s).
pub fn in_pool<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(rayon::scope(|_| f())),
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .with_context(|| format!("cannot start a pool of {n} threads"))?;
            Ok(pool.install(f))
        }
    }
}

/// Training throughput over the whole run: every epoch trains the same number of images, so
/// it is the harmonic mean of the per-epoch rates.
pub fn overall_images_per_sec(epochs: &[EpochStats]) -> f64 {
    let inv: f64 = epochs.iter().map(|e| 1.0 / e.images_per_sec).sum();
    if epochs.is_empty() || !inv.is_finite() || inv <= 0.0 {
        0.0
    } else {
        epochs.len() as f64 / inv
    }
}

/// An `f32` as the `f64` of its shortest decimal form (0.3f32 → 0.3, not 0.30000001192…).
pub fn clean(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// Everything `train` reports; printed as text by [`render_report`] or as JSON with `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The norm.
    pub norm: NormChoice,
    /// The full configuration.
    pub config: TrainConfig,
    /// The data.
    pub data: DataInfo,
    /// Peak learning rate after batch scaling.
    pub peak_lr: f32,
    /// Per-epoch statistics (`epoch` from 0).
    pub per_epoch: Vec<EpochStats>,
    /// Test accuracy after the last epoch, 0..1.
    pub final_test_acc: f32,
    /// Best test accuracy over the epochs, 0..1.
    pub best_test_acc: f32,
    /// Epoch (from 1) of the best test accuracy.
    pub best_epoch: usize,
    /// Mean train loss of the last epoch.
    pub final_train_loss: f32,
    /// Wall time of training, seconds.
    pub wall_seconds: f64,
    /// Training images per second over the run.
    pub images_per_sec: f64,
    /// SIMD level of the kernels (`norm_kernels::simd_level()`).
    pub simd: String,
    /// Rayon threads.
    pub threads: usize,
    /// Where the model was saved.
    pub saved: Option<PathBuf>,
    /// The training curves written (SVG and PNG), if any.
    pub curves: Vec<PathBuf>,
}

impl Report {
    /// Assembles the report of a finished run.
    pub fn new(cfg: &TrainConfig, data: DataInfo, epochs: Vec<EpochStats>, wall: f64) -> Self {
        let best = epochs
            .iter()
            .filter(|e| !e.test_acc.is_nan())
            .max_by(|a, b| {
                a.test_acc
                    .total_cmp(&b.test_acc)
                    .then(b.epoch.cmp(&a.epoch))
            });
        let last = epochs.last();
        Self {
            norm: cfg.model.choice(),
            config: cfg.clone(),
            data,
            peak_lr: cfg.lr(),
            final_test_acc: last.map_or(f32::NAN, |e| e.test_acc),
            best_test_acc: best.map_or(f32::NAN, |e| e.test_acc),
            best_epoch: best.map_or(0, |e| e.epoch + 1),
            final_train_loss: last.map_or(f32::NAN, |e| e.train_loss),
            wall_seconds: wall,
            images_per_sec: overall_images_per_sec(&epochs),
            per_epoch: epochs,
            simd: norm_kernels::simd_level().to_owned(),
            threads: rayon::current_num_threads(),
            saved: None,
            curves: Vec::new(),
        }
    }
}

fn pct(x: f32) -> String {
    format!("{:.1} %", 100.0 * x)
}

/// One line per epoch, as printed during training and in the report.
pub fn epoch_line(e: &EpochStats, epochs: usize) -> String {
    format!(
        "epoch {}/{epochs}: loss {:.4}, train acc {}, test acc {}, {:.0} images/s, {:.1} s",
        e.epoch + 1,
        e.train_loss,
        pct(e.train_acc),
        pct(e.test_acc),
        e.images_per_sec,
        e.seconds
    )
}

/// The text report: header, table of epochs, summary block — what `train` prints piece by
/// piece as the run goes ([`render_head`], [`render_row`], [`render_tail`]).
pub fn render_report(r: &Report) -> String {
    let mut out = render_head(&r.config, &r.data);
    for e in &r.per_epoch {
        out.push_str(&render_row(e));
    }
    out.push_str(&render_tail(r));
    out
}

/// The lines before the first epoch: the run, the data and the table's header.
pub fn render_head(c: &TrainConfig, data: &DataInfo) -> String {
    let mut out = String::new();
    let workers = if c.workers > 1 {
        format!(
            " over {} workers ({} per worker{})",
            c.workers,
            c.batch / c.workers,
            match c.running_from {
                norm_train::RunningFrom::Worker0 => "",
                norm_train::RunningFrom::Every => ", running statistics from every share",
            }
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{}, batch {}{workers}, seed {}, {} epoch(s), peak lr {} (base {} × {}/{}), {} schedule",
        c.model.norm_label(),
        c.batch,
        c.seed,
        c.epochs,
        c.lr(),
        c.base_lr,
        c.batch,
        c.lr_ref_batch,
        match c.schedule {
            norm_train::Schedule::Cosine => "cosine",
            norm_train::Schedule::Step => "step",
        }
    );
    let seed = data
        .seed
        .map(|s| format!(" (seed {s})"))
        .unwrap_or_default();
    let model = match c.model.arch {
        Arch::Plain => format!("widths {:?}", c.model.widths),
        arch => format!(
            "{arch}, width {} (stages {:?})",
            c.model.width,
            c.model.stage_widths()
        ),
    };
    let _ = writeln!(
        out,
        "data: {}{seed}, {} train / {} test images; {model}\n",
        data.source, data.train_size, data.test_size
    );
    let _ = writeln!(
        out,
        "epoch        lr  train loss  train acc  test acc  images/s  seconds"
    );
    out
}

/// One row of the epoch table.
pub fn render_row(e: &EpochStats) -> String {
    format!(
        "{:>5}  {:>8.5}  {:>10.4}  {:>9}  {:>8}  {:>8.0}  {:>7.1}\n",
        e.epoch + 1,
        e.lr,
        e.train_loss,
        pct(e.train_acc),
        pct(e.test_acc),
        e.images_per_sec,
        e.seconds
    )
}

/// The summary block after the last epoch.
pub fn render_tail(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "final test accuracy  {}  (chance 10.0 %)",
        pct(r.final_test_acc)
    );
    let _ = writeln!(
        out,
        "best test accuracy   {}  (epoch {})",
        pct(r.best_test_acc),
        r.best_epoch
    );
    let _ = writeln!(out, "final train loss     {:.4}", r.final_train_loss);
    let _ = writeln!(out, "wall time            {:.1} s", r.wall_seconds);
    let _ = writeln!(
        out,
        "throughput           {:.0} images/s (training steps)",
        r.images_per_sec
    );
    let _ = writeln!(
        out,
        "SIMD                 {}, {} thread(s)",
        r.simd, r.threads
    );
    if let Some(p) = &r.saved {
        let _ = writeln!(out, "model saved to       {}", p.display());
    }
    if !r.curves.is_empty() {
        let files: Vec<String> = r.curves.iter().map(|p| p.display().to_string()).collect();
        let _ = writeln!(out, "curves written to    {}", files.join(", "));
    }
    out
}

/// Where `train` draws its curves: `--plot DIR`, else beside `--save PATH`, else nowhere.
pub fn curve_files(a: &TrainArgs) -> Option<(PathBuf, PathBuf)> {
    match (&a.plot, &a.save) {
        (Some(dir), _) => Some((
            dir.join("training_curves.svg"),
            dir.join("training_curves.png"),
        )),
        (None, Some(p)) => Some((
            p.with_extension("curves.svg"),
            p.with_extension("curves.png"),
        )),
        (None, None) => None,
    }
}

/// The per-epoch progress bar of `train`: hidden with `--json` or when stderr is not a
/// terminal; then each finished epoch is still logged as one line on stderr unless `--json`.
pub struct EpochProgress {
    bar: Option<ProgressBar>,
    epochs: usize,
    batch: usize,
    quiet: bool,
    visible: bool,
    epoch_start: Instant,
    /// The first error printing a row on stdout (reported once training ends).
    pub print_error: Option<anyhow::Error>,
}

impl EpochProgress {
    /// `quiet`: no bar, no epoch lines and no table rows (`--json`).
    pub fn new(epochs: usize, batch: usize, quiet: bool) -> Self {
        let visible = !quiet && !ProgressDrawTarget::stderr().is_hidden();
        Self {
            bar: None,
            epochs,
            batch,
            quiet,
            visible,
            epoch_start: Instant::now(),
            print_error: None,
        }
    }

    /// Removes the bar of an unfinished epoch (a run that stopped early).
    pub fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
            crate::interrupt::set_bar(None);
        }
    }

    /// Handles one report from the trainer.
    pub fn update(&mut self, p: &Progress) {
        crate::interrupt::park_if_requested(|| {
            let shown = self.bar.is_some();
            self.clear();
            shown
        });
        match p {
            Progress::Step {
                epoch,
                step,
                steps,
                loss,
            } => {
                if !self.visible {
                    return;
                }
                if self.bar.is_none() {
                    self.epoch_start = Instant::now();
                }
                let bar = self.bar.get_or_insert_with(|| {
                    let b = ProgressBar::new(*steps as u64);
                    b.set_style(
                        ProgressStyle::with_template(
                            "epoch {prefix} [{bar:30}] {pos}/{len} steps · {msg} · ETA {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    b.set_prefix(format!("{}/{}", epoch + 1, self.epochs));
                    b.set_message("starting");
                    crate::interrupt::set_bar(Some(b.clone()));
                    b
                });
                bar.set_position(*step as u64 + 1);
                // The clock starts at the first report (after step 0), so it has timed
                // `step` steps.
                let secs = self.epoch_start.elapsed().as_secs_f64();
                if *step > 0 && secs > 0.0 {
                    let ips = (step * self.batch) as f64 / secs;
                    bar.set_message(format!("loss {loss:.3} · {ips:.0} img/s"));
                } else {
                    bar.set_message(format!("loss {loss:.3}"));
                }
            }
            Progress::Epoch(e) => {
                self.clear();
                crate::interrupt::set_task(format!(
                    "training stopped after {} of {} epoch(s)",
                    e.epoch + 1,
                    self.epochs
                ));
                if !self.quiet {
                    // On a terminal the bar and stdout's row say it; the log line is for a
                    // redirected stderr.
                    if !self.visible {
                        eprintln!("{}", epoch_line(e, self.epochs));
                    }
                    if self.print_error.is_none()
                        && let Err(err) = crate::stdout::print(&render_row(e))
                    {
                        self.print_error = Some(err);
                    }
                }
            }
        }
    }
}

/// Trains once with progress; returns the outcome and the wall time.
pub fn train_with_progress(
    cfg: &TrainConfig,
    split: &Split,
    quiet: bool,
) -> Result<(TrainOutcome, f64)> {
    let mut prog = EpochProgress::new(cfg.epochs, cfg.batch, quiet);
    let t0 = Instant::now();
    crate::interrupt::set_task(format!(
        "training stopped before the end of epoch 1 of {}",
        cfg.epochs
    ));
    let outcome = norm_train::train(cfg, split, &mut |p| prog.update(p));
    prog.clear();
    let outcome = outcome.map_err(|e| with_lr_hint(e, cfg.base_lr))?;
    if let Some(e) = prog.print_error {
        return Err(e);
    }
    Ok((outcome, t0.elapsed().as_secs_f64()))
}

/// A divergence, with the usual remedy: a lower base learning rate (a tenth of this one).
pub fn with_lr_hint(e: TrainError, base_lr: f32) -> anyhow::Error {
    match e {
        TrainError::Diverged { .. } => {
            anyhow::anyhow!(
                "{e}; try a lower --lr, e.g. --lr {}",
                norm_train::short_num(&(base_lr / 10.0))
            )
        }
        e => e.into(),
    }
}

/// Runs `norm-cli train`.
pub fn run(a: &TrainArgs) -> Result<()> {
    check_recipe(&a.recipe)?;
    let mut cfg = config(&a.recipe, a.norm, a.batch, a.seed);
    cfg.workers = a.workers;
    // Fail on bad settings before generating or reading any data.
    if let Some(n) = planned_train_len(&a.recipe) {
        cfg.validate(n)?;
    }
    if let Some(p) = &a.save {
        check_writable_parent(p)?;
    }
    // Created before training, so a bad --plot fails at once, not after the run.
    if let Some(dir) = &a.plot {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create plot folder {}", dir.display()))?;
    }
    crate::interrupt::set_kept(if a.save.is_some() {
        "no model was saved (--save writes it at the end of the run)"
    } else {
        "nothing was saved"
    });
    let report = in_pool(a.run.threads, || -> Result<Report> {
        let (split, info) = load_data(&a.recipe)?;
        cfg.validate(split.train.len())?;
        if !a.json {
            crate::stdout::print(&render_head(&cfg, &info))?;
        }
        let (outcome, wall) = train_with_progress(&cfg, &split, a.json)?;
        let mut report = Report::new(&cfg, info, outcome.epochs.clone(), wall);
        if let Some(p) = &a.save {
            let meta = norm_train::checkpoint::CheckpointMeta {
                normalizer: data::Normalizer::from_dataset(&split.train),
                data: Some(report.data.identity()),
            };
            // Ctrl-C waits for the checkpoint to be complete.
            crate::interrupt::critical(|| norm_train::checkpoint::save(p, &outcome.model, &meta))
                .with_context(|| format!("cannot save the model to {}", p.display()))?;
            report.saved = Some(p.clone());
            crate::interrupt::set_kept(format!("the model was saved to {}", p.display()));
        }
        if let Some((svg, png)) = curve_files(a) {
            let cols = crate::curves::from_epochs(cfg.model.choice(), cfg.batch, &report.per_epoch);
            crate::interrupt::critical(|| crate::curves::write(&cols, &svg, &png))?;
            report.curves = vec![svg, png];
        }
        Ok(report)
    })??;
    if a.json {
        crate::stdout::println(&serde_json::to_string(&report)?)
    } else {
        crate::stdout::print(&render_tail(&report))
    }
}

/// Fails early when `path`'s folder does not exist or is not a folder, so a long run does not
/// end in an unsaveable model.
pub fn check_writable_parent(path: &std::path::Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => return Ok(()),
    };
    if !parent.is_dir() {
        bail!(
            "cannot save the model to {}: folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}
