//! Splitting a batch into equal worker shares along `N` and joining them back, as tape ops:
//! the model runs BatchNorm once per share (each share's own batch statistics, as data-parallel
//! workers without synchronised BatchNorm) and everything else on the whole batch.
//!
//! Both are copies: [`split_batch`]'s backward copies each share's gradient into its rows of the
//! input's gradient, [`concat_batch`]'s copies rows of the output gradient into each share's.

use dfdx::shapes::HasShape;
use dfdx::tensor::{Cpu, Merge, PutTape, SplitTape, Tape, Tensor};

use super::{BufferPool, Shape4, put_grad, read, take_grad, write};
use crate::TrainError;
use crate::error::tensor;

/// `x: [N, C, H, W]` → `shares` tensors `[N / shares, C, H, W]`, in batch order. The input's
/// tape goes to share 0 (with the backward op); the others start empty tapes, merged again by
/// whatever joins them. `shares` must divide `N`.
pub fn split_batch<T: Tape<f32, Cpu>>(
    x: Tensor<Shape4, f32, Cpu, T>,
    shares: usize,
    pool: &BufferPool<f32>,
) -> Result<Vec<Tensor<Shape4, f32, Cpu, T>>, TrainError> {
    let (n, c, h, w) = *x.shape();
    assert!(
        shares > 0 && n % shares == 0,
        "split_batch: {shares} shares of {n}"
    );
    let part = n / shares;
    let len = part * c * h * w;
    let dev = x.device().clone();
    let (x, mut tape) = x.split_tape();
    let xs = read(&x, pool);
    let outs = xs
        .chunks(len.max(1))
        .take(shares)
        .map(|s| write(&dev, (part, c, h, w), s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(tensor)?;
    drop(xs);
    if T::OWNS_TAPE {
        let x_g = x.ghost();
        let ghosts: Vec<_> = outs.iter().map(|o| o.ghost()).collect();
        tape.add_backward_op(move |grads| {
            for (i, g) in ghosts.iter().enumerate() {
                let d = take_grad!(grads, *g);
                {
                    let gx: &mut Vec<f32> = &mut *grads.get_or_alloc_mut(&x_g)?;
                    super::add_assign(&mut gx[i * len..(i + 1) * len], &d);
                }
                put_grad!(grads, *g, d);
            }
            Ok(())
        });
    }
    let mut tape = Some(tape);
    Ok(outs
        .into_iter()
        .map(|o| o.put_tape(tape.take().unwrap_or_default()))
        .collect())
}

/// The shares `[n_i, C, H, W]` (equal `C, H, W`) stacked along `N`, their tapes merged.
pub fn concat_batch<T: Tape<f32, Cpu> + Merge<T>>(
    parts: Vec<Tensor<Shape4, f32, Cpu, T>>,
    pool: &BufferPool<f32>,
) -> Result<Tensor<Shape4, f32, Cpu, T>, TrainError> {
    assert!(!parts.is_empty(), "concat_batch: no shares");
    let (_, c, h, w) = *parts[0].shape();
    let dev = parts[0].device().clone();
    let mut tape = T::default();
    let mut ghosts = Vec::with_capacity(parts.len());
    let mut lens = Vec::with_capacity(parts.len());
    let n: usize = parts.iter().map(|p| p.shape().0).sum();
    let mut ys = pool.take(n * c * h * w);
    let mut at = 0;
    for p in parts {
        let (pn, pc, ph, pw) = *p.shape();
        assert_eq!((pc, ph, pw), (c, h, w), "concat_batch: shapes differ");
        let (p, tp) = p.split_tape();
        tape = tape.merge(tp);
        let len = pn * c * h * w;
        p.copy_into(&mut ys[at..at + len]);
        at += len;
        ghosts.push(p.ghost());
        lens.push(len);
    }
    let out = write(&dev, (n, c, h, w), &ys).map_err(tensor)?;
    drop(ys);
    if T::OWNS_TAPE {
        let out_g = out.ghost();
        tape.add_backward_op(move |grads| {
            let dy = take_grad!(grads, out_g);
            let mut at = 0;
            for (g, &len) in ghosts.iter().zip(&lens) {
                let gp: &mut Vec<f32> = &mut *grads.get_or_alloc_mut(g)?;
                super::add_assign(gp, &dy[at..at + len]);
                at += len;
            }
            put_grad!(grads, out_g, dy);
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}
