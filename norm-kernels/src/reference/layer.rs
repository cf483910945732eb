//! Reference LayerNorm over `[C, H, W]` (Ba et al., 2016) in f64, straight from the formulas of
//! [`crate::layer_norm`]: plain loops over samples, no SIMD, no threads.

use crate::Nchw;

/// What [`layer_norm_forward`] returns: `y` (`[N, C, H, W]`), `mean` and `rstd` (`[N]`).
#[derive(Clone, Debug)]
pub struct LayerNormOutput {
    /// Normalised (and affine-transformed) output.
    pub y: Vec<f64>,
    /// Mean of each sample.
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)` of each sample, with the biased variance.
    pub rstd: Vec<f64>,
}

/// Gradients from [`layer_norm_backward`]: `dx` (`[N, C, H, W]`), `dgamma`, `dbeta`
/// (`[C, H, W]`).
#[derive(Clone, Debug)]
pub struct LayerNormGrads {
    /// Gradient of the input.
    pub dx: Vec<f64>,
    /// `Σ_n dy·x̂` per element.
    pub dgamma: Vec<f64>,
    /// `Σ_n dy` per element.
    pub dbeta: Vec<f64>,
}

/// Reference LayerNorm forward. `affine` is `(gamma, beta)`, each `[C, H, W]`.
pub fn layer_norm_forward(
    shape: Nchw,
    x: &[f64],
    affine: Option<(&[f64], &[f64])>,
    eps: f64,
) -> LayerNormOutput {
    let m = shape.chw();
    assert_eq!(x.len(), shape.len());
    let mut y = vec![0.0; x.len()];
    let (mut mean, mut rstd) = (vec![0.0; shape.n], vec![0.0; shape.n]);
    for ni in 0..shape.n {
        let xs = &x[ni * m..(ni + 1) * m];
        let mu = xs.iter().sum::<f64>() / m as f64;
        let var = xs.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / m as f64;
        let r = 1.0 / (var + eps).sqrt();
        for i in 0..m {
            let (ga, be) = affine.map_or((1.0, 0.0), |(ga, be)| (ga[i], be[i]));
            y[ni * m + i] = (xs[i] - mu) * r * ga + be;
        }
        mean[ni] = mu;
        rstd[ni] = r;
    }
    LayerNormOutput { y, mean, rstd }
}

/// Reference LayerNorm backward from the saved `mean`, `rstd` (`[N]`); `gamma: None` means
/// `γ = 1`. Returns `dx` and the affine gradients (which do not depend on `γ`).
pub fn layer_norm_backward(
    shape: Nchw,
    x: &[f64],
    dy: &[f64],
    mean: &[f64],
    rstd: &[f64],
    gamma: Option<&[f64]>,
) -> LayerNormGrads {
    let m = shape.chw();
    assert!(x.len() == shape.len() && dy.len() == x.len());
    let ga = |i: usize| gamma.map_or(1.0, |g| g[i]);
    let mut dx = vec![0.0; x.len()];
    let (mut dgamma, mut dbeta) = (vec![0.0; m], vec![0.0; m]);
    for ni in 0..shape.n {
        let (mu, r) = (mean[ni], rstd[ni]);
        let (mut mg, mut mgx) = (0.0, 0.0);
        for i in 0..m {
            let j = ni * m + i;
            let xh = (x[j] - mu) * r;
            mg += dy[j] * ga(i);
            mgx += dy[j] * ga(i) * xh;
            dgamma[i] += dy[j] * xh;
            dbeta[i] += dy[j];
        }
        (mg, mgx) = (mg / m as f64, mgx / m as f64);
        for i in 0..m {
            let j = ni * m + i;
            let xh = (x[j] - mu) * r;
            dx[j] = r * (dy[j] * ga(i) - mg - xh * mgx);
        }
    }
    LayerNormGrads { dx, dgamma, dbeta }
}
