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
//! In NCHW a group of a sample is one contiguous slab of `M` values, so the work is the grouped
//! engine's (`engine::grouped`), which LayerNorm shares: statistics in one read, then one pass
//! writing `y`; backward, per-plane sums in one read of `x` and `dy`, then one pass writing `dx`.
//! All arithmetic is fixed by the data (tiles of 16 Ki elements, blocks of 4096, merges in index
//! order), never by the pool, so the output is bit-identical for any number of threads.

use crate::engine::grouped::{AffineLayout, backward_groups_per_channel, forward_groups};
use crate::error::{check_affine, check_affine_flag, check_backward, check_io, check_stats_len};
use crate::{Affine, Grads, Nchw, NormError, Output, Parallelism, Saved};

/// GroupNorm's settings (PyTorch's constructor arguments but `num_channels`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNorm {
    /// Groups `G`; must divide the channels.
    pub groups: usize,
    /// Added to the variance (default 1e-5).
    pub eps: f32,
    /// Whether the calls carry `gamma`, `beta` of `[C]` (default true).
    pub affine: bool,
}

impl GroupNorm {
    /// `groups` groups with PyTorch's defaults otherwise (eps 1e-5, affine).
    pub const fn new(groups: usize) -> Self {
        Self {
            groups,
            eps: 1e-5,
            affine: true,
        }
    }

    /// `Ok(C / G)`, or [`NormError::Groups`] when `G = 0` or `G ∤ C`.
    pub fn channels_per_group(&self, op: &'static str, c: usize) -> Result<usize, NormError> {
        if self.groups == 0 || !c.is_multiple_of(self.groups) {
            return Err(NormError::Groups {
                op,
                groups: self.groups,
                channels: c,
            });
        }
        Ok(c / self.groups)
    }
}

/// GroupNorm forward: normalises each `(n, g)` over its `(C/G)·H·W` values and applies the
/// per-channel affine, writing `y` (`[N, C, H, W]`) and the saved statistics (`[N·G]`, index
/// `n·G + g`) that [`group_norm_backward`] consumes.
///
/// # Errors
/// [`NormError::ZeroDim`], [`NormError::Groups`] (`G = 0` or `G ∤ C`), [`NormError::Eps`],
/// [`NormError::Settings`], [`NormError::BufferLen`] naming `x`, `y`, `mean`, `rstd`, `gamma`
/// or `beta`.
pub fn group_norm_forward(
    norm: &GroupNorm,
    shape: Nchw,
    x: &[f32],
    affine: Option<Affine<'_>>,
    out: Output<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "group_norm_forward";
    let Output { y, stats } = out;
    shape.check_nonzero(OP)?;
    let cpg = norm.channels_per_group(OP, shape.c)?;
    check_io(OP, shape, x.len(), ("y", y.len()), norm.eps)?;
    check_stats_len(
        OP,
        shape.n * norm.groups,
        stats.mean.len(),
        stats.rstd.len(),
    )?;
    check_affine_flag(OP, norm.affine, affine.is_some())?;
    check_affine(OP, shape.c, affine.as_ref(), None)?;
    let layout = AffineLayout::PerChannel {
        groups: norm.groups,
        hw: shape.hw(),
    };
    forward_groups(
        cpg * shape.hw(),
        layout,
        (x, y),
        affine,
        norm.eps,
        stats,
        par,
    );
    Ok(())
}

/// GroupNorm backward: from the saved input and statistics of [`group_norm_forward`] and the
/// upstream gradient `dy`, overwrites `grads.dx` and, if given, `grads.affine` (`[C]`).
///
/// Without affine `γ = 1`. `dγ = Σ dy·x̂` and `dβ = Σ dy` do not depend on `γ`, so the affine
/// gradients may still be asked for: they are the gradients an affine would receive.
///
/// # Errors
/// [`NormError::ZeroDim`], [`NormError::Groups`], [`NormError::Settings`],
/// [`NormError::BufferLen`] naming `x`, `dy`, `dx`, `mean`, `rstd`, `gamma`, `dgamma` or `dbeta`.
pub fn group_norm_backward(
    norm: &GroupNorm,
    shape: Nchw,
    saved: Saved<'_>,
    dy: &[f32],
    gamma: Option<&[f32]>,
    grads: Grads<'_>,
    par: Parallelism,
) -> Result<(), NormError> {
    const OP: &str = "group_norm_backward";
    let Saved { x, stats } = saved;
    shape.check_nonzero(OP)?;
    let cpg = norm.channels_per_group(OP, shape.c)?;
    check_backward(
        OP,
        shape,
        (x.len(), dy.len(), grads.dx.len()),
        (shape.n * norm.groups, stats.mean.len(), stats.rstd.len()),
        (norm.affine, shape.c, gamma),
        &grads,
    )?;
    backward_groups_per_channel(
        (norm.groups, cpg, shape.hw()),
        (x, dy, grads.dx),
        stats,
        gamma,
        grads.affine,
        par,
    );
    Ok(())
}
