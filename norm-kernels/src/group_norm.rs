//! GroupNorm — Wu & He, "Group Normalization", ECCV 2018 (arXiv:1803.08494).
//!
//! The `C` channels of each sample are split into `G` groups of `C/G` consecutive channels; each
//! `(n, g)` is normalised over its `(C/G)·H·W` values, then a per-channel affine is applied:
//!
//! ```text
//! μ[n,g]  = mean of x[n, c, h, w] over c ∈ g, h, w            (M = (C/G)·H·W values)
//! σ²[n,g] = mean of (x - μ[n,g])² over the same values        (biased, as PyTorch)
//! y       = (x - μ[n,g]) / sqrt(σ²[n,g] + eps) · γ[c] + β[c]
//! ```
//!
//! Backward, with `r = rstd = 1/sqrt(σ² + eps)`, `x̂ = (x - μ)·r` and `g = dy·γ[c]`:
//!
//! ```text
//! dx = r·(g - mean(g) - x̂·mean(g·x̂))                        (means over the group)
//!    = dy·(γ[c]·r) + (x - μ)·b + c,   b = -r³·Σg(x-μ)/M,  c = -r·Σg/M
//! dγ[c] = Σ_{n,h,w} dy·x̂,   dβ[c] = Σ_{n,h,w} dy
//! ```
//!
//! In NCHW a group of a sample is one contiguous slab of `M` values, so this module holds the
//! core shared with LayerNorm ([`crate::layer_norm`]), which is the same computation with one
//! group per sample and a per-element affine:
//!
//! * **Forward** (two reads of the slab, the second from cache): per group, statistics in one
//!   read ([`Moments`] per tile of 16 Ki elements, merged in tile order), then one pass
//!   `y = (x - μ)·(γ·r) + β`. Groups run in parallel; a group longer than a tile also spreads
//!   its tiles over the pool (nested rayon). A tile is 64 KiB, so the second read of a group
//!   that fits in L2 comes from L2, and a larger one (a 3.6 MB LayerNorm sample) from L3.
//!   LayerNorm uses this forward unless its per-element γ, β are larger than L2.
//!   While a group of at most a tile writes `y`, it prefetches the next group's `x`, so the
//!   next statistics pass does not wait on memory with no writes in flight (GroupNorm's small
//!   groups: 2 planes of 32×32 are 8 KiB, and the two phases would otherwise alternate).
//! * **Backward** (GroupNorm): per group, the per-channel reductions `(Σdy, Σdy·(x-μ))` in one
//!   read of `x` and `dy`, then one pass writing `dx`; `dγ`, `dβ` are folded from the per-(n, c)
//!   reductions afterwards in sample order.
//!
//! All arithmetic is fixed by the data (tiles of 16 Ki elements, blocks of
//! [`crate::simd::BLOCK`], merges in index order), never by the pool, so the output is
//! bit-identical for any number of threads.

use rayon::prelude::*;

use crate::batch_norm::items_per_task;
use crate::simd::{self, BLOCK};
use crate::stats::Moments;
use crate::{
    Affine, AffineGrads, Nchw, NormError, Parallelism, check_affine, check_eps, check_len,
};

/// Elements per work unit of a group (64 KiB of f32): the unit of nested parallelism and of
/// the statistics merge order.
pub(crate) const TILE: usize = 4 * BLOCK;

/// Where the affine parameters sit relative to the elements of a group.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AffineLayout {
    /// One `(γ, β)` per channel (`[C]`): groups of `len / hw` channel planes, `groups` per sample.
    PerChannel {
        /// Groups per sample.
        groups: usize,
        /// Elements per channel plane.
        hw: usize,
    },
    /// One `(γ, β)` per element of the group (LayerNorm: `[C, H, W]`, the same for every sample).
    PerElement,
}

/// Moments of one group: [`Moments::of_slice`] per [`TILE`], merged in tile order.
pub(crate) fn group_moments(xg: &[f32], inner: bool) -> Moments {
    if inner {
        let tiles: Vec<Moments> = xg.par_chunks(TILE).map(Moments::of_slice).collect();
        tiles.into_iter().fold(Moments::default(), Moments::merge)
    } else {
        // The same merges in the same order, without a vector per group.
        xg.chunks(TILE)
            .map(Moments::of_slice)
            .fold(Moments::default(), Moments::merge)
    }
}

/// Calls `f(k, lo, hi)` for each channel plane `k` (relative to the group) that overlaps the
/// tile `[s, s + len)` of a group, with `[lo, hi)` the overlap relative to the tile.
#[inline(always)]
fn for_each_plane(s: usize, len: usize, hw: usize, mut f: impl FnMut(usize, usize, usize)) {
    let mut lo = 0;
    while lo < len {
        let k = (s + lo) / hw;
        let hi = ((k + 1) * hw - s).min(len);
        f(k, lo, hi);
        lo = hi;
    }
}

/// The shared forward: `mean.len()` contiguous groups of `len` elements each.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_groups(
    len: usize,
    layout: AffineLayout,
    x: &[f32],
    affine: Option<Affine<'_>>,
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    par: Parallelism,
) {
    debug_assert!(x.len() == y.len() && x.len() == mean.len() * len && mean.len() == rstd.len());
    let rayon = par == Parallelism::Rayon;
    type Group<'a> = ((&'a mut [f32], &'a [f32]), (&'a mut f32, &'a mut f32));
    let group = |gi: usize, ((yg, xg), (m, r)): Group<'_>| {
        let inner = rayon && len > TILE;
        let mom = group_moments(xg, inner);
        let (mu, rs) = (mom.mean as f32, mom.rstd(eps));
        (*m, *r) = (mu, rs);
        // A group that fits in a tile is read from L3 or memory by its statistics pass while
        // the core waits; prefetching the next group during this group's writes overlaps the two.
        let next = if len <= TILE {
            x.get((gi + 1) * len..(gi + 2) * len).unwrap_or(&[])
        } else {
            &[]
        };
        let tile = |t: usize, (yu, xu): (&mut [f32], &[f32])| {
            let s = t * TILE;
            match (affine, layout) {
                (None, _) => {
                    let ahead = next.get(s..s + xu.len()).unwrap_or(&[]);
                    simd::center_scale_shift_ahead(xu, yu, mu, rs, 0.0, ahead);
                }
                (Some(a), AffineLayout::PerElement) => {
                    let (g, b) = (&a.gamma[s..s + xu.len()], &a.beta[s..s + xu.len()]);
                    simd::center_scale_affine(xu, yu, mu, rs, g, b);
                }
                (Some(a), AffineLayout::PerChannel { groups, hw }) => {
                    let c0 = (gi % groups) * (len / hw);
                    for_each_plane(s, xu.len(), hw, |k, lo, hi| {
                        let (g, b) = (a.gamma[c0 + k], a.beta[c0 + k]);
                        let (xp, yp) = (&xu[lo..hi], &mut yu[lo..hi]);
                        let ahead = next.get(s + lo..s + hi).unwrap_or(&[]);
                        simd::center_scale_shift_ahead(xp, yp, mu, g * rs, b, ahead);
                    });
                }
            }
        };
        if inner {
            yg.par_chunks_mut(TILE)
                .zip(xg.par_chunks(TILE))
                .enumerate()
                .for_each(|(t, p)| tile(t, p));
        } else {
            yg.chunks_mut(TILE)
                .zip(xg.chunks(TILE))
                .enumerate()
                .for_each(|(t, p)| tile(t, p));
        }
    };
    if rayon {
        y.par_chunks_mut(len)
            .zip(x.par_chunks(len))
            .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
            .enumerate()
            .with_max_len(items_per_task(len))
            .for_each(|(gi, p)| group(gi, p));
    } else {
        y.chunks_mut(len)
            .zip(x.chunks(len))
            .zip(mean.iter_mut().zip(rstd.iter_mut()))
            .enumerate()
            .for_each(|(gi, p)| group(gi, p));
    }
}

/// `(Σ dy, Σ dy·(x - m))` of a slice of any length, block by block in f64.
#[inline]
pub(crate) fn sums_dy_dxm(dy: &[f32], x: &[f32], m: f32) -> (f64, f64) {
    dy.chunks(BLOCK)
        .zip(x.chunks(BLOCK))
        .fold((0.0, 0.0), |(a, b), (d, v)| {
            let (s1, s2) = simd::sum_dy_dxm(d, v, m);
            (a + s1, b + s2)
        })
}

/// The backward coefficients `(b, c)` of `dx = dy·γ·r + (x - μ)·b + c` from the group sums
/// `s1 = Σ dy·γ`, `s2 = Σ dy·γ·(x - μ)` over `count` elements.
#[inline]
pub(crate) fn dx_coefficients(r: f32, s1: f64, s2: f64, count: usize) -> (f32, f32) {
    let (r, m) = (r as f64, count as f64);
    ((-r * r * r * s2 / m) as f32, (-r * s1 / m) as f32)
}

/// Validates the arguments shared by both GroupNorm entry points; returns `cpg = C / G`.
fn check_groups(op: &'static str, shape: Nchw, groups: usize) -> Result<usize, NormError> {
    shape.check_nonzero(op)?;
    if groups == 0 || !shape.c.is_multiple_of(groups) {
        return Err(NormError::Groups {
            op,
            groups,
            channels: shape.c,
        });
    }
    Ok(shape.c / groups)
}

/// GroupNorm forward: normalises each `(n, g)` over its `(C/G)·H·W` values and applies the
/// per-channel affine, writing `y` (`[N, C, H, W]`) and the saved statistics `mean`, `rstd`
/// (`[N·G]`, index `n·G + g`) that [`group_norm_backward`] consumes.
///
/// `affine`: `gamma`, `beta` of `[C]`, or `None` for `affine=False`.
///
/// # Errors
/// [`NormError::ZeroDim`], [`NormError::Groups`] (`G = 0` or `G ∤ C`), [`NormError::Eps`],
/// [`NormError::BufferLen`] naming `x`, `y`, `mean`, `rstd`, `gamma` or `beta`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_forward(
    shape: Nchw,
    groups: usize,
    x: &[f32],
    affine: Option<Affine<'_>>,
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "group_norm_forward";
    let cpg = check_groups(OP, shape, groups)?;
    check_eps(OP, eps)?;
    check_len(OP, "x", shape.len(), x.len())?;
    check_len(OP, "y", shape.len(), y.len())?;
    check_len(OP, "mean", shape.n * groups, mean.len())?;
    check_len(OP, "rstd", shape.n * groups, rstd.len())?;
    check_affine(OP, shape.c, affine.as_ref(), None)?;
    let layout = AffineLayout::PerChannel {
        groups,
        hw: shape.hw(),
    };
    forward_groups(cpg * shape.hw(), layout, x, affine, eps, y, mean, rstd, par);
    Ok(())
}

/// GroupNorm backward: from `x`, the upstream gradient `dy`, and the `mean`, `rstd` saved by
/// [`group_norm_forward`], overwrites `dx` and, if `grads` is given, `dgamma`, `dbeta` (`[C]`).
///
/// `gamma: None` means `γ = 1` (a GroupNorm without affine, or one at its identity). `dγ = Σ dy·x̂`
/// and `dβ = Σ dy` do not depend on `γ`, so `grads` may still be asked for: they are the
/// gradients an affine would receive.
///
/// # Errors
/// [`NormError::ZeroDim`], [`NormError::Groups`], [`NormError::BufferLen`] naming `x`, `dy`,
/// `dx`, `mean`, `rstd`, `gamma`, `dgamma` or `dbeta`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(
    shape: Nchw,
    groups: usize,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: Option<&[f32]>,
    dx: &mut [f32],
    grads: Option<AffineGrads<'_>>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "group_norm_backward";
    let cpg = check_groups(OP, shape, groups)?;
    check_len(OP, "x", shape.len(), x.len())?;
    check_len(OP, "dy", shape.len(), dy.len())?;
    check_len(OP, "dx", shape.len(), dx.len())?;
    check_len(OP, "mean", shape.n * groups, mean.len())?;
    check_len(OP, "rstd", shape.n * groups, rstd.len())?;
    if let Some(g) = gamma {
        check_len(OP, "gamma", shape.c, g.len())?;
    }
    check_affine(OP, shape.c, None, grads.as_ref())?;

    let (hw, len) = (shape.hw(), cpg * shape.hw());
    let rayon = par == Parallelism::Rayon;
    // Per (n, c): (Σ dy, Σ dy·(x - μ)), written by the group owning the channel.
    let mut sums = vec![(0.0f64, 0.0f64); shape.n * shape.c];
    type Group<'a> = (
        (&'a mut [f32], (&'a [f32], &'a [f32])),
        &'a mut [(f64, f64)],
    );
    let group = |gi: usize, ((dxg, (xg, dyg)), sg): Group<'_>| {
        let inner = rayon && len > TILE;
        let (m, r) = (mean[gi], rstd[gi]);
        let c0 = (gi % groups) * cpg;
        // Pass 1: per-plane partial sums of each tile, merged in tile order.
        let tile_sums = |t: usize, (du, xu): (&[f32], &[f32])| {
            let mut out = Vec::with_capacity(2);
            for_each_plane(t * TILE, xu.len(), hw, |_, lo, hi| {
                out.push(sums_dy_dxm(&du[lo..hi], &xu[lo..hi], m));
            });
            out
        };
        let parts: Vec<Vec<(f64, f64)>> = if inner {
            dyg.par_chunks(TILE)
                .zip(xg.par_chunks(TILE))
                .enumerate()
                .map(|(t, p)| tile_sums(t, p))
                .collect()
        } else {
            dyg.chunks(TILE)
                .zip(xg.chunks(TILE))
                .enumerate()
                .map(|(t, p)| tile_sums(t, p))
                .collect()
        };
        for (t, p) in parts.iter().enumerate() {
            let k0 = t * TILE / hw;
            for (j, &(a, b)) in p.iter().enumerate() {
                sg[k0 + j].0 += a;
                sg[k0 + j].1 += b;
            }
        }
        let gam = |k: usize| gamma.map_or(1.0, |g| g[c0 + k] as f64);
        let s1: f64 = sg.iter().enumerate().map(|(k, s)| gam(k) * s.0).sum();
        let s2: f64 = sg.iter().enumerate().map(|(k, s)| gam(k) * s.1).sum();
        let (b, c) = dx_coefficients(r, s1, s2, len);
        // Pass 2: dx, on the slab just read (still in cache).
        let tile = |t: usize, (du, (xu, dyu)): (&mut [f32], (&[f32], &[f32]))| {
            for_each_plane(t * TILE, xu.len(), hw, |k, lo, hi| {
                let a = gamma.map_or(1.0, |g| g[c0 + k]) * r;
                simd::dy_xm_affine(&dyu[lo..hi], &xu[lo..hi], &mut du[lo..hi], m, a, b, c);
            });
        };
        if inner {
            dxg.par_chunks_mut(TILE)
                .zip(xg.par_chunks(TILE).zip(dyg.par_chunks(TILE)))
                .enumerate()
                .for_each(|(t, p)| tile(t, p));
        } else {
            dxg.chunks_mut(TILE)
                .zip(xg.chunks(TILE).zip(dyg.chunks(TILE)))
                .enumerate()
                .for_each(|(t, p)| tile(t, p));
        }
    };
    if rayon {
        dx.par_chunks_mut(len)
            .zip(x.par_chunks(len).zip(dy.par_chunks(len)))
            .zip(sums.par_chunks_mut(cpg))
            .enumerate()
            .with_max_len(items_per_task(len))
            .for_each(|(gi, p)| group(gi, p));
    } else {
        dx.chunks_mut(len)
            .zip(x.chunks(len).zip(dy.chunks(len)))
            .zip(sums.chunks_mut(cpg))
            .enumerate()
            .for_each(|(gi, p)| group(gi, p));
    }

    if let Some(AffineGrads { dgamma, dbeta }) = grads {
        for ch in 0..shape.c {
            let (mut dg, mut db) = (0.0f64, 0.0f64);
            for n in 0..shape.n {
                let (s_dy, s_dxm) = sums[n * shape.c + ch];
                dg += rstd[n * groups + ch / cpg] as f64 * s_dxm;
                db += s_dy;
            }
            dgamma[ch] = dg as f32;
            dbeta[ch] = db as f32;
        }
    }
    Ok(())
}
