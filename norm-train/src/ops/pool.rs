//! 2×2 max pooling with stride 2 (PyTorch's `MaxPool2d(2)`), NCHW.
//!
//! Forward keeps, per output element, which of the four inputs won (the first maximum in
//! row-major order, as PyTorch); backward routes the output gradient to it. Odd trailing rows or
//! columns are dropped (floor mode).

#[cfg(test)]
use dfdx::shapes::HasShape;
#[cfg(test)]
use dfdx::tensor::{Cpu, PutTape, SplitTape, Tape, Tensor};
use rayon::prelude::*;

#[cfg(test)]
use super::{BufferPool, Shape4, put_grad, read, take_grad, write};
#[cfg(test)]
use crate::TrainError;

/// Forward on one batch: `x` is `[planes, h, w]`, `y` `[planes, h/2, w/2]`, `arg` the winner
/// (0..4 as `dy·2 + dx`) per output.
pub fn max_pool2_forward(
    planes: usize,
    h: usize,
    w: usize,
    x: &[f32],
    y: &mut [f32],
    arg: &mut [u8],
) {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(x.len(), planes * h * w);
    assert_eq!(y.len(), planes * oh * ow);
    assert_eq!(arg.len(), y.len());
    if y.is_empty() {
        return;
    }
    y.par_chunks_mut(oh * ow)
        .zip(arg.par_chunks_mut(oh * ow))
        .zip(x.par_chunks(h * w))
        .for_each(|((y, arg), x)| {
            for oy in 0..oh {
                let r0 = &x[2 * oy * w..][..w];
                let r1 = &x[(2 * oy + 1) * w..][..w];
                for ox in 0..ow {
                    let c = [r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]];
                    let mut best = 0;
                    for j in 1..4 {
                        // `>` keeps the first maximum; a NaN wins and propagates like PyTorch.
                        if c[j] > c[best] || c[j].is_nan() && !c[best].is_nan() {
                            best = j;
                        }
                    }
                    y[oy * ow + ox] = c[best];
                    arg[oy * ow + ox] = best as u8;
                }
            }
        });
}

/// Backward: `dx[winner] += dy` (accumulates into `dx`).
pub fn max_pool2_backward(
    planes: usize,
    h: usize,
    w: usize,
    arg: &[u8],
    dy: &[f32],
    dx: &mut [f32],
) {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(dx.len(), planes * h * w);
    assert_eq!(dy.len(), planes * oh * ow);
    assert_eq!(arg.len(), dy.len());
    if dy.is_empty() {
        return;
    }
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(oh * ow))
        .zip(arg.par_chunks(oh * ow))
        .for_each(|((dx, dy), arg)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let a = arg[oy * ow + ox] as usize;
                    dx[(2 * oy + a / 2) * w + 2 * ox + a % 2] += dy[oy * ow + ox];
                }
            }
        });
}

#[cfg(test)]
/// The tape op: `[N, C, H, W] → [N, C, H/2, W/2]`.
pub fn max_pool2<T: Tape<f32, Cpu>>(
    x: Tensor<Shape4, f32, Cpu, T>,
    pool: &BufferPool<f32>,
    index_pool: &BufferPool<u8>,
) -> Result<Tensor<Shape4, f32, Cpu, T>, TrainError> {
    let (n, c, h, w) = *x.shape();
    let dev = x.device().clone();
    let (x, mut tape) = x.split_tape();
    let xs = read(&x, pool);
    let out_shape = (n, c, h / 2, w / 2);
    let out_len = n * c * (h / 2) * (w / 2);
    let mut ys = pool.take(out_len);
    let mut arg = index_pool.take(out_len);
    max_pool2_forward(n * c, h, w, &xs, &mut ys, &mut arg);
    drop(xs);
    let out = write(&dev, out_shape, &ys).map_err(crate::error::tensor)?;
    drop(ys);
    if T::OWNS_TAPE {
        let (x_g, out_g) = (x.ghost(), out.ghost());
        tape.add_backward_op(move |grads| {
            let dy = take_grad!(grads, out_g);
            let gx: &mut Vec<f32> = &mut *grads.get_or_alloc_mut(&x_g)?;
            max_pool2_backward(n * c, h, w, &arg, &dy, gx);
            put_grad!(grads, out_g, dy);
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}
