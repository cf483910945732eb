//! The norms, one module each (they import engines, never each other), and above them the
//! descriptor [`Norm`]: the one place that knows every per-norm fact. Callers that treat every
//! norm alike — a training op, a command line, a results file — derive from it instead of
//! matching on the norm themselves.

use std::{fmt, str::FromStr};

pub mod batch_norm;
pub mod batch_renorm;
pub mod group_norm;
pub mod instance_norm;
pub mod layer_norm;

pub use batch_norm::*;
pub use batch_renorm::*;
pub use group_norm::*;
pub use instance_norm::*;
pub use layer_norm::*;

use crate::{
    Affine, Grads, Momentum, Nchw, NormError, Output, Parallelism, Running, RunningStats, Saved,
    Stats, StatsMut,
};

/// Which norm, without its settings: the names of the command line and the results files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NormKind {
    /// BatchNorm2d.
    Batch,
    /// LayerNorm over `[C, H, W]`.
    Layer,
    /// InstanceNorm2d.
    Instance,
    /// GroupNorm.
    Group,
    /// Batch Renormalization.
    BatchRenorm,
}

impl NormKind {
    /// Every norm, in the order the study reports them.
    pub const ALL: &'static [NormKind] = &[
        NormKind::Batch,
        NormKind::Layer,
        NormKind::Instance,
        NormKind::Group,
        NormKind::BatchRenorm,
    ];

    /// The lowercase name of the command line, `Display`, `FromStr` and serde.
    pub const fn name(self) -> &'static str {
        match self {
            NormKind::Batch => "batch",
            NormKind::Layer => "layer",
            NormKind::Instance => "instance",
            NormKind::Group => "group",
            NormKind::BatchRenorm => "renorm",
        }
    }

    /// The name a person reads: `"BatchNorm"`, ...
    pub const fn label(self) -> &'static str {
        match self {
            NormKind::Batch => "BatchNorm",
            NormKind::Layer => "LayerNorm",
            NormKind::Instance => "InstanceNorm",
            NormKind::Group => "GroupNorm",
            NormKind::BatchRenorm => "BatchRenorm",
        }
    }

    /// One line on what it normalises over, for `--help`.
    pub const fn about(self) -> &'static str {
        match self {
            NormKind::Batch => "BatchNorm: per channel over (N, H, W); running statistics in eval",
            NormKind::Layer => "LayerNorm: per sample over (C, H, W); per-element affine",
            NormKind::Instance => "InstanceNorm: per sample and channel over (H, W)",
            NormKind::Group => "GroupNorm: per sample over groups of C/G channels and (H, W)",
            NormKind::BatchRenorm => {
                "BatchRenorm: BatchNorm corrected towards its running statistics (r_max, d_max)"
            }
        }
    }

    /// Whether its batch statistics mix samples, so that splitting a batch over workers changes
    /// the result.
    pub const fn mixes_samples(self) -> bool {
        matches!(self, NormKind::Batch | NormKind::BatchRenorm)
    }

    /// Every name, comma-separated, for error messages.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for NormKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NormKind {
    type Err = ParseNormError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NormKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| ParseNormError(format!("unknown norm `{s}`; valid: {}", Self::names())))
    }
}

/// A norm name or setting that cannot be parsed; the message is one line.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct ParseNormError(pub String);

/// Whether a layer is training (batch statistics, running statistics updated) or evaluating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training mode.
    Train,
    /// Eval mode.
    Eval,
}

/// A norm and its settings: the descriptor every caller derives from.
///
/// Its text form (`Display` is the label, [`Norm::spec`] / `FromStr` the spec) is
/// `name[:key=value,...]`, e.g. `group:groups=8,eps=1e-5`; [`Norm::keys`] lists a norm's keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    /// BatchNorm2d.
    Batch(BatchNorm),
    /// LayerNorm over `[C, H, W]`.
    Layer(LayerNorm),
    /// InstanceNorm2d.
    Instance(InstanceNorm),
    /// GroupNorm.
    Group(GroupNorm),
    /// Batch Renormalization.
    BatchRenorm(BatchRenorm),
}

/// Everything a forward through the descriptor reads and writes.
#[derive(Debug)]
pub struct Forward<'a> {
    /// Input shape.
    pub shape: Nchw,
    /// Input.
    pub x: &'a [f32],
    /// `gamma`, `beta` of [`Norm::affine_len`] each, exactly when the settings say affine.
    pub affine: Option<Affine<'a>>,
    /// Running statistics (`[C]`), exactly when [`Norm::tracks_running`].
    pub running: Option<RunningStats<'a>>,
    /// Output, as long as `x`.
    pub y: &'a mut [f32],
    /// What the backward will need, [`Norm::saved_len`] values, laid out by the norm.
    pub saved: &'a mut [f32],
}

/// Everything a backward through the descriptor reads and writes.
#[derive(Debug)]
pub struct Backward<'a> {
    /// Input shape.
    pub shape: Nchw,
    /// The forward's input.
    pub x: &'a [f32],
    /// Upstream gradient, as long as `x`.
    pub dy: &'a [f32],
    /// What the forward saved.
    pub saved: &'a [f32],
    /// `gamma`, exactly when the settings say affine.
    pub gamma: Option<&'a [f32]>,
    /// `dx` and the affine gradients.
    pub grads: Grads<'a>,
}

impl Norm {
    /// `kind` with PyTorch's default settings (GroupNorm: 32 groups, as in the paper).
    pub fn new(kind: NormKind) -> Norm {
        match kind {
            NormKind::Batch => Norm::Batch(BatchNorm::default()),
            NormKind::Layer => Norm::Layer(LayerNorm::default()),
            NormKind::Instance => Norm::Instance(InstanceNorm::default()),
            NormKind::Group => Norm::Group(GroupNorm::new(32)),
            NormKind::BatchRenorm => Norm::BatchRenorm(BatchRenorm::default()),
        }
    }

    /// Which norm.
    pub fn kind(&self) -> NormKind {
        match self {
            Norm::Batch(_) => NormKind::Batch,
            Norm::Layer(_) => NormKind::Layer,
            Norm::Instance(_) => NormKind::Instance,
            Norm::Group(_) => NormKind::Group,
            Norm::BatchRenorm(_) => NormKind::BatchRenorm,
        }
    }

    /// The setting keys of this norm, in [`Norm::spec`] order.
    pub fn keys(&self) -> &'static [&'static str] {
        match self {
            Norm::Batch(_) | Norm::Instance(_) => {
                &["eps", "momentum", "affine", "track_running_stats"]
            }
            Norm::Layer(_) => &["eps", "affine"],
            Norm::Group(_) => &["groups", "eps", "affine"],
            Norm::BatchRenorm(_) => &["eps", "momentum", "affine", "r_max", "d_max"],
        }
    }

    /// The value of setting `key` as text, `None` if this norm has no such setting.
    pub fn get(&self, key: &str) -> Option<String> {
        let momentum = |m: Momentum| match m {
            Momentum::Exponential(v) => v.to_string(),
            Momentum::CumulativeAverage => "none".to_owned(),
        };
        Some(match (self, key) {
            (_, "eps") => self.eps().to_string(),
            (_, "affine") => self.affine().to_string(),
            (Norm::Batch(s), "momentum") => momentum(s.momentum),
            (Norm::Instance(s), "momentum") => momentum(s.momentum),
            (Norm::Batch(s), "track_running_stats") => s.track_running_stats.to_string(),
            (Norm::Instance(s), "track_running_stats") => s.track_running_stats.to_string(),
            (Norm::Group(s), "groups") => s.groups.to_string(),
            (Norm::BatchRenorm(s), "momentum") => momentum(s.momentum),
            (Norm::BatchRenorm(s), "r_max") => s.r_max.to_string(),
            (Norm::BatchRenorm(s), "d_max") => s.d_max.to_string(),
            _ => return None,
        })
    }

    /// Sets `key` from text; the error names the key, the value and what is valid.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ParseNormError> {
        let (kind, keys) = (self.kind(), self.keys());
        let bad = |what: &str| ParseNormError(format!("{kind}: {key} = `{value}`: {what}"));
        let num = || value.parse::<f32>().map_err(|_| bad("not a number"));
        let flag = || {
            value
                .parse::<bool>()
                .map_err(|_| bad("expected true or false"))
        };
        let momentum = || match value {
            "none" => Ok(Momentum::CumulativeAverage),
            _ => num().map(Momentum::Exponential),
        };
        match (&mut *self, key) {
            (Norm::Batch(s), "eps") => s.eps = num()?,
            (Norm::Layer(s), "eps") => s.eps = num()?,
            (Norm::Instance(s), "eps") => s.eps = num()?,
            (Norm::Group(s), "eps") => s.eps = num()?,
            (Norm::BatchRenorm(s), "eps") => s.eps = num()?,
            (Norm::BatchRenorm(s), "affine") => s.affine = flag()?,
            (Norm::BatchRenorm(s), "momentum") => s.momentum = momentum()?,
            (Norm::BatchRenorm(s), "r_max") => s.r_max = num()?,
            (Norm::BatchRenorm(s), "d_max") => s.d_max = num()?,
            (Norm::Batch(s), "affine") => s.affine = flag()?,
            (Norm::Layer(s), "affine") => s.affine = flag()?,
            (Norm::Instance(s), "affine") => s.affine = flag()?,
            (Norm::Group(s), "affine") => s.affine = flag()?,
            (Norm::Batch(s), "momentum") => s.momentum = momentum()?,
            (Norm::Instance(s), "momentum") => s.momentum = momentum()?,
            (Norm::Batch(s), "track_running_stats") => s.track_running_stats = flag()?,
            (Norm::Instance(s), "track_running_stats") => s.track_running_stats = flag()?,
            (Norm::Group(s), "groups") => {
                s.groups = value.parse().map_err(|_| bad("not a whole number"))?
            }
            _ => {
                return Err(bad(&format!("no such setting; valid: {}", keys.join(", "))));
            }
        }
        Ok(())
    }

    /// The same norm with `key` set, for builder-style code; see [`Norm::set`].
    pub fn with(mut self, key: &str, value: impl fmt::Display) -> Result<Norm, ParseNormError> {
        self.set(key, &value.to_string())?;
        Ok(self)
    }

    /// `name:key=value,...` with every setting: parses back to the same norm.
    pub fn spec(&self) -> String {
        let kv: Vec<String> = self
            .keys()
            .iter()
            .map(|k| format!("{k}={}", self.get(k).unwrap_or_default()))
            .collect();
        format!("{}:{}", self.kind(), kv.join(","))
    }

    /// The label a person reads: the kind's, with the setting that tells variants apart.
    pub fn label(&self) -> String {
        match self {
            Norm::Group(s) => format!("GroupNorm (G = {})", s.groups),
            _ => self.kind().label().to_owned(),
        }
    }

    /// `eps`.
    pub fn eps(&self) -> f32 {
        match self {
            Norm::Batch(s) => s.eps,
            Norm::Layer(s) => s.eps,
            Norm::Instance(s) => s.eps,
            Norm::Group(s) => s.eps,
            Norm::BatchRenorm(s) => s.eps,
        }
    }

    /// Whether calls carry `gamma`, `beta`.
    pub fn affine(&self) -> bool {
        match self {
            Norm::Batch(s) => s.affine,
            Norm::Layer(s) => s.affine,
            Norm::Instance(s) => s.affine,
            Norm::Group(s) => s.affine,
            Norm::BatchRenorm(s) => s.affine,
        }
    }

    /// Whether the train forward updates running statistics (`[C]` each), which eval mode then
    /// normalises with; otherwise eval mode computes the same as train mode.
    pub fn tracks_running(&self) -> bool {
        match self {
            Norm::Batch(s) => s.track_running_stats,
            Norm::Instance(s) => s.track_running_stats,
            Norm::Layer(_) | Norm::Group(_) => false,
            Norm::BatchRenorm(_) => true,
        }
    }

    /// The PyTorch shape of `gamma` and `beta` for inputs of `shape`: `[C]`, or `[C, H, W]` for
    /// LayerNorm.
    pub fn affine_shape(&self, shape: Nchw) -> Vec<usize> {
        match self {
            Norm::Layer(_) => vec![shape.c, shape.h, shape.w],
            _ => vec![shape.c],
        }
    }

    /// Elements of `gamma` (and of `beta`) for inputs of `shape`; 0 without affine.
    pub fn affine_len(&self, shape: Nchw) -> usize {
        if self.affine() {
            self.affine_shape(shape).iter().product()
        } else {
            0
        }
    }

    /// Normalisation groups of a train forward: one `(mean, rstd)` each.
    pub fn stats_len(&self, shape: Nchw) -> usize {
        match self {
            Norm::Batch(_) | Norm::BatchRenorm(_) => shape.c,
            Norm::Layer(_) => shape.n,
            Norm::Instance(_) => shape.n * shape.c,
            Norm::Group(s) => shape.n * s.groups,
        }
    }

    /// Values a [`Forward`] in `mode` saves for its [`Backward`]: the statistics, or in eval
    /// mode with running statistics a copy of them.
    pub fn saved_len(&self, shape: Nchw, mode: Mode) -> usize {
        if mode == Mode::Eval && self.tracks_running() {
            2 * shape.c
        } else if let Norm::BatchRenorm(_) = self {
            4 * shape.c
        } else {
            2 * self.stats_len(shape)
        }
    }

    /// Checks the settings against inputs of `shape` without running anything (groups dividing
    /// the channels, eps).
    pub fn validate(&self, shape: Nchw) -> Result<(), NormError> {
        let op = self.kind().label();
        crate::error::check_eps(op, self.eps())?;
        if let Norm::Group(s) = self {
            s.channels_per_group(op, shape.c)?;
        }
        if let Norm::BatchRenorm(s) = self {
            s.check_limits(op)?;
        }
        Ok(())
    }

    /// The settings at progress `t` (0 to 1) of a warm-up of the settings themselves; the
    /// identity for norms without one.
    pub fn ramped(&self, t: f32) -> Norm {
        match self {
            // The paper's warm-up: r_max from 1 and d_max from 0, linearly.
            Norm::BatchRenorm(s) => Norm::BatchRenorm(BatchRenorm {
                r_max: 1.0 + (s.r_max - 1.0) * t.clamp(0.0, 1.0),
                d_max: s.d_max * t.clamp(0.0, 1.0),
                ..*s
            }),
            _ => *self,
        }
    }

    /// Forward in `mode`, dispatched to the norm's kernel.
    pub fn forward(&self, mode: Mode, a: Forward<'_>, par: Parallelism) -> Result<(), NormError> {
        const OP: &str = "norm forward";
        let Forward {
            shape,
            x,
            affine,
            running,
            y,
            saved,
        } = a;
        crate::error::check_len(OP, "saved", self.saved_len(shape, mode), saved.len())?;
        crate::error::check_tracking(OP, self.tracks_running(), running.is_some())?;
        if mode == Mode::Eval && self.tracks_running() {
            let Some(r) = running else {
                unreachable!("checked above");
            };
            let (m, v) = saved.split_at_mut(shape.c);
            crate::error::check_running_len(OP, shape.c, r.mean.len(), r.var.len())?;
            m.copy_from_slice(r.mean);
            v.copy_from_slice(r.var);
            let run = r.as_running();
            return match self {
                Norm::Batch(s) => batch_norm_forward_eval(s, shape, x, affine, run, y, par),
                Norm::Instance(s) => instance_norm_forward_eval(s, shape, x, affine, run, y, par),
                Norm::BatchRenorm(s) => batch_renorm_forward_eval(s, shape, x, affine, run, y, par),
                Norm::Layer(_) | Norm::Group(_) => unreachable!("tracks no running statistics"),
            };
        }
        if let Norm::BatchRenorm(s) = self {
            let Some(running) = running else {
                unreachable!("tracks running statistics: checked above");
            };
            let (mean, rest) = saved.split_at_mut(shape.c);
            let (rstd, rest) = rest.split_at_mut(shape.c);
            let (r, d) = rest.split_at_mut(shape.c);
            let stats = RenormStatsMut { mean, rstd, r, d };
            let out = Output { y, stats };
            return batch_renorm_forward_train(s, shape, x, affine, running, out, par);
        }
        let (mean, rstd) = saved.split_at_mut(saved.len() / 2);
        let out = Output {
            y,
            stats: StatsMut { mean, rstd },
        };
        match self {
            Norm::Batch(s) => batch_norm_forward_train(s, shape, x, affine, running, out, par),
            Norm::Instance(s) => {
                instance_norm_forward_train(s, shape, x, affine, running, out, par)
            }
            Norm::Layer(s) => layer_norm_forward(s, shape, x, affine, out, par),
            Norm::Group(s) => group_norm_forward(s, shape, x, affine, out, par),
            Norm::BatchRenorm(_) => unreachable!("handled above"),
        }
    }

    /// Backward in `mode` from what [`Norm::forward`] saved in the same mode.
    pub fn backward(&self, mode: Mode, a: Backward<'_>, par: Parallelism) -> Result<(), NormError> {
        const OP: &str = "norm backward";
        let Backward {
            shape,
            x,
            dy,
            saved,
            gamma,
            grads,
        } = a;
        crate::error::check_len(OP, "saved", self.saved_len(shape, mode), saved.len())?;
        let (first, second) = saved.split_at(saved.len() / 2);
        if mode == Mode::Eval && self.tracks_running() {
            let saved = Saved {
                x,
                stats: Running {
                    mean: first,
                    var: second,
                },
            };
            return match self {
                Norm::Batch(s) => batch_norm_backward_eval(s, shape, saved, dy, gamma, grads, par),
                Norm::Instance(s) => {
                    instance_norm_backward_eval(s, shape, saved, dy, gamma, grads, par)
                }
                Norm::BatchRenorm(s) => {
                    batch_renorm_backward_eval(s, shape, saved, dy, gamma, grads, par)
                }
                Norm::Layer(_) | Norm::Group(_) => unreachable!("tracks no running statistics"),
            };
        }
        if let Norm::BatchRenorm(s) = self {
            let c = shape.c;
            let stats = RenormStats {
                mean: &saved[..c],
                rstd: &saved[c..2 * c],
                r: &saved[2 * c..3 * c],
                d: &saved[3 * c..],
            };
            let saved = Saved { x, stats };
            return batch_renorm_backward_train(s, shape, saved, dy, gamma, grads, par);
        }
        let saved = Saved {
            x,
            stats: Stats {
                mean: first,
                rstd: second,
            },
        };
        match self {
            Norm::Batch(s) => batch_norm_backward_train(s, shape, saved, dy, gamma, grads, par),
            Norm::Instance(s) => {
                instance_norm_backward_train(s, shape, saved, dy, gamma, grads, par)
            }
            Norm::Layer(s) => layer_norm_backward(s, shape, saved, dy, gamma, grads, par),
            Norm::Group(s) => group_norm_backward(s, shape, saved, dy, gamma, grads, par),
            Norm::BatchRenorm(_) => unreachable!("handled above"),
        }
    }
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

impl FromStr for Norm {
    type Err = ParseNormError;
    /// `name` (default settings) or `name:key=value,...`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, settings) = s.split_once(':').unwrap_or((s, ""));
        let mut norm = Norm::new(name.trim().parse()?);
        for kv in settings
            .split(',')
            .map(str::trim)
            .filter(|kv| !kv.is_empty())
        {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(ParseNormError(format!(
                    "{name}: setting `{kv}` is not key=value; valid keys: {}",
                    norm.keys().join(", ")
                )));
            };
            norm.set(k.trim(), v.trim())?;
        }
        Ok(norm)
    }
}

impl serde::Serialize for NormKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for NormKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// As its [`Norm::spec`] string.
impl serde::Serialize for Norm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.spec())
    }
}

impl<'de> serde::Deserialize<'de> for Norm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<NormKind> for Norm {
    fn from(kind: NormKind) -> Norm {
        Norm::new(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips() {
        for &k in NormKind::ALL {
            let n = Norm::new(k);
            assert_eq!(n.spec().parse::<Norm>(), Ok(n), "{}", n.spec());
            assert_eq!(k.name().parse::<NormKind>(), Ok(k));
        }
        let g: Norm = "group:groups=8,eps=0.001".parse().unwrap();
        assert_eq!(g.label(), "GroupNorm (G = 8)");
        assert_eq!(g.eps(), 1e-3);
        let b: Norm = "batch:momentum=none".parse().unwrap();
        assert_eq!(b.get("momentum").as_deref(), Some("none"));
    }

    #[test]
    fn bad_specs_name_what_is_wrong() {
        let e = |s: &str| s.parse::<Norm>().unwrap_err().0;
        assert!(e("batchy").contains("unknown norm `batchy`"));
        assert!(e("group:groups=x").contains("groups = `x`"));
        assert!(e("layer:groups=2").contains("no such setting; valid: eps, affine"));
        assert!(e("layer:eps").contains("not key=value"));
    }
}
