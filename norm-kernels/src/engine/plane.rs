//! The per-plane engine: normalisation groups made of whole `H×W` planes with one scalar affine
//! each — a channel's `N` planes (BatchNorm, BatchRenorm), one plane (InstanceNorm), or the fixed
//! per-channel map of eval mode.
//!
//! A group's statistics come from one read of its planes ([`Moments::tiled`] per plane, merged in
//! plane order); the output pass `y = (x - pivot)·a + b` rereads them while they are still in
//! L1/L2. The backward reads `x`, `dy` once for the sums `(Σdy, Σdy·(x - m), Σ(x - m))`, then again
//! to write `dx = dy·a + (x - m)·b + c`. With few groups ([`nests`]) the planes and the tiles of a
//! plane are spread over the pool too; the partial results are merged in the same fixed order.
//!
//! [`nests`]: super::schedule::nests

use rayon::prelude::*;

use super::moments::{Moments, fold_affine, rstd_of};
use super::schedule::{nests, run};
use crate::error::{check_affine, check_eval, check_tracking};
use crate::simd::{self, Center, Sink};
use crate::tuning::{BLOCK, TILE, tuning};
use crate::{
    Affine, AffineGrads, Grads, Momentum, Nchw, NormError, Parallelism, Running, RunningStats,
    Saved,
};

/// The settings eval mode reads: `eps`, `affine`, `track_running_stats`.
pub(crate) type EvalSettings = (f32, bool, bool);

/// Eval-mode forward of every norm with running statistics: validates the call against its
/// settings, then [`channel_map_forward`].
pub(crate) fn eval_forward(
    op: &'static str,
    (eps, affine_flag, track): EvalSettings,
    shape: Nchw,
    (x, y): (&[f32], &mut [f32]),
    affine: Option<Affine<'_>>,
    running: Running<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    let affine = affine.as_ref();
    check_tracking(op, track, true)?;
    let lens = (x.len(), ("y", y.len()), None);
    check_eval(op, shape, lens, running, (affine_flag, affine, None), eps)?;
    channel_map_forward(shape, (x, y), running, affine, eps, par);
    Ok(())
}

/// Eval-mode backward of every norm with running statistics: validates the call against its
/// settings, then [`channel_map_backward`].
pub(crate) fn eval_backward(
    op: &'static str,
    (eps, affine_flag, track): EvalSettings,
    shape: Nchw,
    (saved, dy): (Saved<'_, Running<'_>>, &[f32]),
    gamma: Option<&[f32]>,
    grads: Grads<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    let Saved { x, stats: running } = saved;
    check_tracking(op, track, true)?;
    let lens = (x.len(), ("dx", grads.dx.len()), Some(dy.len()));
    check_eval(op, shape, lens, running, (affine_flag, None, gamma), eps)?;
    check_affine(op, shape.c, None, grads.affine.as_ref())?;
    channel_map_backward(
        shape,
        (x, dy, grads.dx),
        running,
        gamma,
        eps,
        grads.affine,
        par,
    );
    Ok(())
}

/// Backward sums of a group around its saved mean `m`: `(Σ dy, Σ dy·(x - m), Σ (x - m))`.
pub(crate) type Sums = (f64, f64, f64);

/// Adds two [`Sums`].
#[inline]
pub(crate) fn add_sums(a: Sums, b: Sums) -> Sums {
    (a.0 + b.0, a.1 + b.1, a.2 + b.2)
}

/// [`Sums`] of one block; a block whose f32 sums overflow is summed again in f64.
#[inline]
pub(crate) fn block_sums(dy: &[f32], x: &[f32], m: f32) -> Sums {
    let s = simd::sum_dy_dxm_dev(dy, x, m);
    if s.0.is_finite() && s.1.is_finite() && s.2.is_finite() {
        s
    } else {
        block_sums_f64(dy, x, m)
    }
}

#[cold]
fn block_sums_f64(dy: &[f32], x: &[f32], m: f32) -> Sums {
    dy.iter()
        .zip(x)
        .fold((0.0, 0.0, 0.0), |(a, b, c), (&d, &v)| {
            let e = v as f64 - m as f64;
            (a + d as f64, b + d as f64 * e, c + e)
        })
}

/// [`Sums`] of a slice of any length (a tile, a plane's part of one): block by block, the
/// blocks added in f64 in order.
#[inline]
pub(crate) fn slice_sums(dy: &[f32], x: &[f32], m: f32) -> Sums {
    dy.chunks(BLOCK)
        .zip(x.chunks(BLOCK))
        .fold((0.0, 0.0, 0.0), |acc, (d, v)| {
            add_sums(acc, block_sums(d, v, m))
        })
}

/// [`Sums`] of one plane: per [`TILE`], added in tile order; tiles spread over the pool if
/// `nested`.
#[inline]
pub(crate) fn plane_sums(dy: &[f32], x: &[f32], m: f32, nested: bool) -> Sums {
    if nested && x.len() > TILE {
        let parts: Vec<Sums> = dy
            .par_chunks(TILE)
            .zip(x.par_chunks(TILE))
            .map(|(d, v)| slice_sums(d, v, m))
            .collect();
        parts.into_iter().fold((0.0, 0.0, 0.0), add_sums)
    } else {
        dy.chunks(TILE)
            .zip(x.chunks(TILE))
            .map(|(d, v)| slice_sums(d, v, m))
            .fold((0.0, 0.0, 0.0), add_sums)
    }
}

/// The `(a, b, c)` of `dx = dy·a + (x - m)·b + c` and `(Σ dy·x̂, Σ dy)` of a train backward over
/// a group of `count` values with saved pivot mean `m`, `rstd`, scale `g` and the group's
/// [`Sums`] around `m`. The saved mean is only a pivot: its f32 rounding is corrected from the
/// data (`mean = m + Σ(x - m)/count`), so a large mean with a small spread loses nothing.
///
/// A group whose scale varies by channel (GroupNorm, LayerNorm) passes `g = 1` and sums already
/// weighted by its scale; it then forms `a = γ·rstd` per channel itself.
#[inline]
pub(crate) fn dx_coefs(sums: Sums, count: f64, rstd: f64, g: f64) -> ((f32, f32, f32), (f64, f64)) {
    let (s_dy, s_dyxm, s_xm) = sums;
    let e = s_xm / count;
    let s_dyxhat = (s_dyxm - e * s_dy) * rstd;
    let k = g * rstd;
    let b = -k * rstd * s_dyxhat / count;
    let c = -k * s_dy / count - e * b;
    ((k as f32, b as f32, c as f32), (s_dyxhat, s_dy))
}

/// `y = (x - m)·a + b` over a plane, split into [`TILE`]s over the pool if `nested`.
#[inline]
pub(crate) fn plane_center_scale_shift(
    xp: &[f32],
    yp: &mut [f32],
    mab: (Center, f32, f32),
    (nested, sink): (bool, Sink),
) {
    if nested && xp.len() > TILE {
        xp.par_chunks(TILE)
            .zip(yp.par_chunks_mut(TILE))
            .for_each(|(xu, yu)| simd::center_scale_shift(xu, yu, mab, sink));
    } else {
        simd::center_scale_shift(xp, yp, mab, sink);
    }
}

/// `dx = dy·a + (x - m)·b + c` over a plane, split into [`TILE`]s if `nested`.
#[inline]
pub(crate) fn plane_dx(
    (dy, x, dx): (&[f32], &[f32], &mut [f32]),
    m: f32,
    abc: (f32, f32, f32),
    (nested, sink): (bool, Sink),
) {
    if nested && x.len() > TILE {
        dy.par_chunks(TILE)
            .zip(x.par_chunks(TILE))
            .zip(dx.par_chunks_mut(TILE))
            .for_each(|((d, v), o)| simd::dy_xm_affine((d, v), o, (m, abc), sink));
    } else {
        simd::dy_xm_affine((dy, x), dx, (m, abc), sink);
    }
}

/// `(gamma_c, beta_c)` as f64, `(1, 0)` without affine.
#[inline]
pub(crate) fn affine_at(affine: Option<&Affine<'_>>, c: usize) -> (f64, f64) {
    affine.map_or((1.0, 0.0), |a| (a.gamma[c] as f64, a.beta[c] as f64))
}

/// Splits `x` and the matching `y` into the `N` planes of each channel: `out[c][n]`.
#[allow(clippy::type_complexity)]
fn channel_planes<'a>(
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

/// What a per-channel train forward keeps of its channels' moments (BatchNorm, BatchRenorm):
/// the saved `mean` and `rstd`, and the running statistics' momentum update (unbiased variance,
/// PyTorch's) when there are any.
pub(crate) fn record_channel_moments(
    moms: &[(Moments, f64)],
    (mean, rstd): (&mut [f32], &mut [f32]),
    running: Option<RunningStats<'_>>,
    momentum: Momentum,
) {
    for (c, &(m, r)) in moms.iter().enumerate() {
        mean[c] = m.mean as f32;
        rstd[c] = r as f32;
    }
    if let Some(mut rs) = running {
        let f = rs.next_factor(momentum);
        for (c, &(m, _)) in moms.iter().enumerate() {
            rs.mean[c] = ((1.0 - f) * rs.mean[c] as f64 + f * m.mean) as f32;
            rs.var[c] = ((1.0 - f) * rs.var[c] as f64 + f * m.var_unbiased()) as f32;
        }
    }
}

/// The train forward of a norm with one group per channel (BatchNorm, BatchRenorm): the
/// moments of each channel's `N` planes, then `y = (x - pivot)·a + b` with the `(g, beta)` that
/// `scale(c, moments, rstd)` returns. Gives each channel's moments and rstd.
pub(crate) fn channels_forward(
    shape: Nchw,
    (x, y): (&[f32], &mut [f32]),
    eps: f32,
    scale: impl Fn(usize, &Moments, f64) -> (f64, f64) + Sync,
    par: Parallelism,
) -> Vec<(Moments, f64)> {
    let nested = nests(par, shape.c);
    let sink = tuning().sink(y.len());
    let chans = channel_planes(shape, x, y);
    run(
        par,
        chans.into_iter().enumerate().collect(),
        shape.n * shape.hw(),
        |(c, mut planes)| {
            let m = if nested {
                let parts: Vec<Moments> = planes
                    .par_iter()
                    .map(|(xp, _)| Moments::tiled(xp, true))
                    .collect();
                parts.into_iter().fold(Moments::default(), Moments::merge)
            } else {
                planes.iter().fold(Moments::default(), |acc, (xp, _)| {
                    acc.merge(Moments::tiled(xp, false))
                })
            };
            let r = m.rstd(eps);
            let (g, beta) = scale(c, &m, r);
            let p = m.center();
            let (a, b) = fold_affine(m.mean as f32, m.mean, r, g, beta);
            if nested {
                planes
                    .par_iter_mut()
                    .for_each(|(xp, yp)| plane_center_scale_shift(xp, yp, (p, a, b), (true, sink)));
            } else {
                for (xp, yp) in planes.iter_mut() {
                    simd::center_scale_shift(xp, yp, (p, a, b), sink);
                }
            }
            (m, r)
        },
    )
}

/// The train backward of a norm with one group per channel: `dx` from the saved `mean`, `rstd`
/// and the scale `g(c)` of each channel. Gives each channel's `(Σ dy·x̂, Σ dy)`.
pub(crate) fn channels_backward(
    shape: Nchw,
    (x, dy, dx): (&[f32], &[f32], &mut [f32]),
    (mean, rstd): (&[f32], &[f32]),
    g: impl Fn(usize) -> f64 + Sync,
    par: Parallelism,
) -> Vec<(f64, f64)> {
    let nested = nests(par, shape.c);
    let count = (shape.n * shape.hw()) as f64;
    let sink = tuning().sink(dx.len());
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
    run(par, items, shape.n * shape.hw(), |(c, mut planes)| {
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
        let (abc, out) = dx_coefs(sums, count, rstd[c] as f64, g(c));
        if nested {
            planes
                .par_iter_mut()
                .for_each(|(xp, dyp, dxp)| plane_dx((dyp, xp, dxp), m, abc, (true, sink)));
        } else {
            for (xp, dyp, dxp) in planes.iter_mut() {
                simd::dy_xm_affine((dyp, xp), dxp, (m, abc), sink);
            }
        }
        out
    })
}

/// The fixed per-channel map `y = (x - mean_c)/sqrt(var_c + eps)·gamma_c + beta_c` over every
/// plane: eval mode of every norm with running statistics. One read of x, one write of y
/// (8 bytes/element); planes are the parallel tasks.
fn channel_map_forward(
    shape: Nchw,
    (x, y): (&[f32], &mut [f32]),
    running: Running<'_>,
    affine: Option<&Affine<'_>>,
    eps: f32,
    par: Parallelism,
) {
    let coef: Vec<(Center, f32, f32)> = (0..shape.c)
        .map(|c| {
            let (g, beta) = affine_at(affine, c);
            let m = running.mean[c];
            let (a, b) = fold_affine(m, m as f64, rstd_of(running.var[c] as f64, eps), g, beta);
            (eval_center(m), a, b)
        })
        .collect();
    let nested = nests(par, shape.n * shape.c);
    let sink = tuning().sink(y.len());
    let items: Vec<_> = x
        .chunks(shape.hw())
        .zip(y.chunks_mut(shape.hw()))
        .enumerate()
        .collect();
    run(par, items, shape.hw(), |(i, (xp, yp))| {
        plane_center_scale_shift(xp, yp, coef[i % shape.c], (nested, sink));
    });
}

/// How eval mode centres `x` on the running mean: halving first when the mean is so large that
/// `x - mean` could overflow f32 for a finite `x` (beyond 2^102, half an ulp of `f32::MAX`).
#[inline]
fn eval_center(mean: f32) -> Center {
    Center::new(mean, mean.abs() >= 2f32.powi(102))
}

/// Backward of [`channel_map_forward`]: `dx = dy·gamma_c·rstd_c` and, if `grads` is given,
/// `dgamma_c = Σ dy·(x - mean_c)·rstd_c`, `dbeta_c = Σ dy`. Channels are the parallel tasks.
fn channel_map_backward(
    shape: Nchw,
    (x, dy, dx): (&[f32], &[f32], &mut [f32]),
    running: Running<'_>,
    gamma: Option<&[f32]>,
    eps: f32,
    grads: Option<AffineGrads<'_>>,
    par: Parallelism,
) {
    let want_grads = grads.is_some();
    let nested = nests(par, shape.c);
    let sink = tuning().sink(dx.len());
    let chans = channel_planes(shape, dy, dx);
    let sums = run(
        par,
        chans.into_iter().enumerate().collect(),
        shape.n * shape.hw(),
        |(c, mut planes)| {
            let r = rstd_of(running.var[c] as f64, eps);
            let k = (gamma.map_or(1.0, |g| g[c] as f64) * r) as f32;
            let m = running.mean[c];
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
                planes.par_iter_mut().for_each(|(dyp, dxp)| {
                    plane_center_scale_shift(dyp, dxp, (Center::at(0.0), k, 0.0), (true, sink))
                });
            } else {
                for (dyp, dxp) in planes.iter_mut() {
                    simd::center_scale_shift(dyp, dxp, (Center::at(0.0), k, 0.0), sink);
                }
            }
            (s_dyxm * r, s_dy)
        },
    );
    if let Some(g) = grads {
        write_channel_grads(g, &sums);
    }
}

/// Writes per-channel `(dgamma, dbeta)` pairs into `grads`.
pub(crate) fn write_channel_grads(grads: AffineGrads<'_>, sums: &[(f64, f64)]) {
    for (c, &(dg, db)) in sums.iter().enumerate() {
        grads.dgamma[c] = dg as f32;
        grads.dbeta[c] = db as f32;
    }
}
