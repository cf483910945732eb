//! Scalar f64 reference twins of every kernel: plain loops, no SIMD, no threads, written straight
//! from the formulas. They are the oracle the tests hold the fast kernels against; they take and
//! return `f64` so that their own rounding is negligible.

mod batch;
mod group;
mod instance;
mod layer;

pub use batch::*;
pub use group::*;
pub use instance::*;
pub use layer::*;

/// BatchRenorm's limits and eps, for its reference twins.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenormRef {
    /// Added to both variances.
    pub eps: f64,
    /// `r ∈ [1/r_max, r_max]`.
    pub r_max: f64,
    /// `d ∈ [-d_max, d_max]`.
    pub d_max: f64,
}

/// Reference BatchRenorm train forward (Ioffe, 2017): `(y, batch statistics, r, d)` for the
/// running `(mean, var)` before the update; `y = γ·(x̂_B·r + d) + β`.
pub fn batch_renorm_forward_train(
    s: crate::Nchw,
    x: &[f64],
    affine: Option<(&[f64], &[f64])>,
    running: (&[f64], &[f64]),
    lim: RenormRef,
) -> (Vec<f64>, ChannelStats, Vec<f64>, Vec<f64>) {
    let (_, st) = batch_norm_forward_train(s, x, None, None, lim.eps);
    let mut y = vec![0.0; s.len()];
    let (mut rs, mut ds) = (vec![0.0; s.c], vec![0.0; s.c]);
    for c in 0..s.c {
        let sigma = (running.1[c] + lim.eps).sqrt();
        let r = (1.0 / st.rstd[c] / sigma).clamp(1.0 / lim.r_max, lim.r_max);
        let d = ((st.mean[c] - running.0[c]) / sigma).clamp(-lim.d_max, lim.d_max);
        let (g, b) = affine.map_or((1.0, 0.0), |(g, b)| (g[c], b[c]));
        for n in 0..s.n {
            for i in 0..s.hw() {
                let k = n * s.chw() + c * s.hw() + i;
                y[k] = g * ((x[k] - st.mean[c]) * st.rstd[c] * r + d) + b;
            }
        }
        (rs[c], ds[c]) = (r, d);
    }
    (y, st, rs, ds)
}

/// Reference BatchRenorm train backward with `r`, `d` held constant: `dx` is BatchNorm's with the
/// scale `γ·r`, `dγ = Σ dy·(x̂·r + d)`, `dβ = Σ dy`.
pub fn batch_renorm_backward_train(
    s: crate::Nchw,
    x: &[f64],
    dy: &[f64],
    gamma: Option<&[f64]>,
    (r, d): (&[f64], &[f64]),
    eps: f64,
) -> ChannelGrads {
    let g: Vec<f64> = (0..s.c)
        .map(|c| gamma.map_or(1.0, |g| g[c]) * r[c])
        .collect();
    let mut out = batch_norm_backward_train(s, x, dy, Some(&g), eps);
    for c in 0..s.c {
        out.dgamma[c] = r[c] * out.dgamma[c] + d[c] * out.dbeta[c];
    }
    out
}
