//! LayerNorm over `[C, H, W]` — Ba, Kiros & Hinton, "Layer Normalization", 2016
//! (arXiv:1607.06450); here in the form `nn.LayerNorm([C, H, W])` (the seed's
//! `nn.LayerNorm(list(feature.shape[1:]), eps=1e-8)`).
//!
//! Each sample is normalised over all of its `M = C·H·W` values, then an element-wise affine of
//! shape `[C, H, W]` (shared by all samples) is applied:
//!
//! ```text
//! μ[n]  = mean of x[n, ·],   σ²[n] = mean of (x[n, ·] - μ[n])²   (biased, as PyTorch)
//! y[n, i] = (x[n, i] - μ[n]) / sqrt(σ²[n] + eps) · γ[i] + β[i]
//! ```
//!
//! Backward, with `r = rstd`, `x̂ = (x - μ)·r`, `g = dy·γ`:
//!
//! ```text
//! dx[n, i] = dy·γ[i]·r + (x - μ)·b[n] + c[n],  b = -r³·Σg(x-μ)/M,  c = -r·Σg/M
//! dγ[i] = Σ_n dy[n, i]·x̂[n, i],   dβ[i] = Σ_n dy[n, i]
//! ```
//!
//! LayerNorm is GroupNorm with one group per sample and a per-element affine, so the forward
//! is the shared grouped kernel of [`crate::group_norm`]: statistics of a sample in one read
//! (tiles of 16 Ki elements, spread over the pool even when there are only two samples), then
//! `y = ((x - μ)·r)·γ + β` over the slab, still in cache.
//!
//! The backward differs because `dγ`, `dβ` are per element, summed over the batch: samples are
//! processed in fixed batches of about 2 Mi elements (one sample when samples are larger).
//! For each batch, pass 1 reduces `(Σ dy·γ, Σ dy·γ·(x-μ))` per sample (tiles in parallel, merged
//! in tile order); pass 2 walks column strips of 2048 elements in parallel, and in each strip
//! writes `dx` of every sample of the batch and accumulates `dγ`, `dβ` in sample order. The
//! batch's slab is still in cache for pass 2, and the order of every sum is fixed by the shape
//! alone, so results are bit-identical for any number of threads.

use rayon::prelude::*;

use crate::group_norm::{AffineLayout, TILE, dx_coefficients, forward_groups, sums_dy_dxm};
use crate::simd::{self, BLOCK};
use crate::{
    Affine, AffineGrads, Nchw, NormError, Parallelism, check_affine, check_eps, check_len,
};

/// Elements of a column strip in the backward's second pass.
const STRIP: usize = 2048;

/// Elements per batch of samples in the backward: x + dy of a batch is 16 MiB, half of Zen3's
/// L3, so pass 2 rereads them from cache, and `dγ`, `dβ` strips stay in L1 across the batch.
const BATCH: usize = 1 << 21;

/// LayerNorm forward over `[C, H, W]`: writes `y` (`[N, C, H, W]`) and the saved statistics
/// `mean`, `rstd` (`[N]`) that [`layer_norm_backward`] consumes.
///
/// `affine`: `gamma`, `beta` of `[C, H, W]` (`C·H·W` elements), or `None` for
/// `elementwise_affine=False`.
///
/// # Errors
/// [`NormError::ZeroDim`], [`NormError::Eps`], [`NormError::BufferLen`] naming `x`, `y`, `mean`,
/// `rstd`, `gamma` or `beta`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward(
    shape: Nchw,
    x: &[f32],
    affine: Option<Affine<'_>>,
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "layer_norm_forward";
    shape.check_nonzero(OP)?;
    check_eps(OP, eps)?;
    check_len(OP, "x", shape.len(), x.len())?;
    check_len(OP, "y", shape.len(), y.len())?;
    check_len(OP, "mean", shape.n, mean.len())?;
    check_len(OP, "rstd", shape.n, rstd.len())?;
    check_affine(OP, shape.chw(), affine.as_ref(), None)?;
    forward_groups(
        shape.chw(),
        AffineLayout::PerElement,
        x,
        affine,
        eps,
        y,
        mean,
        rstd,
        par,
    );
    Ok(())
}

/// LayerNorm backward: from `x`, the upstream gradient `dy` and the `mean`, `rstd` saved by
/// [`layer_norm_forward`], overwrites `dx` and, if `grads` is given, `dgamma`, `dbeta`
/// (`[C, H, W]`, summed over the batch).
///
/// `gamma: None` means `γ = 1` (no affine, or an affine at its identity). `dγ = Σ_n dy·x̂` and
/// `dβ = Σ_n dy` do not depend on `γ`, so `grads` may still be asked for.
///
/// # Errors
/// [`NormError::ZeroDim`], [`NormError::BufferLen`] naming `x`, `dy`, `dx`, `mean`, `rstd`,
/// `gamma`, `dgamma` or `dbeta`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    shape: Nchw,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: Option<&[f32]>,
    dx: &mut [f32],
    mut grads: Option<AffineGrads<'_>>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "layer_norm_backward";
    shape.check_nonzero(OP)?;
    check_len(OP, "x", shape.len(), x.len())?;
    check_len(OP, "dy", shape.len(), dy.len())?;
    check_len(OP, "dx", shape.len(), dx.len())?;
    check_len(OP, "mean", shape.n, mean.len())?;
    check_len(OP, "rstd", shape.n, rstd.len())?;
    if let Some(g) = gamma {
        check_len(OP, "gamma", shape.chw(), g.len())?;
    }
    check_affine(OP, shape.chw(), None, grads.as_ref())?;

    let len = shape.chw();
    let rayon = par == Parallelism::Rayon;
    if let Some(g) = grads.as_mut() {
        g.dgamma.fill(0.0);
        g.dbeta.fill(0.0);
    }
    let per_batch = (BATCH / len).clamp(1, shape.n);
    let span = per_batch * len;
    for (bi, ((xb, dyb), dxb)) in x
        .chunks(span)
        .zip(dy.chunks(span))
        .zip(dx.chunks_mut(span))
        .enumerate()
    {
        let n0 = bi * per_batch;
        let samples = xb.len() / len;
        // Pass 1: per sample, (Σ dy·γ, Σ dy·γ·(x - μ)) tile by tile, merged in tile order.
        let tile_sums = |m: f32, t: usize, (du, xu): (&[f32], &[f32])| match gamma {
            None => sums_dy_dxm(du, xu, m),
            Some(g) => {
                let g = &g[t * TILE..t * TILE + xu.len()];
                du.chunks(BLOCK)
                    .zip(xu.chunks(BLOCK))
                    .zip(g.chunks(BLOCK))
                    .fold((0.0, 0.0), |(a, b), ((d, v), g)| {
                        let (s1, s2) = simd::sum_gdy_gdxm(d, v, g, m);
                        (a + s1, b + s2)
                    })
            }
        };
        let sample = |k: usize| {
            let (xs, dys) = (&xb[k * len..(k + 1) * len], &dyb[k * len..(k + 1) * len]);
            let m = mean[n0 + k];
            let parts: Vec<(f64, f64)> = if rayon && len > TILE {
                dys.par_chunks(TILE)
                    .zip(xs.par_chunks(TILE))
                    .enumerate()
                    .map(|(t, p)| tile_sums(m, t, p))
                    .collect()
            } else {
                dys.chunks(TILE)
                    .zip(xs.chunks(TILE))
                    .enumerate()
                    .map(|(t, p)| tile_sums(m, t, p))
                    .collect()
            };
            let (s1, s2) = parts
                .into_iter()
                .fold((0.0, 0.0), |(a, b), (c, d)| (a + c, b + d));
            dx_coefficients(rstd[n0 + k], s1, s2, len)
        };
        let coef: Vec<(f32, f32)> = if rayon {
            (0..samples).into_par_iter().map(sample).collect()
        } else {
            (0..samples).map(sample).collect()
        };

        // Pass 2: column strips; in each, dx of every sample, then dγ, dβ in sample order.
        let mut strips: Vec<Vec<&mut [f32]>> = (0..len.div_ceil(STRIP))
            .map(|_| Vec::with_capacity(samples))
            .collect();
        for dxs in dxb.chunks_mut(len) {
            for (j, piece) in dxs.chunks_mut(STRIP).enumerate() {
                strips[j].push(piece);
            }
        }
        let strip = |j: usize, dxj: Vec<&mut [f32]>, acc: Option<(&mut [f32], &mut [f32])>| {
            let s = j * STRIP;
            let mut acc = acc;
            for (k, dxk) in dxj.into_iter().enumerate() {
                let off = k * len + s;
                let (xk, dyk) = (&xb[off..off + dxk.len()], &dyb[off..off + dxk.len()]);
                let (m, r) = (mean[n0 + k], rstd[n0 + k]);
                let (b, c) = coef[k];
                match gamma {
                    None => simd::dy_xm_affine(dyk, xk, dxk, m, r, b, c),
                    Some(g) => simd::gdy_xm_affine(dyk, &g[s..s + xk.len()], xk, dxk, m, r, b, c),
                }
                if let Some((dg, db)) = acc.as_mut() {
                    simd::acc_dgamma_dbeta(dyk, xk, m, r, dg, db);
                }
            }
        };
        match (grads.as_mut(), rayon) {
            (Some(g), true) => strips
                .into_par_iter()
                .zip(
                    g.dgamma
                        .par_chunks_mut(STRIP)
                        .zip(g.dbeta.par_chunks_mut(STRIP)),
                )
                .enumerate()
                .for_each(|(j, (dxj, acc))| strip(j, dxj, Some(acc))),
            (Some(g), false) => strips
                .into_iter()
                .zip(g.dgamma.chunks_mut(STRIP).zip(g.dbeta.chunks_mut(STRIP)))
                .enumerate()
                .for_each(|(j, (dxj, acc))| strip(j, dxj, Some(acc))),
            (None, true) => strips
                .into_par_iter()
                .enumerate()
                .for_each(|(j, dxj)| strip(j, dxj, None)),
            (None, false) => strips
                .into_iter()
                .enumerate()
                .for_each(|(j, dxj)| strip(j, dxj, None)),
        }
    }
    Ok(())
}
