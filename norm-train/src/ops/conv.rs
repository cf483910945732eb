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

#[cfg(target_arch = "x86_64")]
use super::lanes::W16;
use super::lanes::{L, Lanes, W8, Width, transpose8};
use super::{BufferPool, Shape1, Shape4, acc_grad, put_grad, read, take_grad, write};
use crate::TrainError;
use crate::error::tensor;

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
    #[cfg(test)]
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
#[cfg(test)]
fn valid(k: usize, len: usize) -> (usize, usize) {
    (
        if k == 0 { 1 } else { 0 },
        if k == 2 { len - 1 } else { len },
    )
}

#[cfg(test)]
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

#[cfg(test)]
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

/// The longest inner dimension handed to one `gemm` call. Above 512, `gemm` splits the inner
/// dimension by the L1 size it detects (512 on a 32 KiB L1, 1024 on a 48 KiB one), which changes
/// the rounding; at most 512 it never splits, so [`gemm_strided`] feeds it fixed chunks.
const GEMM_DEPTH: usize = 512;

/// Row-major GEMM on slices: `dst[m×n] = (read_dst ? dst : 0) + lhs · rhs`, with explicit
/// (row, column) strides for `lhs` `[m×k]` and `rhs` `[k×n]`. Single-threaded. The inner dimension
/// is summed in chunks of [`GEMM_DEPTH`], in order, so the result is the same on every machine.
pub(crate) fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    (dst, read_dst): (&mut [f32], bool),
    (lhs, (lhs_rs, lhs_cs)): (&[f32], (usize, usize)),
    (rhs, (rhs_rs, rhs_cs)): (&[f32], (usize, usize)),
) {
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let mut depth = 0;
    loop {
        let kb = GEMM_DEPTH.min(k - depth);
        // SAFETY: the asserts above keep every index gemm touches inside the three slices (the
        // chunk starts at column `depth` of `lhs` and row `depth` of `rhs`, and `depth + kb <= k`);
        // `dst` is row-major m×n and does not alias `lhs`/`rhs` (distinct borrows).
        unsafe {
            gemm::gemm(
                m,
                n,
                kb,
                dst.as_mut_ptr(),
                1,
                n as isize,
                read_dst || depth > 0,
                lhs.as_ptr().add(depth * lhs_cs),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs.as_ptr().add(depth * rhs_rs),
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
        depth += kb;
        if depth >= k {
            return;
        }
    }
}

#[cfg(test)]
/// Forward as im2col + GEMM: `y = conv(x, weight) + bias`. `weight` is `[C_out, C_in, 3, 3]`,
/// `bias` `[C_out]`. The twin of [`conv3x3_forward`] (same arguments), kept as its independent
/// check and for the layers a direct kernel would not suit.
pub fn conv3x3_forward_gemm(s: ConvShape, x: &[f32], weight: &[f32], bias: &[f32], y: &mut [f32]) {
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
                gemm_strided(
                    (s.c_out, hw, k),
                    (y, true),
                    (weight, (k, 1)),
                    (col, (hw, 1)),
                );
            });
        });
}

/// One chunk of a backward pass, a run of whole images.
pub(super) struct GradChunk<'a> {
    /// This chunk's zeroed weight-gradient partial (`[dW | db]` or `dW`).
    pub partial: &'a mut [f32],
    pub x: &'a [f32],
    pub dy: &'a [f32],
    pub dx: Option<&'a mut [f32]>,
}

/// Runs `chunk` over rayon on chunks of [`grad_chunk_images`] images of `x`, `dy` (and `dx`),
/// each with its own zeroed partial of `partial_len` floats, and returns the partials in chunk
/// order: the caller adds them in that order, so the sum does not depend on the thread count.
pub(super) fn backward_chunks(
    n: usize,
    (chw_in, chw_out): (usize, usize),
    partial_len: usize,
    (x, dy, dx): (&[f32], &[f32], Option<&mut [f32]>),
    chunk: impl Fn(GradChunk<'_>) + Send + Sync,
) -> Vec<f32> {
    let per = grad_chunk_images(n);
    let mut partials = vec![0.0f32; n.div_ceil(per) * partial_len];
    let parts = partials
        .par_chunks_mut(partial_len)
        .zip(x.par_chunks(per * chw_in))
        .zip(dy.par_chunks(per * chw_out));
    let run = |((partial, x), dy), dx| chunk(GradChunk { partial, x, dy, dx });
    match dx {
        Some(dx) => parts
            .zip(dx.par_chunks_mut(per * chw_in))
            .for_each(|(p, dx)| run(p, Some(dx))),
        None => parts.for_each(|p| run(p, None)),
    }
    partials
}

#[cfg(test)]
/// Backward as GEMMs and col2im, the twin of [`conv3x3_backward`] (same arguments).
/// Accumulates (`+=`) into `dweight` and `dbias`, and into `dx` when given.
pub fn conv3x3_backward_gemm(
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
    let wl = s.weight_len();
    let chunk = |GradChunk { partial, x, dy, dx }: GradChunk<'_>| {
        let (pw, pb) = partial.split_at_mut(wl);
        with_scratch(k * hw, |col| {
            for i in 0..x.len() / chw_in {
                let xi = &x[i * chw_in..][..chw_in];
                let dyi = &dy[i * chw_out..][..chw_out];
                im2col(s.c_in, s.h, s.w, xi, col);
                // dW[c_out × k] += dy_i[c_out × hw] · col_iᵀ[hw × k]
                gemm_strided((s.c_out, k, hw), (pw, true), (dyi, (hw, 1)), (col, (1, hw)));
                for (b, row) in pb.iter_mut().zip(dyi.chunks(hw)) {
                    *b += row.iter().sum::<f32>();
                }
            }
            if let Some(dx) = dx {
                for i in 0..x.len() / chw_in {
                    let dyi = &dy[i * chw_out..][..chw_out];
                    // dcol[k × hw] = Wᵀ[k × c_out] · dy_i[c_out × hw]
                    gemm_strided(
                        (k, hw, s.c_out),
                        (col, false),
                        (weight, (1, k)),
                        (dyi, (hw, 1)),
                    );
                    col2im_add(s.c_in, s.h, s.w, col, &mut dx[i * chw_in..][..chw_in]);
                }
            }
        });
    };
    let partials = backward_chunks(s.n, (chw_in, chw_out), wl + s.c_out, (x, dy, dx), chunk);
    for p in partials.chunks(wl + s.c_out) {
        super::add_assign(dweight, &p[..wl]);
        super::add_assign(dbias, &p[wl..]);
    }
}

// ---------------------------------------------------------------------------------------------
// Direct 3×3 kernels: the layers of the study's CNN are small (3→16 at 32×32 up to 32→64 at
// 8×8), so per-image GEMMs spend much of their time packing operands that are used only
// H·W times. These kernels read a zero-bordered copy of each input plane (in L1) and keep one
// register block of outputs in flight: 4 output channels × 3 vectors of 8 pixels (× 4 of 16 with
// AVX-512) for the forward and `dx` (the same kernel on `dy` with the flipped, transposed
// weights), the 9 taps of one input channel × 8 (16) output channels for `dW`. Every sum runs in
// an order fixed by the shape alone, the same for both vector widths ([`Width`]).
// ---------------------------------------------------------------------------------------------

/// Output channels per register block of the forward kernel: its weights are broadcast.
const CO_BLOCK: usize = 4;

/// The zero-bordered layout of one `h × w` plane: `h + 2` rows of `pitch` values, the pixel
/// `(y, x)` at `(y + 1)·pitch + x + 1`. `pitch` leaves room for a full vector read at the last
/// column block; those extra columns are zero too.
#[derive(Clone, Copy, Debug)]
pub(super) struct Padded {
    h: usize,
    w: usize,
    pub(super) pitch: usize,
}

impl Padded {
    pub(super) fn new(h: usize, w: usize) -> Self {
        Self {
            h,
            w,
            pitch: w.next_multiple_of(L) + 2,
        }
    }
    pub(super) const fn plane(&self) -> usize {
        (self.h + 2) * self.pitch
    }
    /// Copies `planes` planes of `h × w` from `src` into `dst` (`planes · plane()` values),
    /// borders and tails zero.
    pub(super) fn fill(&self, planes: usize, src: &[f32], dst: &mut [f32]) {
        let (h, w, pitch) = (self.h, self.w, self.pitch);
        debug_assert_eq!(src.len(), planes * h * w);
        debug_assert_eq!(dst.len(), planes * self.plane());
        for (d, s) in dst
            .chunks_exact_mut(self.plane())
            .zip(src.chunks_exact(h * w))
        {
            d[..pitch].fill(0.0);
            if w >= L {
                Self::fill_rows(pitch, d, s, w);
            } else {
                for (drow, srow) in d[pitch..(h + 1) * pitch]
                    .chunks_exact_mut(pitch)
                    .zip(s.chunks_exact(w))
                {
                    drow[0] = 0.0;
                    drow[1..w + 1].copy_from_slice(srow);
                    drow[w + 1..].fill(0.0);
                }
            }
            d[(h + 1) * pitch..].fill(0.0);
        }
    }

    /// The rows of one plane (`w >= L`) in vector stores: rows are a few vectors long, and slice
    /// copies and fills of them are `memcpy` and `memset` calls. A row's zero tail is one vector
    /// from column `w + 1`, which may run into the next row's head (written after it) or, for
    /// the last row, into the bottom border (zeroed after the rows).
    fn fill_rows(pitch: usize, d: &mut [f32], s: &[f32], w: usize) {
        let h = s.len() / w;
        let lanes = W8;
        // Every store below ends at most at (h + 1)·pitch + w + 1 + L <= (h + 2)·pitch.
        assert!(w >= L && d.len() >= (h + 2) * pitch && w + 1 + L <= 2 * pitch);
        for (i, row) in s.chunks_exact(w).enumerate() {
            let at = (i + 1) * pitch;
            // SAFETY: every index below is < at + w + 1 + L <= (h + 1)·pitch + w + 1 + L
            // <= d.len() (asserted above), and every load reads row[j..j + L] with j + L <= w.
            unsafe {
                lanes.store(lanes.splat(0.0), d, at + w + 1);
                *d.get_unchecked_mut(at) = 0.0;
                for j in (0..w - L + 1).step_by(L) {
                    lanes.store(lanes.load(row, j), d, at + 1 + j);
                }
                if !w.is_multiple_of(L) {
                    lanes.store(lanes.load(row, w - L), d, at + 1 + w - L);
                }
            }
        }
    }
}

/// Weights regrouped for the direct kernel with `T` taps: per block of [`CO_BLOCK`] output
/// channels, per input channel and tap, the block's weights side by side (zero past the last
/// channel). `get(o, i, tap)` gives the weight of output `o`, input `i`, tap `tap` (the
/// [`Geometry`]'s tap order; `ky·3 + kx` for a whole 3×3 kernel).
pub(super) fn pack_weights<const T: usize>(
    c_out: usize,
    c_in: usize,
    get: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    let mut p = vec![0.0f32; c_out.div_ceil(CO_BLOCK) * c_in * T * CO_BLOCK];
    for (b, block) in p.chunks_exact_mut(c_in * T * CO_BLOCK).enumerate() {
        for (ci, taps) in block.chunks_exact_mut(T * CO_BLOCK).enumerate() {
            for (tap, lane) in taps.chunks_exact_mut(CO_BLOCK).enumerate() {
                for (j, v) in lane.iter_mut().enumerate() {
                    let o = b * CO_BLOCK + j;
                    if o < c_out {
                        *v = get(o, ci, tap);
                    }
                }
            }
        }
    }
    p
}

/// How the forward kernel starts each output and what it does with the sum.
#[derive(Clone, Copy)]
pub(super) enum Init<'a> {
    /// `y = bias[o] + Σ` (overwrites `y`).
    Bias(&'a [f32]),
    /// `y += Σ` (the sum starts from zero and is added once at the end).
    Add,
}

/// Where the direct kernel reads and writes, for one image: per output vector the offset of its
/// taps' origin in a padded input plane, its first pixel in an output plane and its lanes; per tap
/// the offset from that origin (tap `t` multiplies the weights packed as tap `t`, [`pack_weights`]).
pub(super) struct Geometry<const T: usize> {
    /// Values of one padded input plane.
    pub plane: usize,
    /// Pixels of one output plane.
    pub out_plane: usize,
    /// The output's vectors ([`output_vectors`]).
    pub vectors: Vectors,
    /// The taps' offsets, in summation order (a fixed count, so the kernel's tap loop unrolls
    /// with the weights at fixed places).
    pub taps: [usize; T],
}

impl Geometry<9> {
    /// The stride-1 3×3 convolution over [`Padded`] planes: output `(oy, ox)` reads the padded
    /// pixels `(oy + ky, ox + kx)`.
    fn stride1(pad: Padded) -> Self {
        let (h, w, pitch) = (pad.h, pad.w, pad.pitch);
        Self {
            plane: pad.plane(),
            out_plane: h * w,
            vectors: output_vectors((h, w), |oy, ox| oy * pitch + ox),
            taps: std::array::from_fn(|t| (t / 3) * pitch + t % 3),
        }
    }
}

/// The vectors of one image's output and the width the kernel runs them with.
pub(super) struct Vectors {
    /// `(input origin, output offset, lanes)` per vector of `width.lanes()` output pixels.
    pub list: Vec<(usize, usize, usize)>,
    /// The vectors' type.
    pub width: Width,
    /// For vectors of two output rows of `width.lanes() / 2` pixels (contiguous in the output),
    /// the input offset from the lower half's taps' origin to the upper half's; 0 for vectors of
    /// contiguous pixels.
    pub halves: usize,
}

/// The vectors of an `h × w` output, with their input origins from `origin(oy, ox)` (linear in
/// `oy`). Rows of a multiple of 16 pixels take the 16-lane vectors where the CPU has them; an
/// even number of rows of half the widest vector (8 pixels, or 4 without AVX-512) takes two rows
/// to a vector. The geometries' padded rows hold a whole vector from each of these origins.
pub(super) fn output_vectors(
    (h, w): (usize, usize),
    origin: impl Fn(usize, usize) -> usize,
) -> Vectors {
    let wide = Width::for_multiple_of(2 * w);
    if 2 * w == wide.lanes() && h.is_multiple_of(2) {
        return Vectors {
            list: (0..h)
                .step_by(2)
                .map(|oy| (origin(oy, 0), oy * w, 2 * w))
                .collect(),
            width: wide,
            halves: origin(1, 0) - origin(0, 0),
        };
    }
    let width = Width::for_multiple_of(w);
    Vectors {
        list: row_vectors(width.lanes(), (h, w), origin),
        width,
        halves: 0,
    }
}

/// The vectors of `lanes` pixels of an `h × w` output, row by row (the last of a row partly past
/// its end), with their input origins from `origin(oy, ox)`.
pub(super) fn row_vectors(
    lanes: usize,
    (h, w): (usize, usize),
    origin: impl Fn(usize, usize) -> usize,
) -> Vec<(usize, usize, usize)> {
    (0..h)
        .flat_map(|oy| (0..w).step_by(lanes).map(move |ox| (oy, ox)))
        .map(|(oy, ox)| (origin(oy, ox), oy * w + ox, lanes.min(w - ox)))
        .collect()
}

/// One image of the direct convolution: `y[o, v] (init) Σ_i Σ_t w[o, i, t] · xp[i, v + taps[t]]`
/// over the padded input `xp` (`c_in` planes of `g.plane`), for `c_out` output planes of
/// `g.out_plane` in `y`. `packed` is [`pack_weights`]. Runs with `g.vectors`' width.
pub(super) fn direct_image<const T: usize>(
    g: &Geometry<T>,
    (c_in, c_out): (usize, usize),
    (xp, packed): (&[f32], &[f32]),
    init: Init<'_>,
    y: &mut [f32],
) {
    let (c, data) = ((c_in, c_out), (xp, packed));
    match (g.vectors.width, g.vectors.halves > 0) {
        (Width::W8, false) => direct_image_in::<W8, T, 3, false>(W8, g, c, data, init, y),
        (Width::W8, true) => direct_image_in::<W8, T, 3, true>(W8, g, c, data, init, y),
        // SAFETY (both): a `W16` exists only where the CPU has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        (Width::W16(v), false) => unsafe { direct_image_w16::<T, false>(v, g, c, data, init, y) },
        #[cfg(target_arch = "x86_64")]
        (Width::W16(v), true) => unsafe { direct_image_w16::<T, true>(v, g, c, data, init, y) },
    }
}

/// [`direct_image_in`] compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn direct_image_w16<const T: usize, const HALVES: bool>(
    v: W16,
    g: &Geometry<T>,
    c: (usize, usize),
    data: (&[f32], &[f32]),
    init: Init<'_>,
    y: &mut [f32],
) {
    direct_image_in::<W16, T, 4, HALVES>(v, g, c, data, init, y);
}

/// [`direct_image`] with vectors `S`, taking the image's vectors `P` at a time: each weight
/// broadcast feeds `P` multiply-adds and each pixel vector [`CO_BLOCK`], as in a GEMM
/// micro-kernel (`4·P` accumulators: 12 of the 16 AVX2 registers, 16 of the 32 AVX-512 ones).
/// `HALVES`: the vectors are two rows each (`g.vectors.halves`).
#[inline(always)]
fn direct_image_in<S: Lanes, const T: usize, const P: usize, const HALVES: bool>(
    v: S,
    g: &Geometry<T>,
    (c_in, c_out): (usize, usize),
    (xp, packed): (&[f32], &[f32]),
    init: Init<'_>,
    y: &mut [f32],
) {
    let (plane, out_plane) = (g.plane, g.out_plane);
    debug_assert_eq!(xp.len(), c_in * plane);
    debug_assert_eq!(y.len(), c_out * out_plane);
    assert!(
        xp.len() >= c_in * plane && packed.len() >= c_out.div_ceil(CO_BLOCK) * c_in * T * CO_BLOCK
    );
    let reach = g.taps.iter().copied().max().unwrap_or(0);
    // The reads of one vector reach `span` past its tap's offset.
    let (vectors, halves) = (&g.vectors.list, g.vectors.halves);
    let span = if HALVES { halves + S::L / 2 } else { S::L };
    assert!(HALVES == (halves > 0));
    assert!(
        vectors
            .iter()
            .all(|u| u.0 + reach + span <= plane && u.2 <= S::L && u.1 + u.2 <= out_plane)
    );
    let block_len = c_in * T * CO_BLOCK;
    for (b, wb) in packed
        .chunks_exact(block_len.max(1))
        .enumerate()
        .take(c_out.div_ceil(CO_BLOCK))
    {
        let o0 = b * CO_BLOCK;
        let n_o = CO_BLOCK.min(c_out - o0);
        let mut start = [0.0f32; CO_BLOCK];
        if let Init::Bias(bias) = init {
            start[..n_o].copy_from_slice(&bias[o0..o0 + n_o]);
        }
        for group in vectors.chunks(P) {
            // A short last group repeats its first vector; the repeats are not stored.
            let offs: [usize; P] = std::array::from_fn(|p| group.get(p).unwrap_or(&group[0]).0);
            let mut acc: [[S::V; P]; CO_BLOCK] = std::array::from_fn(|o| [v.splat(start[o]); P]);
            for (ci, wci) in wb.chunks_exact(T * CO_BLOCK).enumerate() {
                let xc = &xp[ci * plane..][..plane];
                for (&t, wv) in g.taps.iter().zip(wci.chunks_exact(CO_BLOCK)) {
                    // SAFETY: offs[p] + t + span <= offs[p] + reach + span <= plane = xc.len()
                    // (asserted for every vector above).
                    let xv: [S::V; P] = std::array::from_fn(|p| unsafe {
                        let at = offs[p] + t;
                        if HALVES {
                            v.load_halves(xc, at, at + halves)
                        } else {
                            v.load(xc, at)
                        }
                    });
                    for (a, &wo) in acc.iter_mut().zip(wv) {
                        let wo = v.splat(wo);
                        for (ap, &xp) in a.iter_mut().zip(&xv) {
                            *ap = v.fma(wo, xp, *ap);
                        }
                    }
                }
            }
            for (o, a) in acc.iter().enumerate().take(n_o) {
                let yo = &mut y[(o0 + o) * out_plane..][..out_plane];
                for (&(_, out, n), &u) in group.iter().zip(a) {
                    if n == S::L {
                        // A whole vector: stored as one (a slice copy here is a `memcpy` call).
                        // SAFETY: out + n <= out_plane = yo.len() (a vector of the output).
                        unsafe {
                            match init {
                                Init::Bias(_) => v.store(u, yo, out),
                                Init::Add => v.store(v.add(v.load(yo, out), u), yo, out),
                            }
                        }
                        continue;
                    }
                    let u = v.to_array(u);
                    let dst = &mut yo[out..out + n];
                    match init {
                        Init::Bias(_) => dst.copy_from_slice(&u[..n]),
                        Init::Add => dst.iter_mut().zip(u).for_each(|(d, s)| *d += s),
                    }
                }
            }
        }
    }
}

/// `dy` of `images` images (`[images, c_out, hw]`) channels-last: `dst[(img·hw + p)·c8 + o]`
/// with `c8 = c_out` rounded up to [`L`], the lanes past `c_out` zero.
pub(super) fn channels_last(images: usize, c_out: usize, hw: usize, dy: &[f32], dst: &mut [f32]) {
    let c8 = c_out.next_multiple_of(L);
    debug_assert_eq!(dy.len(), images * c_out * hw);
    debug_assert_eq!(dst.len(), images * hw * c8);
    let (full_c, full_p) = (c_out / L * L, hw / L * L);
    for (src, d) in dy
        .chunks_exact(c_out * hw)
        .zip(dst.chunks_exact_mut(hw * c8))
    {
        if c8 != c_out {
            d.fill(0.0);
        }
        // 8 × 8 blocks (8 channels of 8 pixels) transposed in registers.
        for p0 in (0..full_p).step_by(L) {
            for o0 in (0..full_c).step_by(L) {
                // SAFETY: the block reads src[(o0 + k)·hw + p0..][..8] and writes
                // d[(p0 + k)·c8 + o0..][..8], k < 8, inside `src` and `d` as o0 + 8 <= c_out
                // <= c8 and p0 + 8 <= hw.
                unsafe { transpose8(&src[o0 * hw + p0..], hw, &mut d[p0 * c8 + o0..], c8) };
            }
        }
        // The channels past the last block of 8, then the pixels past the last block of 8.
        for o in full_c..c_out {
            for (p, &v) in src[o * hw..][..full_p].iter().enumerate() {
                d[p * c8 + o] = v;
            }
        }
        for (o, plane) in src.chunks_exact(hw).enumerate() {
            for (p, &v) in plane.iter().enumerate().skip(full_p) {
                d[p * c8 + o] = v;
            }
        }
    }
}

/// Weight and bias gradients of the images of one chunk, stride `S`, added to `dw`
/// (`[C_out, C_in, 3, 3]`) and `db` when given: `dW[o, i, ky, kx] += Σ_images Σ_(oy, ox)
/// dy[o, oy, ox] · xp[i, S·oy + ky, S·ox + kx]` and `db[o] += Σ dy[o, ·]`. `xp` holds the chunk's
/// padded inputs (`c_in` planes of `pad` per image), `dyc` its output gradients (`out` = `oh ×
/// ow` pixels) channels-last ([`channels_last`]). The lanes are output channels (16 where the CPU
/// has AVX-512F and `c_out` is a multiple of 16, else 8), so one `(output block, input channel)`
/// pair keeps its 9 taps in 9 accumulators and every pixel costs one vector load of `dy`, 9
/// broadcasts of `x` and 9 multiply-adds; each sum runs over the chunk's images and pixels in
/// order.
pub(super) fn weight_grad_chunk<const S: usize>(
    pad: Padded,
    out: (usize, usize),
    dims: (usize, usize, usize),
    data: (&[f32], &[f32]),
    grads: (&mut [f32], Option<&mut [f32]>),
) {
    match Width::for_multiple_of(dims.2) {
        Width::W8 => weight_grad_in::<W8, S>(W8, pad, out, dims, data, grads),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `W16` exists only where the CPU has AVX-512F.
        Width::W16(v) => unsafe { weight_grad_w16::<S>(v, pad, out, dims, data, grads) },
    }
}

/// [`weight_grad_in`] compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn weight_grad_w16<const S: usize>(
    v: W16,
    pad: Padded,
    out: (usize, usize),
    dims: (usize, usize, usize),
    data: (&[f32], &[f32]),
    grads: (&mut [f32], Option<&mut [f32]>),
) {
    weight_grad_in::<W16, S>(v, pad, out, dims, data, grads);
}

/// [`weight_grad_chunk`] with vectors `V` (their lanes must divide `c_out` or be 8).
#[inline(always)]
fn weight_grad_in<V: Lanes, const S: usize>(
    v: V,
    pad: Padded,
    (oh, ow): (usize, usize),
    (images, c_in, c_out): (usize, usize, usize),
    (xp, dyc): (&[f32], &[f32]),
    (dw, db): (&mut [f32], Option<&mut [f32]>),
) {
    let (pitch, plane) = (pad.pitch, pad.plane());
    let (ohw, c8) = (oh * ow, c_out.next_multiple_of(L));
    assert!(V::L == L || c_out.is_multiple_of(V::L));
    assert!(xp.len() >= images * c_in * plane && dyc.len() >= images * ohw * c8);
    assert!(S * (oh - 1) + 3 <= pad.h + 2 && S * (ow - 1) + 3 <= pitch);
    // Two vectors of output channels per pass where their 18 accumulators fit in the registers,
    // so that each broadcast of `x` feeds two multiply-adds (a 16-lane broadcast takes a slot of
    // the vector pipes on Zen4: docs/training.md, "The convolution").
    if V::REGISTERS >= 32 && c_out.is_multiple_of(2 * V::L) {
        for o0 in (0..c_out).step_by(2 * V::L) {
            let block = Block {
                o0,
                c_out,
                c_in,
                images,
            };
            weight_grad_block::<V, S, 2>(v, pad, (oh, ow), block, (xp, dyc), dw);
        }
    } else {
        for o0 in (0..c_out).step_by(V::L) {
            let block = Block {
                o0,
                c_out,
                c_in,
                images,
            };
            weight_grad_block::<V, S, 1>(v, pad, (oh, ow), block, (xp, dyc), dw);
        }
    }
    if let Some(db) = db {
        for o0 in (0..c_out).step_by(V::L) {
            let n_o = V::L.min(c_out - o0);
            let mut acc = v.splat(0.0);
            for p in 0..images * ohw {
                // SAFETY: p·c8 + o0 + V::L <= images·ohw·c8 <= dyc.len(), as above.
                acc = v.add(acc, unsafe { v.load(dyc, p * c8 + o0) });
            }
            for (j, &g) in v.to_array(acc).iter().enumerate().take(n_o) {
                db[o0 + j] += g;
            }
        }
    }
}

/// Which output channels a [`weight_grad_block`] pass sums, out of how many, over what.
#[derive(Clone, Copy)]
struct Block {
    /// The first output channel of the pass.
    o0: usize,
    c_out: usize,
    c_in: usize,
    images: usize,
}

/// The `dW` of `B` vectors of output channels from `block.o0`, every input channel: per
/// `(input channel, tap)` one accumulator per vector, summed over the images and pixels in order
/// (the order of every `B`), then added to `dw`.
#[inline(always)]
fn weight_grad_block<V: Lanes, const S: usize, const B: usize>(
    v: V,
    pad: Padded,
    (oh, ow): (usize, usize),
    Block {
        o0,
        c_out,
        c_in,
        images,
    }: Block,
    (xp, dyc): (&[f32], &[f32]),
    dw: &mut [f32],
) {
    let (pitch, plane) = (pad.pitch, pad.plane());
    let (ohw, c8) = (oh * ow, c_out.next_multiple_of(L));
    for ci in 0..c_in {
        let mut acc = [[v.splat(0.0); 9]; B];
        for img in 0..images {
            let xc = &xp[(img * c_in + ci) * plane..][..plane];
            let dc = &dyc[img * ohw * c8..][..ohw * c8];
            for oy in 0..oh {
                let rows: [&[f32]; 3] =
                    std::array::from_fn(|ky| &xc[(S * oy + ky) * pitch..][..S * (ow - 1) + 3]);
                for ox in 0..ow {
                    // SAFETY: (oy·ow + ox)·c8 + o0 + B·V::L <= ohw·c8 = dc.len(), as the caller's
                    // blocks end at c_out <= c8 or, for a partial vector, at c8.
                    let d: [V::V; B] = std::array::from_fn(|b| unsafe {
                        v.load(dc, (oy * ow + ox) * c8 + o0 + b * V::L)
                    });
                    for (ky, row) in rows.iter().enumerate() {
                        for kx in 0..3 {
                            // SAFETY: S·ox + kx <= S·(ow − 1) + 2 < row.len().
                            let xv = unsafe { v.broadcast(row, S * ox + kx) };
                            for (a, &d) in acc.iter_mut().zip(&d) {
                                a[ky * 3 + kx] = v.fma(d, xv, a[ky * 3 + kx]);
                            }
                        }
                    }
                }
            }
        }
        for (b, acc) in acc.iter().enumerate() {
            let n_o = V::L.min(c_out - o0 - b * V::L);
            for (t, &u) in acc.iter().enumerate() {
                for (j, &g) in v.to_array(u).iter().enumerate().take(n_o) {
                    dw[((o0 + b * V::L + j) * c_in + ci) * 9 + t] += g;
                }
            }
        }
    }
}

/// Forward: `y = conv(x, weight) + bias`. `weight` is `[C_out, C_in, 3, 3]`, `bias` `[C_out]`.
/// Direct kernel, images over rayon; each output is `bias + Σ_{c_in, ky, kx}` in that order.
pub fn conv3x3_forward(s: ConvShape, x: &[f32], weight: &[f32], bias: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), s.x_len());
    assert_eq!(y.len(), s.y_len());
    assert_eq!(weight.len(), s.weight_len());
    assert_eq!(bias.len(), s.c_out);
    let (chw_in, chw_out) = (s.c_in * s.hw(), s.c_out * s.hw());
    if s.n == 0 || chw_out == 0 {
        return;
    }
    if s.c_in == 0 {
        for (row, &b) in y.chunks_mut(s.hw()).zip(bias.iter().cycle()) {
            row.fill(b);
        }
        return;
    }
    let pad = Padded::new(s.h, s.w);
    let geom = Geometry::stride1(pad);
    let packed = pack_weights::<9>(s.c_out, s.c_in, |o, i, t| weight[(o * s.c_in + i) * 9 + t]);
    y.par_chunks_mut(chw_out).enumerate().for_each(|(i, y)| {
        with_scratch(s.c_in * pad.plane(), |xp| {
            pad.fill(s.c_in, &x[i * chw_in..][..chw_in], xp);
            direct_image(&geom, (s.c_in, s.c_out), (xp, &packed), Init::Bias(bias), y);
        });
    });
}

/// Backward. Accumulates (`+=`) into `dweight` and `dbias`, and into `dx` when given.
///
/// Chunks of [`grad_chunk_images`] images run over rayon. Each chunk sums its `[dW | db]`
/// partial (see `weight_grad_chunk`), and the partials are added in chunk order. `dx` per image
/// is the forward kernel applied to `dy` with the weights flipped and transposed
/// (`w'[i, o, 2-ky, 2-kx] = w[o, i, ky, kx]`), added to `dx`.
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
    let (chw_in, chw_out) = (s.c_in * s.hw(), s.c_out * s.hw());
    if s.n == 0 || chw_out == 0 || chw_in == 0 {
        return;
    }
    let pad = Padded::new(s.h, s.w);
    let geom = Geometry::stride1(pad);
    let wl = s.weight_len();
    // dx = conv(dy) with c_out inputs and c_in outputs: tap t of w' is tap 8 - t of w.
    let flipped = dx.is_some().then(|| {
        pack_weights::<9>(s.c_in, s.c_out, |i, o, t| {
            weight[(o * s.c_in + i) * 9 + 8 - t]
        })
    });
    let chunk = |GradChunk { partial, x, dy, dx }: GradChunk<'_>| {
        let images = x.len() / chw_in;
        let (pw, pb) = partial.split_at_mut(wl);
        let xp_len = images * s.c_in * pad.plane();
        let dyc_len = images * s.hw() * s.c_out.next_multiple_of(L);
        let dyp_len = if dx.is_some() {
            images * s.c_out * pad.plane()
        } else {
            0
        };
        with_scratch(xp_len + dyc_len + dyp_len, |scratch| {
            let (xp, rest) = scratch.split_at_mut(xp_len);
            let (dyc, dyp) = rest.split_at_mut(dyc_len);
            pad.fill(images * s.c_in, x, xp);
            channels_last(images, s.c_out, s.hw(), dy, dyc);
            weight_grad_chunk::<1>(
                pad,
                (s.h, s.w),
                (images, s.c_in, s.c_out),
                (xp, dyc),
                (pw, Some(pb)),
            );
            if let (Some(dx), Some(flipped)) = (dx, &flipped) {
                pad.fill(images * s.c_out, dy, dyp);
                for (img, dx) in dx.chunks_exact_mut(chw_in).enumerate() {
                    let dyi = &dyp[img * s.c_out * pad.plane()..][..s.c_out * pad.plane()];
                    direct_image(&geom, (s.c_out, s.c_in), (dyi, flipped), Init::Add, dx);
                }
            }
        });
    };
    let partials = backward_chunks(s.n, (chw_in, chw_out), wl + s.c_out, (x, dy, dx), chunk);
    for p in partials.chunks(wl + s.c_out) {
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
    let out = write(&dev, (n, c_out, h, w), &ys).map_err(tensor)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked transpose against the definition, with channel and pixel counts on both sides
    /// of the 8 × 8 blocks.
    #[test]
    fn channels_last_is_the_transpose() {
        for (images, c_out, hw) in [
            (2usize, 16usize, 64usize),
            (1, 13, 21),
            (3, 8, 8),
            (2, 5, 7),
            (1, 24, 1),
        ] {
            let dy: Vec<f32> = (0..images * c_out * hw).map(|i| i as f32 + 0.5).collect();
            let c8 = c_out.next_multiple_of(L);
            let mut got = vec![f32::NAN; images * hw * c8];
            channels_last(images, c_out, hw, &dy, &mut got);
            for img in 0..images {
                for p in 0..hw {
                    for o in 0..c8 {
                        let want = if o < c_out {
                            dy[(img * c_out + o) * hw + p]
                        } else {
                            0.0
                        };
                        let at = (img * hw + p) * c8 + o;
                        assert_eq!(got[at].to_bits(), want.to_bits(), "{images}x{c_out}x{hw}");
                    }
                }
            }
        }
    }
}
