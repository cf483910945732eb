//! What the kernels reject, and the checks every entry point runs once.

use crate::{Affine, AffineGrads, Grads, Momentum, Nchw, Running, RunningStats};

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
    /// The call's affine parameters or running statistics disagree with the settings
    /// (`affine`, `track_running_stats`).
    #[error("{op}: {what}")]
    Settings {
        /// The kernel.
        op: &'static str,
        /// What disagrees, e.g. "settings say affine = true, but no gamma/beta were given".
        what: &'static str,
    },
    /// BatchRenorm's limits are out of range (`r_max >= 1`, `d_max >= 0`, both finite).
    #[error("{op}: r_max = {r_max} must be finite and >= 1, d_max = {d_max} finite and >= 0")]
    RenormLimits {
        /// The kernel.
        op: &'static str,
        /// The value given for `r_max`.
        r_max: f32,
        /// The value given for `d_max`.
        d_max: f32,
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

/// `Err(Momentum)` unless an exponential momentum is in `[0, 1]`.
pub(crate) fn check_momentum(op: &'static str, momentum: Momentum) -> Result<(), NormError> {
    match momentum {
        Momentum::Exponential(m) if !(0.0..=1.0).contains(&m) => {
            Err(NormError::Momentum { op, momentum: m })
        }
        _ => Ok(()),
    }
}

/// `Err(Settings)` unless the call passes running statistics exactly when the settings track them.
pub(crate) fn check_tracking(op: &'static str, track: bool, given: bool) -> Result<(), NormError> {
    match (track, given) {
        (true, false) => Err(NormError::Settings {
            op,
            what: "settings say track_running_stats = true, but no running statistics were given",
        }),
        (false, true) => Err(NormError::Settings {
            op,
            what: "settings say track_running_stats = false, but running statistics were given",
        }),
        _ => Ok(()),
    }
}

/// `Err(Settings)` unless the call passes `gamma`/`beta` exactly when the settings say affine.
pub(crate) fn check_affine_flag(
    op: &'static str,
    affine: bool,
    given: bool,
) -> Result<(), NormError> {
    match (affine, given) {
        (true, false) => Err(NormError::Settings {
            op,
            what: "settings say affine = true, but no gamma/beta were given",
        }),
        (false, true) => Err(NormError::Settings {
            op,
            what: "settings say affine = false, but gamma/beta were given",
        }),
        _ => Ok(()),
    }
}

/// Checks the two buffers of running statistics (`[c]` each).
pub(crate) fn check_running_len(
    op: &'static str,
    c: usize,
    mean: usize,
    var: usize,
) -> Result<(), NormError> {
    check_len(op, "running_mean", c, mean)?;
    check_len(op, "running_var", c, var)
}

/// Checks the saved statistics (`len` entries each).
pub(crate) fn check_stats_len(
    op: &'static str,
    len: usize,
    mean: usize,
    rstd: usize,
) -> Result<(), NormError> {
    check_len(op, "mean", len, mean)?;
    check_len(op, "rstd", len, rstd)
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

/// The checks of every forward: non-zero shape, `x` and `y` of the shape's length, eps.
pub(crate) fn check_io(
    op: &'static str,
    shape: Nchw,
    x: usize,
    y: (&'static str, usize),
    eps: f32,
) -> Result<(), NormError> {
    shape.check_nonzero(op)?;
    check_len(op, "x", shape.len(), x)?;
    check_len(op, y.0, shape.len(), y.1)?;
    check_eps(op, eps)
}

/// Validates a train-mode forward of a norm with one group per channel (BatchNorm, BatchRenorm).
pub(crate) fn check_channel_forward(
    op: &'static str,
    (shape, x, y): (Nchw, usize, usize),
    (eps, momentum): (f32, Momentum),
    (affine_flag, affine): (bool, Option<&Affine<'_>>),
    (track, running): (bool, Option<&RunningStats<'_>>),
    stats: (usize, usize),
) -> Result<(), NormError> {
    check_io(op, shape, x, ("y", y), eps)?;
    check_stats_len(op, shape.c, stats.0, stats.1)?;
    check_affine_flag(op, affine_flag, affine.is_some())?;
    check_affine(op, shape.c, affine, None)?;
    check_tracking(op, track, running.is_some())?;
    if let Some(r) = running {
        check_running_len(op, shape.c, r.mean.len(), r.var.len())?;
    }
    check_momentum(op, momentum)?;
    if shape.n * shape.hw() == 1 {
        return Err(NormError::OneValuePerChannel { op, shape });
    }
    Ok(())
}

/// Validates a train-mode backward whose saved statistics have `groups` entries and whose
/// affine has `affine_len` entries.
pub(crate) fn check_backward(
    op: &'static str,
    shape: Nchw,
    (x, dy, dx): (usize, usize, usize),
    (groups, mean, rstd): (usize, usize, usize),
    (affine_flag, affine_len, gamma): (bool, usize, Option<&[f32]>),
    grads: &Grads<'_>,
) -> Result<(), NormError> {
    shape.check_nonzero(op)?;
    check_len(op, "x", shape.len(), x)?;
    check_len(op, "dy", shape.len(), dy)?;
    check_len(op, "dx", shape.len(), dx)?;
    check_stats_len(op, groups, mean, rstd)?;
    check_affine_flag(op, affine_flag, gamma.is_some())?;
    if let Some(g) = gamma {
        check_len(op, "gamma", affine_len, g.len())?;
    }
    check_affine(op, affine_len, None, grads.affine.as_ref())
}

/// Validates an eval-mode call of the fixed per-channel map.
pub(crate) fn check_eval(
    op: &'static str,
    shape: Nchw,
    (x, out, dy): (usize, (&'static str, usize), Option<usize>),
    running: Running<'_>,
    (affine_flag, affine, gamma): (bool, Option<&Affine<'_>>, Option<&[f32]>),
    eps: f32,
) -> Result<(), NormError> {
    check_io(op, shape, x, out, eps)?;
    if let Some(dy) = dy {
        check_len(op, "dy", shape.len(), dy)?;
    }
    check_running_len(op, shape.c, running.mean.len(), running.var.len())?;
    check_affine_flag(op, affine_flag, affine.is_some() || gamma.is_some())?;
    check_affine(op, shape.c, affine, None)?;
    if let Some(g) = gamma {
        check_len(op, "gamma", shape.c, g.len())?;
    }
    Ok(())
}
