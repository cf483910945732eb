//! Reference InstanceNorm2d (Ulyanov et al., 2016): statistics per `(n, c)` plane over `(H, W)`,
//! `y = (x - mean_nc)/sqrt(var_nc + eps)·gamma_c + beta_c`. Running statistics per channel: the
//! mean over `n` of the per-instance means and unbiased variances. Plain f64 loops.

use super::batch::{ChannelGrads, ChannelStats, batch_norm_backward_eval, batch_norm_forward_eval};
use crate::Nchw;

fn idx(s: Nchw, n: usize, c: usize, i: usize) -> usize {
    n * s.chw() + c * s.hw() + i
}

/// Train-mode forward: `(y, stats)` with `stats` indexed `n·C + c`.
pub fn instance_norm_forward_train(
    s: Nchw,
    x: &[f64],
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, ChannelStats) {
    let m = s.hw() as f64;
    let mut y = vec![0.0; s.len()];
    let mut st = ChannelStats {
        mean: vec![],
        rstd: vec![],
        var_unbiased: vec![],
    };
    for n in 0..s.n {
        for c in 0..s.c {
            let mean = (0..s.hw()).map(|i| x[idx(s, n, c, i)]).sum::<f64>() / m;
            let ss = (0..s.hw())
                .map(|i| (x[idx(s, n, c, i)] - mean).powi(2))
                .sum::<f64>();
            let rstd = 1.0 / (ss / m + eps).sqrt();
            let g = gamma.map_or(1.0, |g| g[c]);
            let b = beta.map_or(0.0, |b| b[c]);
            for i in 0..s.hw() {
                let k = idx(s, n, c, i);
                y[k] = (x[k] - mean) * rstd * g + b;
            }
            st.mean.push(mean);
            st.rstd.push(rstd);
            st.var_unbiased.push(ss / (m - 1.0));
        }
    }
    (y, st)
}

/// The per-channel batch statistics the running averages take in: `(mean_c, var_c)` averaged
/// over `n` of the per-instance mean and unbiased variance.
pub fn instance_norm_batch_running(s: Nchw, st: &ChannelStats) -> (Vec<f64>, Vec<f64>) {
    let avg = |v: &[f64], c: usize| (0..s.n).map(|n| v[n * s.c + c]).sum::<f64>() / s.n as f64;
    (
        (0..s.c).map(|c| avg(&st.mean, c)).collect(),
        (0..s.c).map(|c| avg(&st.var_unbiased, c)).collect(),
    )
}

/// Eval-mode forward with tracked running statistics: the same per-channel map as BatchNorm's
/// eval mode (as in the kernels, which share `channel_map_forward`).
pub fn instance_norm_forward_eval(
    s: Nchw,
    x: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
    eps: f64,
) -> Vec<f64> {
    batch_norm_forward_eval(s, x, running_mean, running_var, gamma, beta, eps)
}

/// Train-mode backward of `Σ y·dy`, the statistics recomputed from `x` in f64.
pub fn instance_norm_backward_train(
    s: Nchw,
    x: &[f64],
    dy: &[f64],
    gamma: Option<&[f64]>,
    eps: f64,
) -> ChannelGrads {
    let (_, st) = instance_norm_forward_train(s, x, None, None, eps);
    let m = s.hw() as f64;
    let mut out = ChannelGrads {
        dx: vec![0.0; s.len()],
        dgamma: vec![0.0; s.c],
        dbeta: vec![0.0; s.c],
    };
    for n in 0..s.n {
        for c in 0..s.c {
            let (mean, rstd) = (st.mean[n * s.c + c], st.rstd[n * s.c + c]);
            let (mut sdy, mut sdyxh) = (0.0, 0.0);
            for i in 0..s.hw() {
                let k = idx(s, n, c, i);
                sdy += dy[k];
                sdyxh += dy[k] * (x[k] - mean) * rstd;
            }
            let g = gamma.map_or(1.0, |g| g[c]);
            for i in 0..s.hw() {
                let k = idx(s, n, c, i);
                let xh = (x[k] - mean) * rstd;
                out.dx[k] = g * rstd * (dy[k] - sdy / m - xh * sdyxh / m);
            }
            out.dgamma[c] += sdyxh;
            out.dbeta[c] += sdy;
        }
    }
    out
}

/// Eval-mode backward with tracked running statistics: the gradient of the per-channel map,
/// BatchNorm's eval-mode backward.
pub fn instance_norm_backward_eval(
    s: Nchw,
    x: &[f64],
    dy: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
    gamma: Option<&[f64]>,
    eps: f64,
) -> ChannelGrads {
    batch_norm_backward_eval(s, x, dy, running_mean, running_var, gamma, eps)
}
