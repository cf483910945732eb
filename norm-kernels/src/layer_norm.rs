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
//! LayerNorm is GroupNorm with one group per sample and a per-element affine, so the statistics
//! are those of the shared grouped kernel of [`crate::group_norm`]: each sample in one read
//! (tiles of 16 Ki elements, spread over the pool even when there are only two samples).
//!
//! The per-element `γ`, `β` (and in the backward `dγ`, `dβ`) are as large as a whole sample, so
//! every pass that touches them walks **column strips** of [`STRIP`] elements across all samples:
//! a strip of `γ`, `β`, `dγ` or `dβ` (8 KiB each) is read or written once per call and stays in L1
//! while the strip of every sample goes by. Walking sample by sample instead would stream the
//! parameters once per sample, doubling the traffic of the seed's shape (3.6 MB per sample).
//!
//! * **Forward**: without affine, or when `γ`, `β` fit in L2 together ([`PARAMS_IN_L2`]), the
//!   grouped kernel itself, sample by sample (the second read of `x` comes from L1/L2). Else
//!   the statistics of every sample, then `y = ((x - μ)·r)·γ + β` strip by strip.
//! * **Backward**, two passes over strips. Pass 1 reads `x`, `dy`, `γ` and keeps, per strip and
//!   sample, `(Σ dy·γ, Σ dy·γ·(x-μ))`; in the same read it accumulates `dγ`, `dβ` in sample order,
//!   since they need only the saved `μ`, `r`. Each sample's sums are merged in strip order into
//!   its `dx` coefficients. Pass 2 reads `x`, `dy`, `γ` again and writes `dx`.
//!
//! Strips are fixed by the shape and every sum is merged in index order, so results are
//! bit-identical for any number of threads.

use crate::batch_norm::run;
use crate::group_norm::{
    AffineLayout, TILE, dx_coefficients, forward_groups, group_moments, sums_dy_dxm,
};
use crate::simd;
use crate::{
    Affine, AffineGrads, Nchw, NormError, Parallelism, check_affine, check_eps, check_len,
};

/// Elements of a column strip (8 KiB of f32): the unit of parallel work of every pass that
/// touches the per-element parameters, and the merge unit of the backward's sums.
const STRIP: usize = 2048;

/// Bytes of `γ` + `β` up to which the forward walks sample by sample (the grouped kernel, which
/// rereads each sample's `x` from L1/L2 right after its statistics) rather than in column
/// strips: parameters this small come from L2 for every sample. 512 KiB is Zen3's L2.
const PARAMS_IN_L2: usize = 512 << 10;

/// Splits `buf` (samples of `len` elements) into column strips: entry `j` holds strip `j` of
/// every sample, in sample order.
fn column_strips(buf: &mut [f32], len: usize) -> Vec<Vec<&mut [f32]>> {
    let samples = buf.len() / len;
    let mut strips: Vec<Vec<&mut [f32]>> = (0..len.div_ceil(STRIP))
        .map(|_| Vec::with_capacity(samples))
        .collect();
    for sample in buf.chunks_mut(len) {
        for (j, piece) in sample.chunks_mut(STRIP).enumerate() {
            strips[j].push(piece);
        }
    }
    strips
}

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
    let len = shape.chw();
    let a = match affine {
        Some(a) if len * 8 > PARAMS_IN_L2 => a,
        _ => {
            forward_groups(
                len,
                AffineLayout::PerElement,
                x,
                affine,
                eps,
                y,
                mean,
                rstd,
                par,
            );
            return Ok(());
        }
    };
    let rayon = par == Parallelism::Rayon;
    let stats: Vec<(&[f32], (&mut f32, &mut f32))> = x
        .chunks(len)
        .zip(mean.iter_mut().zip(rstd.iter_mut()))
        .collect();
    run(par, stats, len, |(xs, (m, r))| {
        let mom = group_moments(xs, rayon && len > TILE);
        (*m, *r) = (mom.mean as f32, mom.rstd(eps));
    });
    let (mean, rstd) = (&*mean, &*rstd);
    let strips: Vec<(usize, Vec<&mut [f32]>)> =
        column_strips(y, len).into_iter().enumerate().collect();
    run(par, strips, shape.n * STRIP, |(j, ys)| {
        let s = j * STRIP;
        for (k, yk) in ys.into_iter().enumerate() {
            let w = s..s + yk.len();
            let xk = &x[k * len + s..k * len + s + yk.len()];
            simd::center_scale_affine(xk, yk, mean[k], rstd[k], &a.gamma[w.clone()], &a.beta[w]);
        }
    });
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
    grads: Option<AffineGrads<'_>>,
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

    let (len, n) = (shape.chw(), shape.n);
    let piece = |k: usize, s: usize, w: usize| (&x[k * len + s..][..w], &dy[k * len + s..][..w]);

    // Pass 1: per strip and sample, (Σ dy·γ, Σ dy·γ·(x - μ)); dγ, dβ in sample order.
    let strips = len.div_ceil(STRIP);
    let mut sums = vec![(0.0f64, 0.0f64); strips * n];
    type Acc<'a> = Option<(&'a mut [f32], &'a mut [f32])>;
    let accs: Vec<Acc<'_>> = match grads {
        Some(g) => (g.dgamma.chunks_mut(STRIP).zip(g.dbeta.chunks_mut(STRIP)))
            .map(Some)
            .collect(),
        None => (0..strips).map(|_| None).collect(),
    };
    let tasks: Vec<_> = sums.chunks_mut(n).zip(accs).enumerate().collect();
    run(par, tasks, n * STRIP, |(j, (out, mut acc))| {
        let s = j * STRIP;
        let w = STRIP.min(len - s);
        if let Some((dg, db)) = acc.as_mut() {
            dg.fill(0.0);
            db.fill(0.0);
        }
        for (k, o) in out.iter_mut().enumerate() {
            let (xk, dyk) = piece(k, s, w);
            let m = mean[k];
            *o = match gamma {
                None => sums_dy_dxm(dyk, xk, m),
                Some(g) => simd::sum_gdy_gdxm(dyk, xk, &g[s..s + w], m),
            };
            if let Some((dg, db)) = acc.as_mut() {
                simd::acc_dgamma_dbeta(dyk, xk, m, rstd[k], dg, db);
            }
        }
    });
    let coef: Vec<(f32, f32)> = (0..n)
        .map(|k| {
            let (s1, s2) = sums
                .chunks(n)
                .fold((0.0, 0.0), |(a, b), row| (a + row[k].0, b + row[k].1));
            dx_coefficients(rstd[k], s1, s2, len)
        })
        .collect();

    // Pass 2: dx = dy·γ·r + (x - μ)·b + c, strip by strip.
    let strips: Vec<(usize, Vec<&mut [f32]>)> =
        column_strips(dx, len).into_iter().enumerate().collect();
    run(par, strips, n * STRIP, |(j, dxs)| {
        let s = j * STRIP;
        for (k, dxk) in dxs.into_iter().enumerate() {
            let (xk, dyk) = piece(k, s, dxk.len());
            let ((m, r), (b, c)) = ((mean[k], rstd[k]), coef[k]);
            match gamma {
                None => simd::dy_xm_affine(dyk, xk, dxk, m, r, b, c),
                Some(g) => simd::gdy_xm_affine(dyk, &g[s..s + xk.len()], xk, dxk, m, r, b, c),
            }
        }
    });
    Ok(())
}
