//! Reference BatchNorm2d (Ioffe & Szegedy, 2015): per-channel statistics over `(N, H, W)`,
//! `y = (x - mean_c)/sqrt(var_c + eps)·gamma_c + beta_c`, biased variance for normalising,
//! unbiased for the running variance. Plain f64 loops straight from the formulas.

use crate::Nchw;

/// Statistics saved by a reference train forward, one entry per normalisation group.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelStats {
    /// Mean of each group.
    pub mean: Vec<f64>,
    /// `1/sqrt(var + eps)` with the biased variance.
    pub rstd: Vec<f64>,
    /// Unbiased variance `Σ(x - mean)²/(M - 1)` (what running statistics record).
    pub var_unbiased: Vec<f64>,
}

/// Gradients returned by a reference backward.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelGrads {
    /// Gradient of the input.
    pub dx: Vec<f64>,
    /// Gradient of the per-channel scale (`[C]`).
    pub dgamma: Vec<f64>,
    /// Gradient of the per-channel shift (`[C]`).
    pub dbeta: Vec<f64>,
}

fn idx(s: Nchw, n: usize, c: usize, i: usize) -> usize {
    n * s.chw() + c * s.hw() + i
}

/// `running = (1 - f)·running + f·batch`, elementwise.
pub fn running_update(running: &[f64], batch: &[f64], factor: f64) -> Vec<f64> {
    running
        .iter()
        .zip(batch)
        .map(|(&r, &b)| (1.0 - factor) * r + factor * b)
        .collect()
}

/// Train-mode forward: `(y, stats)` with the batch statistics of every channel.
pub fn batch_norm_forward_train(
    s: Nchw,
    x: &[f64],
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, ChannelStats) {
    let m = (s.n * s.hw()) as f64;
    let mut y = vec![0.0; s.len()];
    let mut st = ChannelStats {
        mean: vec![],
        rstd: vec![],
        var_unbiased: vec![],
    };
    for c in 0..s.c {
        let mut sum = 0.0;
        for n in 0..s.n {
            for i in 0..s.hw() {
                sum += x[idx(s, n, c, i)];
            }
        }
        let mean = sum / m;
        let mut ss = 0.0;
        for n in 0..s.n {
            for i in 0..s.hw() {
                ss += (x[idx(s, n, c, i)] - mean).powi(2);
            }
        }
        let rstd = 1.0 / (ss / m + eps).sqrt();
        let g = gamma.map_or(1.0, |g| g[c]);
        let b = beta.map_or(0.0, |b| b[c]);
        for n in 0..s.n {
            for i in 0..s.hw() {
                let k = idx(s, n, c, i);
                y[k] = (x[k] - mean) * rstd * g + b;
            }
        }
        st.mean.push(mean);
        st.rstd.push(rstd);
        st.var_unbiased.push(ss / (m - 1.0));
    }
    (y, st)
}

/// Eval-mode forward: the per-channel map with the running statistics.
pub fn batch_norm_forward_eval(
    s: Nchw,
    x: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
    eps: f64,
) -> Vec<f64> {
    let mut y = vec![0.0; s.len()];
    for n in 0..s.n {
        for c in 0..s.c {
            let rstd = 1.0 / (running_var[c] + eps).sqrt();
            let g = gamma.map_or(1.0, |g| g[c]);
            let b = beta.map_or(0.0, |b| b[c]);
            for i in 0..s.hw() {
                let k = idx(s, n, c, i);
                y[k] = (x[k] - running_mean[c]) * rstd * g + b;
            }
        }
    }
    y
}

/// Train-mode backward of `Σ y·dy`, the statistics recomputed from `x` in f64.
pub fn batch_norm_backward_train(
    s: Nchw,
    x: &[f64],
    dy: &[f64],
    gamma: Option<&[f64]>,
    eps: f64,
) -> ChannelGrads {
    let (_, st) = batch_norm_forward_train(s, x, None, None, eps);
    let m = (s.n * s.hw()) as f64;
    let mut out = ChannelGrads {
        dx: vec![0.0; s.len()],
        dgamma: vec![],
        dbeta: vec![],
    };
    for c in 0..s.c {
        let (mean, rstd) = (st.mean[c], st.rstd[c]);
        let (mut sdy, mut sdyxh) = (0.0, 0.0);
        for n in 0..s.n {
            for i in 0..s.hw() {
                let k = idx(s, n, c, i);
                sdy += dy[k];
                sdyxh += dy[k] * (x[k] - mean) * rstd;
            }
        }
        let g = gamma.map_or(1.0, |g| g[c]);
        for n in 0..s.n {
            for i in 0..s.hw() {
                let k = idx(s, n, c, i);
                let xh = (x[k] - mean) * rstd;
                out.dx[k] = g * rstd * (dy[k] - sdy / m - xh * sdyxh / m);
            }
        }
        out.dgamma.push(sdyxh);
        out.dbeta.push(sdy);
    }
    out
}

/// Eval-mode backward: the gradient of the fixed per-channel map.
pub fn batch_norm_backward_eval(
    s: Nchw,
    x: &[f64],
    dy: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
    gamma: Option<&[f64]>,
    eps: f64,
) -> ChannelGrads {
    let mut out = ChannelGrads {
        dx: vec![0.0; s.len()],
        dgamma: vec![0.0; s.c],
        dbeta: vec![0.0; s.c],
    };
    for n in 0..s.n {
        for c in 0..s.c {
            let rstd = 1.0 / (running_var[c] + eps).sqrt();
            let g = gamma.map_or(1.0, |g| g[c]);
            for i in 0..s.hw() {
                let k = idx(s, n, c, i);
                out.dx[k] = dy[k] * g * rstd;
                out.dgamma[c] += dy[k] * (x[k] - running_mean[c]) * rstd;
                out.dbeta[c] += dy[k];
            }
        }
    }
    out
}
