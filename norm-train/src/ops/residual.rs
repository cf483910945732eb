//! The residual join of a basic block: `y = max(a + b, 0)` (the block's output plus its
//! shortcut, then the ReLU), one op so the sum is never stored separately.
//!
//! Backward: `da += dy · [y > 0]`, `db += dy · [y > 0]` (PyTorch's ReLU: gradient 0 at 0).

use dfdx::shapes::HasShape;
use dfdx::tensor::{Cpu, Merge, PutTape, SplitTape, Tape, Tensor};
use rayon::prelude::*;

use super::{BufferPool, ELEMENTWISE_CHUNK, Shape4, acc_grad, put_grad, read, take_grad, write};
use crate::TrainError;
use crate::error::tensor;

/// Forward on slices: `y = max(a + b, 0)`.
pub fn add_relu_forward(a: &[f32], b: &[f32], y: &mut [f32]) {
    assert_eq!(a.len(), b.len());
    assert_eq!(a.len(), y.len());
    y.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(a.par_chunks(ELEMENTWISE_CHUNK))
        .zip(b.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|((y, a), b)| {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                *y = super::relu(a + b);
            }
        });
}

/// Backward on slices: `d = dy · [y > 0]` (the gradient of both inputs).
pub fn add_relu_backward(y: &[f32], dy: &[f32], d: &mut [f32]) {
    assert_eq!(y.len(), dy.len());
    assert_eq!(y.len(), d.len());
    d.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(dy.par_chunks(ELEMENTWISE_CHUNK))
        .zip(y.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|((d, g), y)| {
            for ((d, &g), &y) in d.iter_mut().zip(g).zip(y) {
                *d = if y > 0.0 { g } else { 0.0 };
            }
        });
}

/// The tape op: `relu(a + b)` for two tensors of the same shape.
pub fn add_relu<T: Tape<f32, Cpu> + Merge<T>>(
    a: Tensor<Shape4, f32, Cpu, T>,
    b: Tensor<Shape4, f32, Cpu, T>,
    pool: &BufferPool<f32>,
) -> Result<Tensor<Shape4, f32, Cpu, T>, TrainError> {
    let shape = *a.shape();
    assert_eq!(shape, *b.shape(), "add_relu: shapes differ");
    let dev = a.device().clone();
    let (a, ta) = a.split_tape();
    let (b, tb) = b.split_tape();
    let (xa, xb) = (read(&a, pool), read(&b, pool));
    let mut ys = pool.take(xa.len());
    add_relu_forward(&xa, &xb, &mut ys);
    drop((xa, xb));
    let out = write(&dev, shape, &ys).map_err(tensor)?;
    let mut tape = ta.merge(tb);
    if T::OWNS_TAPE {
        let (a_g, b_g, out_g) = (a.ghost(), b.ghost(), out.ghost());
        let pool = pool.clone();
        tape.add_backward_op(move |grads| {
            let dy = take_grad!(grads, out_g);
            let mut d = pool.take(dy.len());
            add_relu_backward(&ys, &dy, &mut d);
            acc_grad!(grads, a_g, &d);
            acc_grad!(grads, b_g, &d);
            put_grad!(grads, out_g, dy);
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}
