//! Bias-free k×k convolutions (k = 1 or 3) with stride 1 or 2 and padding `k / 2`, NCHW: the
//! ResNets' 3×3 convolutions (stride 2 entering stages 2 and 3) and 1×1 projection shortcuts.
//!
//! Output size `oh = (h + 2p − k) / s + 1`. Per image, as in [`super::conv`]:
//! `col_i = im2col_s(x_i)` is `[C_in·k², oh·ow]`, `y_i = W · col_i`; backward
//! `dW += dy_i · col_iᵀ`, `dx_i = col2im_s(Wᵀ · dy_i)`. A 3×3 stride-1 convolution is handed to
//! [`super::conv`]'s kernels (with a zero bias), so it runs exactly the plain CNN's code; a 1×1
//! stride-1 convolution needs no im2col (`col_i = x_i`). A 3×3 stride-2 convolution runs
//! [`super::conv3x3_s2`]'s direct kernels; im2col + GEMM is left for the 1×1 shortcuts.
//!
//! Threads: images over rayon, single-threaded GEMMs, the weight gradient summed per fixed chunk
//! of images ([`super::conv::grad_chunk_images`]) in chunk order — bit-identical for any thread
//! count.

use dfdx::shapes::HasShape;
use dfdx::tensor::{Cpu, Merge, PutTape, SplitTape, Tape, Tensor};
use rayon::prelude::*;

use super::conv::{self, ConvShape, GradChunk, backward_chunks, gemm_strided, with_scratch};
use super::conv3x3_s2;
use super::{BufferPool, Shape1, Shape4, acc_grad, put_grad, read, take_grad, write};
use crate::TrainError;
use crate::error::tensor;

/// Dimensions of a bias-free k×k convolution with stride `stride` and padding `k / 2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StridedShape {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel size, 1 or 3.
    pub k: usize,
    /// Stride, at least 1.
    pub stride: usize,
}

impl StridedShape {
    const fn pad(&self) -> usize {
        self.k / 2
    }
    /// Output height.
    pub const fn oh(&self) -> usize {
        (self.h + 2 * self.pad() - self.k) / self.stride + 1
    }
    /// Output width.
    pub const fn ow(&self) -> usize {
        (self.w + 2 * self.pad() - self.k) / self.stride + 1
    }
    /// `C_in · k²`, the GEMM's inner dimension.
    pub const fn kk(&self) -> usize {
        self.c_in * self.k * self.k
    }
    /// Elements of the input.
    pub const fn x_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    /// Elements of the output.
    pub const fn y_len(&self) -> usize {
        self.n * self.c_out * self.oh() * self.ow()
    }
    /// Elements of the weight, `C_out · C_in · k²`.
    pub const fn weight_len(&self) -> usize {
        self.c_out * self.kk()
    }
    /// The 3×3 stride-1 case, which [`super::conv`] computes.
    fn as_conv3x3(&self) -> Option<ConvShape> {
        (self.k == 3 && self.stride == 1).then_some(ConvShape {
            n: self.n,
            c_in: self.c_in,
            c_out: self.c_out,
            h: self.h,
            w: self.w,
        })
    }
    /// The 3×3 stride-2 case, which [`super::conv3x3_s2`] computes (`c_out` in the shape).
    fn as_conv3x3_s2(&self) -> Option<ConvShape> {
        (self.k == 3 && self.stride == 2).then_some(ConvShape {
            n: self.n,
            c_in: self.c_in,
            c_out: self.c_out,
            h: self.h,
            w: self.w,
        })
    }
    /// `col_i = x_i`: a 1×1 stride-1 convolution is a plain GEMM.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1
    }
}

/// For kernel offset `kx` along a dimension of input size `len`, output size `olen`: the
/// output range `o` whose input `o·s + kx − p` is inside the image.
#[inline]
fn valid(kx: usize, len: usize, olen: usize, s: usize, p: usize) -> (usize, usize) {
    // o·s + kx ≥ p  and  o·s + kx − p < len
    let lo = p.saturating_sub(kx).div_ceil(s);
    let hi = if len + p > kx {
        (len + p - kx).div_ceil(s).min(olen)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// `col[(ci·k² + ky·k + kx)·ohw + oy·ow + ox] = x[ci, oy·s + ky − p, ox·s + kx − p]` (0 outside).
pub fn im2col_strided(s: &StridedShape, x: &[f32], col: &mut [f32]) {
    let (h, w, oh, ow, k, st, p) = (s.h, s.w, s.oh(), s.ow(), s.k, s.stride, s.pad());
    let ohw = oh * ow;
    debug_assert_eq!(x.len(), s.c_in * h * w);
    debug_assert_eq!(col.len(), s.kk() * ohw);
    for ci in 0..s.c_in {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            let (oy0, oy1) = valid(ky, h, oh, st, p);
            for kx in 0..k {
                let (ox0, ox1) = valid(kx, w, ow, st, p);
                let dst = &mut col[((ci * k + ky) * k + kx) * ohw..][..ohw];
                dst[..oy0 * ow].fill(0.0);
                dst[oy1 * ow..].fill(0.0);
                for oy in oy0..oy1 {
                    let row = &plane[(oy * st + ky - p) * w..][..w];
                    let out = &mut dst[oy * ow..(oy + 1) * ow];
                    out[..ox0].fill(0.0);
                    out[ox1..].fill(0.0);
                    for (ox, o) in out.iter_mut().enumerate().take(ox1).skip(ox0) {
                        *o = row[ox * st + kx - p];
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col_strided`]: `dx[ci, oy·s + ky − p, ox·s + kx − p] += col[...]`.
pub fn col2im_strided_add(s: &StridedShape, col: &[f32], dx: &mut [f32]) {
    let (h, w, oh, ow, k, st, p) = (s.h, s.w, s.oh(), s.ow(), s.k, s.stride, s.pad());
    let ohw = oh * ow;
    debug_assert_eq!(dx.len(), s.c_in * h * w);
    debug_assert_eq!(col.len(), s.kk() * ohw);
    for ci in 0..s.c_in {
        let plane = &mut dx[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            let (oy0, oy1) = valid(ky, h, oh, st, p);
            for kx in 0..k {
                let (ox0, ox1) = valid(kx, w, ow, st, p);
                let src = &col[((ci * k + ky) * k + kx) * ohw..][..ohw];
                for oy in oy0..oy1 {
                    let row = &mut plane[(oy * st + ky - p) * w..][..w];
                    for ox in ox0..ox1 {
                        row[ox * st + kx - p] += src[oy * ow + ox];
                    }
                }
            }
        }
    }
}

fn check(s: &StridedShape) {
    assert!(
        s.k == 1 || s.k == 3,
        "conv: kernel size {} is not 1 or 3",
        s.k
    );
    assert!(s.stride >= 1, "conv: stride 0");
    assert!(s.h >= 1 && s.w >= 1, "conv: empty image");
}

/// Forward: `y = conv(x, weight)`, `weight` `[C_out, C_in, k, k]`.
pub fn conv_strided_forward(s: StridedShape, x: &[f32], weight: &[f32], y: &mut [f32]) {
    check(&s);
    assert_eq!(x.len(), s.x_len());
    assert_eq!(y.len(), s.y_len());
    assert_eq!(weight.len(), s.weight_len());
    if let Some(c) = s.as_conv3x3() {
        return conv::conv3x3_forward(c, x, weight, &vec![0.0; s.c_out], y);
    }
    if let Some(c) = s.as_conv3x3_s2() {
        return conv3x3_s2::forward(c, x, weight, y);
    }
    let (chw_in, ohw, kk) = (s.c_in * s.h * s.w, s.oh() * s.ow(), s.kk());
    let chw_out = s.c_out * ohw;
    if s.n == 0 || chw_out == 0 {
        return;
    }
    y.par_chunks_mut(chw_out)
        .zip(x.par_chunks(chw_in.max(1)))
        .for_each(|(y, x)| {
            if s.is_pointwise() {
                gemm_strided(
                    (s.c_out, ohw, kk),
                    (y, false),
                    (weight, (kk, 1)),
                    (x, (ohw, 1)),
                );
            } else {
                with_scratch(kk * ohw, |col| {
                    im2col_strided(&s, x, col);
                    gemm_strided(
                        (s.c_out, ohw, kk),
                        (y, false),
                        (weight, (kk, 1)),
                        (col, (ohw, 1)),
                    );
                });
            }
        });
}

/// Backward. Accumulates (`+=`) into `dweight`, and into `dx` when given.
pub fn conv_strided_backward(
    s: StridedShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
) {
    check(&s);
    assert_eq!(x.len(), s.x_len());
    assert_eq!(dy.len(), s.y_len());
    assert_eq!(weight.len(), s.weight_len());
    assert_eq!(dweight.len(), s.weight_len());
    if let Some(dx) = &dx {
        assert_eq!(dx.len(), s.x_len());
    }
    if let Some(c) = s.as_conv3x3() {
        let mut db = vec![0.0; s.c_out];
        return conv::conv3x3_backward(c, x, weight, dy, dx, dweight, &mut db);
    }
    if let Some(c) = s.as_conv3x3_s2() {
        return conv3x3_s2::backward(c, x, weight, dy, dx, dweight);
    }
    let (chw_in, ohw, kk) = (s.c_in * s.h * s.w, s.oh() * s.ow(), s.kk());
    let chw_out = s.c_out * ohw;
    if s.n == 0 || chw_out == 0 || chw_in == 0 {
        return;
    }
    let wl = s.weight_len();
    let chunk = |GradChunk { partial, x, dy, dx }: GradChunk<'_>| {
        with_scratch(kk * ohw, |col| {
            for i in 0..x.len() / chw_in {
                let xi = &x[i * chw_in..][..chw_in];
                let dyi = &dy[i * chw_out..][..chw_out];
                let c: &[f32] = if s.is_pointwise() {
                    xi
                } else {
                    im2col_strided(&s, xi, col);
                    col
                };
                // dW[c_out × kk] += dy_i[c_out × ohw] · col_iᵀ[ohw × kk]
                gemm_strided(
                    (s.c_out, kk, ohw),
                    (partial, true),
                    (dyi, (ohw, 1)),
                    (c, (1, ohw)),
                );
            }
            if let Some(dx) = dx {
                for i in 0..x.len() / chw_in {
                    let dyi = &dy[i * chw_out..][..chw_out];
                    let dxi = &mut dx[i * chw_in..][..chw_in];
                    if s.is_pointwise() {
                        // dx_i[c_in × hw] += Wᵀ[c_in × c_out] · dy_i[c_out × hw]
                        gemm_strided(
                            (kk, ohw, s.c_out),
                            (dxi, true),
                            (weight, (1, kk)),
                            (dyi, (ohw, 1)),
                        );
                    } else {
                        gemm_strided(
                            (kk, ohw, s.c_out),
                            (col, false),
                            (weight, (1, kk)),
                            (dyi, (ohw, 1)),
                        );
                        col2im_strided_add(&s, col, dxi);
                    }
                }
            }
        });
    };
    let partials = backward_chunks(s.n, (chw_in, chw_out), wl, (x, dy, dx), chunk);
    for p in partials.chunks(wl) {
        super::add_assign(dweight, p);
    }
}

/// The tape op: a bias-free k×k convolution with stride `stride` for `x: [N, C_in, H, W]`,
/// `weight: [C_out·C_in·k²]` (flat, PyTorch's order). Gradients flow to `weight`, and to `x`
/// when `x` carries a tape.
pub fn conv_strided<TX, T>(
    x: Tensor<Shape4, f32, Cpu, TX>,
    weight: Tensor<Shape1, f32, Cpu, T>,
    (c_out, k, stride): (usize, usize, usize),
    pool: &BufferPool<f32>,
) -> Result<Tensor<Shape4, f32, Cpu, T>, TrainError>
where
    TX: Tape<f32, Cpu>,
    T: Tape<f32, Cpu> + Merge<TX>,
{
    let (n, c_in, h, w) = *x.shape();
    let s = StridedShape {
        n,
        c_in,
        c_out,
        h,
        w,
        k,
        stride,
    };
    assert_eq!(
        weight.shape().0,
        s.weight_len(),
        "conv_strided: weight has the wrong length"
    );
    let dev = x.device().clone();
    let (x, tx) = x.split_tape();
    let (weight, tw) = weight.split_tape();
    let xs = read(&x, pool);
    let ws = read(&weight, pool);
    let mut ys = pool.take(s.y_len());
    conv_strided_forward(s, &xs, &ws, &mut ys);
    let out = write(&dev, (n, c_out, s.oh(), s.ow()), &ys).map_err(tensor)?;
    drop(ys);
    let mut tape = tw.merge(tx);
    if T::OWNS_TAPE {
        let want_dx = TX::OWNS_TAPE;
        let (x_g, w_g, out_g) = (x.ghost(), weight.ghost(), out.ghost());
        let pool = pool.clone();
        tape.add_backward_op(move |grads| {
            let dy = take_grad!(grads, out_g);
            let mut dw = pool.take_zeroed(s.weight_len());
            if want_dx {
                let gx: &mut Vec<f32> = &mut *grads.get_or_alloc_mut(&x_g)?;
                conv_strided_backward(s, &xs, &ws, &dy, Some(gx), &mut dw);
            } else {
                conv_strided_backward(s, &xs, &ws, &dy, None, &mut dw);
            }
            acc_grad!(grads, w_g, &dw);
            put_grad!(grads, out_g, dy);
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ranges_match_a_scan() {
        for (k, p) in [(1, 0), (3, 1)] {
            for s in 1..=3 {
                for len in 1..=9 {
                    let olen = (len + 2 * p - k) / s + 1;
                    for kx in 0..k {
                        let inside: Vec<usize> = (0..olen)
                            .filter(|&o| {
                                let i = (o * s + kx) as isize - p as isize;
                                i >= 0 && (i as usize) < len
                            })
                            .collect();
                        let (lo, hi) = valid(kx, len, olen, s, p);
                        assert_eq!(
                            (lo..hi).collect::<Vec<_>>(),
                            inside,
                            "k{k} s{s} len{len} kx{kx}"
                        );
                    }
                }
            }
        }
    }
}
