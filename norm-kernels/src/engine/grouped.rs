//! The grouped engine: normalisation groups that are contiguous slabs of `len` values — `C/G`
//! consecutive planes of one sample (GroupNorm) or a whole sample (LayerNorm).
//!
//! * **Forward** (two reads of the slab, the second from cache): per group, statistics in one
//!   read ([`Moments::tiled`]), then one pass `y = (x - pivot)·a + b`. Groups run in parallel; a
//!   group longer than a tile also spreads its tiles over the pool (nested rayon). While a group
//!   of at most a tile writes `y`, it prefetches the next group's `x`, so the next statistics
//!   pass does not wait on memory with no writes in flight.
//! * **Backward** with a per-channel scale (GroupNorm): per group, the per-plane sums
//!   `(Σdy, Σdy·(x - m), Σ(x - m))` in one read of `x` and `dy`, then one pass writing `dx`;
//!   `dγ`, `dβ` are folded from the per-(n, c) sums afterwards in sample order.
//! * **Column strips** ([`column_strips`]): LayerNorm's walk over a per-element affine.
//!
//! Tiles and strips are fixed by the data and merged in index order, never by the pool.

use rayon::prelude::*;

use super::moments::{Moments, fold_affine};
use super::plane::{Sums, add_sums, dx_coefs, slice_sums};
use super::schedule::items_per_task;
use crate::simd;
use crate::tuning::{STRIP, TILE, tuning};
use crate::{Affine, AffineGrads, Parallelism, Stats, StatsMut};

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

/// Each channel plane `k` (relative to the group) that overlaps the tile `[s, s + len)` of a
/// group, as `(k, lo, hi)` with `[lo, hi)` the overlap relative to the tile.
#[inline(always)]
fn planes(s: usize, len: usize, hw: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let mut lo = 0;
    std::iter::from_fn(move || {
        (lo < len).then(|| {
            let k = (s + lo) / hw;
            let hi = ((k + 1) * hw - s).min(len);
            let piece = (k, lo, hi);
            lo = hi;
            piece
        })
    })
}

/// The moments of a group, as saved: `(pivot mean, rstd)` in f32 plus the exact moments.
#[inline]
pub(crate) fn group_stats(xg: &[f32], eps: f32, nested: bool) -> (Moments, f64) {
    let mom = Moments::tiled(xg, nested);
    let r = mom.rstd(eps);
    (mom, r)
}

/// The forward: `stats.mean.len()` contiguous groups of `len` elements each.
pub(crate) fn forward_groups(
    len: usize,
    layout: AffineLayout,
    (x, y): (&[f32], &mut [f32]),
    affine: Option<Affine<'_>>,
    eps: f32,
    stats: StatsMut<'_>,
    par: Parallelism,
) {
    let StatsMut { mean, rstd } = stats;
    debug_assert!(x.len() == y.len() && x.len() == mean.len() * len && mean.len() == rstd.len());
    let rayon = par == Parallelism::Rayon;
    let sink = tuning().sink(y.len());
    type Group<'a> = ((&'a mut [f32], &'a [f32]), (&'a mut f32, &'a mut f32));
    let group = |gi: usize, ((yg, xg), (m, r)): Group<'_>| {
        let inner = rayon && len > TILE;
        let (mom, rs) = group_stats(xg, eps, inner);
        let (p, ctr) = (mom.mean as f32, mom.center());
        (*m, *r) = (mom.mean as f32, rs as f32);
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
                    let (a, b) = fold_affine(p, mom.mean, rs, 1.0, 0.0);
                    let ahead = next.get(s..s + xu.len()).unwrap_or(&[]);
                    simd::center_scale_shift_ahead(xu, yu, (ctr, a, b), (ahead, sink));
                }
                (Some(a), AffineLayout::PerElement) => {
                    let (g, b) = (&a.gamma[s..s + xu.len()], &a.beta[s..s + xu.len()]);
                    let c = ((p as f64 - mom.mean) * rs) as f32;
                    simd::center_scale_affine(xu, yu, (ctr, rs as f32, c), (g, b), sink);
                }
                (Some(a), AffineLayout::PerChannel { groups, hw }) => {
                    let c0 = (gi % groups) * (len / hw);
                    let pieces = planes(s, xu.len(), hw).map(|(k, lo, hi)| {
                        let (g, beta) = (a.gamma[c0 + k] as f64, a.beta[c0 + k] as f64);
                        let (sa, sb) = fold_affine(p, mom.mean, rs, g, beta);
                        (lo, hi, sa, sb)
                    });
                    let ahead = next.get(s..s + xu.len()).unwrap_or(&[]);
                    simd::center_scale_shift_pieces(xu, yu, (ctr, pieces), (ahead, sink));
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

/// The backward of groups of `cpg` channel planes of `hw` values with one scale per channel
/// (GroupNorm): overwrites `dx` and, if given, `grads` (`[C]`). `gamma = None` means `γ = 1`.
pub(crate) fn backward_groups_per_channel(
    (groups, cpg, hw): (usize, usize, usize),
    (x, dy, dx): (&[f32], &[f32], &mut [f32]),
    stats: Stats<'_>,
    gamma: Option<&[f32]>,
    grads: Option<AffineGrads<'_>>,
    par: Parallelism,
) {
    let Stats { mean, rstd } = stats;
    let len = cpg * hw;
    let rayon = par == Parallelism::Rayon;
    let sink = tuning().sink(dx.len());
    // Per (n, c): (Σ dy, Σ dy·(x - m), Σ (x - m)), written by the group owning the channel.
    let mut sums = vec![(0.0f64, 0.0f64, 0.0f64); mean.len() * cpg];
    type Group<'a> = ((&'a mut [f32], (&'a [f32], &'a [f32])), &'a mut [Sums]);
    let group = |gi: usize, ((dxg, (xg, dyg)), sg): Group<'_>| {
        let inner = rayon && len > TILE;
        let (m, r) = (mean[gi], rstd[gi]);
        let c0 = (gi % groups) * cpg;
        // Pass 1: per-plane partial sums of each tile, merged in tile order.
        if inner {
            let tile_sums = |t: usize, (du, xu): (&[f32], &[f32])| {
                planes(t * TILE, xu.len(), hw)
                    .map(|(k, lo, hi)| (k, slice_sums(&du[lo..hi], &xu[lo..hi], m)))
                    .collect::<Vec<_>>()
            };
            let parts: Vec<Vec<(usize, Sums)>> = dyg
                .par_chunks(TILE)
                .zip(xg.par_chunks(TILE))
                .enumerate()
                .map(|(t, p)| tile_sums(t, p))
                .collect();
            for (k, s) in parts.into_iter().flatten() {
                sg[k] = add_sums(sg[k], s);
            }
        } else {
            // The same merges in the same order, without a vector per group.
            for (t, (du, xu)) in dyg.chunks(TILE).zip(xg.chunks(TILE)).enumerate() {
                for (k, lo, hi) in planes(t * TILE, xu.len(), hw) {
                    sg[k] = add_sums(sg[k], slice_sums(&du[lo..hi], &xu[lo..hi], m));
                }
            }
        }
        let gam = |k: usize| gamma.map_or(1.0, |g| g[c0 + k] as f64);
        let weighted = sg.iter().enumerate().fold((0.0, 0.0, 0.0), |acc, (k, s)| {
            add_sums(acc, (gam(k) * s.0, gam(k) * s.1, s.2))
        });
        let ((_, b, c), _) = dx_coefs(weighted, len as f64, r as f64, 1.0);
        // Pass 2: dx, on the slab just read (still in cache).
        let tile = |t: usize, (du, (xu, dyu)): (&mut [f32], (&[f32], &[f32]))| {
            for (k, lo, hi) in planes(t * TILE, xu.len(), hw) {
                let a = (gam(k) * r as f64) as f32;
                let (dyx, du) = ((&dyu[lo..hi], &xu[lo..hi]), &mut du[lo..hi]);
                simd::dy_xm_affine(dyx, du, (m, (a, b, c)), sink);
            }
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
        let c = groups * cpg;
        let n = mean.len() / groups;
        // The group's mean correction e = Σ(x - m)/len, as in `dx_coefs`.
        let e: Vec<f64> = sums
            .chunks(cpg)
            .map(|sg| sg.iter().map(|s| s.2).sum::<f64>() / len as f64)
            .collect();
        for ch in 0..c {
            let (mut dg, mut db) = (0.0f64, 0.0f64);
            for s in 0..n {
                let gi = s * groups + ch / cpg;
                let (s_dy, s_dxm, _) = sums[s * c + ch];
                dg += (s_dxm - e[gi] * s_dy) * rstd[gi] as f64;
                db += s_dy;
            }
            dgamma[ch] = dg as f32;
            dbeta[ch] = db as f32;
        }
    }
}

/// Splits `buf` (samples of `len` elements) into column strips `width` wide (a multiple of
/// [`STRIP`]): entry `j` holds strip `j` of every sample, in sample order.
pub(crate) fn column_strips(buf: &mut [f32], len: usize, width: usize) -> Vec<Vec<&mut [f32]>> {
    debug_assert!(width.is_multiple_of(STRIP));
    let samples = buf.len() / len;
    let mut strips: Vec<Vec<&mut [f32]>> = (0..len.div_ceil(width))
        .map(|_| Vec::with_capacity(samples))
        .collect();
    for sample in buf.chunks_mut(len) {
        for (j, piece) in sample.chunks_mut(width).enumerate() {
            strips[j].push(piece);
        }
    }
    strips
}
