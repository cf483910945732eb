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

use super::relu;

#[cfg(test)]
use super::{BufferPool, Shape4, put_grad, read, take_grad, write};
#[cfg(test)]
use crate::TrainError;

/// Forward on one batch: `x` is `[planes, h, w]`, `y` `[planes, h/2, w/2]`, `arg` the winner
/// (0..4 as `dy·2 + dx`) per output. (The models use [`relu_max_pool2_forward`]; this is its
/// unfused twin in the tests.)
#[cfg(test)]
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
#[cfg(test)]
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

/// A ReLU, then the 2×2 max pool, in one pass: `y` is the pool of `max(x, 0)`, and `arg` the
/// winner (0..4) where it is positive, [`NO_GRAD`] where the window's maximum is zero (the ReLU
/// passes no gradient). The same values and winners as a ReLU pass, then `max_pool2_forward`
/// (no NaN survives the ReLU); branch-free, so LLVM vectorises it.
pub fn relu_max_pool2_forward(
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
            for ((y, arg), rows) in y
                .chunks_exact_mut(ow)
                .zip(arg.chunks_exact_mut(ow))
                .zip(x.chunks_exact(2 * w))
            {
                let (r0, r1) = rows.split_at(w);
                let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
                for ((y, arg), (a, b)) in y.iter_mut().zip(arg.iter_mut()).zip(pairs) {
                    let c = [relu(a[0]), relu(a[1]), relu(b[0]), relu(b[1])];
                    let (mut best, mut at) = (c[0], 0u8);
                    for (j, &v) in c.iter().enumerate().skip(1) {
                        // `>` keeps the first maximum, as `max_pool2_forward`.
                        let more = v > best;
                        best = if more { v } else { best };
                        at = if more { j as u8 } else { at };
                    }
                    *y = best;
                    *arg = if best > 0.0 { at } else { NO_GRAD };
                }
            }
        });
}

/// The `arg` of [`relu_max_pool2_forward`] whose window passes no gradient.
pub const NO_GRAD: u8 = 4;

/// Backward of [`relu_max_pool2_forward`]: writes the whole input gradient `dx` (`[planes, h,
/// w]`), `0 + dy` at each positive winner and zero everywhere else (the rows and columns the pool
/// drops too) — the values of a zero fill, `max_pool2_backward` and the ReLU's mask.
pub fn relu_max_pool2_backward(
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
    if dx.is_empty() {
        return;
    }
    if dy.is_empty() {
        dx.fill(0.0);
        return;
    }
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(oh * ow))
        .zip(arg.par_chunks(oh * ow))
        .for_each(|((dx, dy), arg)| {
            let (pooled, rest) = dx.split_at_mut(2 * oh * w);
            rest.fill(0.0);
            for ((rows, dy), arg) in pooled
                .chunks_exact_mut(2 * w)
                .zip(dy.chunks_exact(ow))
                .zip(arg.chunks_exact(ow))
            {
                let (r0, r1) = rows.split_at_mut(w);
                r0[2 * ow..].fill(0.0);
                r1[2 * ow..].fill(0.0);
                let pairs = r0.chunks_exact_mut(2).zip(r1.chunks_exact_mut(2));
                for ((a, b), (&g, &at)) in pairs.zip(dy.iter().zip(arg)) {
                    // `0 + g`, not `g`: what accumulating into a zeroed buffer gives (-0 → +0).
                    let g = 0.0 + g;
                    let pick = |j: u8| if at == j { g } else { 0.0 };
                    a[0] = pick(0);
                    a[1] = pick(1);
                    b[0] = pick(2);
                    b[1] = pick(3);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with ties, signed zeros, negatives and NaN, from a fixed generator.
    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                match (s >> 33) % 8 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => f32::NAN,
                    3 => 1.5,
                    _ => ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5,
                }
            })
            .collect()
    }

    /// The fused pass against the ReLU pass, the pool, a zero fill, the pool's backward and the
    /// ReLU's mask, bit for bit, odd sizes included.
    #[test]
    fn fused_relu_pool_equals_the_unfused_passes() {
        for (planes, h, w) in [
            (3, 4, 6),
            (2, 5, 7),
            (1, 1, 3),
            (4, 8, 1),
            (2, 32, 32),
            (1, 3, 2),
        ] {
            let x = data(planes * h * w, (planes * 100 + h * 10 + w) as u64);
            let len = planes * (h / 2) * (w / 2);
            let dy = data(len, 7);

            let relued: Vec<f32> = x.iter().map(|&v| relu(v)).collect();
            let (mut y0, mut arg0) = (vec![0.0; len], vec![0u8; len]);
            max_pool2_forward(planes, h, w, &relued, &mut y0, &mut arg0);
            let mut d0 = vec![0.0; x.len()];
            max_pool2_backward(planes, h, w, &arg0, &dy, &mut d0);
            let d0: Vec<f32> = d0
                .iter()
                .zip(&relued)
                .map(|(&d, &y)| if y > 0.0 { d } else { 0.0 })
                .collect();

            let (mut y1, mut arg1) = (vec![9.0; len], vec![9u8; len]);
            relu_max_pool2_forward(planes, h, w, &x, &mut y1, &mut arg1);
            let mut d1 = vec![f32::NAN; x.len()];
            relu_max_pool2_backward(planes, h, w, &arg1, &dy, &mut d1);

            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y0), bits(&y1), "{planes}x{h}x{w}: y");
            assert_eq!(bits(&d0), bits(&d1), "{planes}x{h}x{w}: dx");
            for ((&a0, &a1), &y) in arg0.iter().zip(&arg1).zip(&y1) {
                assert_eq!(if y > 0.0 { a0 } else { NO_GRAD }, a1);
            }
        }
    }
}
