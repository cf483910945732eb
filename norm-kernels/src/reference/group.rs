//! Reference GroupNorm (Wu & He, 2018) in f64, straight from the formulas of
//! [`crate::group_norm`]: plain loops over `(n, g)`, no SIMD, no threads.

use crate::Nchw;

/// What [`group_norm_forward`] returns: `y` (`[N, C, H, W]`), `mean` and `rstd` (`[N·G]`).
#[derive(Clone, Debug)]
pub struct GroupNormOutput {
    /// Normalised (and affine-transformed) output.
    pub y: Vec<f64>,
    /// Mean of each `(n, g)`.
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)` of each `(n, g)`, with the biased variance.
    pub rstd: Vec<f64>,
}

/// Gradients from [`group_norm_backward`]: `dx` (`[N, C, H, W]`), `dgamma`, `dbeta` (`[C]`).
#[derive(Clone, Debug)]
pub struct GroupNormGrads {
    /// Gradient of the input.
    pub dx: Vec<f64>,
    /// `Σ dy·x̂` per channel.
    pub dgamma: Vec<f64>,
    /// `Σ dy` per channel.
    pub dbeta: Vec<f64>,
}

/// Reference GroupNorm forward. `affine` is `(gamma, beta)`, each `[C]`. Panics if `groups`
/// does not divide `C` or a slice has the wrong length.
pub fn group_norm_forward(
    shape: Nchw,
    groups: usize,
    x: &[f64],
    affine: Option<(&[f64], &[f64])>,
    eps: f64,
) -> GroupNormOutput {
    let Nchw { n, c, .. } = shape;
    let (hw, cpg) = (shape.hw(), c / groups);
    assert!(cpg * groups == c && x.len() == shape.len());
    let count = (cpg * hw) as f64;
    let mut y = vec![0.0; x.len()];
    let (mut mean, mut rstd) = (vec![0.0; n * groups], vec![0.0; n * groups]);
    for ni in 0..n {
        for g in 0..groups {
            let idx = |k: usize, i: usize| (ni * c + g * cpg + k) * hw + i;
            let mut s = 0.0;
            for k in 0..cpg {
                for i in 0..hw {
                    s += x[idx(k, i)];
                }
            }
            let mu = s / count;
            let mut v = 0.0;
            for k in 0..cpg {
                for i in 0..hw {
                    v += (x[idx(k, i)] - mu).powi(2);
                }
            }
            let r = 1.0 / (v / count + eps).sqrt();
            for k in 0..cpg {
                let (ga, be) =
                    affine.map_or((1.0, 0.0), |(ga, be)| (ga[g * cpg + k], be[g * cpg + k]));
                for i in 0..hw {
                    y[idx(k, i)] = (x[idx(k, i)] - mu) * r * ga + be;
                }
            }
            mean[ni * groups + g] = mu;
            rstd[ni * groups + g] = r;
        }
    }
    GroupNormOutput { y, mean, rstd }
}

/// Reference GroupNorm backward from the saved `mean`, `rstd` (`[N·G]`); `gamma: None` means
/// `γ = 1`. Returns `dx` and the affine gradients (which do not depend on `γ`).
pub fn group_norm_backward(
    shape: Nchw,
    groups: usize,
    x: &[f64],
    dy: &[f64],
    mean: &[f64],
    rstd: &[f64],
    gamma: Option<&[f64]>,
) -> GroupNormGrads {
    let Nchw { n, c, .. } = shape;
    let (hw, cpg) = (shape.hw(), c / groups);
    assert!(cpg * groups == c && x.len() == shape.len() && dy.len() == x.len());
    let count = (cpg * hw) as f64;
    let ga = |ch: usize| gamma.map_or(1.0, |g| g[ch]);
    let mut dx = vec![0.0; x.len()];
    let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
    for ni in 0..n {
        for g in 0..groups {
            let (mu, r) = (mean[ni * groups + g], rstd[ni * groups + g]);
            let idx = |k: usize, i: usize| (ni * c + g * cpg + k) * hw + i;
            // mean(dy·γ) and mean(dy·γ·x̂) over the group.
            let (mut mg, mut mgx) = (0.0, 0.0);
            for k in 0..cpg {
                for i in 0..hw {
                    let (gd, xh) = (dy[idx(k, i)] * ga(g * cpg + k), (x[idx(k, i)] - mu) * r);
                    mg += gd;
                    mgx += gd * xh;
                    dgamma[g * cpg + k] += dy[idx(k, i)] * xh;
                    dbeta[g * cpg + k] += dy[idx(k, i)];
                }
            }
            (mg, mgx) = (mg / count, mgx / count);
            for k in 0..cpg {
                for i in 0..hw {
                    let (gd, xh) = (dy[idx(k, i)] * ga(g * cpg + k), (x[idx(k, i)] - mu) * r);
                    dx[idx(k, i)] = r * (gd - mg - xh * mgx);
                }
            }
        }
    }
    GroupNormGrads { dx, dgamma, dbeta }
}
