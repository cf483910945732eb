//! # norm-kernels
//!
//! Forward and backward CPU kernels for the normalisation layers of convolutional networks —
//! BatchNorm2d, LayerNorm over `[C, H, W]`, InstanceNorm2d and GroupNorm —
//! with exactly PyTorch's semantics (eps, momentum, unbiased running variance, `momentum = None`,
//! affine and `track_running_stats` flags) where PyTorch has the norm.
//!
//! * **Two ways in.** Free functions over plain slices per norm ([`group_norm_forward`], ...),
//!   each taking the norm's settings struct ([`GroupNorm`], ...) first and then one argument
//!   order: shape, input, affine, running statistics, output, parallelism. On top sits the
//!   descriptor [`Norm`], an enum of those settings that owns every per-norm fact (name, label,
//!   statistics and affine lengths, running state, train/eval behaviour) and dispatches to the
//!   kernels; callers that handle every norm alike (a training op, a CLI) use it.
//! * **Data layout**: NCHW, `f32`, C order, described by [`Nchw`]. Kernels write into
//!   caller-owned buffers and validate shapes once at their entry, returning a [`NormError`] that
//!   names the op and the dimension or buffer at fault.
//! * **Statistics**: computed stably (two-pass per L1 block, merged in f64 with Chan's update),
//!   never as `E[x²] - mean²` in f32, and safe up to `|x| = f32::MAX`. Forward saves `mean` and
//!   `rstd = 1/sqrt(var + eps)` per normalisation group ([`StatsMut`]); backward consumes them.
//! * **SIMD**: `wide` f32x8, the level fixed at compile time by the target features
//!   (`.cargo/config.toml` builds x86-64 for x86-64-v3, i.e. AVX2 + FMA). [`simd_level`] reports it.
//! * **Threads**: `rayon`, chosen per call with [`Parallelism`]. The walk (task sizes, which
//!   pass reuses which cache) follows the caches detected at run time ([`cache_sizes`]), but the
//!   order of every reduction is fixed by the data, so the output is bit-identical for any
//!   `RAYON_NUM_THREADS` on any machine.
//! * **Reference twins**: [`reference`](mod@reference) holds a plain scalar f64 version of every kernel, the
//!   oracle of the tests.
//!
//! Rooms, lowest first: `simd` (every use of `wide`), `tuning` (every size), `engine` (task
//! scheduling, moments, the per-plane and the grouped engines), then one module per norm, which
//! imports engines and never another norm, then [`Norm`]. No feature flags. No dependency on
//! dfdx, I/O or CLI types.

#![warn(missing_docs)]

mod engine;
mod error;
pub mod norms;
pub mod reference;
mod simd;
mod tuning;

pub use error::NormError;
pub use norms::*;
pub use tuning::{CacheSizes, cache_sizes};

/// Shape of an NCHW tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nchw {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Nchw {
    /// A shape from its four dimensions.
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Self { n, c, h, w }
    }
    /// Number of elements, `n·c·h·w`.
    pub const fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    /// True when any dimension is zero.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Elements in one channel plane, `h·w`.
    pub const fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Elements in one sample, `c·h·w`.
    pub const fn chw(&self) -> usize {
        self.c * self.h * self.w
    }
    /// `Err(ZeroDim)` naming the first zero dimension.
    pub fn check_nonzero(&self, op: &'static str) -> Result<(), NormError> {
        for (dim, v) in [("n", self.n), ("c", self.c), ("h", self.h), ("w", self.w)] {
            if v == 0 {
                return Err(NormError::ZeroDim { op, dim });
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Nchw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}x{}", self.n, self.c, self.h, self.w)
    }
}

/// How a kernel may use threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Parallelism {
    /// Run on the calling thread only.
    None,
    /// Spread fixed, data-determined chunks over the current rayon pool.
    #[default]
    Rayon,
}

/// Learnable affine parameters `y = x̂·gamma + beta`. Per channel (`[C]`) for BatchNorm,
/// BatchRenorm, InstanceNorm and GroupNorm; per element (`[C, H, W]`) for LayerNorm.
#[derive(Clone, Copy, Debug)]
pub struct Affine<'a> {
    /// Scale (PyTorch's `weight`).
    pub gamma: &'a [f32],
    /// Shift (PyTorch's `bias`).
    pub beta: &'a [f32],
}

/// Where backward writes the affine parameters' gradients (overwritten, not accumulated).
#[derive(Debug)]
pub struct AffineGrads<'a> {
    /// Gradient of the scale.
    pub dgamma: &'a mut [f32],
    /// Gradient of the shift.
    pub dbeta: &'a mut [f32],
}

/// The statistics a train-mode forward saves for its backward: one `(mean, rstd)` per
/// normalisation group, `rstd = 1/sqrt(var + eps)` with the biased variance.
#[derive(Clone, Copy, Debug)]
pub struct Stats<'a> {
    /// Mean per group.
    pub mean: &'a [f32],
    /// `1/sqrt(var + eps)` per group.
    pub rstd: &'a [f32],
}

/// Where a train-mode forward writes its [`Stats`].
#[derive(Debug)]
pub struct StatsMut<'a> {
    /// Mean per group.
    pub mean: &'a mut [f32],
    /// `1/sqrt(var + eps)` per group.
    pub rstd: &'a mut [f32],
}

impl StatsMut<'_> {
    /// The same buffers, read-only.
    pub fn as_stats(&self) -> Stats<'_> {
        Stats {
            mean: self.mean,
            rstd: self.rstd,
        }
    }
}

/// What a train-mode forward writes: the output `y` and the saved statistics `S`
/// ([`StatsMut`], or a norm's own type when it saves more).
#[derive(Debug)]
pub struct Output<'a, S = StatsMut<'a>> {
    /// The normalised output, as long as `x`.
    pub y: &'a mut [f32],
    /// The saved statistics.
    pub stats: S,
}

/// What a backward reads from its forward: the input `x` and the statistics `S` ([`Stats`],
/// [`Running`] in eval mode, or a norm's own type).
#[derive(Clone, Copy, Debug)]
pub struct Saved<'a, S = Stats<'a>> {
    /// The forward's input.
    pub x: &'a [f32],
    /// The statistics the forward normalised with.
    pub stats: S,
}

/// What a backward writes: `dx` and, if asked for, the affine parameters' gradients.
#[derive(Debug)]
pub struct Grads<'a> {
    /// Gradient of the input, as long as `x` (overwritten).
    pub dx: &'a mut [f32],
    /// Gradients of `gamma` and `beta` (overwritten), or `None` to skip them.
    pub affine: Option<AffineGrads<'a>>,
}

/// PyTorch's `momentum` argument of BatchNorm2d / InstanceNorm2d.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Momentum {
    /// `running = (1 - m)·running + m·batch` (PyTorch's default is 0.1).
    Exponential(f32),
    /// `momentum = None`: a cumulative moving average, `factor = 1 / num_batches_tracked`.
    CumulativeAverage,
}

/// Running statistics, read-only: what eval mode normalises with.
#[derive(Clone, Copy, Debug)]
pub struct Running<'a> {
    /// Running mean per channel, `[C]`.
    pub mean: &'a [f32],
    /// Running *unbiased* variance per channel, `[C]`.
    pub var: &'a [f32],
}

/// Running statistics updated in place by a train-mode forward (`track_running_stats = True`).
#[derive(Debug)]
pub struct RunningStats<'a> {
    /// Running mean per channel, `[C]`.
    pub mean: &'a mut [f32],
    /// Running *unbiased* variance per channel, `[C]`.
    pub var: &'a mut [f32],
    /// PyTorch's `num_batches_tracked`; incremented by one per BatchNorm train-mode forward.
    pub num_batches_tracked: &'a mut u64,
}

impl RunningStats<'_> {
    /// The weight of the new batch under `momentum`: `m`, or `1/num_batches_tracked` after the
    /// increment. Call once per forward; it increments `num_batches_tracked`.
    pub fn next_factor(&mut self, momentum: Momentum) -> f64 {
        *self.num_batches_tracked += 1;
        match momentum {
            Momentum::Exponential(m) => m as f64,
            Momentum::CumulativeAverage => 1.0 / *self.num_batches_tracked as f64,
        }
    }

    /// The same buffers, read-only.
    pub fn as_running(&self) -> Running<'_> {
        Running {
            mean: self.mean,
            var: self.var,
        }
    }
}

/// The SIMD level `wide` was compiled for in this build: `"avx2+fma"`, `"avx"`, `"sse4.1"`,
/// `"sse2"`, `"neon"`, `"simd128"` or `"scalar"`.
pub const fn simd_level() -> &'static str {
    if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        "avx2+fma"
    } else if cfg!(target_feature = "avx") {
        "avx"
    } else if cfg!(target_feature = "sse4.1") {
        "sse4.1"
    } else if cfg!(target_feature = "sse2") {
        "sse2"
    } else if cfg!(target_feature = "neon") {
        "neon"
    } else if cfg!(target_feature = "simd128") {
        "simd128"
    } else {
        "scalar"
    }
}

/// The workspace README's Rust example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
