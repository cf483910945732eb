//! 3×3 convolution, stride 2, padding 1, no bias, NCHW, as direct kernels: the ResNets' first
//! convolution of stages 2 and 3. Output `oh = (h + 1) / 2`, `ow = (w + 1) / 2`.
//!
//! The kernels are [`super::conv`]'s, with other geometries:
//! * forward: each padded input row is stored with its columns split by parity ([`Phased`]), so
//!   the 8 outputs of a vector read 8 consecutive values for every tap;
//! * `dx`: each of the four parity classes of input pixels `(y % 2, x % 2)` is a stride-1
//!   convolution of the padded `dy` with the 1, 2, 2 or 4 taps that reach it, written to a
//!   scratch plane and added into `dx` interleaved;
//! * `dW`: the stride-1 weight-gradient kernel reading every second padded pixel.
//!
//! Every sum runs in an order fixed by the shape; the weight gradient is summed per fixed chunk
//! of images in chunk order, so results are bit-identical for any thread count.

use rayon::prelude::*;

use super::conv::{
    ConvShape, Geometry, GradChunk, Init, Padded, backward_chunks, channels_last, direct_image,
    output_vectors, pack_weights, weight_grad_chunk, with_scratch,
};
use super::lanes::L;

/// Output height and width of the stride-2 convolution of an `h × w` input.
pub const fn out_dims(h: usize, w: usize) -> (usize, usize) {
    (h.div_ceil(2), w.div_ceil(2))
}

/// The forward's input layout: the [`Padded`] plane of an `h × w` input (`h + 2` rows, pixel
/// `(y, x)` at padded column `x + 1`), each row stored as its even padded columns then its odd
/// ones, `half` values each: padded column `pc` at `(pc % 2)·half + pc / 2`. Zero elsewhere.
#[derive(Clone, Copy, Debug)]
struct Phased {
    h: usize,
    w: usize,
    half: usize,
}

impl Phased {
    fn new(h: usize, w: usize) -> Self {
        // A vector read of output column block `ox` reaches `ox + 1 + L` in the even half.
        let (_, ow) = out_dims(h, w);
        Self {
            h,
            w,
            half: ow.next_multiple_of(L) + 1,
        }
    }
    const fn pitch(&self) -> usize {
        2 * self.half
    }
    const fn plane(&self) -> usize {
        (self.h + 2) * self.pitch()
    }
    /// Copies `planes` planes of `h × w` from `src` into `dst` (`planes · plane()` values).
    fn fill(&self, planes: usize, src: &[f32], dst: &mut [f32]) {
        let (h, w, half, pitch) = (self.h, self.w, self.half, self.pitch());
        debug_assert_eq!(src.len(), planes * h * w);
        debug_assert_eq!(dst.len(), planes * self.plane());
        dst.fill(0.0);
        for (d, s) in dst
            .chunks_exact_mut(self.plane())
            .zip(src.chunks_exact(h * w))
        {
            for (drow, srow) in d[pitch..(h + 1) * pitch]
                .chunks_exact_mut(pitch)
                .zip(s.chunks_exact(w))
            {
                let (even, odd) = drow.split_at_mut(half);
                // Pixel x is padded column x + 1: odd x → even column (x + 1) / 2, even x → odd
                // column x / 2.
                for (x, &v) in srow.iter().enumerate() {
                    if x % 2 == 1 {
                        even[x.div_ceil(2)] = v;
                    } else {
                        odd[x / 2] = v;
                    }
                }
            }
        }
    }
    /// Output `(oy, ox)` reads padded pixel `(2·oy + ky, 2·ox + kx)`.
    fn geometry(&self) -> Geometry<9> {
        let (oh, ow) = out_dims(self.h, self.w);
        let (pitch, half) = (self.pitch(), self.half);
        // Tap kx: padded column 2·ox + kx, i.e. even ox, odd ox, even ox + 1.
        let col = [0, half, 1];
        Geometry {
            plane: self.plane(),
            out_plane: oh * ow,
            // A vector's reads stay inside each half (`half` is at least `ow + 1`).
            vectors: output_vectors((oh, ow), |oy, ox| 2 * oy * pitch + ox),
            taps: std::array::from_fn(|t| (t / 3) * pitch + col[t % 3]),
        }
    }
}

/// Forward: `y = conv(x, weight)`, stride 2, padding 1; `weight` `[C_out, C_in, 3, 3]`, `s` the
/// input's shape (`s.c_out` output channels). Images over rayon; each output is
/// `Σ_{c_in, ky, kx}` in that order.
pub fn forward(s: ConvShape, x: &[f32], weight: &[f32], y: &mut [f32]) {
    let (oh, ow) = out_dims(s.h, s.w);
    let chw_in = s.c_in * s.hw();
    let chw_out = s.c_out * oh * ow;
    assert_eq!(x.len(), s.x_len());
    assert_eq!(y.len(), s.n * chw_out);
    assert_eq!(weight.len(), s.weight_len());
    if s.n == 0 || chw_out == 0 {
        return;
    }
    if s.c_in == 0 {
        y.fill(0.0);
        return;
    }
    let phased = Phased::new(s.h, s.w);
    let geom = phased.geometry();
    let packed = pack_weights::<9>(s.c_out, s.c_in, |o, i, t| weight[(o * s.c_in + i) * 9 + t]);
    let zeros = vec![0.0f32; s.c_out];
    y.par_chunks_mut(chw_out).enumerate().for_each(|(i, y)| {
        with_scratch(s.c_in * phased.plane(), |xp| {
            phased.fill(s.c_in, &x[i * chw_in..][..chw_in], xp);
            direct_image(
                &geom,
                (s.c_in, s.c_out),
                (xp, &packed),
                Init::Bias(&zeros),
                y,
            );
        });
    });
}

/// The taps of one parity class of input rows (or columns): `(k, d)` — kernel offset `k` reaches
/// input `2·m + r` from output `m + d`. Even inputs: the centre tap; odd ones: the first tap from
/// the next output and the last from the same.
const EVEN: Taps<1> = [(1, 0)];
const ODD: Taps<2> = [(0, 1), (2, 0)];

/// `(kernel offset, output offset)` pairs along one dimension.
type Taps<const N: usize> = [(usize, usize); N];

/// One parity class `(ry, rx)` of `dx`: a stride-1 direct convolution of the padded `dy`
/// (the [`Padded`] layout of the output) with the `T` taps that reach the class's pixels
/// `(2·m + ry, 2·n + rx)`, `hy × wx` of them per plane.
struct DxClass<const T: usize> {
    s: ConvShape,
    class: (usize, usize),
    dims: (usize, usize),
    geom: Geometry<T>,
    packed: Vec<f32>,
}

impl<const T: usize> DxClass<T> {
    /// The class `(ry, rx)` with its row taps `rows` and column taps `cols` (`R·C = T`).
    fn new<const R: usize, const C: usize>(
        s: ConvShape,
        class: (usize, usize),
        (rows, cols): (Taps<R>, Taps<C>),
        pad: Padded,
        weight: &[f32],
    ) -> Self {
        assert_eq!(R * C, T);
        let (hy, wx) = ((s.h + 1 - class.0) / 2, (s.w + 1 - class.1) / 2);
        let tap = |t: usize| (rows[t / C], cols[t % C]);
        let geom = Geometry {
            plane: pad.plane(),
            out_plane: hy * wx,
            vectors: output_vectors((hy, wx), |m, n| m * pad.pitch + n),
            taps: std::array::from_fn(|t| {
                let ((_, d), (_, e)) = tap(t);
                (d + 1) * pad.pitch + e + 1
            }),
        };
        // Output channel i of this convolution is dx's channel i: w'[i, o, t] = w[o, i, tap t].
        let packed = pack_weights::<T>(s.c_in, s.c_out, |i, o, t| {
            let ((ky, _), (kx, _)) = tap(t);
            weight[(o * s.c_in + i) * 9 + ky * 3 + kx]
        });
        Self {
            s,
            class,
            dims: (hy, wx),
            geom,
            packed,
        }
    }

    /// Adds this class of one image's `dx` (`c_in` planes) from its padded `dy` (`c_out`
    /// planes), through `ph` (scratch of at least `c_in·hy·wx`).
    fn add_to(&self, dyp: &[f32], ph: &mut [f32], dx: &mut [f32]) {
        let (s, (ry, rx), (hy, wx)) = (self.s, self.class, self.dims);
        if hy == 0 || wx == 0 {
            return;
        }
        let (w, ph) = (s.w, &mut ph[..s.c_in * hy * wx]);
        let zeros = vec![0.0f32; s.c_in];
        direct_image(
            &self.geom,
            (s.c_out, s.c_in),
            (dyp, &self.packed),
            Init::Bias(&zeros),
            ph,
        );
        for (d, p) in dx.chunks_exact_mut(s.hw()).zip(ph.chunks_exact(hy * wx)) {
            for (m, prow) in p.chunks_exact(wx).enumerate() {
                let drow = &mut d[(2 * m + ry) * w..][..w];
                for (v, &g) in drow.iter_mut().skip(rx).step_by(2).zip(prow) {
                    *v += g;
                }
            }
        }
    }
}

/// Backward. Accumulates (`+=`) into `dweight`, and into `dx` when given. Chunks of
/// [`grad_chunk_images`](super::conv::grad_chunk_images) images run over rayon; each chunk sums its `dW` partial and the
/// partials are added in chunk order.
pub fn backward(
    s: ConvShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
) {
    let (oh, ow) = out_dims(s.h, s.w);
    let (chw_in, ohw) = (s.c_in * s.hw(), oh * ow);
    let chw_out = s.c_out * ohw;
    assert_eq!(x.len(), s.x_len());
    assert_eq!(dy.len(), s.n * chw_out);
    assert_eq!(weight.len(), s.weight_len());
    assert_eq!(dweight.len(), s.weight_len());
    if let Some(dx) = &dx {
        assert_eq!(dx.len(), s.x_len());
    }
    if s.n == 0 || chw_out == 0 || chw_in == 0 {
        return;
    }
    let (xpad, dypad) = (Padded::new(s.h, s.w), Padded::new(oh, ow));
    let wl = s.weight_len();
    let classes = dx.is_some().then(|| {
        (
            DxClass::<1>::new(s, (0, 0), (EVEN, EVEN), dypad, weight),
            DxClass::<2>::new(s, (0, 1), (EVEN, ODD), dypad, weight),
            DxClass::<2>::new(s, (1, 0), (ODD, EVEN), dypad, weight),
            DxClass::<4>::new(s, (1, 1), (ODD, ODD), dypad, weight),
        )
    });
    let chunk = |GradChunk { partial, x, dy, dx }: GradChunk<'_>| {
        let images = x.len() / chw_in;
        let xp_len = images * s.c_in * xpad.plane();
        let dyc_len = images * ohw * s.c_out.next_multiple_of(L);
        let (dyp_len, ph_len) = match dx {
            Some(_) => (
                s.c_out * dypad.plane(),
                s.c_in * s.h.div_ceil(2) * s.w.div_ceil(2),
            ),
            None => (0, 0),
        };
        with_scratch(xp_len + dyc_len + dyp_len + ph_len, |scratch| {
            let (xp, rest) = scratch.split_at_mut(xp_len);
            let (dyc, rest) = rest.split_at_mut(dyc_len);
            let (dyp, ph) = rest.split_at_mut(dyp_len);
            xpad.fill(images * s.c_in, x, xp);
            channels_last(images, s.c_out, ohw, dy, dyc);
            weight_grad_chunk::<2>(
                xpad,
                (oh, ow),
                (images, s.c_in, s.c_out),
                (xp, dyc),
                (partial, None),
            );
            let (Some(dx), Some((c00, c01, c10, c11))) = (dx, &classes) else {
                return;
            };
            for (img, dx) in dx.chunks_exact_mut(chw_in).enumerate() {
                dypad.fill(s.c_out, &dy[img * chw_out..][..chw_out], dyp);
                c00.add_to(dyp, ph, dx);
                c01.add_to(dyp, ph, dx);
                c10.add_to(dyp, ph, dx);
                c11.add_to(dyp, ph, dx);
            }
        });
    };
    let partials = backward_chunks(s.n, (chw_in, chw_out), wl, (x, dy, dx), chunk);
    for p in partials.chunks(wl) {
        super::add_assign(dweight, p);
    }
}
