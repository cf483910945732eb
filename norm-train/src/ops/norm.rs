//! The normalisation layers as one tape op over the `norm-kernels` kernels.
//!
//! | kind     | statistics over        | affine          | eval mode              |
//! |----------|------------------------|-----------------|------------------------|
//! | batch    | `(N, H, W)` per channel | `[C]`           | running mean/var       |
//! | layer    | `(C, H, W)` per sample  | `[C·H·W]`       | same as train          |
//! | instance | `(H, W)` per (n, c)     | `[C]`           | same as train (no running statistics, PyTorch's `track_running_stats=False`) |
//! | group    | `(C/G, H, W)` per (n, g)| `[C]`           | same as train          |
//! | none     | —                      | —               | identity               |
//!
//! [`Post`] fuses what follows the norm in the model — a ReLU, or a ReLU and a 2×2 max pool —
//! into the same op: that saves one or two tensors per block (each an output, a gradient and a
//! copy in and out of dfdx). With `none` the op is then a plain ReLU (+ pool).
//!
//! Train-mode BatchNorm updates the running statistics in place with PyTorch's momentum 0.1 and
//! unbiased variance. The kernels' backward overwrites; this op accumulates into dfdx's gradients.

use dfdx::shapes::HasShape;
use dfdx::tensor::{Cpu, Merge, PutTape, SplitTape, Tape, Tensor};
use norm_kernels::{Affine, AffineGrads, Momentum, Nchw, Parallelism, RunningStats};

use rayon::prelude::*;

use super::{
    BufferPool, ELEMENTWISE_CHUNK, Pooled, Shape1, Shape4, acc_grad,
    pool::{max_pool2_backward, max_pool2_forward},
    put_grad, read, take_grad, write,
};
use crate::{NormKind, TrainError};

/// PyTorch's BatchNorm2d default momentum.
pub const BN_MOMENTUM: f32 = 0.1;

/// Running statistics of a BatchNorm layer (PyTorch's buffers).
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    /// `running_mean`, `[C]`, starts at 0.
    pub mean: Vec<f32>,
    /// `running_var` (unbiased), `[C]`, starts at 1.
    pub var: Vec<f32>,
    /// `num_batches_tracked`.
    pub num_batches_tracked: u64,
    /// PyTorch's `momentum = None`: update as the cumulative average of the batches' statistics
    /// (precise BN, [`crate::Model::recalibrate_batch_norm`]) instead of with [`BN_MOMENTUM`].
    pub cumulative: bool,
}

impl Running {
    /// Fresh statistics for `c` channels: mean 0, variance 1.
    pub fn new(c: usize) -> Self {
        Self {
            mean: vec![0.0; c],
            var: vec![1.0; c],
            num_batches_tracked: 0,
            cumulative: false,
        }
    }
}

/// `(gamma, beta)` as flat tensors on tape `T`.
pub type AffineTensors<T> = (Tensor<Shape1, f32, Cpu, T>, Tensor<Shape1, f32, Cpu, T>);

/// What the op applies after the norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Post {
    /// Nothing: the norm alone.
    Identity,
    /// A ReLU.
    Relu,
    /// A ReLU, then a 2×2 max pool with stride 2 (as [`super::pool::max_pool2`]).
    ReluMaxPool2,
}

/// Which norm and its settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormSpec {
    /// The layer.
    pub kind: NormKind,
    /// GroupNorm's groups.
    pub groups: usize,
    /// `eps`.
    pub eps: f32,
}

impl NormSpec {
    /// Length of one affine parameter for channels `c` over `h × w` planes (0 for `none`).
    pub fn affine_len(&self, c: usize, h: usize, w: usize) -> usize {
        match self.kind {
            NormKind::Batch | NormKind::Instance | NormKind::Group => c,
            NormKind::Layer => c * h * w,
            NormKind::None => 0,
        }
    }

    /// Number of (mean, rstd) pairs the forward saves.
    fn stats_len(&self, s: Nchw) -> usize {
        match self.kind {
            NormKind::Batch => s.c,
            NormKind::Instance => s.n * s.c,
            NormKind::Layer => s.n,
            NormKind::Group => s.n * self.groups,
            NormKind::None => 0,
        }
    }
}

/// What backward needs besides the output gradient.
enum Saved {
    /// Batch statistics (mean, rstd) of a train-mode forward.
    Stats(Pooled<f32>, Pooled<f32>),
    /// Running statistics (mean, var) used by an eval-mode BatchNorm forward.
    Running(Pooled<f32>, Pooled<f32>),
}

/// The tape op. `affine` is `(gamma, beta)` of length [`NormSpec::affine_len`]; `training`
/// selects BatchNorm's mode (the other norms behave the same in both); `running` is BatchNorm's
/// statistics (required for `batch`, ignored otherwise); `post` appends a ReLU, or a ReLU and a
/// 2×2 max pool.
#[allow(clippy::too_many_arguments)]
pub fn norm<T: Tape<f32, Cpu> + Merge<T>>(
    x: Tensor<Shape4, f32, Cpu, T>,
    affine: Option<AffineTensors<T>>,
    spec: NormSpec,
    training: bool,
    running: Option<&mut Running>,
    post: Post,
    pool: &BufferPool<f32>,
    index_pool: &BufferPool<u8>,
) -> Result<Tensor<Shape4, f32, Cpu, T>, TrainError> {
    let relu = post != Post::Identity;
    if spec.kind == NormKind::None && !relu {
        return Ok(x);
    }
    let (n, c, h, w) = *x.shape();
    let shape = Nchw::new(n, c, h, w);
    let dev = x.device().clone();
    let (x, mut tape) = x.split_tape();
    let mut xs = read(&x, pool);
    let (affine_t, gs, bs) = match affine {
        Some((g, b)) => {
            let (g, tg) = g.split_tape();
            let (b, tb) = b.split_tape();
            tape = tape.merge(tg).merge(tb);
            let (gs, bs) = (read(&g, pool), read(&b, pool));
            (Some((g, b)), Some(gs), Some(bs))
        }
        None => (None, None, None),
    };
    let aff = match (&gs, &bs) {
        (Some(g), Some(b)) => Some(Affine { gamma: g, beta: b }),
        _ => None,
    };
    let par = Parallelism::Rayon;
    let mut ys = pool.take(shape.len());
    let sl = spec.stats_len(shape);
    let (mut mean, mut rstd) = (pool.take(sl), pool.take(sl));
    let saved = match spec.kind {
        NormKind::Batch => {
            let r = running.expect("norm: BatchNorm needs running statistics");
            if training {
                let rs = RunningStats {
                    mean: &mut r.mean,
                    var: &mut r.var,
                    num_batches_tracked: &mut r.num_batches_tracked,
                    momentum: if r.cumulative {
                        Momentum::CumulativeAverage
                    } else {
                        Momentum::Exponential(BN_MOMENTUM)
                    },
                };
                norm_kernels::batch_norm_forward_train(
                    shape,
                    &xs,
                    aff,
                    spec.eps,
                    Some(rs),
                    &mut ys,
                    &mut mean,
                    &mut rstd,
                    par,
                )?;
                Saved::Stats(mean, rstd)
            } else {
                norm_kernels::batch_norm_forward_eval(
                    shape, &xs, &r.mean, &r.var, aff, spec.eps, &mut ys, par,
                )?;
                let (mut rm, mut rv) = (pool.take(c), pool.take(c));
                rm.copy_from_slice(&r.mean);
                rv.copy_from_slice(&r.var);
                Saved::Running(rm, rv)
            }
        }
        NormKind::Instance => {
            norm_kernels::instance_norm_forward_train(
                shape, &xs, aff, spec.eps, None, &mut ys, &mut mean, &mut rstd, par,
            )?;
            Saved::Stats(mean, rstd)
        }
        NormKind::Layer => {
            norm_kernels::layer_norm_forward(
                shape, &xs, aff, spec.eps, &mut ys, &mut mean, &mut rstd, par,
            )?;
            Saved::Stats(mean, rstd)
        }
        NormKind::Group => {
            norm_kernels::group_norm_forward(
                shape,
                spec.groups,
                &xs,
                aff,
                spec.eps,
                &mut ys,
                &mut mean,
                &mut rstd,
                par,
            )?;
            Saved::Stats(mean, rstd)
        }
        NormKind::None => {
            // The output starts as the input: take its buffer instead of copying.
            std::mem::swap(&mut ys, &mut xs);
            Saved::Stats(mean, rstd)
        }
    };
    if relu {
        ys.par_chunks_mut(ELEMENTWISE_CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
    }
    let (out, arg) = if post == Post::ReluMaxPool2 {
        let out_len = n * c * (h / 2) * (w / 2);
        let (mut ps, mut arg) = (pool.take(out_len), index_pool.take(out_len));
        max_pool2_forward(n * c, h, w, &ys, &mut ps, &mut arg);
        (write(&dev, (n, c, h / 2, w / 2), &ps)?, Some(arg))
    } else {
        (write(&dev, *x.shape(), &ys)?, None)
    };
    let ys = relu.then_some(ys);
    if T::OWNS_TAPE {
        let (x_g, out_g) = (x.ghost(), out.ghost());
        let ab_g = affine_t.as_ref().map(|(g, b)| (g.ghost(), b.ghost()));
        let pool = pool.clone();
        tape.add_backward_op(move |grads| {
            let dy_out = take_grad!(grads, out_g);
            // Back through the pool (to a full-size gradient), then the ReLU: dy · [y > 0].
            let unpooled = arg.as_ref().map(|arg| {
                let mut d = pool.take(shape.len());
                d.par_chunks_mut(ELEMENTWISE_CHUNK)
                    .for_each(|d| d.fill(0.0));
                max_pool2_backward(n * c, h, w, arg, &dy_out, &mut d);
                d
            });
            let dy_full: &[f32] = unpooled.as_deref().unwrap_or(&dy_out);
            let masked = ys.as_ref().map(|y| {
                let mut d = pool.take(dy_full.len());
                d.par_chunks_mut(ELEMENTWISE_CHUNK)
                    .zip(dy_full.par_chunks(ELEMENTWISE_CHUNK))
                    .zip(y.par_chunks(ELEMENTWISE_CHUNK))
                    .for_each(|((d, g), y)| {
                        for ((d, &g), &y) in d.iter_mut().zip(g).zip(y) {
                            *d = if y > 0.0 { g } else { 0.0 };
                        }
                    });
                d
            });
            let dy: &[f32] = masked.as_deref().unwrap_or(dy_full);
            if spec.kind == NormKind::None {
                acc_grad!(grads, x_g, dy);
                put_grad!(grads, out_g, dy_out);
                return Ok(());
            }
            let mut dx = pool.take(shape.len());
            let al = gs.as_ref().map_or(0, |g| g.len());
            let (mut dg, mut db) = (pool.take(al), pool.take(al));
            let ag = gs.is_some().then(|| AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            });
            let gamma = gs.as_deref();
            let res = match (&saved, spec.kind) {
                (Saved::Stats(m, r), NormKind::Batch) => norm_kernels::batch_norm_backward_train(
                    shape, &xs, dy, m, r, gamma, &mut dx, ag, par,
                ),
                (Saved::Running(m, v), NormKind::Batch) => norm_kernels::batch_norm_backward_eval(
                    shape, &xs, dy, m, v, gamma, spec.eps, &mut dx, ag, par,
                ),
                (Saved::Stats(m, r), NormKind::Instance) => {
                    norm_kernels::instance_norm_backward_train(
                        shape, &xs, dy, m, r, gamma, &mut dx, ag, par,
                    )
                }
                (Saved::Stats(m, r), NormKind::Layer) => {
                    norm_kernels::layer_norm_backward(shape, &xs, dy, m, r, gamma, &mut dx, ag, par)
                }
                (Saved::Stats(m, r), NormKind::Group) => norm_kernels::group_norm_backward(
                    shape,
                    spec.groups,
                    &xs,
                    dy,
                    m,
                    r,
                    gamma,
                    &mut dx,
                    ag,
                    par,
                ),
                _ => unreachable!("saved state matches the kind"),
            };
            // The forward validated the same shapes and buffers, so backward cannot reject them.
            res.expect("norm backward: shapes validated by the forward");
            acc_grad!(grads, x_g, &dx);
            if let Some((g_g, b_g)) = &ab_g {
                acc_grad!(grads, *g_g, &dg);
                acc_grad!(grads, *b_g, &db);
            }
            put_grad!(grads, out_g, dy_out);
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}
