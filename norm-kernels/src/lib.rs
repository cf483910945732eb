//! # norm-kernels
//!
//! Forward and backward CPU kernels for the normalisation layers of convolutional networks —
//! BatchNorm2d, LayerNorm over `[C, H, W]`, InstanceNorm2d and GroupNorm — with exactly PyTorch's
//! semantics (eps, momentum, unbiased running variance, `momentum = None`, affine flags).
//!
//! * **Data layout**: NCHW, `f32`, C order, described by [`Nchw`]. Every kernel takes plain
//!   slices, writes into caller-owned buffers and validates shapes once at its entry, returning a
//!   [`NormError`] that names the op and the dimension or buffer at fault.
//! * **Statistics**: computed stably (two-pass per L1 block, merged in f64 with Chan's update; see
//!   [`stats`]), never as `E[x²] - mean²` in f32. Forward returns `mean` and `rstd =
//!   1/sqrt(var + eps)` per normalisation group; backward consumes them.
//! * **SIMD**: `wide` f32x8 in [`simd`]; the level is fixed at compile time by the target features
//!   (`.cargo/config.toml` builds x86-64 for x86-64-v3, i.e. AVX2 + FMA). [`simd_level`] reports it.
//! * **Threads**: `rayon`, chosen per call with [`Parallelism`]. Work is split into chunks fixed by
//!   the data, never by the pool size, and partial results are combined in a fixed order, so the
//!   output is bit-identical for any `RAYON_NUM_THREADS`.
//! * **Reference twins**: [`reference`] holds a plain scalar f64 version of every kernel, the
//!   oracle of the tests.
//!
//! No feature flags. No dependency on dfdx, I/O or CLI types.

#![warn(missing_docs)]

pub mod batch_norm;
pub mod group_norm;
pub mod instance_norm;
pub mod layer_norm;
pub mod reference;
pub mod simd;
pub mod stats;

pub use batch_norm::*;
pub use group_norm::*;
pub use instance_norm::*;
pub use layer_norm::*;

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
/// InstanceNorm and GroupNorm; per element (`[C, H, W]`) for LayerNorm.
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

/// PyTorch's `momentum` argument of BatchNorm2d / InstanceNorm2d.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Momentum {
    /// `running = (1 - m)·running + m·batch` (PyTorch's default is 0.1).
    Exponential(f32),
    /// `momentum = None`: a cumulative moving average, `factor = 1 / num_batches_tracked`.
    CumulativeAverage,
}

/// Running statistics updated in place by a train-mode forward (`track_running_stats = True`).
#[derive(Debug)]
pub struct RunningStats<'a> {
    /// Running mean per channel, `[C]`.
    pub mean: &'a mut [f32],
    /// Running *unbiased* variance per channel, `[C]`.
    pub var: &'a mut [f32],
    /// PyTorch's `num_batches_tracked`; incremented by one per train-mode forward.
    pub num_batches_tracked: &'a mut u64,
    /// How the batch statistics are folded in.
    pub momentum: Momentum,
}

impl RunningStats<'_> {
    /// The weight of the new batch: `m`, or `1/num_batches_tracked` after the increment.
    /// Call once per forward; it increments `num_batches_tracked`.
    pub fn next_factor(&mut self) -> f64 {
        *self.num_batches_tracked += 1;
        match self.momentum {
            Momentum::Exponential(m) => m as f64,
            Momentum::CumulativeAverage => 1.0 / *self.num_batches_tracked as f64,
        }
    }
}

/// Everything a kernel can reject. Each variant names the op and what is wrong.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NormError {
    /// A dimension of the input shape is zero.
    #[error("{op}: dimension {dim} is zero")]
    ZeroDim {
        /// The kernel.
        op: &'static str,
        /// `n`, `c`, `h` or `w`.
        dim: &'static str,
    },
    /// A buffer has the wrong number of elements.
    #[error("{op}: `{buffer}` has {actual} elements, expected {expected}")]
    BufferLen {
        /// The kernel.
        op: &'static str,
        /// The argument's name (`x`, `dy`, `gamma`, `running_mean`, ...).
        buffer: &'static str,
        /// What the shape requires.
        expected: usize,
        /// What was given.
        actual: usize,
    },
    /// GroupNorm's group count is zero or does not divide the channels.
    #[error("{op}: groups = {groups} must be at least 1 and divide channels = {channels}")]
    Groups {
        /// The kernel.
        op: &'static str,
        /// Requested groups.
        groups: usize,
        /// Channels of the input.
        channels: usize,
    },
    /// Training-mode BatchNorm with one value per channel (`n·h·w = 1`): the variance is undefined.
    #[error(
        "{op}: expected more than 1 value per channel when training, got input of shape {shape}"
    )]
    OneValuePerChannel {
        /// The kernel.
        op: &'static str,
        /// The input shape.
        shape: Nchw,
    },
    /// Training-mode InstanceNorm with one spatial element per plane (`h·w = 1`): the variance
    /// of each instance is undefined.
    #[error("{op}: expected more than 1 spatial element when training, got input of shape {shape}")]
    OneSpatialElement {
        /// The kernel.
        op: &'static str,
        /// The input shape.
        shape: Nchw,
    },
    /// `eps` is negative, NaN or infinite.
    #[error("{op}: eps = {eps} must be finite and non-negative")]
    Eps {
        /// The kernel.
        op: &'static str,
        /// The value given.
        eps: f32,
    },
    /// Momentum outside `[0, 1]` or NaN.
    #[error("{op}: momentum = {momentum} must be in [0, 1]")]
    Momentum {
        /// The kernel.
        op: &'static str,
        /// The value given.
        momentum: f32,
    },
}

/// `Err(BufferLen)` unless `actual == expected`.
pub(crate) fn check_len(
    op: &'static str,
    buffer: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), NormError> {
    if expected == actual {
        Ok(())
    } else {
        Err(NormError::BufferLen {
            op,
            buffer,
            expected,
            actual,
        })
    }
}

/// `Err(Eps)` unless `eps` is finite and `>= 0`.
pub(crate) fn check_eps(op: &'static str, eps: f32) -> Result<(), NormError> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(NormError::Eps { op, eps })
    }
}

/// Checks the buffers of optional running statistics (`[c]` each) and the momentum.
pub(crate) fn check_running(
    op: &'static str,
    c: usize,
    running: Option<&RunningStats<'_>>,
) -> Result<(), NormError> {
    if let Some(r) = running {
        check_len(op, "running_mean", c, r.mean.len())?;
        check_len(op, "running_var", c, r.var.len())?;
        if let Momentum::Exponential(m) = r.momentum
            && !(0.0..=1.0).contains(&m)
        {
            return Err(NormError::Momentum { op, momentum: m });
        }
    }
    Ok(())
}

/// Checks affine parameters and their gradient buffers against `len` elements each.
pub(crate) fn check_affine(
    op: &'static str,
    len: usize,
    affine: Option<&Affine<'_>>,
    grads: Option<&AffineGrads<'_>>,
) -> Result<(), NormError> {
    if let Some(a) = affine {
        check_len(op, "gamma", len, a.gamma.len())?;
        check_len(op, "beta", len, a.beta.len())?;
    }
    if let Some(g) = grads {
        check_len(op, "dgamma", len, g.dgamma.len())?;
        check_len(op, "dbeta", len, g.dbeta.len())?;
    }
    Ok(())
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
