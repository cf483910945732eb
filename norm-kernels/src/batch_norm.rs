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
//! `gamma = None` (no affine) means `gamma = 1`, `beta = 0`. Backward then still writes
//! `dgamma`/`dbeta` if `grads` is given: they are the gradients with respect to a unit scale and
//! zero shift, which do not depend on gamma.
//!
//! **Passes.** Forward train: one task per channel reads the channel's `N` planes once for the
//! statistics ([`Moments`]: two passes per L1 block) and once more to write `y` with one
//! `(x - m)·a + b` FMA per element — the second read hits L2 when the channel slab (`N·H·W·4`
//! bytes) fits, so the traffic is 8 bytes/element (read x, write y), else 12. Backward train:
//! per channel `Σdy`, `Σdy·(x - mean)` (read x, dy), then `dx` (read x, dy again, write dx):
//! 12 bytes/element when the `x`, `dy` slab stays in L2, else 20. Channels are the parallel tasks;
//! with fewer than [`NEST_BELOW`] channels the planes and 64 Ki-element chunks of a channel are
//! spread too, and their partial statistics are merged in a fixed order, so the result does not
//! depend on the thread count.

use rayon::prelude::*;

use crate::simd::{self, BLOCK};
use crate::stats::Moments;
use crate::{
    Affine, AffineGrads, Nchw, NormError, Parallelism, RunningStats, check_affine, check_eps,
    check_len, check_running,
};

/// Elements in one fixed work unit: planes longer than this are reduced chunk by chunk (partial
/// results merged in chunk order) and may be split over threads.
pub(crate) const UNIT: usize = 16 * BLOCK;

/// With fewer top-level tasks (channels or planes) than this, the work inside a task is spread
/// over the pool too. The partial results are always formed and merged the same way, so this
/// changes speed only, never a bit of the output.
pub const NEST_BELOW: usize = 16;

/// Elements per rayon task at most when the items are small (128 KiB of f32). Left to itself,
/// rayon hands each of two threads a few long runs of items, and near the end one thread works
/// through its last run while the other idles: 5 % of GroupNorm's forward on 1,024 groups of
/// 8 KiB, and about as much of InstanceNorm's on 2,048 planes of 4 KiB.
pub(crate) const TASK: usize = 8 * BLOCK;

/// Items per rayon task at most for items of `item_len` elements: [`TASK`] worth, or one item.
#[inline]
pub(crate) fn items_per_task(item_len: usize) -> usize {
    (TASK / item_len.max(1)).max(1)
}

/// Maps `f` over `items` of `item_len` elements each, on the rayon pool (in tasks of at most
/// [`TASK`] elements, or one item) or on the calling thread, keeping the order. The split into
/// tasks changes only who computes what, never a result.
pub(crate) fn run<T: Send, R: Send>(
    par: Parallelism,
    items: Vec<T>,
    item_len: usize,
    f: impl Fn(T) -> R + Sync + Send,
) -> Vec<R> {
    match par {
        Parallelism::None => items.into_iter().map(f).collect(),
        Parallelism::Rayon => items
            .into_par_iter()
            .with_max_len(items_per_task(item_len))
            .map(f)
            .collect(),
    }
}

/// Moments of one plane: [`Moments::of_slice`] of each [`UNIT`] chunk, merged in chunk order.
#[inline]
pub(crate) fn plane_moments(xp: &[f32], nested: bool) -> Moments {
    if nested && xp.len() > UNIT {
        let parts: Vec<Moments> = xp.par_chunks(UNIT).map(Moments::of_slice).collect();
        parts.into_iter().fold(Moments::default(), Moments::merge)
    } else {
        xp.chunks(UNIT)
            .map(Moments::of_slice)
            .fold(Moments::default(), Moments::merge)
    }
}

/// Backward sums of a plane: `(Σ dy, Σ dy·(x - m), Σ (x - m))`.
pub(crate) type Sums = (f64, f64, f64);

/// Adds two [`Sums`].
#[inline]
pub(crate) fn add_sums(a: Sums, b: Sums) -> Sums {
    (a.0 + b.0, a.1 + b.1, a.2 + b.2)
}

/// [`Sums`] of one chunk, block by block in f64.
#[inline]
fn unit_sums(dy: &[f32], x: &[f32], m: f32) -> Sums {
    dy.chunks(BLOCK)
        .zip(x.chunks(BLOCK))
        .fold((0.0, 0.0, 0.0), |acc, (d, v)| {
            add_sums(acc, simd::sum_dy_dxm_dev(d, v, m))
        })
}

/// [`Sums`] of one plane: per [`UNIT`] chunk, added in chunk order.
#[inline]
pub(crate) fn plane_sums(dy: &[f32], x: &[f32], m: f32, nested: bool) -> Sums {
    if nested && x.len() > UNIT {
        let parts: Vec<Sums> = dy
            .par_chunks(UNIT)
            .zip(x.par_chunks(UNIT))
            .map(|(d, v)| unit_sums(d, v, m))
            .collect();
        parts.into_iter().fold((0.0, 0.0, 0.0), add_sums)
    } else {
        dy.chunks(UNIT)
            .zip(x.chunks(UNIT))
            .map(|(d, v)| unit_sums(d, v, m))
            .fold((0.0, 0.0, 0.0), add_sums)
    }
}

/// The `(a, b, c)` of `dx = dy·a + (x - m)·b + c` and `(Σ dy·x̂, Σ dy)` of a train backward over
/// a group of `count` values with saved pivot mean `m`, `rstd`, scale `g` and the group's
/// [`Sums`] around `m`. The saved mean is only a pivot: its f32 rounding is corrected from the
/// data (`mean = m + Σ(x - m)/count`), so a large mean with a small spread loses nothing.
#[inline]
pub(crate) fn train_dx_coefs(
    sums: Sums,
    count: f64,
    rstd: f64,
    g: f64,
) -> ((f32, f32, f32), (f64, f64)) {
    let (s_dy, s_dyxm, s_xm) = sums;
    let e = s_xm / count;
    let s_dyxhat = (s_dyxm - e * s_dy) * rstd;
    let k = g * rstd;
    let b = -k * rstd * s_dyxhat / count;
    let c = -k * s_dy / count - e * b;
    ((k as f32, b as f32, c as f32), (s_dyxhat, s_dy))
}

/// `y = (x - m)·a + b` over a plane, split into [`UNIT`] chunks over the pool if `nested`.
#[inline]
pub(crate) fn plane_center_scale_shift(
    xp: &[f32],
    yp: &mut [f32],
    m: f32,
    a: f32,
    b: f32,
    nested: bool,
) {
    if nested && xp.len() > UNIT {
        xp.par_chunks(UNIT)
            .zip(yp.par_chunks_mut(UNIT))
            .for_each(|(xu, yu)| simd::center_scale_shift(xu, yu, m, a, b));
    } else {
        simd::center_scale_shift(xp, yp, m, a, b);
    }
}

/// `dx = dy·a + (x - m)·b + c` over a plane, split into [`UNIT`] chunks if `nested`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn plane_dx(
    dy: &[f32],
    x: &[f32],
    dx: &mut [f32],
    m: f32,
    a: f32,
    b: f32,
    c: f32,
    nested: bool,
) {
    if nested && x.len() > UNIT {
        dy.par_chunks(UNIT)
            .zip(x.par_chunks(UNIT))
            .zip(dx.par_chunks_mut(UNIT))
            .for_each(|((d, v), o)| simd::dy_xm_affine(d, v, o, m, a, b, c));
    } else {
        simd::dy_xm_affine(dy, x, dx, m, a, b, c);
    }
}

/// `(gamma_c, beta_c)` as f64, `(1, 0)` without affine.
#[inline]
pub(crate) fn affine_at(affine: Option<&Affine<'_>>, c: usize) -> (f64, f64) {
    affine.map_or((1.0, 0.0), |a| (a.gamma[c] as f64, a.beta[c] as f64))
}

/// `1 / sqrt(var + eps)` in f64.
#[inline]
pub(crate) fn rstd_of(var: f64, eps: f32) -> f64 {
    1.0 / (var + eps as f64).sqrt()
}

/// The `(a, b)` of `y = (x - m32)·a + b` that normalises with `(mean, rstd)` and applies
/// `(g, beta)`, where `m32` is `mean` rounded to f32 (the rounding is folded into `b`).
#[inline]
pub(crate) fn fold_affine(mean: f64, rstd: f64, g: f64, beta: f64) -> (f32, f32, f32) {
    let m32 = mean as f32;
    let a = rstd * g;
    (m32, a as f32, (beta + (m32 as f64 - mean) * a) as f32)
}

/// Splits `x` and the matching `y` into the `N` planes of each channel: `out[c][n]`.
#[allow(clippy::type_complexity)]
pub(crate) fn channel_planes<'a>(
    shape: Nchw,
    x: &'a [f32],
    y: &'a mut [f32],
) -> Vec<Vec<(&'a [f32], &'a mut [f32])>> {
    let mut out: Vec<Vec<_>> = (0..shape.c).map(|_| Vec::with_capacity(shape.n)).collect();
    for (i, (xp, yp)) in x
        .chunks(shape.hw())
        .zip(y.chunks_mut(shape.hw()))
        .enumerate()
    {
        out[i % shape.c].push((xp, yp));
    }
    out
}

/// Validates the buffers of a train-mode forward whose saved statistics have `groups` entries.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_forward_train(
    op: &'static str,
    shape: Nchw,
    x: &[f32],
    affine: Option<&Affine<'_>>,
    eps: f32,
    running: Option<&RunningStats<'_>>,
    y: &[f32],
    mean: &[f32],
    rstd: &[f32],
    groups: usize,
) -> Result<(), NormError> {
    shape.check_nonzero(op)?;
    check_len(op, "x", shape.len(), x.len())?;
    check_len(op, "y", shape.len(), y.len())?;
    check_len(op, "mean", groups, mean.len())?;
    check_len(op, "rstd", groups, rstd.len())?;
    check_affine(op, shape.c, affine, None)?;
    check_eps(op, eps)?;
    check_running(op, shape.c, running)
}

/// Validates the buffers of a train-mode backward whose saved statistics have `groups` entries.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_backward_train(
    op: &'static str,
    shape: Nchw,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: Option<&[f32]>,
    dx: &[f32],
    grads: Option<&AffineGrads<'_>>,
    groups: usize,
) -> Result<(), NormError> {
    shape.check_nonzero(op)?;
    check_len(op, "x", shape.len(), x.len())?;
    check_len(op, "dy", shape.len(), dy.len())?;
    check_len(op, "dx", shape.len(), dx.len())?;
    check_len(op, "mean", groups, mean.len())?;
    check_len(op, "rstd", groups, rstd.len())?;
    if let Some(g) = gamma {
        check_len(op, "gamma", shape.c, g.len())?;
    }
    check_affine(op, shape.c, None, grads)
}

/// Training-mode BatchNorm2d forward: normalises each channel with its batch mean and biased
/// variance, writes `y`, the saved `mean` and `rstd` (`[C]` each) and, if `running` is given,
/// updates the running statistics (see the [module docs](self)).
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`],
/// [`NormError::Momentum`], and [`NormError::OneValuePerChannel`] when `n·h·w = 1`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_train(
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
    const OP: &str = "batch_norm_forward_train";
    let affine = affine.as_ref();
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
        shape.c,
    )?;
    if shape.n * shape.hw() == 1 {
        return Err(NormError::OneValuePerChannel { op: OP, shape });
    }
    let nested = par == Parallelism::Rayon && shape.c < NEST_BELOW;
    let chans = channel_planes(shape, x, y);
    let moms = run(
        par,
        chans.into_iter().enumerate().collect(),
        shape.n * shape.hw(),
        |(c, mut planes)| {
            let m = if nested {
                let parts: Vec<Moments> = planes
                    .par_iter()
                    .map(|(xp, _)| plane_moments(xp, true))
                    .collect();
                parts.into_iter().fold(Moments::default(), Moments::merge)
            } else {
                planes.iter().fold(Moments::default(), |acc, (xp, _)| {
                    acc.merge(plane_moments(xp, false))
                })
            };
            let r = rstd_of(m.var_biased(), eps);
            let (g, beta) = affine_at(affine, c);
            let (m32, a, b) = fold_affine(m.mean, r, g, beta);
            if nested {
                planes
                    .par_iter_mut()
                    .for_each(|(xp, yp)| plane_center_scale_shift(xp, yp, m32, a, b, true));
            } else {
                for (xp, yp) in planes.iter_mut() {
                    simd::center_scale_shift(xp, yp, m32, a, b);
                }
            }
            (m, r)
        },
    );
    for (c, &(m, r)) in moms.iter().enumerate() {
        mean[c] = m.mean as f32;
        rstd[c] = r as f32;
    }
    if let Some(mut rs) = running {
        let f = rs.next_factor();
        for (c, &(m, _)) in moms.iter().enumerate() {
            rs.mean[c] = ((1.0 - f) * rs.mean[c] as f64 + f * m.mean) as f32;
            rs.var[c] = ((1.0 - f) * rs.var[c] as f64 + f * m.var_unbiased()) as f32;
        }
    }
    Ok(())
}

/// Eval-mode BatchNorm2d forward: the fixed per-channel map
/// `y = (x - running_mean)/sqrt(running_var + eps)·gamma + beta`.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_eval(
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
        "batch_norm_forward_eval",
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

/// Training-mode BatchNorm2d backward from the saved `mean`, `rstd` (`[C]`): overwrites `dx` and,
/// if given, `grads` (`dgamma`, `dbeta`, `[C]`). `gamma = None` means no affine (`gamma = 1`);
/// `grads` may still be given and receives the gradients of a unit scale and zero shift.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_train(
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
    const OP: &str = "batch_norm_backward_train";
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
        shape.c,
    )?;
    let nested = par == Parallelism::Rayon && shape.c < NEST_BELOW;
    let count = (shape.n * shape.hw()) as f64;
    let chans = channel_planes(shape, x, dx);
    let items: Vec<_> = chans
        .into_iter()
        .enumerate()
        .map(|(c, planes)| {
            let planes: Vec<_> = planes
                .into_iter()
                .enumerate()
                .map(|(n, (xp, dxp))| {
                    let off = n * shape.chw() + c * shape.hw();
                    (xp, &dy[off..off + shape.hw()], dxp)
                })
                .collect();
            (c, planes)
        })
        .collect();
    let sums = run(par, items, shape.n * shape.hw(), |(c, mut planes)| {
        let m = mean[c];
        let sums = if nested {
            let parts: Vec<Sums> = planes
                .par_iter()
                .map(|(xp, dyp, _)| plane_sums(dyp, xp, m, true))
                .collect();
            parts.into_iter().fold((0.0, 0.0, 0.0), add_sums)
        } else {
            planes
                .iter()
                .map(|(xp, dyp, _)| plane_sums(dyp, xp, m, false))
                .fold((0.0, 0.0, 0.0), add_sums)
        };
        let g = gamma.map_or(1.0, |g| g[c] as f64);
        let ((a, b, cc), out) = train_dx_coefs(sums, count, rstd[c] as f64, g);
        if nested {
            planes
                .par_iter_mut()
                .for_each(|(xp, dyp, dxp)| plane_dx(dyp, xp, dxp, m, a, b, cc, true));
        } else {
            for (xp, dyp, dxp) in planes.iter_mut() {
                simd::dy_xm_affine(dyp, xp, dxp, m, a, b, cc);
            }
        }
        out
    });
    if let Some(g) = grads {
        for (c, &(dg, db)) in sums.iter().enumerate() {
            g.dgamma[c] = dg as f32;
            g.dbeta[c] = db as f32;
        }
    }
    Ok(())
}

/// Eval-mode BatchNorm2d backward: the gradient of the fixed per-channel map built from the
/// running statistics (`dx = dy·gamma/sqrt(running_var + eps)`), plus `dgamma`, `dbeta` if given.
///
/// Errors: [`NormError::ZeroDim`], [`NormError::BufferLen`], [`NormError::Eps`].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_eval(
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
        "batch_norm_backward_eval",
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

/// The fixed per-channel map `y = (x - mean_c)/sqrt(var_c + eps)·gamma_c + beta_c` over every
/// plane: eval-mode BatchNorm2d and eval-mode InstanceNorm2d (with `track_running_stats`).
/// One read of x, one write of y (8 bytes/element); planes are the parallel tasks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn channel_map_forward(
    op: &'static str,
    shape: Nchw,
    x: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    affine: Option<Affine<'_>>,
    eps: f32,
    y: &mut [f32],
    par: Parallelism,
) -> Result<(), NormError> {
    shape.check_nonzero(op)?;
    check_len(op, "x", shape.len(), x.len())?;
    check_len(op, "y", shape.len(), y.len())?;
    check_len(op, "running_mean", shape.c, running_mean.len())?;
    check_len(op, "running_var", shape.c, running_var.len())?;
    check_affine(op, shape.c, affine.as_ref(), None)?;
    check_eps(op, eps)?;
    let coef: Vec<(f32, f32, f32)> = (0..shape.c)
        .map(|c| {
            let (g, beta) = affine_at(affine.as_ref(), c);
            fold_affine(
                running_mean[c] as f64,
                rstd_of(running_var[c] as f64, eps),
                g,
                beta,
            )
        })
        .collect();
    let planes = shape.n * shape.c;
    let nested = par == Parallelism::Rayon && planes < NEST_BELOW;
    let items: Vec<_> = x
        .chunks(shape.hw())
        .zip(y.chunks_mut(shape.hw()))
        .enumerate()
        .collect();
    run(par, items, shape.hw(), |(i, (xp, yp))| {
        let (m, a, b) = coef[i % shape.c];
        plane_center_scale_shift(xp, yp, m, a, b, nested);
    });
    Ok(())
}

/// Backward of [`channel_map_forward`]: `dx = dy·gamma_c·rstd_c` and, if `grads` is given,
/// `dgamma_c = Σ dy·(x - mean_c)·rstd_c`, `dbeta_c = Σ dy`. Channels are the parallel tasks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn channel_map_backward(
    op: &'static str,
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
    shape.check_nonzero(op)?;
    check_len(op, "x", shape.len(), x.len())?;
    check_len(op, "dy", shape.len(), dy.len())?;
    check_len(op, "dx", shape.len(), dx.len())?;
    check_len(op, "running_mean", shape.c, running_mean.len())?;
    check_len(op, "running_var", shape.c, running_var.len())?;
    if let Some(g) = gamma {
        check_len(op, "gamma", shape.c, g.len())?;
    }
    check_affine(op, shape.c, None, grads.as_ref())?;
    check_eps(op, eps)?;
    let want_grads = grads.is_some();
    let nested = par == Parallelism::Rayon && shape.c < NEST_BELOW;
    let chans = channel_planes(shape, dy, dx);
    let sums = run(
        par,
        chans.into_iter().enumerate().collect(),
        shape.n * shape.hw(),
        |(c, mut planes)| {
            let r = rstd_of(running_var[c] as f64, eps);
            let k = (gamma.map_or(1.0, |g| g[c] as f64) * r) as f32;
            let m = running_mean[c];
            let xs = |n: usize| {
                let off = n * shape.chw() + c * shape.hw();
                &x[off..off + shape.hw()]
            };
            let (s_dy, s_dyxm, _) = if !want_grads {
                (0.0, 0.0, 0.0)
            } else if nested {
                let parts: Vec<Sums> = planes
                    .par_iter()
                    .enumerate()
                    .map(|(n, (dyp, _))| plane_sums(dyp, xs(n), m, true))
                    .collect();
                parts.into_iter().fold((0.0, 0.0, 0.0), add_sums)
            } else {
                planes
                    .iter()
                    .enumerate()
                    .map(|(n, (dyp, _))| plane_sums(dyp, xs(n), m, false))
                    .fold((0.0, 0.0, 0.0), add_sums)
            };
            if nested {
                planes
                    .par_iter_mut()
                    .for_each(|(dyp, dxp)| plane_center_scale_shift(dyp, dxp, 0.0, k, 0.0, true));
            } else {
                for (dyp, dxp) in planes.iter_mut() {
                    simd::scale_shift(dyp, dxp, k, 0.0);
                }
            }
            (s_dyxm * r, s_dy)
        },
    );
    if let Some(g) = grads {
        for (c, &(dg, db)) in sums.iter().enumerate() {
            g.dgamma[c] = dg as f32;
            g.dbeta[c] = db as f32;
        }
    }
    Ok(())
}
