//! Batch Renormalization (Ioffe, 2017, "Batch Renormalization: Towards Reducing Minibatch
//! Dependence in Batch-Normalized Models", NeurIPS, arXiv:1702.03275).
//!
//! BatchNorm whose train-mode output is corrected towards what the running statistics would
//! give, so that train and eval agree and small batches matter less. Per channel, with the batch
//! statistics `μ_B`, `σ_B = sqrt(var_B + eps)` (biased variance) and the running `μ`,
//! `σ = sqrt(running_var + eps)`:
//!
//! ```text
//! r = clip(σ_B / σ, 1/r_max, r_max),   d = clip((μ_B - μ) / σ, -d_max, d_max)
//! y = γ·(x̂_B·r + d) + β,               x̂_B = (x - μ_B) / σ_B
//! ```
//!
//! `r` and `d` are constants of the backward (no gradient flows through them), so it is
//! BatchNorm's backward with the scale `γ·r`, and `dγ = r·Σ dy·x̂_B + d·Σ dy`, `dβ = Σ dy`. The
//! running statistics are updated exactly as BatchNorm's, after `r` and `d` were formed from
//! their old values; eval mode is BatchNorm's eval mode. With `r_max = 1`, `d_max = 0` the layer
//! is BatchNorm. The paper ramps `r_max` from 1 to 3 and `d_max` from 0 to 5 during training
//! (the trainer does that); the settings here hold the values of one step.
//!
//! **Passes** are BatchNorm's (the per-plane engine): 8 bytes per element forward, 12 backward
//! when a channel's slab stays in L2. `r`, `d` cost a few scalar operations per channel.

use crate::engine::moments::Moments;
use crate::engine::plane::{
    affine_at, channels_backward, channels_forward, eval_backward, eval_forward,
    record_channel_moments,
};
use crate::error::{check_backward, check_channel_forward, check_len};
use crate::{
    Affine, Grads, Momentum, Nchw, NormError, Output, Parallelism, Running, RunningStats, Saved,
};

/// Batch Renormalization's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchRenorm {
    /// Added to the variances (default 1e-5).
    pub eps: f32,
    /// How the running statistics fold in each batch, as BatchNorm's (default `Exponential(0.1)`).
    pub momentum: Momentum,
    /// Whether the calls carry `gamma`, `beta` (default true).
    pub affine: bool,
    /// The largest correction of the scale, `r ∈ [1/r_max, r_max]`; at least 1 (default 3).
    pub r_max: f32,
    /// The largest correction of the shift, `d ∈ [-d_max, d_max]`; at least 0 (default 5).
    pub d_max: f32,
}

impl Default for BatchRenorm {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: Momentum::Exponential(0.1),
            affine: true,
            r_max: 3.0,
            d_max: 5.0,
        }
    }
}

impl BatchRenorm {
    /// `Err(RenormLimits)` unless `r_max >= 1` and `d_max >= 0`, both finite.
    pub fn check_limits(&self, op: &'static str) -> Result<(), NormError> {
        let ok = self.r_max.is_finite()
            && self.r_max >= 1.0
            && self.d_max.is_finite()
            && self.d_max >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(NormError::RenormLimits {
                op,
                r_max: self.r_max,
                d_max: self.d_max,
            })
        }
    }

    /// The `(r, d)` of one channel from its batch moments and the running mean and variance.
    pub(crate) fn correction(&self, batch: &Moments, run_mean: f32, run_var: f32) -> (f64, f64) {
        let eps = self.eps as f64;
        let sigma = (run_var as f64 + eps).sqrt();
        let sigma_b = (batch.var_biased() + eps).sqrt();
        let (r_max, d_max) = (self.r_max as f64, self.d_max as f64);
        let r = (sigma_b / sigma).clamp(1.0 / r_max, r_max);
        let d = ((batch.mean - run_mean as f64) / sigma).clamp(-d_max, d_max);
        (r, d)
    }
}

/// What BatchRenorm's train forward saves: BatchNorm's statistics and the correction applied.
#[derive(Clone, Copy, Debug)]
pub struct RenormStats<'a> {
    /// Batch mean per channel.
    pub mean: &'a [f32],
    /// `1/sqrt(var_B + eps)` per channel.
    pub rstd: &'a [f32],
    /// The scale correction `r` per channel.
    pub r: &'a [f32],
    /// The shift correction `d` per channel.
    pub d: &'a [f32],
}

/// Where BatchRenorm's train forward writes its [`RenormStats`].
#[derive(Debug)]
pub struct RenormStatsMut<'a> {
    /// Batch mean per channel.
    pub mean: &'a mut [f32],
    /// `1/sqrt(var_B + eps)` per channel.
    pub rstd: &'a mut [f32],
    /// The scale correction `r` per channel.
    pub r: &'a mut [f32],
    /// The shift correction `d` per channel.
    pub d: &'a mut [f32],
}

/// Training-mode BatchRenorm forward: normalises each channel with its batch statistics,
/// corrects by `r`, `d` from the running statistics, writes `y` and the saved
/// [`RenormStatsMut`] (`[C]` each), then updates `running` as BatchNorm does.
///
/// Errors: those of [`crate::batch_norm_forward_train`] with running statistics, and
/// [`NormError::RenormLimits`].
pub fn batch_renorm_forward_train(
    norm: &BatchRenorm,
    shape: Nchw,
    x: &[f32],
    affine: Option<Affine<'_>>,
    running: RunningStats<'_>,
    out: Output<'_, RenormStatsMut<'_>>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "batch_renorm_forward_train";
    let Output { y, stats } = out;
    let affine = affine.as_ref();
    check_channel_forward(
        OP,
        (shape, x.len(), y.len()),
        (norm.eps, norm.momentum),
        (norm.affine, affine),
        (true, Some(&running)),
        (stats.mean.len(), stats.rstd.len()),
    )?;
    check_len(OP, "r", shape.c, stats.r.len())?;
    check_len(OP, "d", shape.c, stats.d.len())?;
    norm.check_limits(OP)?;
    let old = running.as_running();
    let scale = |c: usize, m: &Moments, _: f64| {
        let (g, beta) = affine_at(affine, c);
        let (r, d) = norm.correction(m, old.mean[c], old.var[c]);
        (g * r, g * d + beta)
    };
    let moms = channels_forward(shape, (x, y), norm.eps, scale, par);
    for (c, (m, _)) in moms.iter().enumerate() {
        let (r, d) = norm.correction(m, old.mean[c], old.var[c]);
        stats.r[c] = r as f32;
        stats.d[c] = d as f32;
    }
    record_channel_moments(
        &moms,
        (stats.mean, stats.rstd),
        Some(running),
        norm.momentum,
    );
    Ok(())
}

/// Eval-mode BatchRenorm forward: BatchNorm's, the fixed per-channel map of the running
/// statistics.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`],
/// [`NormError::Settings`].
pub fn batch_renorm_forward_eval(
    norm: &BatchRenorm,
    shape: Nchw,
    x: &[f32],
    affine: Option<Affine<'_>>,
    running: Running<'_>,
    y: &mut [f32],
    par: Parallelism,
) -> Result<(), NormError> {
    let settings = (norm.eps, norm.affine, true);
    eval_forward(
        "batch_renorm_forward_eval",
        settings,
        shape,
        (x, y),
        affine,
        running,
        par,
    )
}

/// Training-mode BatchRenorm backward from the saved input and [`RenormStats`]: overwrites
/// `grads.dx` and, if given, `grads.affine` (`[C]`), with `r`, `d` held constant.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Settings`].
pub fn batch_renorm_backward_train(
    norm: &BatchRenorm,
    shape: Nchw,
    saved: Saved<'_, RenormStats<'_>>,
    dy: &[f32],
    gamma: Option<&[f32]>,
    grads: Grads<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "batch_renorm_backward_train";
    let Saved { x, stats } = saved;
    check_backward(
        OP,
        shape,
        (x.len(), dy.len(), grads.dx.len()),
        (shape.c, stats.mean.len(), stats.rstd.len()),
        (norm.affine, shape.c, gamma),
        &grads,
    )?;
    check_len(OP, "r", shape.c, stats.r.len())?;
    check_len(OP, "d", shape.c, stats.d.len())?;
    let g = |c: usize| gamma.map_or(1.0, |g| g[c] as f64) * stats.r[c] as f64;
    let sums = channels_backward(shape, (x, dy, grads.dx), (stats.mean, stats.rstd), g, par);
    if let Some(a) = grads.affine {
        for (c, &(s_dyxhat, s_dy)) in sums.iter().enumerate() {
            let (r, d) = (stats.r[c] as f64, stats.d[c] as f64);
            a.dgamma[c] = (r * s_dyxhat + d * s_dy) as f32;
            a.dbeta[c] = s_dy as f32;
        }
    }
    Ok(())
}

/// Eval-mode BatchRenorm backward: BatchNorm's, the gradient of the fixed per-channel map.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`],
/// [`NormError::Settings`].
pub fn batch_renorm_backward_eval(
    norm: &BatchRenorm,
    shape: Nchw,
    saved: Saved<'_, Running<'_>>,
    dy: &[f32],
    gamma: Option<&[f32]>,
    grads: Grads<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    let settings = (norm.eps, norm.affine, true);
    let op = "batch_renorm_backward_eval";
    eval_backward(op, settings, shape, (saved, dy), gamma, grads, par)
}
