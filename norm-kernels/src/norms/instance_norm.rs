//! InstanceNorm2d (Ulyanov, Vedaldi & Lempitsky, 2016, "Instance Normalization: The Missing
//! Ingredient for Fast Stylization", arXiv:1607.08022).
//!
//! Statistics per instance `(n, c)` over the `M = H·W` values of that plane:
//!
//! ```text
//! mean_nc = Σ x / M,   var_nc = Σ (x - mean_nc)² / M   (biased),   rstd_nc = 1/sqrt(var_nc + eps)
//! y       = (x - mean_nc)·rstd_nc·gamma_c + beta_c          (affine per channel, [C])
//! ```
//!
//! The saved `mean` and `rstd` are `[N·C]` (index `n·C + c`). Running statistics (PyTorch's
//! `track_running_stats = True`) are per channel: `running = (1 - f)·running + f·batch`, where
//! `batch` is the mean over `n` of the per-instance means, respectively of the *unbiased*
//! per-instance variances `Σ (x - mean_nc)² / (M - 1)`.
//!
//! PyTorch's `InstanceNorm2d` differs from BatchNorm here and these kernels follow it: `f` is the
//! momentum, and `momentum = None` ([`crate::Momentum::CumulativeAverage`]) passes `0.0`, i.e. the
//! running statistics never change; `num_batches_tracked` is never incremented.
//!
//! Eval mode with `track_running_stats = True` is the same fixed per-channel map as eval-mode
//! BatchNorm ([`instance_norm_forward_eval`] / [`instance_norm_backward_eval`] share that code).
//! With `track_running_stats = False` (PyTorch's default) pass `running: None` and use
//! [`instance_norm_forward_train`] in eval mode too, as PyTorch does.
//!
//! Backward (train), with `x̂ = (x - mean_nc)·rstd_nc`, sums over the plane:
//!
//! ```text
//! dx = gamma_c·rstd_nc·(dy - Σdy/M - x̂·Σ(dy·x̂)/M),  dgamma_c = Σ_n Σ dy·x̂,  dbeta_c = Σ_n Σ dy
//! ```
//!
//! Without affine `gamma = 1`; the affine gradients may still be asked for (gradients of a unit
//! scale and zero shift).
//!
//! **Passes.** Each plane is one parallel task: statistics (one read of x, two passes per L1 block),
//! then `y = (x - m)·a + b` while the plane is still in L1/L2 — 8 bytes/element. Backward:
//! `Σdy`, `Σdy·(x - mean)` then `dx` from the cached plane — 12 bytes/element. With few planes,
//! planes longer than 16 Ki elements are also split into fixed tiles whose partial results are
//! merged in tile order, so the output is the same for any pool size (`engine::plane`).

use crate::engine::moments::{Moments, fold_affine};
use crate::engine::plane::{
    affine_at, dx_coefs, eval_backward, eval_forward, plane_center_scale_shift, plane_dx,
    plane_sums,
};
use crate::engine::schedule::{nests, run};
use crate::error::{
    check_affine, check_affine_flag, check_backward, check_io, check_momentum, check_running_len,
    check_stats_len, check_tracking,
};
use crate::tuning::tuning;
use crate::{
    Affine, Grads, Momentum, Nchw, NormError, Output, Parallelism, Running, RunningStats, Saved,
    Stats,
};

/// InstanceNorm2d's settings (PyTorch's constructor arguments but `num_features`; PyTorch's
/// defaults: no affine, no running statistics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InstanceNorm {
    /// Added to the variance (default 1e-5).
    pub eps: f32,
    /// How the running statistics fold in each batch (default `Exponential(0.1)`).
    pub momentum: Momentum,
    /// Whether the calls carry `gamma`, `beta` (default false).
    pub affine: bool,
    /// Whether the train forward updates running statistics, which eval mode then uses
    /// (default false: eval normalises with the instance statistics, like train).
    pub track_running_stats: bool,
}

impl Default for InstanceNorm {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: Momentum::Exponential(0.1),
            affine: false,
            track_running_stats: false,
        }
    }
}

/// Training-mode InstanceNorm2d forward: normalises every `(n, c)` plane with its own mean and
/// biased variance, writes `y`, the saved statistics (`[N·C]`) and, if the settings track them,
/// updates `running` (`[C]`) the way PyTorch does (see the [module docs](self)). With
/// `track_running_stats = false` this is also the eval-mode forward, as in PyTorch.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`],
/// [`NormError::Momentum`], [`NormError::Settings`], and [`NormError::OneSpatialElement`] when
/// `h·w = 1`.
pub fn instance_norm_forward_train(
    norm: &InstanceNorm,
    shape: Nchw,
    x: &[f32],
    affine: Option<Affine<'_>>,
    running: Option<RunningStats<'_>>,
    out: Output<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "instance_norm_forward_train";
    let Output { y, stats } = out;
    let affine = affine.as_ref();
    let groups = shape.n * shape.c;
    check_io(OP, shape, x.len(), ("y", y.len()), norm.eps)?;
    check_stats_len(OP, groups, stats.mean.len(), stats.rstd.len())?;
    check_affine_flag(OP, norm.affine, affine.is_some())?;
    check_affine(OP, shape.c, affine, None)?;
    check_tracking(OP, norm.track_running_stats, running.is_some())?;
    if let Some(r) = &running {
        check_running_len(OP, shape.c, r.mean.len(), r.var.len())?;
    }
    check_momentum(OP, norm.momentum)?;
    if shape.hw() == 1 {
        return Err(NormError::OneSpatialElement { op: OP, shape });
    }
    let nested = nests(par, groups);
    let sink = tuning().sink(y.len());
    let items: Vec<_> = x
        .chunks(shape.hw())
        .zip(y.chunks_mut(shape.hw()))
        .enumerate()
        .collect();
    let eps = norm.eps;
    let moms = run(par, items, shape.hw(), |(i, (xp, yp))| {
        let m = Moments::tiled(xp, nested);
        let r = m.rstd(eps);
        let (g, beta) = affine_at(affine, i % shape.c);
        let (a, b) = fold_affine(m.mean as f32, m.mean, r, g, beta);
        plane_center_scale_shift(xp, yp, (m.center(), a, b), (nested, sink));
        (m, r)
    });
    for (i, &(m, r)) in moms.iter().enumerate() {
        stats.mean[i] = m.mean as f32;
        stats.rstd[i] = r as f32;
    }
    if let Some(rs) = running {
        let f = match norm.momentum {
            Momentum::Exponential(m) => m as f64,
            Momentum::CumulativeAverage => 0.0,
        };
        for c in 0..shape.c {
            let per_n = |v: fn(&Moments) -> f64| {
                (0..shape.n)
                    .map(|n| v(&moms[n * shape.c + c].0))
                    .sum::<f64>()
                    / shape.n as f64
            };
            let (bm, bv) = (per_n(|m| m.mean), per_n(Moments::var_unbiased));
            rs.mean[c] = ((1.0 - f) * rs.mean[c] as f64 + f * bm) as f32;
            rs.var[c] = ((1.0 - f) * rs.var[c] as f64 + f * bv) as f32;
        }
    }
    Ok(())
}

/// Eval-mode InstanceNorm2d forward with tracked running statistics (`[C]`): the fixed
/// per-channel map `y = (x - running_mean)/sqrt(running_var + eps)·gamma + beta`.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`],
/// [`NormError::Settings`].
pub fn instance_norm_forward_eval(
    norm: &InstanceNorm,
    shape: Nchw,
    x: &[f32],
    affine: Option<Affine<'_>>,
    running: Running<'_>,
    y: &mut [f32],
    par: Parallelism,
) -> Result<(), NormError> {
    let settings = (norm.eps, norm.affine, norm.track_running_stats);
    eval_forward(
        "instance_norm_forward_eval",
        settings,
        shape,
        (x, y),
        affine,
        running,
        par,
    )
}

/// Training-mode InstanceNorm2d backward from the saved input and statistics (`[N·C]`):
/// overwrites `grads.dx` and, if given, `grads.affine` (`[C]`).
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Settings`].
pub fn instance_norm_backward_train(
    norm: &InstanceNorm,
    shape: Nchw,
    saved: Saved<'_>,
    dy: &[f32],
    gamma: Option<&[f32]>,
    grads: Grads<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "instance_norm_backward_train";
    let Saved {
        x,
        stats: Stats { mean, rstd },
    } = saved;
    let groups = shape.n * shape.c;
    check_backward(
        OP,
        shape,
        (x.len(), dy.len(), grads.dx.len()),
        (groups, mean.len(), rstd.len()),
        (norm.affine, shape.c, gamma),
        &grads,
    )?;
    let nested = nests(par, groups);
    let count = shape.hw() as f64;
    let sink = tuning().sink(grads.dx.len());
    let items: Vec<_> = x
        .chunks(shape.hw())
        .zip(dy.chunks(shape.hw()))
        .zip(grads.dx.chunks_mut(shape.hw()))
        .enumerate()
        .collect();
    let sums = run(par, items, shape.hw(), |(i, ((xp, dyp), dxp))| {
        let m = mean[i];
        let sums = plane_sums(dyp, xp, m, nested);
        let g = gamma.map_or(1.0, |g| g[i % shape.c] as f64);
        let (abc, out) = dx_coefs(sums, count, rstd[i] as f64, g);
        plane_dx((dyp, xp, dxp), m, abc, (nested, sink));
        out
    });
    if let Some(g) = grads.affine {
        for c in 0..shape.c {
            let (mut dg, mut db) = (0.0f64, 0.0f64);
            for n in 0..shape.n {
                let (p, q) = sums[n * shape.c + c];
                dg += p;
                db += q;
            }
            g.dgamma[c] = dg as f32;
            g.dbeta[c] = db as f32;
        }
    }
    Ok(())
}

/// Eval-mode InstanceNorm2d backward with tracked running statistics: the gradient of the fixed
/// per-channel map (`dx = dy·gamma/sqrt(running_var + eps)`), plus `dgamma`, `dbeta` if asked.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`],
/// [`NormError::Settings`].
pub fn instance_norm_backward_eval(
    norm: &InstanceNorm,
    shape: Nchw,
    saved: Saved<'_, Running<'_>>,
    dy: &[f32],
    gamma: Option<&[f32]>,
    grads: Grads<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    let settings = (norm.eps, norm.affine, norm.track_running_stats);
    let op = "instance_norm_backward_eval";
    eval_backward(op, settings, shape, (saved, dy), gamma, grads, par)
}
