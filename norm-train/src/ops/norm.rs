//! The normalisation layers as one tape op over the `norm-kernels` descriptor
//! [`Norm`](norm_kernels::Norm): what each norm normalises over, its affine shape, its running
//! statistics and how train and eval differ are the descriptor's facts, not this op's.
//!
//! [`Post`] fuses what follows the norm in the model — a ReLU, or a ReLU and a 2×2 max pool —
//! into the same op: that saves one or two tensors per block (each an output, a gradient and a
//! copy in and out of dfdx). Without a norm the op is then a plain ReLU (+ pool).
//!
//! A train-mode forward of a norm with running statistics updates them in place (PyTorch's
//! momentum and unbiased variance). The kernels' backward overwrites; this op accumulates into
//! dfdx's gradients.

use dfdx::shapes::HasShape;
use dfdx::tensor::{Cpu, Merge, PutTape, SplitTape, Tape, Tensor};
use norm_kernels::{
    Affine, AffineGrads, Backward, Forward, Grads, Mode, Nchw, Norm, Parallelism, RunningStats,
};

use rayon::prelude::*;

use super::{
    BufferPool, ELEMENTWISE_CHUNK, Shape1, Shape4, acc_grad,
    pool::{relu_max_pool2_backward, relu_max_pool2_forward},
    put_grad, read, take_grad, write,
};
use crate::TrainError;
use crate::error::tensor;

/// Running statistics of a norm layer (PyTorch's buffers).
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    /// `running_mean`, `[C]`, starts at 0.
    pub mean: Vec<f32>,
    /// `running_var` (unbiased), `[C]`, starts at 1.
    pub var: Vec<f32>,
    /// `num_batches_tracked`.
    pub num_batches_tracked: u64,
}

impl Running {
    /// Fresh statistics for `c` channels: mean 0, variance 1.
    pub fn new(c: usize) -> Self {
        Self {
            mean: vec![0.0; c],
            var: vec![1.0; c],
            num_batches_tracked: 0,
        }
    }
}

/// One norm layer of a model: its settings and, exactly when the settings track them, its
/// running statistics — so a norm whose eval mode needs running statistics always has them.
#[derive(Clone, Debug, PartialEq)]
pub struct NormLayer {
    norm: Norm,
    running: Option<Running>,
}

impl NormLayer {
    /// A layer of `norm` over `c` channels, with fresh running statistics if it tracks them.
    pub fn new(norm: Norm, c: usize) -> Self {
        Self {
            norm,
            running: norm.tracks_running().then(|| Running::new(c)),
        }
    }

    /// The settings.
    pub fn norm(&self) -> &Norm {
        &self.norm
    }

    /// Replaces the settings by `norm` of the same kind (a ramped BatchRenorm, say); the
    /// running statistics stay.
    pub fn set_norm(&mut self, norm: Norm) {
        debug_assert_eq!(norm.kind(), self.norm.kind());
        debug_assert_eq!(norm.tracks_running(), self.norm.tracks_running());
        self.norm = norm;
    }

    /// The running statistics, if the norm tracks them.
    pub fn running(&self) -> Option<&Running> {
        self.running.as_ref()
    }

    /// The running statistics, mutable.
    pub fn running_mut(&mut self) -> Option<&mut Running> {
        self.running.as_mut()
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

/// The tape op: `layer`'s norm (or none) in `mode`, then `post`. `affine` is `(gamma, beta)` of
/// the descriptor's affine length, present exactly when the norm is affine.
pub fn norm<T: Tape<f32, Cpu> + Merge<T>>(
    x: Tensor<Shape4, f32, Cpu, T>,
    affine: Option<AffineTensors<T>>,
    layer: Option<&mut NormLayer>,
    mode: Mode,
    post: Post,
    pools: (&BufferPool<f32>, &BufferPool<u8>),
) -> Result<Tensor<Shape4, f32, Cpu, T>, TrainError> {
    let (pool, index_pool) = pools;
    let relu = post != Post::Identity;
    if layer.is_none() && !relu {
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
    let par = Parallelism::Rayon;
    let mut ys = pool.take(shape.len());
    let spec = layer.as_ref().map(|l| l.norm);
    let saved = match layer {
        Some(layer) => {
            let mut saved = pool.take(layer.norm.saved_len(shape, mode));
            let affine = match (&gs, &bs) {
                (Some(g), Some(b)) => Some(Affine { gamma: g, beta: b }),
                _ => None,
            };
            let running = layer.running.as_mut().map(|r| RunningStats {
                mean: &mut r.mean,
                var: &mut r.var,
                num_batches_tracked: &mut r.num_batches_tracked,
            });
            let fwd = Forward {
                shape,
                x: &xs,
                affine,
                running,
                y: &mut ys,
                saved: &mut saved,
            };
            layer.norm.forward(mode, fwd, par)?;
            Some(saved)
        }
        None => {
            // The output starts as the input: take its buffer instead of copying.
            std::mem::swap(&mut ys, &mut xs);
            None
        }
    };
    let (out, arg, ys) = if post == Post::ReluMaxPool2 {
        // The ReLU inside the pool's pass; its mask lives on in `arg`.
        let out_len = n * c * (h / 2) * (w / 2);
        let (mut ps, mut arg) = (pool.take(out_len), index_pool.take(out_len));
        relu_max_pool2_forward(n * c, h, w, &ys, &mut ps, &mut arg);
        let out = write(&dev, (n, c, h / 2, w / 2), &ps).map_err(tensor)?;
        (out, Some(arg), None)
    } else {
        if relu {
            ys.par_chunks_mut(ELEMENTWISE_CHUNK)
                .for_each(|c| c.iter_mut().for_each(|v| *v = super::relu(*v)));
        }
        let out = write(&dev, *x.shape(), &ys).map_err(tensor)?;
        (out, None, relu.then_some(ys))
    };
    if T::OWNS_TAPE {
        let (x_g, out_g) = (x.ghost(), out.ghost());
        let ab_g = affine_t.as_ref().map(|(g, b)| (g.ghost(), b.ghost()));
        let pool = pool.clone();
        tape.add_backward_op(move |grads| {
            let dy_out = take_grad!(grads, out_g);
            // Back through the pool and its ReLU (to a full-size gradient), or the ReLU alone:
            // dy · [y > 0].
            let unpooled = arg.as_ref().map(|arg| {
                let mut d = pool.take(shape.len());
                relu_max_pool2_backward(n * c, h, w, arg, &dy_out, &mut d);
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
            let (Some(spec), Some(saved)) = (spec, &saved) else {
                acc_grad!(grads, x_g, dy);
                put_grad!(grads, out_g, dy_out);
                return Ok(());
            };
            let mut dx = pool.take(shape.len());
            let al = gs.as_ref().map_or(0, |g| g.len());
            let (mut dg, mut db) = (pool.take(al), pool.take(al));
            let ag = gs.is_some().then(|| AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            });
            let bwd = Backward {
                shape,
                x: &xs,
                dy,
                saved,
                gamma: gs.as_deref(),
                grads: Grads {
                    dx: &mut dx,
                    affine: ag,
                },
            };
            // The forward validated the same shapes and buffers, so the kernels accept them;
            // were that broken, a buffer length is what would be wrong.
            spec.backward(mode, bwd, par)
                .map_err(|_| dfdx::tensor::CpuError::WrongNumElements)?;
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
