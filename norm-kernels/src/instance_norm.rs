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
//! `gamma = None` means `gamma = 1`; `grads` may still be given (gradients of a unit scale and
//! zero shift).
//!
//! **Passes.** Each plane is one parallel task: statistics (one read of x, [`Moments`] blocks),
//! then `y = (x - m)·a + b` while the plane is still in L1/L2 — 8 bytes/element. Backward:
//! `Σdy`, `Σdy·(x - mean)` then `dx` from the cached plane — 12 bytes/element. With fewer than
//! [`NEST_BELOW`] planes, planes longer than 64 Ki elements are also split into fixed chunks
//! whose partial results are merged in chunk order, so the output is the same for any pool size.

use crate::batch_norm::{
    NEST_BELOW, affine_at, channel_map_backward, channel_map_forward, check_backward_train,
    check_forward_train, fold_affine, plane_center_scale_shift, plane_dx, plane_moments,
    plane_sums, rstd_of, run, train_dx_coefs,
};
use crate::stats::Moments;
use crate::{Affine, AffineGrads, Momentum, Nchw, NormError, Parallelism, RunningStats};

/// Training-mode InstanceNorm2d forward: normalises every `(n, c)` plane with its own mean and
/// biased variance, writes `y`, the saved `mean`, `rstd` (`[N·C]`) and, if `running` is given
/// (`[C]`), updates the running statistics the way PyTorch does (see the [module docs](self)).
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`],
/// [`NormError::Momentum`], and [`NormError::OneSpatialElement`] when `h·w = 1`.
#[allow(clippy::too_many_arguments)]
pub fn instance_norm_forward_train(
    shape: Nchw,
    x: &[f32],
    affine: Option<Affine<'_>>,
    eps: f32,
    running: Option<RunningStats<'_>>,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "instance_norm_forward_train";
    let affine = affine.as_ref();
    let groups = shape.n * shape.c;
    check_forward_train(
        OP,
        shape,
        x,
        affine,
        eps,
        running.as_ref(),
        y,
        mean,
        rstd,
        groups,
    )?;
    if shape.hw() == 1 {
        return Err(NormError::OneSpatialElement { op: OP, shape });
    }
    let nested = par == Parallelism::Rayon && groups < NEST_BELOW;
    let items: Vec<_> = x
        .chunks(shape.hw())
        .zip(y.chunks_mut(shape.hw()))
        .enumerate()
        .collect();
    let moms = run(par, items, shape.hw(), |(i, (xp, yp))| {
        let m = plane_moments(xp, nested);
        let r = rstd_of(m.var_biased(), eps);
        let (g, beta) = affine_at(affine, i % shape.c);
        let (m32, a, b) = fold_affine(m.mean, r, g, beta);
        plane_center_scale_shift(xp, yp, m32, a, b, nested);
        (m, r)
    });
    for (i, &(m, r)) in moms.iter().enumerate() {
        mean[i] = m.mean as f32;
        rstd[i] = r as f32;
    }
    if let Some(rs) = running {
        let f = match rs.momentum {
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
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`].
#[allow(clippy::too_many_arguments)]
pub fn instance_norm_forward_eval(
    shape: Nchw,
    x: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    affine: Option<Affine<'_>>,
    eps: f32,
    y: &mut [f32],
    par: Parallelism,
) -> Result<(), NormError> {
    channel_map_forward(
        "instance_norm_forward_eval",
        shape,
        x,
        running_mean,
        running_var,
        affine,
        eps,
        y,
        par,
    )
}

/// Training-mode InstanceNorm2d backward from the saved `mean`, `rstd` (`[N·C]`): overwrites `dx`
/// and, if given, `grads` (`[C]`). `gamma = None` means `gamma = 1`.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`].
#[allow(clippy::too_many_arguments)]
pub fn instance_norm_backward_train(
    shape: Nchw,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: Option<&[f32]>,
    dx: &mut [f32],
    grads: Option<AffineGrads<'_>>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "instance_norm_backward_train";
    let groups = shape.n * shape.c;
    check_backward_train(
        OP,
        shape,
        x,
        dy,
        mean,
        rstd,
        gamma,
        dx,
        grads.as_ref(),
        groups,
    )?;
    let nested = par == Parallelism::Rayon && groups < NEST_BELOW;
    let count = shape.hw() as f64;
    let items: Vec<_> = x
        .chunks(shape.hw())
        .zip(dy.chunks(shape.hw()))
        .zip(dx.chunks_mut(shape.hw()))
        .enumerate()
        .collect();
    let sums = run(par, items, shape.hw(), |(i, ((xp, dyp), dxp))| {
        let m = mean[i];
        let sums = plane_sums(dyp, xp, m, nested);
        let g = gamma.map_or(1.0, |g| g[i % shape.c] as f64);
        let ((a, b, c), out) = train_dx_coefs(sums, count, rstd[i] as f64, g);
        plane_dx(dyp, xp, dxp, m, a, b, c, nested);
        out
    });
    if let Some(g) = grads {
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
/// per-channel map (`dx = dy·gamma/sqrt(running_var + eps)`), plus `dgamma`, `dbeta` if given.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`].
#[allow(clippy::too_many_arguments)]
pub fn instance_norm_backward_eval(
    shape: Nchw,
    x: &[f32],
    dy: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    gamma: Option<&[f32]>,
    eps: f32,
    dx: &mut [f32],
    grads: Option<AffineGrads<'_>>,
    par: Parallelism,
) -> Result<(), NormError> {
    channel_map_backward(
        "instance_norm_backward_eval",
        shape,
        x,
        dy,
        running_mean,
        running_var,
        gamma,
        eps,
        dx,
        grads,
        par,
    )
}
