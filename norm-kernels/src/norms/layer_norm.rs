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
//! are those of the grouped engine (`engine::grouped`): each sample in one read (tiles of
//! 16 Ki elements, spread over the pool even when there are only two samples).
//!
//! The per-element `γ`, `β` (and in the backward `dγ`, `dβ`) are as large as a whole sample, so
//! every pass that touches them may walk **column strips** of 2,048 elements across all samples:
//! a strip of `γ`, `β`, `dγ` or `dβ` (8 KiB each) is read or written once per call and stays in L1
//! while the strip of every sample goes by. Walking sample by sample instead would stream the
//! parameters once per sample, doubling the traffic of the seed's shape (3.6 MB per sample).
//!
//! * **Forward**: one of two walks, chosen from the detected caches (`ForwardWalk`), with
//!   bit-identical results. *By sample*, the grouped engine itself: each sample's statistics,
//!   then its `y` while the sample is still in cache — right when `γ`, `β` stay in cache from
//!   one sample to the next but the whole batch does not (then `x` is read from memory once).
//!   *By strip*: the statistics of every sample, then `y = ((x - μ)·r)·γ + β` strip by strip —
//!   right when everything fits in the last-level cache anyway (each strip of `γ`, `β` is then
//!   read once), or when not even one sample and the parameters fit.
//! * **Backward**, two passes over bands of strips: a task takes a band (as many strips as keep
//!   its `γ`, `dγ`, `dβ` in L2, from the detected caches) and walks it sample by sample, so each
//!   sample is read in runs of a band rather than hops of one strip between samples (which
//!   starved the hardware prefetchers once the batch outgrew the L3). Pass 1 reads `x`, `dy`,
//!   `γ` and keeps, per strip and sample, `(Σ dy·γ, Σ dy·γ·(x-μ), Σ (x-μ))`. Each sample's sums
//!   are merged in strip order into its `dx` coefficients and the correction of its saved
//!   mean's rounding. Pass 2 reads `x`, `dy`, `γ` again, writes `dx` and accumulates `dγ`, `dβ`
//!   in sample order (they need the correction, known only after pass 1).
//!
//! Strips are fixed by the shape and every sum is merged in index order, so results are
//! bit-identical for any number of threads.

use crate::engine::grouped::{AffineLayout, column_strips, forward_groups, group_stats};
use crate::engine::plane::{dx_coefs, slice_sums};
use crate::engine::schedule::run;
use crate::error::{check_affine, check_affine_flag, check_backward, check_io, check_stats_len};
use crate::simd;
use crate::tuning::{STRIP, TILE, Tuning, tuning};
use crate::{Affine, Grads, Nchw, NormError, Output, Parallelism, Saved, Stats, StatsMut};

/// LayerNorm's settings (`nn.LayerNorm([C, H, W])`'s arguments but the shape).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNorm {
    /// Added to the variance (default 1e-5).
    pub eps: f32,
    /// Whether the calls carry a per-element `gamma`, `beta` of `[C, H, W]` (PyTorch's
    /// `elementwise_affine`, default true).
    pub affine: bool,
}

impl Default for LayerNorm {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            affine: true,
        }
    }
}

/// The order in which LayerNorm's forward visits memory (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ForwardWalk {
    /// Each sample's statistics, then its output (the grouped engine).
    BySample,
    /// Every sample's statistics, then the output strip by strip across samples.
    ByStrip,
}

impl ForwardWalk {
    /// The walk for `n` samples of `len` elements, with or without affine, on caches `t`.
    pub(crate) fn choose(n: usize, len: usize, affine: bool, t: &Tuning) -> ForwardWalk {
        let (sample, params) = (len * 4, 2 * len * 4);
        if !affine || params <= t.caches.l2 {
            ForwardWalk::BySample
        } else if 2 * n * sample + params <= t.l3_reuse {
            ForwardWalk::ByStrip
        } else if 2 * sample + params <= t.l3_reuse {
            ForwardWalk::BySample
        } else {
            ForwardWalk::ByStrip
        }
    }
}

/// LayerNorm forward over `[C, H, W]`: writes `y` (`[N, C, H, W]`) and the saved statistics
/// (`[N]`) that [`layer_norm_backward`] consumes.
///
/// # Errors
/// [`NormError::ZeroDim`], [`NormError::Eps`], [`NormError::Settings`], [`NormError::BufferLen`]
/// naming `x`, `y`, `mean`, `rstd`, `gamma` or `beta`.
pub fn layer_norm_forward(
    norm: &LayerNorm,
    shape: Nchw,
    x: &[f32],
    affine: Option<Affine<'_>>,
    out: Output<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "layer_norm_forward";
    check_io(OP, shape, x.len(), ("y", out.y.len()), norm.eps)?;
    check_stats_len(OP, shape.n, out.stats.mean.len(), out.stats.rstd.len())?;
    check_affine_flag(OP, norm.affine, affine.is_some())?;
    check_affine(OP, shape.chw(), affine.as_ref(), None)?;
    let walk = ForwardWalk::choose(shape.n, shape.chw(), affine.is_some(), tuning());
    forward_walk(walk, norm.eps, shape, (x, affine), out, par);
    Ok(())
}

/// The forward along `walk` (validated arguments).
fn forward_walk(
    walk: ForwardWalk,
    eps: f32,
    shape: Nchw,
    (x, affine): (&[f32], Option<Affine<'_>>),
    out: Output<'_>,
    par: Parallelism,
) {
    let len = shape.chw();
    let Output { y, stats } = out;
    let a = match (walk, affine) {
        (ForwardWalk::ByStrip, Some(a)) => a,
        _ => {
            forward_groups(
                len,
                AffineLayout::PerElement,
                (x, y),
                affine,
                eps,
                stats,
                par,
            );
            return;
        }
    };
    let StatsMut { mean, rstd } = stats;
    let rayon = par == Parallelism::Rayon;
    let items: Vec<(&[f32], (&mut f32, &mut f32))> = x
        .chunks(len)
        .zip(mean.iter_mut().zip(rstd.iter_mut()))
        .collect();
    // Per sample: (pivot, rstd, pivot correction), exactly as the grouped engine forms them.
    let coefs = run(par, items, len, |(xs, (m, r))| {
        let (mom, rs) = group_stats(xs, eps, rayon && len > TILE);
        (*m, *r) = (mom.mean as f32, rs as f32);
        let p = mom.mean as f32;
        (mom.center(), rs as f32, ((p as f64 - mom.mean) * rs) as f32)
    });
    let sink = tuning().sink(y.len());
    let strips: Vec<(usize, Vec<&mut [f32]>)> = column_strips(y, len, STRIP)
        .into_iter()
        .enumerate()
        .collect();
    run(par, strips, shape.n * STRIP, |(j, ys)| {
        let s = j * STRIP;
        for (k, yk) in ys.into_iter().enumerate() {
            let w = s..s + yk.len();
            let xk = &x[k * len + s..k * len + s + yk.len()];
            let gb = (&a.gamma[w.clone()], &a.beta[w]);
            simd::center_scale_affine(xk, yk, coefs[k], gb, sink);
        }
    });
}

/// LayerNorm backward: from the saved input and statistics of [`layer_norm_forward`] and the
/// upstream gradient `dy`, overwrites `grads.dx` and, if given, `grads.affine` (`[C, H, W]`,
/// summed over the batch).
///
/// Without affine `γ = 1`. `dγ = Σ_n dy·x̂` and `dβ = Σ_n dy` do not depend on `γ`, so the affine
/// gradients may still be asked for.
///
/// # Errors
/// [`NormError::ZeroDim`], [`NormError::Settings`], [`NormError::BufferLen`] naming `x`, `dy`,
/// `dx`, `mean`, `rstd`, `gamma`, `dgamma` or `dbeta`.
pub fn layer_norm_backward(
    norm: &LayerNorm,
    shape: Nchw,
    saved: Saved<'_>,
    dy: &[f32],
    gamma: Option<&[f32]>,
    grads: Grads<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "layer_norm_backward";
    let Saved {
        x,
        stats: Stats { mean, rstd },
    } = saved;
    check_backward(
        OP,
        shape,
        (x.len(), dy.len(), grads.dx.len()),
        (shape.n, mean.len(), rstd.len()),
        (norm.affine, shape.chw(), gamma),
        &grads,
    )?;
    let Grads { dx, affine } = grads;
    let (len, n) = (shape.chw(), shape.n);
    let piece = |k: usize, s: usize, w: usize| (&x[k * len + s..][..w], &dy[k * len + s..][..w]);

    // Pass 1: per strip and sample, (Σ dy·γ, Σ dy·γ·(x - μ), Σ (x - μ)); a task walks a band
    // of strips sample by sample (the band from the caches, the sums per strip as ever).
    let strips = len.div_ceil(STRIP);
    let band = tuning().strips_per_band(strips, 3 * 4);
    let mut sums = vec![(0.0f64, 0.0f64, 0.0f64); strips * n];
    let tasks: Vec<_> = sums.chunks_mut(band * n).enumerate().collect();
    run(par, tasks, band * n * STRIP, |(b, out)| {
        for k in 0..n {
            for (i, row) in out.chunks_mut(n).enumerate() {
                let s = (b * band + i) * STRIP;
                let w = STRIP.min(len - s);
                let (xk, dyk) = piece(k, s, w);
                row[k] = match gamma {
                    None => slice_sums(dyk, xk, mean[k]),
                    Some(g) => gamma_sums(dyk, xk, &g[s..s + w], mean[k]),
                };
            }
        }
    });
    // Per sample, merged in strip order: the dx coefficients and the mean's correction e·r.
    let coef: Vec<((f32, f32), f32)> = (0..n)
        .map(|k| {
            let s = sums.chunks(n).fold((0.0, 0.0, 0.0), |(a, b, c), row| {
                (a + row[k].0, b + row[k].1, c + row[k].2)
            });
            let r = rstd[k] as f64;
            let ((_, b, c), _) = dx_coefs(s, len as f64, r, 1.0);
            ((b, c), (-s.2 / len as f64 * r) as f32)
        })
        .collect();

    // Pass 2: dx = dy·γ·r + (x - μ)·b + c band by band, and in the same read dγ, dβ in sample
    // order (each band of them written once; elementwise, so the band changes no bit).
    let width = band * STRIP;
    type Acc<'a> = Option<(&'a mut [f32], &'a mut [f32])>;
    let accs: Vec<Acc<'_>> = match affine {
        Some(g) => (g.dgamma.chunks_mut(width).zip(g.dbeta.chunks_mut(width)))
            .map(Some)
            .collect(),
        None => (0..len.div_ceil(width)).map(|_| None).collect(),
    };
    let sink = tuning().sink(dx.len());
    let tasks: Vec<_> = column_strips(dx, len, width)
        .into_iter()
        .zip(accs)
        .enumerate()
        .collect();
    run(par, tasks, n * width, |(j, (dxs, mut acc))| {
        let s = j * width;
        if let Some((dg, db)) = acc.as_mut() {
            dg.fill(0.0);
            db.fill(0.0);
        }
        for (k, dxk) in dxs.into_iter().enumerate() {
            let (xk, dyk) = piece(k, s, dxk.len());
            let ((m, r), ((b, c), er)) = ((mean[k], rstd[k]), coef[k]);
            let mabc = (m, (r, b, c));
            match (gamma, acc.as_mut()) {
                (Some(g), Some((dg, db))) => {
                    let gdy = (dyk, &g[s..s + xk.len()]);
                    simd::gdy_xm_affine_acc(gdy, xk, dxk, mabc, ((r, er), dg, db), sink)
                }
                (Some(g), None) => {
                    simd::gdy_xm_affine((dyk, &g[s..s + xk.len()]), xk, dxk, mabc, sink)
                }
                (None, acc) => {
                    simd::dy_xm_affine((dyk, xk), dxk, mabc, sink);
                    if let Some((dg, db)) = acc {
                        simd::acc_dgamma_dbeta((dyk, xk), (m, r, er), dg, db);
                    }
                }
            }
        }
    });
    Ok(())
}

/// `(Σ γ·dy, Σ γ·dy·(x - m), Σ (x - m))` of one strip; summed again in f64 if the f32 sums
/// overflow.
fn gamma_sums(dy: &[f32], x: &[f32], g: &[f32], m: f32) -> (f64, f64, f64) {
    let s = simd::sum_gdy_gdxm_dev(dy, x, g, m);
    if s.0.is_finite() && s.1.is_finite() && s.2.is_finite() {
        return s;
    }
    (0..x.len()).fold((0.0, 0.0, 0.0), |(a, b, c), i| {
        let (gd, e) = (dy[i] as f64 * g[i] as f64, x[i] as f64 - m as f64);
        (a + gd, b + gd * e, c + e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuning::CacheSizes;

    #[test]
    fn both_walks_give_the_same_bits() {
        for &(n, c, h, w) in &[(2, 3, 5, 7), (3, 4, 33, 40), (2, 2, 100, 90)] {
            let shape = Nchw::new(n, c, h, w);
            let len = shape.chw();
            let x: Vec<f32> = (0..shape.len())
                .map(|i| ((i * 7919 % 1013) as f32).sin() * 3.0 + 1.0)
                .collect();
            let g: Vec<f32> = (0..len).map(|i| 1.0 + (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..len).map(|i| (i % 5) as f32 * 0.2 - 0.3).collect();
            let mut outs = Vec::new();
            for walk in [ForwardWalk::BySample, ForwardWalk::ByStrip] {
                for par in [Parallelism::None, Parallelism::Rayon] {
                    let (mut y, mut m, mut r) =
                        (vec![0.0; shape.len()], vec![0.0; n], vec![0.0; n]);
                    let out = Output {
                        y: &mut y,
                        stats: StatsMut {
                            mean: &mut m,
                            rstd: &mut r,
                        },
                    };
                    let affine = Some(Affine {
                        gamma: &g,
                        beta: &b,
                    });
                    forward_walk(walk, 1e-5, shape, (&x, affine), out, par);
                    outs.push((y, m, r));
                }
            }
            assert!(outs.windows(2).all(|p| p[0] == p[1]), "{shape}");
        }
    }

    #[test]
    fn walk_follows_the_caches() {
        let zen3 = Tuning::for_caches(CacheSizes::FALLBACK);
        let big = Tuning::for_caches(CacheSizes {
            l3: 480 << 20,
            ..CacheSizes::FALLBACK
        });
        let seed = 64 * 120 * 120;
        // The seed shape: all of it in a 480 MiB L3 (strips); on Zen3 only a sample and γ, β.
        assert_eq!(
            ForwardWalk::choose(8, seed, true, &big),
            ForwardWalk::ByStrip
        );
        assert_eq!(
            ForwardWalk::choose(8, seed, true, &zen3),
            ForwardWalk::BySample
        );
        assert_eq!(
            ForwardWalk::choose(8, seed, false, &zen3),
            ForwardWalk::BySample
        );
        // γ, β of 512 KiB stay in Zen3's L2: sample by sample, as measured faster there.
        assert_eq!(
            ForwardWalk::choose(2, 64 * 32 * 32, true, &zen3),
            ForwardWalk::BySample
        );
        assert_eq!(
            ForwardWalk::choose(2, 64 * 64 * 32, true, &zen3),
            ForwardWalk::ByStrip
        );
        assert_eq!(
            ForwardWalk::choose(2, 8 * 8 * 8, true, &zen3),
            ForwardWalk::BySample
        );
    }
}
