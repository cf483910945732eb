//! 3×3 convolution, padding 1, stride 1, NCHW, as im2col + GEMM (the `gemm` crate).
//!
//! Per image `i`: `col_i = im2col(x_i)` is `[C_in·9, H·W]`, `y_i = W · col_i + b` with `W` as
//! `[C_out, C_in·9]` (PyTorch's `[C_out, C_in, 3, 3]` layout). Backward, per image:
//! `dW += dy_i · col_iᵀ`, `db += Σ_p dy_i`, `dx_i = col2im(Wᵀ · dy_i)`.
//!
//! Threads: images are spread over rayon; every GEMM runs single-threaded
//! (`gemm::Parallelism::None`). The weight and bias gradients are summed per fixed chunk of images
//! ([`grad_chunk_images`], a function of the batch only) and the chunk partials are added in chunk
//! order, so results are bit-identical for any number of threads.

use std::cell::RefCell;

use dfdx::shapes::HasShape;
use dfdx::tensor::{Cpu, Merge, PutTape, SplitTape, Tape, Tensor};
use rayon::prelude::*;

use super::{BufferPool, Shape1, Shape4, acc_grad, put_grad, read, take_grad, write};
use crate::TrainError;

/// Dimensions of a 3×3 same-padding convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Height (input = output).
    pub h: usize,
    /// Width (input = output).
    pub w: usize,
}

impl ConvShape {
    /// `C_in · 9`, the GEMM's inner dimension.
    pub const fn k(&self) -> usize {
        self.c_in * 9
    }
    /// `H · W`.
    pub const fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Elements of the input.
    pub const fn x_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    /// Elements of the output.
    pub const fn y_len(&self) -> usize {
        self.n * self.c_out * self.h * self.w
    }
    /// Elements of the weight, `C_out · C_in · 9`.
    pub const fn weight_len(&self) -> usize {
        self.c_out * self.c_in * 9
    }
}

/// Images per chunk of the weight-gradient reduction: the batch split into at most 8 chunks.
/// Depends on the batch only, never on the thread count.
pub fn grad_chunk_images(n: usize) -> usize {
    n.div_ceil(8).max(1)
}

thread_local! {
    /// Per-thread im2col / col2im scratch, kept across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// For kernel offset `k` (0..3) along a dimension of size `len`: the output range whose input
/// `o + k - 1` is inside the image.
#[inline]
fn valid(k: usize, len: usize) -> (usize, usize) {
    (
        if k == 0 { 1 } else { 0 },
        if k == 2 { len - 1 } else { len },
    )
}

/// `col[(ci·9 + ky·3 + kx)·hw + oy·w + ox] = x[ci, oy+ky-1, ox+kx-1]` (0 outside).
pub fn im2col(c_in: usize, h: usize, w: usize, x: &[f32], col: &mut [f32]) {
    let hw = h * w;
    debug_assert_eq!(x.len(), c_in * hw);
    debug_assert_eq!(col.len(), c_in * 9 * hw);
    for ci in 0..c_in {
        let plane = &x[ci * hw..(ci + 1) * hw];
        for ky in 0..3 {
            let (oy0, oy1) = valid(ky, h);
            for kx in 0..3 {
                let (ox0, ox1) = valid(kx, w);
                let dst = &mut col[((ci * 9) + ky * 3 + kx) * hw..][..hw];
                dst[..oy0 * w].fill(0.0);
                dst[oy1 * w..].fill(0.0);
                for oy in oy0..oy1 {
                    let iy = oy + ky - 1;
                    let row = &mut dst[oy * w..(oy + 1) * w];
                    row[..ox0].fill(0.0);
                    row[ox1..].fill(0.0);
                    row[ox0..ox1]
                        .copy_from_slice(&plane[iy * w + ox0 + kx - 1..iy * w + ox1 + kx - 1]);
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `dx[ci, oy+ky-1, ox+kx-1] += col[...]`.
pub fn col2im_add(c_in: usize, h: usize, w: usize, col: &[f32], dx: &mut [f32]) {
    let hw = h * w;
    debug_assert_eq!(dx.len(), c_in * hw);
    debug_assert_eq!(col.len(), c_in * 9 * hw);
    for ci in 0..c_in {
        let plane = &mut dx[ci * hw..(ci + 1) * hw];
        for ky in 0..3 {
            let (oy0, oy1) = valid(ky, h);
            for kx in 0..3 {
                let (ox0, ox1) = valid(kx, w);
                let src = &col[((ci * 9) + ky * 3 + kx) * hw..][..hw];
                for oy in oy0..oy1 {
                    let iy = oy + ky - 1;
                    let d = &mut plane[iy * w + ox0 + kx - 1..iy * w + ox1 + kx - 1];
                    for (d, s) in d.iter_mut().zip(&src[oy * w + ox0..oy * w + ox1]) {
                        *d += *s;
                    }
                }
            }
        }
    }
}

/// Row-major GEMM on slices: `dst[m×n] = (read_dst ? dst : 0) + lhs · rhs`, with explicit
/// (row, column) strides for `lhs` `[m×k]` and `rhs` `[k×n]`. Single-threaded.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    read_dst: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above keep every index gemm touches inside the three slices; `dst` is
    // row-major m×n and does not alias `lhs`/`rhs` (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Forward: `y = conv(x, weight) + bias`. `weight` is `[C_out, C_in, 3, 3]`, `bias` `[C_out]`.
pub fn conv3x3_forward(s: ConvShape, x: &[f32], weight: &[f32], bias: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), s.x_len());
    assert_eq!(y.len(), s.y_len());
    assert_eq!(weight.len(), s.weight_len());
    assert_eq!(bias.len(), s.c_out);
    let (chw_in, chw_out, hw, k) = (s.c_in * s.hw(), s.c_out * s.hw(), s.hw(), s.k());
    if s.n == 0 || chw_out == 0 {
        return;
    }
    y.par_chunks_mut(chw_out)
        .zip(x.par_chunks(chw_in.max(1)))
        .for_each(|(y, x)| {
            for (row, &b) in y.chunks_mut(hw).zip(bias) {
                row.fill(b);
            }
            with_scratch(k * hw, |col| {
                im2col(s.c_in, s.h, s.w, x, col);
                gemm_strided(s.c_out, hw, k, y, true, weight, (k, 1), col, (hw, 1));
            });
        });
}

/// One chunk of the backward pass: its `[dW | db]` partial, `x`, `dy` and (optionally) `dx`.
type GradChunk<'a> = (
    ((&'a mut [f32], &'a [f32]), &'a [f32]),
    Option<&'a mut [f32]>,
);

/// Backward. Accumulates (`+=`) into `dweight` and `dbias`, and into `dx` when given.
pub fn conv3x3_backward(
    s: ConvShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: &mut [f32],
) {
    assert_eq!(x.len(), s.x_len());
    assert_eq!(dy.len(), s.y_len());
    assert_eq!(weight.len(), s.weight_len());
    assert_eq!(dweight.len(), s.weight_len());
    assert_eq!(dbias.len(), s.c_out);
    if let Some(dx) = &dx {
        assert_eq!(dx.len(), s.x_len());
    }
    let (chw_in, chw_out, hw, k) = (s.c_in * s.hw(), s.c_out * s.hw(), s.hw(), s.k());
    if s.n == 0 || chw_out == 0 || chw_in == 0 {
        return;
    }
    let per = grad_chunk_images(s.n);
    let wl = s.weight_len();
    // One partial [dW | db] per chunk, summed afterwards in chunk order.
    let mut partial = vec![0.0f32; s.n.div_ceil(per) * (wl + s.c_out)];
    let chunk = |(((part, x), dy), dx): GradChunk<'_>| {
        let (pw, pb) = part.split_at_mut(wl);
        with_scratch(k * hw, |col| {
            for i in 0..x.len() / chw_in {
                let xi = &x[i * chw_in..][..chw_in];
                let dyi = &dy[i * chw_out..][..chw_out];
                im2col(s.c_in, s.h, s.w, xi, col);
                // dW[c_out × k] += dy_i[c_out × hw] · col_iᵀ[hw × k]
                gemm_strided(s.c_out, k, hw, pw, true, dyi, (hw, 1), col, (1, hw));
                for (b, row) in pb.iter_mut().zip(dyi.chunks(hw)) {
                    *b += row.iter().sum::<f32>();
                }
            }
            if let Some(dx) = dx {
                for i in 0..x.len() / chw_in {
                    let dyi = &dy[i * chw_out..][..chw_out];
                    // dcol[k × hw] = Wᵀ[k × c_out] · dy_i[c_out × hw]
                    gemm_strided(k, hw, s.c_out, col, false, weight, (1, k), dyi, (hw, 1));
                    col2im_add(s.c_in, s.h, s.w, col, &mut dx[i * chw_in..][..chw_in]);
                }
            }
        });
    };
    let parts = partial
        .par_chunks_mut(wl + s.c_out)
        .zip(x.par_chunks(per * chw_in))
        .zip(dy.par_chunks(per * chw_out));
    match dx {
        Some(dx) => parts
            .zip(dx.par_chunks_mut(per * chw_in).map(Some))
            .for_each(chunk),
        None => parts.map(|p| (p, None)).for_each(chunk),
    }
    for p in partial.chunks(wl + s.c_out) {
        super::add_assign(dweight, &p[..wl]);
        super::add_assign(dbias, &p[wl..]);
    }
}

/// The tape op: `conv3x3(x, weight, bias)` for `x: [N, C_in, H, W]`, `weight: [C_out·C_in·9]`
/// (flat, PyTorch's order), `bias: [C_out]`. Gradients flow to `weight` and `bias`, and to `x`
/// when `x` carries a tape (`TX::OWNS_TAPE`).
pub fn conv3x3<TX, T>(
    x: Tensor<Shape4, f32, Cpu, TX>,
    weight: Tensor<Shape1, f32, Cpu, T>,
    bias: Tensor<Shape1, f32, Cpu, T>,
    pool: &BufferPool<f32>,
) -> Result<Tensor<Shape4, f32, Cpu, T>, TrainError>
where
    TX: Tape<f32, Cpu>,
    T: Tape<f32, Cpu> + Merge<TX>,
{
    let (n, c_in, h, w) = *x.shape();
    let c_out = bias.shape().0;
    let s = ConvShape {
        n,
        c_in,
        c_out,
        h,
        w,
    };
    assert_eq!(
        weight.shape().0,
        s.weight_len(),
        "conv3x3: weight has the wrong length"
    );
    let dev = x.device().clone();
    let (x, tx) = x.split_tape();
    let (weight, tw) = weight.split_tape();
    let (bias, tb) = bias.split_tape();
    let xs = read(&x, pool);
    let ws = read(&weight, pool);
    let bs = read(&bias, pool);
    let mut ys = pool.take(s.y_len());
    conv3x3_forward(s, &xs, &ws, &bs, &mut ys);
    let out = write(&dev, (n, c_out, h, w), &ys)?;
    drop(ys);
    let mut tape = tw.merge(tb).merge(tx);
    if T::OWNS_TAPE {
        let want_dx = TX::OWNS_TAPE;
        let (x_g, w_g, b_g, out_g) = (x.ghost(), weight.ghost(), bias.ghost(), out.ghost());
        let pool = pool.clone();
        tape.add_backward_op(move |grads| {
            let dy = take_grad!(grads, out_g);
            let mut dw = pool.take_zeroed(s.weight_len());
            let mut db = pool.take_zeroed(s.c_out);
            if want_dx {
                let gx: &mut Vec<f32> = &mut *grads.get_or_alloc_mut(&x_g)?;
                conv3x3_backward(s, &xs, &ws, &dy, Some(gx), &mut dw, &mut db);
            } else {
                conv3x3_backward(s, &xs, &ws, &dy, None, &mut dw, &mut db);
            }
            acc_grad!(grads, w_g, &dw);
            acc_grad!(grads, b_g, &db);
            put_grad!(grads, out_g, dy);
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}
