//! The vectors of the direct convolution kernels ([`super::conv`]): 8 lanes (an AVX2 register
//! where the build has AVX2 and FMA, an array elsewhere) and, on x86-64 CPUs found at run time to
//! have AVX-512F, 16 lanes.
//!
//! A lane is one output's sum, and every lane runs the same fused multiply-adds in the same order
//! whatever the width, so the width changes the speed, never the bits (`tests/ops.rs` checks the
//! two widths against each other). `NORMLAB_CONV_LANES=8` keeps the 8-lane kernels on a machine
//! with AVX-512 (to compare the two).
//!
//! Written with intrinsics: from plain loops over `[f32; 8]` LLVM rebuilds the overlapping
//! shifted rows of a 3×3 window with shuffles instead of unaligned loads, and spills the
//! accumulators.

/// Lanes of the narrow vectors; also the alignment of the kernels' layouts (the padded planes'
/// pitch, the channels-last gradient), which the wide vectors read only where it is a whole
/// number of them.
pub(super) const L: usize = 8;

/// Lanes of the widest vector, the length of [`Lanes::to_array`].
pub(super) const MAX_LANES: usize = 16;

/// The operations of the direct kernels on one vector type. A value of the type is the proof
/// that the CPU runs its instructions (so the methods are safe).
pub(super) trait Lanes: Copy {
    /// Lanes per vector.
    const L: usize;
    /// Vector registers of the code this type is used in (16 with AVX2, 32 with AVX-512):
    /// how many accumulators a loop can keep without spilling.
    const REGISTERS: usize;
    /// One vector.
    type V: Copy;
    fn splat(self, v: f32) -> Self::V;
    /// The `Self::L` values of `s` from `at`.
    ///
    /// # Safety
    /// `at + Self::L <= s.len()`. (Checked indexing would put a panic path inside the kernels'
    /// loops, after which LLVM stores every accumulator back to memory; each caller asserts its
    /// bounds once, before its loops.)
    unsafe fn load(self, s: &[f32], at: usize) -> Self::V;
    /// The lower half of the lanes from `s[lo..]`, the upper half from `s[hi..]` (two rows of
    /// `Self::L / 2` pixels in one vector).
    ///
    /// # Safety
    /// `lo + Self::L / 2 <= s.len()` and `hi + Self::L / 2 <= s.len()`.
    unsafe fn load_halves(self, s: &[f32], lo: usize, hi: usize) -> Self::V;
    /// Writes the lanes to `s[at..at + Self::L]`.
    ///
    /// # Safety
    /// `at + Self::L <= s.len()`.
    unsafe fn store(self, v: Self::V, s: &mut [f32], at: usize);
    /// `s[at]` in every lane, loaded by the broadcast itself (a load, not a shuffle).
    ///
    /// # Safety
    /// `at < s.len()`.
    unsafe fn broadcast(self, s: &[f32], at: usize) -> Self::V;
    /// `a·b + c`, fused where the vector type has FMA.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// The lanes, then zeros up to [`MAX_LANES`].
    #[inline(always)]
    fn to_array(self, v: Self::V) -> [f32; MAX_LANES] {
        let mut out = [0.0f32; MAX_LANES];
        // SAFETY: Self::L <= MAX_LANES = out.len().
        unsafe { self.store(v, &mut out, 0) };
        out
    }
}

/// The 8-lane vectors, available everywhere.
#[derive(Clone, Copy, Debug)]
pub(super) struct W8;

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod w8 {
    use std::arch::x86_64::*;

    use super::{L, Lanes, W8};

    impl Lanes for W8 {
        const L: usize = L;
        const REGISTERS: usize = 16;
        type V = __m256;

        #[inline(always)]
        fn splat(self, v: f32) -> __m256 {
            // SAFETY: the build enables AVX (this module's cfg).
            unsafe { _mm256_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(self, s: &[f32], at: usize) -> __m256 {
            debug_assert!(at + L <= s.len());
            // SAFETY: in bounds by the caller's contract; unaligned load.
            unsafe { _mm256_loadu_ps(s.as_ptr().add(at)) }
        }
        #[inline(always)]
        unsafe fn store(self, v: __m256, s: &mut [f32], at: usize) {
            debug_assert!(at + L <= s.len());
            // SAFETY: in bounds by the caller's contract; unaligned store.
            unsafe { _mm256_storeu_ps(s.as_mut_ptr().add(at), v) }
        }
        #[inline(always)]
        unsafe fn load_halves(self, s: &[f32], lo: usize, hi: usize) -> __m256 {
            debug_assert!(lo.max(hi) + L / 2 <= s.len());
            // SAFETY: in bounds by the caller's contract; unaligned loads; AVX as above.
            unsafe {
                let (lo, hi) = (
                    _mm_loadu_ps(s.as_ptr().add(lo)),
                    _mm_loadu_ps(s.as_ptr().add(hi)),
                );
                _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(lo), hi)
            }
        }
        #[inline(always)]
        unsafe fn broadcast(self, s: &[f32], at: usize) -> __m256 {
            debug_assert!(at < s.len());
            // SAFETY: in bounds by the caller's contract.
            unsafe { _mm256_broadcast_ss(&*s.as_ptr().add(at)) }
        }
        #[inline(always)]
        fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: the build enables FMA (this module's cfg).
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: the build enables AVX (this module's cfg).
            unsafe { _mm256_add_ps(a, b) }
        }
    }
}

/// The portable twin of the AVX2 vectors (same operations lane by lane).
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
mod w8 {
    use super::{L, Lanes, W8};

    impl Lanes for W8 {
        const L: usize = L;
        const REGISTERS: usize = 16;
        type V = [f32; L];

        #[inline(always)]
        fn splat(self, v: f32) -> [f32; L] {
            [v; L]
        }
        #[inline(always)]
        unsafe fn load(self, s: &[f32], at: usize) -> [f32; L] {
            s[at..at + L].try_into().unwrap()
        }
        #[inline(always)]
        unsafe fn store(self, v: [f32; L], s: &mut [f32], at: usize) {
            s[at..at + L].copy_from_slice(&v);
        }
        #[inline(always)]
        unsafe fn load_halves(self, s: &[f32], lo: usize, hi: usize) -> [f32; L] {
            std::array::from_fn(|l| {
                if l < L / 2 {
                    s[lo + l]
                } else {
                    s[hi + l - L / 2]
                }
            })
        }
        #[inline(always)]
        unsafe fn broadcast(self, s: &[f32], at: usize) -> [f32; L] {
            [s[at]; L]
        }
        /// Not fused: without FMA in the build `mul_add` is a library call.
        #[inline(always)]
        fn fma(self, a: [f32; L], b: [f32; L], c: [f32; L]) -> [f32; L] {
            std::array::from_fn(|l| a[l] * b[l] + c[l])
        }
        #[inline(always)]
        fn add(self, a: [f32; L], b: [f32; L]) -> [f32; L] {
            std::array::from_fn(|l| a[l] + b[l])
        }
    }
}

/// The 16-lane AVX-512F vectors; a value exists only on a CPU that has them ([`W16::detect`]).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(super) struct W16(());

#[cfg(target_arch = "x86_64")]
impl W16 {
    /// The wide vectors, if this CPU has AVX-512F and `NORMLAB_CONV_LANES` is not `8` — and
    /// the build's 8 lanes fuse their multiply-adds as these do (AVX2 + FMA): a portable build
    /// keeps 8 lanes everywhere, so that its bits do not depend on the CPU either.
    pub(super) fn detect() -> Option<Self> {
        static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let wide = *WIDE.get_or_init(|| {
            cfg!(all(target_feature = "avx2", target_feature = "fma"))
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::env::var("NORMLAB_CONV_LANES").as_deref() != Ok("8")
        });
        wide.then_some(Self(()))
    }
}

// The methods call AVX-512F intrinsics from functions compiled without that feature; the kernels
// are instantiated for `W16` only inside `#[target_feature(enable = "avx512f")]` functions, where
// these inline together with the intrinsics into AVX-512 code.
#[cfg(target_arch = "x86_64")]
mod w16 {
    use std::arch::x86_64::*;

    use super::{Lanes, W16};

    impl Lanes for W16 {
        const L: usize = 16;
        const REGISTERS: usize = 32;
        type V = __m512;

        #[inline(always)]
        fn splat(self, v: f32) -> __m512 {
            // SAFETY: `self` exists only where the CPU has AVX-512F.
            unsafe { _mm512_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(self, s: &[f32], at: usize) -> __m512 {
            debug_assert!(at + 16 <= s.len());
            // SAFETY: in bounds by the caller's contract; AVX-512F as above; unaligned load.
            unsafe { _mm512_loadu_ps(s.as_ptr().add(at)) }
        }
        #[inline(always)]
        unsafe fn store(self, v: __m512, s: &mut [f32], at: usize) {
            debug_assert!(at + 16 <= s.len());
            // SAFETY: in bounds by the caller's contract; AVX-512F as above; unaligned store.
            unsafe { _mm512_storeu_ps(s.as_mut_ptr().add(at), v) }
        }
        #[inline(always)]
        unsafe fn load_halves(self, s: &[f32], lo: usize, hi: usize) -> __m512 {
            debug_assert!(lo.max(hi) + 8 <= s.len());
            // SAFETY: in bounds by the caller's contract; AVX-512F as above; unaligned loads.
            // (The 64-bit insert is AVX-512F; the 32-bit one would need AVX-512DQ.)
            unsafe {
                let lo = _mm256_castps_pd(_mm256_loadu_ps(s.as_ptr().add(lo)));
                let hi = _mm256_castps_pd(_mm256_loadu_ps(s.as_ptr().add(hi)));
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(lo), hi))
            }
        }
        #[inline(always)]
        unsafe fn broadcast(self, s: &[f32], at: usize) -> __m512 {
            debug_assert!(at < s.len());
            // SAFETY: in bounds by the caller's contract; AVX-512F as above.
            unsafe { _mm512_set1_ps(*s.get_unchecked(at)) }
        }
        #[inline(always)]
        fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: AVX-512F as above.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn add(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F as above.
            unsafe { _mm512_add_ps(a, b) }
        }
    }
}

/// The vector width a kernel runs with.
#[derive(Clone, Copy, Debug)]
pub(super) enum Width {
    /// 8 lanes.
    W8,
    /// 16 lanes (AVX-512F).
    #[cfg(target_arch = "x86_64")]
    W16(W16),
}

impl Width {
    /// The widest vectors whose lanes fit `n` a whole number of times (an output row's pixels, a
    /// layer's output channels): 16 lanes where the CPU has them and `n` is a multiple of 16.
    pub(super) fn for_multiple_of(n: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if n.is_multiple_of(16)
            && let Some(w) = W16::detect()
        {
            return Width::W16(w);
        }
        let _ = n;
        Width::W8
    }

    /// Lanes per vector.
    pub(super) fn lanes(self) -> usize {
        match self {
            Width::W8 => W8::L,
            #[cfg(target_arch = "x86_64")]
            Width::W16(_) => W16::L,
        }
    }
}

/// The 8×8 block transposed: `dst[p·ds + o] = src[o·ss + p]` for `o, p < 8` (rows of a
/// channels-first block to a channels-last one).
///
/// # Safety
/// `7·ss + 8 <= src.len()` and `7·ds + 8 <= dst.len()`.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[inline(always)]
pub(super) unsafe fn transpose8(src: &[f32], ss: usize, dst: &mut [f32], ds: usize) {
    use std::arch::x86_64::*;
    debug_assert!(7 * ss + 8 <= src.len() && 7 * ds + 8 <= dst.len());
    // SAFETY: every load reads src[k·ss..k·ss + 8] and every store writes dst[k·ds..k·ds + 8],
    // k < 8, in bounds by the caller's contract; the build enables AVX (this function's cfg).
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(src.as_ptr().add(k * ss)));
        let t: [__m256; 8] = std::array::from_fn(|k| {
            let (a, b) = (r[k / 2 * 2], r[k / 2 * 2 + 1]);
            if k % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // u[j]: lanes of columns j (low 128 bits: rows 0–3 of its half) for j in 0..4 per half.
        let quad = |lo: __m256, hi: __m256, upper: bool| {
            if upper {
                _mm256_shuffle_ps::<0xEE>(lo, hi)
            } else {
                _mm256_shuffle_ps::<0x44>(lo, hi)
            }
        };
        let u: [__m256; 8] = std::array::from_fn(|k| {
            let base = (k / 4) * 4;
            let (lo, hi) = (t[base + (k % 4) / 2], t[base + 2 + (k % 4) / 2]);
            quad(lo, hi, k % 2 == 1)
        });
        for j in 0..4 {
            let (a, b) = (u[j], u[4 + j]);
            _mm256_storeu_ps(
                dst.as_mut_ptr().add(j * ds),
                _mm256_permute2f128_ps::<0x20>(a, b),
            );
            _mm256_storeu_ps(
                dst.as_mut_ptr().add((j + 4) * ds),
                _mm256_permute2f128_ps::<0x31>(a, b),
            );
        }
    }
}

/// The portable twin of the AVX2 transpose.
///
/// # Safety
/// As the AVX2 one (checked here all the same).
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
#[inline(always)]
pub(super) unsafe fn transpose8(src: &[f32], ss: usize, dst: &mut [f32], ds: usize) {
    for o in 0..8 {
        for p in 0..8 {
            dst[p * ds + o] = src[o * ss + p];
        }
    }
}
