//! The training loop: SGD with momentum and weight decay, linear warm-up, cosine or step
//! schedule, per-epoch statistics.

use std::time::Instant;

use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Model, NoiseOn, Param, Schedule, TrainConfig, TrainError, data, model::count_correct};

/// Reported to the caller's callback during [`train`].
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// After each optimiser step.
    Step {
        /// Epoch, from 0.
        epoch: usize,
        /// Step within the epoch, from 0.
        step: usize,
        /// Steps per epoch.
        steps: usize,
        /// The step's mean loss.
        loss: f32,
    },
    /// After each epoch's evaluation.
    Epoch(EpochStats),
}

/// What one epoch did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// Epoch, from 0.
    pub epoch: usize,
    /// Learning rate of the epoch's last step.
    pub lr: f32,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f32,
    /// Training accuracy (fraction, train mode, augmented inputs) over the epoch's steps.
    pub train_acc: f32,
    /// Test accuracy (fraction) in eval mode after the epoch.
    pub test_acc: f32,
    /// Training throughput: images / seconds spent in forward + backward + update.
    pub images_per_sec: f64,
    /// Wall time of the epoch, including batch preparation and evaluation.
    pub seconds: f64,
}

/// The result of [`train`].
#[derive(Debug)]
pub struct TrainOutcome {
    /// One entry per epoch.
    pub epochs: Vec<EpochStats>,
    /// The trained model (in eval mode).
    pub model: Model,
}

impl TrainOutcome {
    /// Test accuracy after the last epoch.
    pub fn final_test_acc(&self) -> f32 {
        self.epochs.last().map_or(f32::NAN, |e| e.test_acc)
    }

    /// Highest test accuracy over the epochs (`NaN` entries ignored).
    pub fn best_test_acc(&self) -> f32 {
        self.epochs
            .iter()
            .map(|e| e.test_acc)
            .filter(|a| !a.is_nan())
            .fold(f32::NAN, f32::max)
    }
}

/// Learning rate of step `t` (from 0) out of `total`, with `warmup` warm-up steps: linear
/// `peak·(t+1)/warmup` during the warm-up, then cosine from `peak` to 0 or a ×0.1 step at 50 % and
/// 75 % of the run.
pub fn learning_rate(schedule: Schedule, peak: f32, t: usize, warmup: usize, total: usize) -> f32 {
    if t < warmup {
        return peak * (t + 1) as f32 / warmup as f32;
    }
    match schedule {
        Schedule::Cosine => {
            let span = (total - warmup).max(1) as f64;
            let p = (t - warmup) as f64 / span;
            (peak as f64 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())) as f32
        }
        Schedule::Step => {
            if 4 * t >= 3 * total {
                peak * 0.01
            } else if 2 * t >= total {
                peak * 0.1
            } else {
                peak
            }
        }
    }
}

/// SGD with momentum and weight decay, PyTorch semantics (`dampening = 0`, no Nesterov):
/// `d = g + wd·p` (decayed parameters only), `buf = m·buf + d` (`buf = d` at the first step),
/// `p -= lr·buf`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    /// Momentum `m`.
    pub momentum: f32,
    /// Weight decay `wd`.
    pub weight_decay: f32,
    bufs: Vec<Vec<f32>>,
}

impl Sgd {
    /// A fresh optimiser (empty momentum buffers).
    pub fn new(momentum: f32, weight_decay: f32) -> Self {
        Self {
            momentum,
            weight_decay,
            bufs: Vec::new(),
        }
    }

    /// One update of `model`'s parameters with gradients `grads` (same order and lengths).
    pub fn step(&mut self, model: &mut Model, grads: &[Vec<f32>], lr: f32) {
        let params = model.params_mut();
        assert_eq!(params.len(), grads.len());
        let first = self.bufs.is_empty();
        if first {
            self.bufs = params.iter().map(|p| vec![0.0; p.data.len()]).collect();
        }
        for ((p, g), buf) in params.iter_mut().zip(grads).zip(&mut self.bufs) {
            let wd = if p.decay { self.weight_decay } else { 0.0 };
            for ((x, &g), b) in p.data.iter_mut().zip(g).zip(buf.iter_mut()) {
                let d = g + wd * *x;
                *b = if first { d } else { self.momentum * *b + d };
                *x -= lr * *b;
            }
        }
    }
}

/// Adds Gaussian noise of `scale` times each tensor's RMS to every element of the `grads` that
/// `on` includes ([`TrainConfig::grad_noise`]); the normals come from Box–Muller in f64, drawn
/// for every tensor so that each gets the same draws whatever `on` is.
fn perturb(
    grads: &mut [Vec<f32>],
    params: &[Param],
    on: NoiseOn,
    scale: f32,
    rng: &mut ChaCha8Rng,
) {
    for (g, p) in grads.iter_mut().zip(params) {
        let rms =
            (g.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / g.len().max(1) as f64).sqrt();
        let sd = scale as f64 * rms;
        let chosen = on.includes(p.decay);
        for pair in g.chunks_mut(2) {
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
            if !chosen {
                continue;
            }
            let r = (-2.0 * u1.ln()).sqrt() * sd;
            let t = std::f64::consts::TAU * u2;
            pair[0] += (r * t.cos()) as f32;
            if let Some(v) = pair.get_mut(1) {
                *v += (r * t.sin()) as f32;
            }
        }
    }
}

/// Progress `t` (0 to 1) of the norm's settings warm-up at step `t` of `total`, when it lasts
/// `share` of training (0: no warm-up, the final settings from the first step).
pub fn norm_ramp_progress(share: f32, step: usize, total: usize) -> f32 {
    let len = share as f64 * total as f64;
    if len <= 0.0 {
        1.0
    } else {
        ((step as f64 / len) as f32).min(1.0)
    }
}

/// Trains a fresh [`Model`] (seeded with `cfg.seed`) on `data.train` and evaluates it on
/// `data.test` after each epoch. Inputs are normalised with the training set's per-channel
/// statistics; each epoch visits `⌊len / batch⌋` batches of a fresh permutation (the remainder
/// is dropped, so BatchNorm never sees a tiny last batch).
///
/// A non-finite loss stops the run with [`TrainError::Diverged`] before that step's update.
///
/// Randomness: the initialisation uses ChaCha8 stream 0 of `seed`, the shuffling and the
/// augmentation stream 1; results are bit-identical for any number of rayon threads.
pub fn train(
    cfg: &TrainConfig,
    data: &data::Split,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainOutcome, TrainError> {
    cfg.validate(data.train.len())?;
    let mut model = Model::new(&cfg.model, cfg.seed)?;
    model.set_workers(cfg.workers, cfg.running_from)?;
    let normalizer = data::Normalizer::from_dataset(&data.train);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(1);
    let mut noise_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    noise_rng.set_stream(2);
    let mut sgd = Sgd::new(cfg.momentum, cfg.weight_decay);
    let steps = data.train.len() / cfg.batch;
    let total = steps * cfg.epochs;
    let warmup = ((cfg.warmup_epochs as f64 * steps as f64).round() as usize).min(total);
    let peak = cfg.lr();
    let (c, h, w) = crate::model::INPUT;
    let mut xb = vec![0.0f32; cfg.batch * c * h * w];
    let mut lb = vec![0usize; cfg.batch];
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    let mut epochs = Vec::with_capacity(cfg.epochs);
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        model.train_mode();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct, mut step_secs) = (0.0f64, 0usize, 0.0f64);
        let mut lr = peak;
        for step in 0..steps {
            let idx = &order[step * cfg.batch..(step + 1) * cfg.batch];
            data::fill_batch(
                &data.train,
                idx,
                &normalizer,
                &cfg.augment,
                &mut rng,
                &mut xb,
                &mut lb,
            );
            lr = learning_rate(cfg.schedule, peak, epoch * steps + step, warmup, total);
            model.ramp_norm(norm_ramp_progress(
                cfg.norm_ramp,
                epoch * steps + step,
                total,
            ));
            let t0 = Instant::now();
            let (loss, logits, mut grads) = model.loss_and_grads(&xb, &lb)?;
            // Stop at once: one more update would spread NaN into every weight, and the rest of
            // the run would only report chance accuracy.
            if !loss.is_finite() {
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    epochs: cfg.epochs,
                    step: step + 1,
                    steps,
                    lr,
                    loss,
                });
            }
            if cfg.grad_noise > 0.0 {
                let (on, size) = (cfg.grad_noise_on, cfg.grad_noise);
                perturb(&mut grads, model.params(), on, size, &mut noise_rng);
            }
            sgd.step(&mut model, &grads, lr);
            step_secs += t0.elapsed().as_secs_f64();
            loss_sum += loss as f64;
            correct += count_correct(&logits, &lb);
            progress(&Progress::Step {
                epoch,
                step,
                steps,
                loss,
            });
        }
        let test_acc = model.evaluate(&data.test, &normalizer)?;
        let stats = EpochStats {
            epoch,
            lr,
            train_loss: (loss_sum / steps as f64) as f32,
            train_acc: correct as f32 / (steps * cfg.batch) as f32,
            test_acc,
            images_per_sec: (steps * cfg.batch) as f64 / step_secs.max(1e-12),
            seconds: start.elapsed().as_secs_f64(),
        };
        progress(&Progress::Epoch(stats.clone()));
        epochs.push(stats);
    }
    model.eval_mode();
    Ok(TrainOutcome { epochs, model })
}
