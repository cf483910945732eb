//! BatchNorm2d (Ioffe & Szegedy, 2015, "Batch Normalization: Accelerating Deep Network Training
//! by Reducing Internal Covariate Shift", arXiv:1502.03167).
//!
//! Statistics per channel `c` over the `M = N·H·W` values of that channel:
//!
//! ```text
//! mean_c = Σ x / M,   var_c = Σ (x - mean_c)² / M   (biased),   rstd_c = 1 / sqrt(var_c + eps)
//! y      = (x - mean_c)·rstd_c·gamma_c + beta_c
//! ```
//!
//! In training mode the batch statistics normalise and, with `track_running_stats`, update
//! `running = (1 - f)·running + f·batch` where `f` is the momentum (or `1/num_batches_tracked`
//! for `momentum = None`) and the running variance takes the *unbiased* `Σ (x - mean)² / (M - 1)`.
//! In eval mode the running statistics take their place and the layer is a fixed per-channel
//! affine map. With `track_running_stats = False`, pass `running: None` and call the train forward
//! in eval mode too (PyTorch then always normalises with the batch statistics).
//!
//! Backward (train), with `x̂ = (x - mean)·rstd`:
//!
//! ```text
//! dx = gamma·rstd·(dy - Σdy/M - x̂·Σ(dy·x̂)/M),   dgamma = Σ dy·x̂,   dbeta = Σ dy
//! ```
//!
//! Backward (eval): `dx = dy·gamma·rstd_run`, `dgamma = Σ dy·(x - running_mean)·rstd_run`,
//! `dbeta = Σ dy`, with `rstd_run = 1/sqrt(running_var + eps)`.
//!
//! Without affine ([`BatchNorm::affine`] false, no [`Affine`]) `gamma = 1`, `beta = 0`. Backward
//! then still writes `dgamma`/`dbeta` if asked: they are the gradients with respect to a unit
//! scale and zero shift, which do not depend on gamma.
//!
//! **Passes.** Forward train: one task per channel reads the channel's `N` planes once for the
//! statistics (two passes per L1 block) and once more to write `y` with one
//! `(x - m)·a + b` FMA per element — the second read hits L2 when the channel slab (`N·H·W·4`
//! bytes) fits, so the traffic is 8 bytes/element (read x, write y), else 12. Backward train:
//! per channel `Σdy`, `Σdy·(x - mean)` (read x, dy), then `dx` (read x, dy again, write dx):
//! 12 bytes/element when the `x`, `dy` slab stays in L2, else 20. Channels are the parallel tasks;
//! with few channels the planes and 16 Ki-element tiles of a channel are spread too, and their
//! partial statistics are merged in a fixed order, so the result does not depend on the thread
//! count. The work is the per-plane engine's (`engine::plane`).

use crate::engine::plane::{
    affine_at, channels_backward, channels_forward, eval_backward, eval_forward,
    record_channel_moments, write_channel_grads,
};
use crate::error::{check_backward, check_channel_forward};
use crate::{
    Affine, Grads, Momentum, Nchw, NormError, Output, Parallelism, Running, RunningStats, Saved,
    Stats,
};

/// BatchNorm2d's settings (PyTorch's constructor arguments but `num_features`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    /// Added to the variance (PyTorch's default 1e-5).
    pub eps: f32,
    /// How the running statistics fold in each batch (default `Exponential(0.1)`).
    pub momentum: Momentum,
    /// Whether the calls carry `gamma`, `beta` (default true).
    pub affine: bool,
    /// Whether the train forward updates running statistics (default true); eval mode needs them.
    pub track_running_stats: bool,
}

impl Default for BatchNorm {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: Momentum::Exponential(0.1),
            affine: true,
            track_running_stats: true,
        }
    }
}

/// Training-mode BatchNorm2d forward: normalises each channel with its batch mean and biased
/// variance, writes `y`, the saved statistics (`[C]` each) and, if the settings track them,
/// updates `running` (see the [module docs](self)).
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`],
/// [`NormError::Momentum`], [`NormError::Settings`], and [`NormError::OneValuePerChannel`] when
/// `n·h·w = 1`.
pub fn batch_norm_forward_train(
    norm: &BatchNorm,
    shape: Nchw,
    x: &[f32],
    affine: Option<Affine<'_>>,
    running: Option<RunningStats<'_>>,
    out: Output<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "batch_norm_forward_train";
    let Output { y, stats } = out;
    let affine = affine.as_ref();
    check_channel_forward(
        OP,
        (shape, x.len(), y.len()),
        (norm.eps, norm.momentum),
        (norm.affine, affine),
        (norm.track_running_stats, running.as_ref()),
        (stats.mean.len(), stats.rstd.len()),
    )?;
    let moms = channels_forward(shape, (x, y), norm.eps, |c, _, _| affine_at(affine, c), par);
    record_channel_moments(&moms, (stats.mean, stats.rstd), running, norm.momentum);
    Ok(())
}

/// Eval-mode BatchNorm2d forward: the fixed per-channel map
/// `y = (x - running_mean)/sqrt(running_var + eps)·gamma + beta`.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`],
/// [`NormError::Settings`].
pub fn batch_norm_forward_eval(
    norm: &BatchNorm,
    shape: Nchw,
    x: &[f32],
    affine: Option<Affine<'_>>,
    running: Running<'_>,
    y: &mut [f32],
    par: Parallelism,
) -> Result<(), NormError> {
    let settings = (norm.eps, norm.affine, norm.track_running_stats);
    eval_forward(
        "batch_norm_forward_eval",
        settings,
        shape,
        (x, y),
        affine,
        running,
        par,
    )
}

/// Training-mode BatchNorm2d backward from the saved input and statistics (`[C]`): overwrites
/// `grads.dx` and, if given, `grads.affine` (`[C]`).
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Settings`].
pub fn batch_norm_backward_train(
    norm: &BatchNorm,
    shape: Nchw,
    saved: Saved<'_>,
    dy: &[f32],
    gamma: Option<&[f32]>,
    grads: Grads<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "batch_norm_backward_train";
    let Saved {
        x,
        stats: Stats { mean, rstd },
    } = saved;
    check_backward(
        OP,
        shape,
        (x.len(), dy.len(), grads.dx.len()),
        (shape.c, mean.len(), rstd.len()),
        (norm.affine, shape.c, gamma),
        &grads,
    )?;
    let g = |c: usize| gamma.map_or(1.0, |g| g[c] as f64);
    let sums = channels_backward(shape, (x, dy, grads.dx), (mean, rstd), g, par);
    if let Some(a) = grads.affine {
        write_channel_grads(a, &sums);
    }
    Ok(())
}

/// Eval-mode BatchNorm2d backward: the gradient of the fixed per-channel map built from the
/// running statistics (`dx = dy·gamma/sqrt(running_var + eps)`), plus `dgamma`, `dbeta` if asked.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`],
/// [`NormError::Settings`].
pub fn batch_norm_backward_eval(
    norm: &BatchNorm,
    shape: Nchw,
    saved: Saved<'_, Running<'_>>,
    dy: &[f32],
    gamma: Option<&[f32]>,
    grads: Grads<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    let settings = (norm.eps, norm.affine, norm.track_running_stats);
    let op = "batch_norm_backward_eval";
    eval_backward(op, settings, shape, (saved, dy), gamma, grads, par)
}
