//! Every use of `wide` in the crate: f32x8 loads, stores, remainders and multi-accumulator
//! reductions; and the crate's only architecture-specific code, a prefetch hint and streaming
//! (non-temporal) stores on x86-64. The
//! generic bodies are `#[inline(always)]`; the SIMD level is whatever the build's target
//! features give `wide` (see `.cargo/config.toml` and [`crate::simd_level`]).
//!
//! Reductions accumulate in four independent f32x8 registers (32 lanes) over at most
//! [`BLOCK`] elements at a time and return f64, so callers combine blocks in f64 and the f32
//! rounding error is bounded by the block length, not the tensor length.

use wide::f32x8;

#[allow(unused_imports)] // named by the docs
use crate::tuning::BLOCK;

/// Lanes in one SIMD register.
const LANES: usize = 8;

#[inline(always)]
fn load(s: &[f32]) -> f32x8 {
    let a: [f32; LANES] = s[..LANES].try_into().unwrap();
    f32x8::from(a)
}

#[inline(always)]
fn store(d: &mut [f32], v: f32x8) {
    d[..LANES].copy_from_slice(&v.to_array());
}

/// Where an output pass writes: through the caches, or streamed past them (non-temporal
/// stores), for an output too large to be read back from cache by its consumer anyway: a cached
/// store first reads the line it writes, so streaming saves a third of a copy's traffic. The
/// values written are the same; [`crate::tuning::Tuning::sink`] chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sink {
    Cached,
    Streamed,
}

/// How one vector is written (the two [`Sink`]s).
trait Put {
    fn put(d: &mut [f32], v: f32x8);
}

struct ViaCache;

impl Put for ViaCache {
    #[inline(always)]
    fn put(d: &mut [f32], v: f32x8) {
        store(d, v);
    }
}

/// Streaming stores; the slice must start 32-byte aligned (see [`by_sink`]).
struct Streaming;

impl Put for Streaming {
    #[inline(always)]
    fn put(d: &mut [f32], v: f32x8) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
        {
            use core::arch::x86_64::{_mm256_loadu_ps, _mm256_stream_ps};
            let d = &mut d[..LANES];
            debug_assert_eq!(d.as_ptr() as usize % 32, 0);
            let a = v.to_array();
            // SAFETY: `d` holds 8 f32 (checked by the slice above) and starts 32-byte aligned
            // (`by_sink` splits off the unaligned head), as the aligned store requires.
            unsafe { _mm256_stream_ps(d.as_mut_ptr(), _mm256_loadu_ps(a.as_ptr())) };
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx")))]
        store(d, v);
    }
}

/// Elements before `y` reaches a 32-byte boundary (at most 7; all of `y` if shorter).
#[inline(always)]
fn aligned_head(y: &[f32]) -> usize {
    let off = (y.as_ptr() as usize) % 32;
    let head = if off == 0 { 0 } else { (32 - off) / 4 };
    head.min(y.len())
}

/// Orders the streamed stores of this thread before whatever it does next (a streamed line
/// is otherwise not yet visible to another thread when the pool's latch releases it).
#[inline(always)]
fn fence() {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    // SAFETY: `sfence` has no operands and no preconditions.
    unsafe {
        core::arch::x86_64::_mm_sfence()
    };
}

/// Outputs at least this long are written from their first 32-byte boundary on, after a short
/// head ([`cached_head`]): a vector store that straddles two cache lines costs about two, and
/// buffers from the allocator often start 16 bytes past a boundary (up to 12 % on GroupNorm's
/// small shapes, docs/performance.md "Alignment"). Shorter runs would pay more in the head.
const ALIGN_FROM: usize = 256;

/// The head [`by_sink`] writes before the vectors of a cached output: up to `y`'s first 32-byte
/// boundary if `y` is long, else none.
#[inline(always)]
fn cached_head(y: &[f32]) -> usize {
    if y.len() >= ALIGN_FROM {
        aligned_head(y)
    } else {
        0
    }
}

/// Runs an elementwise output body `$f::<P>(lo, hi)` over `0..$y.len()` for `$sink`, after a
/// head up to the first 32-byte boundary of `$y` ([`cached_head`] when cached; always when
/// streamed, which needs it). The bodies' per-element arithmetic does not depend on where the
/// split falls.
macro_rules! by_sink {
    ($sink:expr, $y:expr, |$lo:ident, $hi:ident, $P:ident| $body:expr) => {{
        let len = $y.len();
        match $sink {
            Sink::Cached => {
                type $P = ViaCache;
                let h = cached_head($y);
                {
                    let ($lo, $hi) = (0, h);
                    $body
                }
                {
                    let ($lo, $hi) = (h, len);
                    $body
                }
            }
            Sink::Streamed => {
                let h = aligned_head($y);
                {
                    type $P = ViaCache;
                    let ($lo, $hi) = (0, h);
                    $body
                }
                {
                    type $P = Streaming;
                    let ($lo, $hi) = (h, len);
                    $body
                }
                fence();
            }
        }
    }};
}

/// How an output pass centres a vector, `x·s - m` ([`Center`]): a subtraction when `s = 1`
/// (the same bits as the FMA with 1, and it leaves the FMA ports to the scale and shift), the
/// FMA when `s = ½`.
trait Centre {
    /// `x·s + mneg`, with `mneg = -m`.
    fn at(x: f32x8, s: f32x8, mneg: f32x8) -> f32x8;
}

struct Whole;

impl Centre for Whole {
    #[inline(always)]
    fn at(x: f32x8, _: f32x8, mneg: f32x8) -> f32x8 {
        x + mneg
    }
}

struct Halved;

impl Centre for Halved {
    #[inline(always)]
    fn at(x: f32x8, s: f32x8, mneg: f32x8) -> f32x8 {
        x.mul_add(s, mneg)
    }
}

/// Runs `$body` with `$K` the [`Centre`] of `$c`.
macro_rules! by_centre {
    ($c:expr, |$K:ident| $body:expr) => {{
        if $c.s == 1.0 {
            type $K = Whole;
            $body
        } else {
            type $K = Halved;
            $body
        }
    }};
}

#[inline(always)]
fn hsum(v: f32x8) -> f64 {
    v.to_array().iter().map(|&a| a as f64).sum()
}

/// Sum of `x` (any length; use blocks of at most [`BLOCK`] for accuracy).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f64 {
    let mut acc = [f32x8::ZERO; 4];
    let mut quads = x.chunks_exact(4 * LANES);
    for q in &mut quads {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += load(&q[k * LANES..]);
        }
    }
    let rest = quads.remainder();
    let mut octs = rest.chunks_exact(LANES);
    for o in &mut octs {
        acc[0] += load(o);
    }
    let tail: f64 = octs.remainder().iter().map(|&a| a as f64).sum();
    hsum((acc[0] + acc[1]) + (acc[2] + acc[3])) + tail
}

/// `(Σ (x - m), Σ (x - m)²)` — the second pass of the corrected two-pass algorithm.
#[inline(always)]
pub(crate) fn sum_dev(x: &[f32], m: f32) -> (f64, f64) {
    let mv = f32x8::splat(m);
    let mut s1 = [f32x8::ZERO; 4];
    let mut s2 = [f32x8::ZERO; 4];
    let mut quads = x.chunks_exact(4 * LANES);
    for q in &mut quads {
        for k in 0..4 {
            let d = load(&q[k * LANES..]) - mv;
            s1[k] += d;
            s2[k] = d.mul_add(d, s2[k]);
        }
    }
    let mut octs = quads.remainder().chunks_exact(LANES);
    for o in &mut octs {
        let d = load(o) - mv;
        s1[0] += d;
        s2[0] = d.mul_add(d, s2[0]);
    }
    let (mut t1, mut t2) = (0.0f64, 0.0f64);
    for &a in octs.remainder() {
        let d = (a - m) as f64;
        t1 += d;
        t2 += d * d;
    }
    (
        hsum((s1[0] + s1[1]) + (s1[2] + s1[3])) + t1,
        hsum((s2[0] + s2[1]) + (s2[2] + s2[3])) + t2,
    )
}

/// How an output pass centres `x` before scaling: `x·s - m`. Normally `s = 1` and `m` the pivot
/// (exactly `x - m`, one FMA); when `x - pivot` could overflow f32, `s = ½` and `m = pivot/2`
/// (exact halvings, so the difference is the same rounded value, halved) and the scale is
/// doubled to match.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Center {
    /// The factor `x` is multiplied by: 1 or ½.
    pub s: f32,
    /// The pivot, times `s`.
    pub m: f32,
}

impl Center {
    /// Subtract `pivot`; halve first if `huge`.
    #[inline]
    pub(crate) fn new(pivot: f32, huge: bool) -> Center {
        if huge {
            Center {
                s: 0.5,
                m: pivot * 0.5,
            }
        } else {
            Center { s: 1.0, m: pivot }
        }
    }

    /// Subtract `m` (never halved).
    #[inline]
    pub(crate) fn at(m: f32) -> Center {
        Center { s: 1.0, m }
    }
}

/// `y = (x - m)·a + b` with scalar `m`, `a`, `b` (the centring `c` gives `m`): normalise + per-channel affine with the mean
/// subtracted before the multiply, so inputs with a large mean (x + 1000) lose nothing to the
/// rounding of a folded shift `b - m·a`.
#[inline(always)]
pub(crate) fn center_scale_shift(
    x: &[f32],
    y: &mut [f32],
    (c, a, b): (Center, f32, f32),
    sink: Sink,
) {
    debug_assert_eq!(x.len(), y.len());
    by_sink!(sink, y, |lo, hi, P| by_centre!(c, |K| {
        center_scale_shift_to::<P, K>(&x[lo..hi], &mut y[lo..hi], c, a, b)
    }))
}

#[inline(always)]
fn center_scale_shift_to<P: Put, K: Centre>(x: &[f32], y: &mut [f32], c: Center, a: f32, b: f32) {
    let (s, m, a) = (c.s, c.m, a / c.s);
    let (sv, mv, av, bv) = (
        f32x8::splat(s),
        f32x8::splat(-m),
        f32x8::splat(a),
        f32x8::splat(b),
    );
    // Zipped by value, not as `&mut ChunksExact` (which keeps an exit test per iterator).
    let n = x.len() / LANES * LANES;
    for (xi, yi) in x[..n]
        .chunks_exact(LANES)
        .zip(y[..n].chunks_exact_mut(LANES))
    {
        P::put(yi, K::at(load(xi), sv, mv).mul_add(av, bv));
    }
    for i in n..x.len() {
        y[i] = x[i].mul_add(s, -m).mul_add(a, b);
    }
}

/// f32 values per 64-byte cache line.
const LINE: usize = 16;

/// [`center_scale_shift`] that also asks the CPU to load `ahead` (the next group's input, at
/// most `x.len()` values) into L1, one cache line per line of `y` written, so the reads of the
/// next group overlap the writes of this one. The hint changes no result.
#[inline(always)]
pub(crate) fn center_scale_shift_ahead(
    x: &[f32],
    y: &mut [f32],
    cab: (Center, f32, f32),
    (ahead, sink): (&[f32], Sink),
) {
    debug_assert_eq!(x.len(), y.len());
    by_sink!(sink, y, |lo, hi, P| {
        // The hint walks `ahead` from its start whichever piece of `y` is written.
        let ahead = &ahead[(lo / LINE * LINE).min(ahead.len())..];
        by_centre!(cab.0, |K| {
            center_scale_shift_ahead_to::<P, K>(&x[lo..hi], &mut y[lo..hi], cab, ahead)
        })
    })
}

#[inline(always)]
fn center_scale_shift_ahead_to<P: Put, K: Centre>(
    x: &[f32],
    y: &mut [f32],
    (c, a, b): (Center, f32, f32),
    ahead: &[f32],
) {
    let (sv, mv) = (f32x8::splat(c.s), f32x8::splat(-c.m));
    let (av, bv) = (f32x8::splat(a / c.s), f32x8::splat(b));
    let line = |xi: &[f32], yi: &mut [f32]| {
        P::put(yi, K::at(load(xi), sv, mv).mul_add(av, bv));
        let (xj, yj) = (&xi[LANES..], &mut yi[LANES..]);
        P::put(yj, K::at(load(xj), sv, mv).mul_add(av, bv));
    };
    // One loop that tests `ahead` per line: splitting off the hinted lines to save that test
    // ran the L3-resident 32x64x32x32 forward 10-12 % slower (docs/performance.md, "Alignment").
    let mut xs = x.chunks_exact(LINE);
    let mut ys = y.chunks_exact_mut(LINE);
    let mut next = ahead.chunks(LINE);
    for (xi, yi) in (&mut xs).zip(&mut ys) {
        if let Some(l) = next.next() {
            prefetch(l);
        }
        line(xi, yi);
    }
    center_scale_shift_to::<P, K>(xs.remainder(), ys.into_remainder(), c, a, b);
}

/// [`center_scale_shift_ahead`] over consecutive pieces of `x` (GroupNorm's channel planes):
/// `pieces` yields `(lo, hi, a, b)`, and `ahead` is indexed as `x` is. The sink and centring
/// are dispatched once for all pieces, not per piece (planes may be a few vectors long).
#[inline(always)]
pub(crate) fn center_scale_shift_pieces(
    x: &[f32],
    y: &mut [f32],
    (c, pieces): (Center, impl Iterator<Item = (usize, usize, f32, f32)>),
    (ahead, sink): (&[f32], Sink),
) {
    debug_assert_eq!(x.len(), y.len());
    let at = |lo: usize, hi: usize| ahead.get(lo..hi).unwrap_or(&[]);
    match sink {
        Sink::Cached => by_centre!(c, |K| {
            for (lo, hi, a, b) in pieces {
                let h = lo + cached_head(&y[lo..hi]);
                for (lo, hi) in [(lo, h), (h, hi)] {
                    let (xp, yp) = (&x[lo..hi], &mut y[lo..hi]);
                    center_scale_shift_ahead_to::<ViaCache, K>(xp, yp, (c, a, b), at(lo, hi));
                }
            }
        }),
        // Streamed stores need each piece's own aligned head.
        Sink::Streamed => {
            for (lo, hi, a, b) in pieces {
                let (xp, yp) = (&x[lo..hi], &mut y[lo..hi]);
                center_scale_shift_ahead(xp, yp, (c, a, b), (at(lo, hi), sink));
            }
        }
    }
}

/// Prefetch hint for the cache line holding `s[0]` (a no-op off x86-64 or for an empty slice).
#[inline(always)]
fn prefetch(s: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if !s.is_empty() {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is only a hint: it never faults, and the address is inside `s`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(s.as_ptr().cast()) };
    }
}

/// `dx = dy·a + (x - m)·b + c` with scalar `m`, `a`, `b`, `c`: [`dy_x_affine`] with the mean
/// subtracted first (see [`center_scale_shift`]).
#[inline(always)]
pub(crate) fn dy_xm_affine(
    (dy, x): (&[f32], &[f32]),
    dx: &mut [f32],
    (m, abc): (f32, (f32, f32, f32)),
    sink: Sink,
) {
    debug_assert!(dy.len() == x.len() && x.len() == dx.len());
    by_sink!(sink, dx, |lo, hi, P| dy_xm_affine_to::<P>(
        &dy[lo..hi],
        &x[lo..hi],
        &mut dx[lo..hi],
        m,
        abc
    ))
}

#[inline(always)]
fn dy_xm_affine_to<P: Put>(
    dy: &[f32],
    x: &[f32],
    dx: &mut [f32],
    m: f32,
    (a, b, c): (f32, f32, f32),
) {
    let (mv, av, bv, cv) = (
        f32x8::splat(m),
        f32x8::splat(a),
        f32x8::splat(b),
        f32x8::splat(c),
    );
    let n = x.len() / LANES * LANES;
    let lanes = dy[..n].chunks_exact(LANES).zip(x[..n].chunks_exact(LANES));
    for ((d, v), o) in lanes.zip(dx[..n].chunks_exact_mut(LANES)) {
        P::put(o, load(d).mul_add(av, (load(v) - mv).mul_add(bv, cv)));
    }
    for i in n..x.len() {
        dx[i] = dy[i].mul_add(a, (x[i] - m).mul_add(b, c));
    }
}

/// `y = ((x - m)·a + c)·g + beta` elementwise in `g`, `beta`: LayerNorm's normalise with the
/// mean subtracted first (see [`center_scale_shift`]), the pivot's correction `c`, and its
/// per-element affine.
#[inline(always)]
pub(crate) fn center_scale_affine(
    x: &[f32],
    y: &mut [f32],
    kac: (Center, f32, f32),
    (g, beta): (&[f32], &[f32]),
    sink: Sink,
) {
    debug_assert!(x.len() == y.len() && x.len() == g.len() && x.len() == beta.len());
    by_sink!(sink, y, |lo, hi, P| by_centre!(kac.0, |K| {
        let gb = (&g[lo..hi], &beta[lo..hi]);
        center_scale_affine_to::<P, K>(&x[lo..hi], &mut y[lo..hi], kac, gb)
    }))
}

#[inline(always)]
fn center_scale_affine_to<P: Put, K: Centre>(
    x: &[f32],
    y: &mut [f32],
    (k, a, c): (Center, f32, f32),
    (g, beta): (&[f32], &[f32]),
) {
    let (s, m, a) = (k.s, k.m, a / k.s);
    let (sv, mv, av, cv) = (
        f32x8::splat(s),
        f32x8::splat(-m),
        f32x8::splat(a),
        f32x8::splat(c),
    );
    let n = x.len() / LANES * LANES;
    let lanes = x[..n].chunks_exact(LANES).zip(g[..n].chunks_exact(LANES));
    let lanes = lanes.zip(beta[..n].chunks_exact(LANES));
    for (((v, gv), bv), o) in lanes.zip(y[..n].chunks_exact_mut(LANES)) {
        let xh = K::at(load(v), sv, mv).mul_add(av, cv);
        P::put(o, xh.mul_add(load(gv), load(bv)));
    }
    for i in n..x.len() {
        y[i] = x[i].mul_add(s, -m).mul_add(a, c).mul_add(g[i], beta[i]);
    }
}

/// `(Σ g·dy, Σ g·dy·(x - m), Σ (x - m))`: [`sum_dy_dxm_dev`] with `dy` weighted by a
/// per-element `g` (LayerNorm's gamma). Use blocks of at most [`BLOCK`] elements.
#[inline(always)]
pub(crate) fn sum_gdy_gdxm_dev(dy: &[f32], x: &[f32], g: &[f32], m: f32) -> (f64, f64, f64) {
    debug_assert!(dy.len() == x.len() && x.len() == g.len());
    let mv = f32x8::splat(m);
    let mut s1 = [f32x8::ZERO; 2];
    let mut s2 = [f32x8::ZERO; 2];
    let mut s3 = [f32x8::ZERO; 2];
    // Same order of operations as `sum_dy_dxm_dev` (pairs, then one register, then scalar).
    let n2 = x.len() / (2 * LANES) * (2 * LANES);
    let pairs = dy[..n2]
        .chunks_exact(2 * LANES)
        .zip(g[..n2].chunks_exact(2 * LANES));
    for ((d, gv), v) in pairs.zip(x[..n2].chunks_exact(2 * LANES)) {
        for k in 0..2 {
            let j = k * LANES;
            let gd = load(&d[j..]) * load(&gv[j..]);
            let e = load(&v[j..]) - mv;
            s1[k] += gd;
            s2[k] = gd.mul_add(e, s2[k]);
            s3[k] += e;
        }
    }
    let n1 = x.len() / LANES * LANES;
    let lanes = dy[n2..n1]
        .chunks_exact(LANES)
        .zip(g[n2..n1].chunks_exact(LANES));
    for ((d, gv), v) in lanes.zip(x[n2..n1].chunks_exact(LANES)) {
        let gd = load(d) * load(gv);
        let e = load(v) - mv;
        s1[0] += gd;
        s2[0] = gd.mul_add(e, s2[0]);
        s3[0] += e;
    }
    let (mut t1, mut t2, mut t3) = (0.0f64, 0.0f64, 0.0f64);
    for i in n1..x.len() {
        let gd = dy[i] * g[i];
        let e = (x[i] - m) as f64;
        t1 += gd as f64;
        t2 += gd as f64 * e;
        t3 += e;
    }
    (
        hsum(s1[0] + s1[1]) + t1,
        hsum(s2[0] + s2[1]) + t2,
        hsum(s3[0] + s3[1]) + t3,
    )
}

/// `dx = (dy·g)·a + (x - m)·b + c` with per-element `g` and scalar `m`, `a`, `b`, `c`:
/// [`dy_xm_affine`] with LayerNorm's per-element gamma.
#[inline(always)]
pub(crate) fn gdy_xm_affine(
    (dy, g): (&[f32], &[f32]),
    x: &[f32],
    dx: &mut [f32],
    (m, abc): (f32, (f32, f32, f32)),
    sink: Sink,
) {
    debug_assert!(dy.len() == x.len() && x.len() == dx.len() && x.len() == g.len());
    by_sink!(sink, dx, |lo, hi, P| gdy_xm_affine_to::<P>(
        (&dy[lo..hi], &g[lo..hi]),
        &x[lo..hi],
        &mut dx[lo..hi],
        m,
        abc
    ))
}

#[inline(always)]
fn gdy_xm_affine_to<P: Put>(
    (dy, g): (&[f32], &[f32]),
    x: &[f32],
    dx: &mut [f32],
    m: f32,
    (a, b, c): (f32, f32, f32),
) {
    let (mv, av, bv, cv) = (
        f32x8::splat(m),
        f32x8::splat(a),
        f32x8::splat(b),
        f32x8::splat(c),
    );
    let n = x.len() / LANES * LANES;
    let lanes = dy[..n].chunks_exact(LANES).zip(g[..n].chunks_exact(LANES));
    let lanes = lanes.zip(x[..n].chunks_exact(LANES));
    for (((d, gv), v), o) in lanes.zip(dx[..n].chunks_exact_mut(LANES)) {
        P::put(
            o,
            gdy_xm_lanes(load(d), load(gv), load(v) - mv, (av, bv, cv)),
        );
    }
    for i in n..x.len() {
        dx[i] = (dy[i] * g[i]).mul_add(a, (x[i] - m).mul_add(b, c));
    }
}

/// One vector of [`gdy_xm_affine`], from `dy`, `g` and `x - m`.
#[inline(always)]
fn gdy_xm_lanes(d: f32x8, g: f32x8, e: f32x8, (av, bv, cv): (f32x8, f32x8, f32x8)) -> f32x8 {
    (d * g).mul_add(av, e.mul_add(bv, cv))
}

/// `dgamma += dy·((x - m)·r + c)`, `dbeta += dy` elementwise: one sample's contribution to
/// LayerNorm's per-element affine gradients (`c` corrects the rounding of the pivot `m`).
#[inline(always)]
pub(crate) fn acc_dgamma_dbeta(
    (dy, x): (&[f32], &[f32]),
    (m, r, c): (f32, f32, f32),
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    debug_assert!(dy.len() == x.len() && x.len() == dgamma.len() && x.len() == dbeta.len());
    let (mv, rv, cv) = (f32x8::splat(m), f32x8::splat(r), f32x8::splat(c));
    let n = x.len() / LANES * LANES;
    let lanes = dy[..n].chunks_exact(LANES).zip(x[..n].chunks_exact(LANES));
    let outs = dgamma[..n]
        .chunks_exact_mut(LANES)
        .zip(dbeta[..n].chunks_exact_mut(LANES));
    for ((dv, v), (dg, db)) in lanes.zip(outs) {
        acc_lanes(load(dv), load(v) - mv, (rv, cv), (dg, db));
    }
    acc_tail(
        (&dy[n..], &x[n..]),
        (m, r, c),
        (&mut dgamma[n..], &mut dbeta[n..]),
    );
}

/// One vector of [`acc_dgamma_dbeta`], from `dy` and `x - m`.
#[inline(always)]
fn acc_lanes(d: f32x8, e: f32x8, (rv, cv): (f32x8, f32x8), (dg, db): (&mut [f32], &mut [f32])) {
    store(dg, d.mul_add(e.mul_add(rv, cv), load(dg)));
    store(db, d + load(db));
}

/// [`acc_dgamma_dbeta`] element by element (a tail shorter than a vector).
#[inline(always)]
fn acc_tail(
    (dy, x): (&[f32], &[f32]),
    (m, r, c): (f32, f32, f32),
    (dgamma, dbeta): (&mut [f32], &mut [f32]),
) {
    for i in 0..x.len() {
        dgamma[i] = dy[i].mul_add((x[i] - m).mul_add(r, c), dgamma[i]);
        dbeta[i] += dy[i];
    }
}

/// [`gdy_xm_affine`] and [`acc_dgamma_dbeta`] (with `r`, `c` of `rc`) in one read of `dy`, `x`:
/// LayerNorm's second backward pass when it has `γ` and asks for `dγ`, `dβ`. The same bits as
/// the two calls.
#[inline(always)]
pub(crate) fn gdy_xm_affine_acc(
    (dy, g): (&[f32], &[f32]),
    x: &[f32],
    dx: &mut [f32],
    (m, abc): (f32, (f32, f32, f32)),
    (rc, dgamma, dbeta): ((f32, f32), &mut [f32], &mut [f32]),
    sink: Sink,
) {
    debug_assert!(dy.len() == x.len() && x.len() == dx.len() && x.len() == g.len());
    debug_assert!(x.len() == dgamma.len() && x.len() == dbeta.len());
    by_sink!(sink, dx, |lo, hi, P| gdy_xm_affine_acc_to::<P>(
        (&dy[lo..hi], &g[lo..hi], &x[lo..hi]),
        &mut dx[lo..hi],
        (m, abc, rc),
        (&mut dgamma[lo..hi], &mut dbeta[lo..hi])
    ))
}

#[inline(always)]
fn gdy_xm_affine_acc_to<P: Put>(
    (dy, g, x): (&[f32], &[f32], &[f32]),
    dx: &mut [f32],
    (m, (a, b, c), (r, rc)): (f32, (f32, f32, f32), (f32, f32)),
    (dgamma, dbeta): (&mut [f32], &mut [f32]),
) {
    let (mv, av, bv, cv) = (
        f32x8::splat(m),
        f32x8::splat(a),
        f32x8::splat(b),
        f32x8::splat(c),
    );
    let (rv, rcv) = (f32x8::splat(r), f32x8::splat(rc));
    let n = x.len() / LANES * LANES;
    let ins = dy[..n].chunks_exact(LANES).zip(g[..n].chunks_exact(LANES));
    let ins = ins.zip(x[..n].chunks_exact(LANES));
    let outs = dgamma[..n]
        .chunks_exact_mut(LANES)
        .zip(dbeta[..n].chunks_exact_mut(LANES));
    let outs = dx[..n].chunks_exact_mut(LANES).zip(outs);
    for (((d, gv), v), (o, acc)) in ins.zip(outs) {
        let (d, e) = (load(d), load(v) - mv);
        P::put(o, gdy_xm_lanes(d, load(gv), e, (av, bv, cv)));
        acc_lanes(d, e, (rv, rcv), acc);
    }
    gdy_xm_affine_to::<P>((&dy[n..], &g[n..]), &x[n..], &mut dx[n..], m, (a, b, c));
    acc_tail(
        (&dy[n..], &x[n..]),
        (m, r, rc),
        (&mut dgamma[n..], &mut dbeta[n..]),
    );
}

/// `(Σ dy, Σ dy·(x - m), Σ (x - m))`: the backward reductions with the mean subtracted in f32
/// first (so a large mean does not cancel), and the deviation sum, from which a
/// backward corrects the f32 rounding of a saved mean `m` (`mean = m + Σ(x - m)/count`) in the
/// same pass. Use blocks of at most [`BLOCK`] elements.
#[inline(always)]
pub(crate) fn sum_dy_dxm_dev(dy: &[f32], x: &[f32], m: f32) -> (f64, f64, f64) {
    debug_assert_eq!(dy.len(), x.len());
    let mv = f32x8::splat(m);
    let mut s1 = [f32x8::ZERO; 2];
    let mut s2 = [f32x8::ZERO; 2];
    let mut s3 = [f32x8::ZERO; 2];
    let n2 = x.len() / (2 * LANES) * (2 * LANES);
    for (d, v) in dy[..n2]
        .chunks_exact(2 * LANES)
        .zip(x[..n2].chunks_exact(2 * LANES))
    {
        for k in 0..2 {
            let g = load(&d[k * LANES..]);
            let e = load(&v[k * LANES..]) - mv;
            s1[k] += g;
            s2[k] = g.mul_add(e, s2[k]);
            s3[k] += e;
        }
    }
    let n1 = x.len() / LANES * LANES;
    for (d, v) in dy[n2..n1]
        .chunks_exact(LANES)
        .zip(x[n2..n1].chunks_exact(LANES))
    {
        let g = load(d);
        let e = load(v) - mv;
        s1[0] += g;
        s2[0] = g.mul_add(e, s2[0]);
        s3[0] += e;
    }
    let (mut t1, mut t2, mut t3) = (0.0f64, 0.0f64, 0.0f64);
    for (&d, &v) in dy[n1..].iter().zip(&x[n1..]) {
        let e = (v - m) as f64;
        t1 += d as f64;
        t2 += d as f64 * e;
        t3 += e;
    }
    (
        hsum(s1[0] + s1[1]) + t1,
        hsum(s2[0] + s2[1]) + t2,
        hsum(s3[0] + s3[1]) + t3,
    )
}

#[cfg(test)]
mod tests {
    //! Each helper against the same operation done lane by lane in scalar f64.
    use super::*;

    fn data(n: usize, off: f32) -> Vec<f32> {
        (0..n)
            .map(|i| off + ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect()
    }

    const LENS: [usize; 10] = [0, 1, 3, 7, 8, 9, 17, 31, 33, 1000];

    #[test]
    fn reductions_match_scalar() {
        for &n in &LENS {
            let x = data(n, 3.0);
            let want: f64 = x.iter().map(|&a| a as f64).sum();
            assert!((sum(&x) - want).abs() < 1e-4, "sum n={n}");
            let (s1, s2) = sum_dev(&x, 2.5);
            let w1: f64 = x.iter().map(|&a| (a - 2.5) as f64).sum();
            let w2: f64 = x.iter().map(|&a| ((a - 2.5) as f64).powi(2)).sum();
            assert!(
                (s1 - w1).abs() < 1e-4 && (s2 - w2).abs() < 1e-4,
                "sum_dev n={n}"
            );
        }
    }

    #[test]
    fn centered_helpers_match_scalar() {
        for &n in &LENS {
            let x = data(n, 1000.0);
            let dy = data(n, 0.3);
            let m = 1000.01f32;
            let mut y = vec![0.0; n];
            center_scale_shift(&x, &mut y, (Center::at(m), 1.5, -0.25), Sink::Cached);
            for i in 0..n {
                assert!(
                    (y[i] - ((x[i] - m) * 1.5 - 0.25)).abs() < 1e-5,
                    "center_scale_shift n={n}"
                );
            }
            dy_xm_affine((&dy, &x), &mut y, (m, (0.7, -1.1, 0.3)), Sink::Cached);
            for i in 0..n {
                let want = dy[i] * 0.7 - 1.1 * (x[i] - m) + 0.3;
                assert!((y[i] - want).abs() < 1e-5, "dy_xm_affine n={n}");
            }
            // The prefetching variant is bit-identical, whatever the length of its hint.
            for ahead in [&dy[..0], &dy[..n / 2], &dy[..]] {
                let mut z = vec![0.0; n];
                center_scale_shift(&x, &mut y, (Center::at(m), 1.5, -0.25), Sink::Cached);
                let cab = (Center::at(m), 1.5, -0.25);
                center_scale_shift_ahead(&x, &mut z, cab, (ahead, Sink::Cached));
                assert_eq!(y, z, "center_scale_shift_ahead n={n}");
            }
        }
    }

    #[test]
    fn per_element_helpers_match_scalar() {
        for &n in &LENS {
            let x = data(n, 1000.0);
            let dy = data(n, 0.3);
            let g = data(n, 0.9);
            let be = data(n, -0.1);
            let m = 1000.01f32;
            let (s1, s2, s3) = sum_gdy_gdxm_dev(&dy, &x, &g, m);
            let w3: f64 = x.iter().map(|&b| (b - m) as f64).sum();
            assert!((s3 - w3).abs() < 1e-4, "sum_gdy_gdxm_dev n={n}");
            let w1: f64 = (0..n).map(|i| dy[i] as f64 * g[i] as f64).sum();
            let w2: f64 = (0..n)
                .map(|i| dy[i] as f64 * g[i] as f64 * (x[i] - m) as f64)
                .sum();
            assert!(
                (s1 - w1).abs() < 1e-4 && (s2 - w2).abs() < 1e-4,
                "sum_gdy_gdxm_dev n={n}"
            );
            let mut y = vec![0.0; n];
            center_scale_affine(
                &x,
                &mut y,
                (Center::at(m), 1.5, 0.125),
                (&g, &be),
                Sink::Cached,
            );
            for i in 0..n {
                let want = ((x[i] - m) as f64 * 1.5 + 0.125) * g[i] as f64 + be[i] as f64;
                assert!(
                    (y[i] as f64 - want).abs() < 1e-5,
                    "center_scale_affine n={n}"
                );
            }
            gdy_xm_affine((&dy, &g), &x, &mut y, (m, (0.7, -1.1, 0.3)), Sink::Cached);
            for i in 0..n {
                let want = dy[i] as f64 * g[i] as f64 * 0.7 - 1.1 * (x[i] - m) as f64 + 0.3;
                assert!((y[i] as f64 - want).abs() < 1e-5, "gdy_xm_affine n={n}");
            }
            let mut dg: Vec<f32> = data(n, 0.5);
            let mut db: Vec<f32> = data(n, -0.5);
            let (dg0, db0) = (dg.clone(), db.clone());
            acc_dgamma_dbeta((&dy, &x), (m, 0.8, 0.05), &mut dg, &mut db);
            for i in 0..n {
                let want_g = dg0[i] as f64 + dy[i] as f64 * ((x[i] - m) as f64 * 0.8 + 0.05);
                assert!((dg[i] as f64 - want_g).abs() < 1e-5, "acc_dgamma n={n}");
                assert!(
                    (db[i] as f64 - (db0[i] + dy[i]) as f64).abs() < 1e-6,
                    "acc_dbeta n={n}"
                );
            }
        }
    }

    /// Every output helper writes the same bits streamed as cached, wherever the output starts
    /// (the streamed path splits off a cached head up to a 32-byte boundary).
    #[test]
    fn streamed_outputs_equal_cached() {
        let n = 300;
        let (x, dy, g, be) = (data(n, 1000.0), data(n, 0.3), data(n, 0.9), data(n, -0.1));
        type Out = fn(Sink, &[f32], &[f32], &[f32], &[f32], &mut [f32]);
        let helpers: [(&str, Out); 5] = [
            ("center_scale_shift", |k, x, _, _, _, y| {
                center_scale_shift(x, y, (Center::at(1000.01), 1.5, -0.25), k)
            }),
            ("center_scale_shift_ahead", |k, x, d, _, _, y| {
                center_scale_shift_ahead(x, y, (Center::at(1000.01), 1.5, -0.25), (d, k))
            }),
            ("dy_xm_affine", |k, x, d, _, _, y| {
                dy_xm_affine((d, x), y, (1000.01, (0.7, -1.1, 0.3)), k)
            }),
            ("center_scale_affine", |k, x, _, g, b, y| {
                center_scale_affine(x, y, (Center::at(1000.01), 1.5, 0.125), (g, b), k)
            }),
            ("gdy_xm_affine", |k, x, d, g, _, y| {
                gdy_xm_affine((d, g), x, y, (1000.01, (0.7, -1.1, 0.3)), k)
            }),
        ];
        for (name, f) in helpers {
            for start in 0..9 {
                for len in [0, 1, 5, 8, 17, 64, 200] {
                    let r = start..start + len;
                    let (xs, ds, gs, bs) =
                        (&x[r.clone()], &dy[r.clone()], &g[r.clone()], &be[r.clone()]);
                    let mut a = vec![f32::NAN; n];
                    let mut b = vec![f32::NAN; n];
                    f(Sink::Cached, xs, ds, gs, bs, &mut a[r.clone()]);
                    f(Sink::Streamed, xs, ds, gs, bs, &mut b[r.clone()]);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a), bits(&b), "{name} start={start} len={len}");
                }
            }
        }
    }

    /// The fused LayerNorm pass writes the bits of `gdy_xm_affine` then `acc_dgamma_dbeta`,
    /// cached or streamed, wherever the slices start.
    #[test]
    fn fused_dx_and_affine_grads_equal_the_two_calls() {
        let n = 300;
        let (x, dy, g) = (data(n, 1000.0), data(n, 0.3), data(n, 0.9));
        let (mabc, (r, c)) = ((1000.01, (0.7, -1.1, 0.3)), (0.8, 0.05));
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for sink in [Sink::Cached, Sink::Streamed] {
            for start in 0..9 {
                for len in [0, 1, 5, 8, 17, 64, 200] {
                    let w = start..start + len;
                    let (xs, ds, gs) = (&x[w.clone()], &dy[w.clone()], &g[w]);
                    let (mut dx1, mut dg1, mut db1) =
                        (vec![0.0; len], data(len, 0.5), data(len, -0.5));
                    let (mut dx2, mut dg2, mut db2) = (dx1.clone(), dg1.clone(), db1.clone());
                    gdy_xm_affine((ds, gs), xs, &mut dx1, mabc, sink);
                    acc_dgamma_dbeta((ds, xs), (mabc.0, r, c), &mut dg1, &mut db1);
                    gdy_xm_affine_acc(
                        (ds, gs),
                        xs,
                        &mut dx2,
                        mabc,
                        ((r, c), &mut dg2, &mut db2),
                        sink,
                    );
                    let what = format!("{sink:?} start={start} len={len}");
                    assert_eq!(bits(&dx1), bits(&dx2), "dx {what}");
                    assert_eq!(bits(&dg1), bits(&dg2), "dgamma {what}");
                    assert_eq!(bits(&db1), bits(&db2), "dbeta {what}");
                }
            }
        }
    }

    #[test]
    fn sum_dy_dxm_dev_matches_scalar() {
        for &n in &LENS {
            let x = data(n, 1000.0);
            let dy = data(n, 0.3);
            let m = 1000.01f32;
            let (s1, s2, s3) = sum_dy_dxm_dev(&dy, &x, m);
            let w1: f64 = dy.iter().map(|&a| a as f64).sum();
            let w2: f64 = dy
                .iter()
                .zip(&x)
                .map(|(&a, &b)| a as f64 * (b - m) as f64)
                .sum();
            let w3: f64 = x.iter().map(|&b| (b - m) as f64).sum();
            assert!((s1 - w1).abs() < 1e-4, "sum_dy_dxm_dev n={n}");
            assert!(
                (s2 - w2).abs() < 1e-4 && (s3 - w3).abs() < 1e-4,
                "sum_dy_dxm_dev n={n}"
            );
        }
    }
}
