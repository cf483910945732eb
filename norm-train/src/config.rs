//! Model and training configuration: which norm, widths, optimiser and schedule settings.

use std::{fmt, str::FromStr};

use norm_kernels::{Norm, NormKind, ParseNormError};
use serde::{Deserialize, Serialize};

use crate::{TrainError, data};

/// The layer after each convolution as the study names it: one of the kernels' norms, or none.
/// Its text form (`Display`, `FromStr`, serde) is the norm's name or `none`; it orders as the
/// study reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NormChoice {
    /// A normalisation layer.
    Norm(NormKind),
    /// No normalisation: conv → ReLU.
    None,
}

impl NormChoice {
    /// Every choice: the kernels' norms in their order, then none.
    pub fn all() -> Vec<NormChoice> {
        NormKind::ALL
            .iter()
            .map(|&k| NormChoice::Norm(k))
            .chain([NormChoice::None])
            .collect()
    }

    /// The norm's name, or `none`.
    pub fn name(self) -> &'static str {
        match self {
            NormChoice::Norm(k) => k.name(),
            NormChoice::None => "none",
        }
    }

    /// The norm's label (`GroupNorm`), or `no norm`.
    pub fn label(self) -> &'static str {
        match self {
            NormChoice::Norm(k) => k.label(),
            NormChoice::None => "no norm",
        }
    }

    /// One line for `--help`.
    pub fn about(self) -> &'static str {
        match self {
            NormChoice::Norm(k) => k.about(),
            NormChoice::None => "no normalisation: conv → ReLU",
        }
    }

    /// The kind, `None` for no norm.
    pub fn kind(self) -> Option<NormKind> {
        match self {
            NormChoice::Norm(k) => Some(k),
            NormChoice::None => None,
        }
    }
}

impl From<Option<NormKind>> for NormChoice {
    fn from(k: Option<NormKind>) -> Self {
        k.map_or(NormChoice::None, NormChoice::Norm)
    }
}

impl fmt::Display for NormChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NormChoice {
    type Err = ParseNormError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(NormChoice::None),
            _ => s.parse().map(NormChoice::Norm).map_err(|_| {
                ParseNormError(format!(
                    "unknown norm `{s}`; valid: {}, none",
                    NormKind::names()
                ))
            }),
        }
    }
}

impl Serialize for NormChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for NormChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The norm as the study's networks use it: `kind` with an affine, and running statistics
/// wherever its eval mode has them (BatchNorm); PyTorch's defaults otherwise, and `groups`, `eps`
/// where the norm has such a setting.
pub fn model_norm(kind: NormKind, groups: usize, eps: f32) -> Norm {
    let mut norm = Norm::new(kind);
    let mut set = |key: &str, value: String| {
        if norm.keys().contains(&key) {
            // Every key set here is valid for every norm that has it.
            let _ = norm.set(key, &value);
        }
    };
    set("affine", "true".into());
    set("groups", groups.to_string());
    set("eps", eps.to_string());
    if kind.mixes_samples() {
        set("track_running_stats", "true".into());
    }
    norm
}

/// Shape of the CNN: three conv blocks of the given widths, the norm (if any) after each conv.
/// Which network: today's plain CNN or a CIFAR ResNet of He et al. (2016, §4.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Three conv → norm → ReLU blocks (max pool after the first two), GAP, linear.
    #[default]
    Plain,
    /// ResNet-8: 3 stages of 1 basic block.
    Resnet8,
    /// ResNet-14: 3 stages of 2 basic blocks.
    Resnet14,
    /// ResNet-20: 3 stages of 3 basic blocks.
    Resnet20,
}

impl Arch {
    /// Every architecture.
    pub const ALL: [Arch; 4] = [Arch::Plain, Arch::Resnet8, Arch::Resnet14, Arch::Resnet20];

    /// The lowercase name (`resnet8`).
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Plain => "plain",
            Arch::Resnet8 => "resnet8",
            Arch::Resnet14 => "resnet14",
            Arch::Resnet20 => "resnet20",
        }
    }

    /// Basic blocks per stage (`n` of the paper, depth `6n + 2`); `None` for the plain CNN.
    pub const fn blocks_per_stage(self) -> Option<usize> {
        match self {
            Arch::Plain => None,
            Arch::Resnet8 => Some(1),
            Arch::Resnet14 => Some(2),
            Arch::Resnet20 => Some(3),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("unknown model `{s}`; valid: plain, resnet8, resnet14, resnet20")
            })
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn one() -> f32 {
    1.0
}

/// Shape of the network: the plain CNN's three conv blocks of the given widths, or a ResNet
/// whose stages have `16·width`, `32·width`, `64·width` channels; the norm after each conv.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The network (absent in files written before the ResNets: plain).
    #[serde(default)]
    pub arch: Arch,
    /// The ResNets' channel multiplier (stages of `round(16·width)`, `round(32·width)`,
    /// `round(64·width)` channels); must be 1 for the plain CNN, which uses `widths`.
    #[serde(default = "one")]
    pub width: f32,
    /// Output channels of the plain CNN's three 3×3 convolutions.
    pub widths: [usize; 3],
    /// The normalisation layer after each convolution, with its settings; `None`: conv → ReLU.
    pub norm: Option<Norm>,
}

/// GroupNorm's groups in the study's networks unless set (each width must be a multiple).
pub const DEFAULT_GROUPS: usize = 8;
/// The norms' eps unless set (PyTorch's default).
pub const DEFAULT_EPS: f32 = 1e-5;

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Plain,
            width: 1.0,
            widths: [16, 32, 64],
            norm: Some(model_norm(NormKind::Group, DEFAULT_GROUPS, DEFAULT_EPS)),
        }
    }
}

impl ModelConfig {
    /// `widths` with `choice` as the study's networks use it ([`model_norm`]) (the plain CNN).
    pub fn new(widths: [usize; 3], choice: NormChoice, groups: usize, eps: f32) -> Self {
        Self {
            widths,
            norm: choice.kind().map(|k| model_norm(k, groups, eps)),
            ..Self::default()
        }
    }

    /// Which norm, or none.
    pub fn choice(&self) -> NormChoice {
        self.norm.map(|n| n.kind()).into()
    }

    /// The norm's label with its distinguishing setting (`GroupNorm (G = 8)`), or "no norm".
    pub fn norm_label(&self) -> String {
        self.norm
            .map_or_else(|| "no norm".to_owned(), |n| n.label())
    }

    /// Channels of the three stages: `widths` for the plain CNN, `round([16, 32, 64]·width)` for
    /// a ResNet.
    pub fn stage_widths(&self) -> [usize; 3] {
        match self.arch {
            Arch::Plain => self.widths,
            _ => [16.0, 32.0, 64.0].map(|c: f32| (c * self.width).round().max(0.0) as usize),
        }
    }

    /// Checks the architecture, widths and the norm's settings against every layer.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.arch == Arch::Plain && self.width != 1.0 {
            return Err(TrainError::Hyper {
                name: "width",
                value: self.width,
                expected: "1 for the plain CNN (a ResNet multiplier; the plain CNN takes widths)",
            });
        }
        if self.arch != Arch::Plain && !(self.width.is_finite() && self.width > 0.0) {
            return Err(TrainError::Hyper {
                name: "width",
                value: self.width,
                expected: "finite and positive",
            });
        }
        let widths = self.stage_widths();
        if widths.contains(&0) {
            return Err(TrainError::Width { widths });
        }
        if let Some(norm) = &self.norm {
            if !(norm.eps().is_finite() && norm.eps() >= 0.0) {
                return Err(TrainError::Hyper {
                    name: "eps",
                    value: norm.eps(),
                    expected: "finite and non-negative",
                });
            }
            // A norm whose statistics mix samples is evaluated with its running statistics.
            if norm.kind().mixes_samples() && !norm.tracks_running() {
                return Err(TrainError::NeedsRunningStats { norm: norm.label() });
            }
            for &width in &widths {
                norm.validate(norm_kernels::Nchw::new(1, width, 2, 2))
                    .map_err(|reason| TrainError::Norm { width, reason })?;
            }
        }
        Ok(())
    }
}

/// Learning-rate schedule after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from the peak learning rate down to 0 at the last step.
    Cosine,
    /// The peak learning rate, ×0.1 from 50 % of the steps and ×0.01 from 75 %.
    Step,
}

/// Which share's batch statistics update BatchNorm's running statistics when a batch is split
/// over workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunningFrom {
    /// Worker 0's share only, as PyTorch's DistributedDataParallel keeps rank 0's buffers.
    #[default]
    Worker0,
    /// Every share in turn (W momentum updates per step).
    Every,
}

/// Which gradient tensors [`TrainConfig::grad_noise`] perturbs. The noise is drawn for every
/// tensor whichever is chosen, so a part gets exactly the draws it gets under `All`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseOn {
    /// Every parameter.
    #[default]
    All,
    /// The conv and linear weights (the weight-decayed tensors).
    Weights,
    /// The rest: the norms' γ and β and the biases.
    Others,
}

impl NoiseOn {
    /// Whether a parameter with weight decay `decay` gets noise.
    pub fn includes(self, decay: bool) -> bool {
        match self {
            Self::All => true,
            Self::Weights => decay,
            Self::Others => !decay,
        }
    }
}

fn one_usize() -> usize {
    1
}

/// Everything [`crate::train`] needs besides the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The network.
    pub model: ModelConfig,
    /// Passes over the training set (the same for every batch size).
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Data-parallel workers: each batch is split into `workers` equal shares and BatchNorm
    /// computes its batch statistics per share; the loss is the mean over the whole batch.
    #[serde(default = "one_usize")]
    pub workers: usize,
    /// Which shares update BatchNorm's running statistics (with `workers > 1`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub running_from: RunningFrom,
    /// Learning rate at `batch = lr_ref_batch`.
    pub base_lr: f32,
    /// The batch size `base_lr` refers to; the peak rate is `base_lr · batch / lr_ref_batch`.
    pub lr_ref_batch: usize,
    /// SGD momentum (PyTorch semantics).
    pub momentum: f32,
    /// L2 weight decay on convolution and linear weights (not on biases or norm parameters).
    pub weight_decay: f32,
    /// Linear warm-up length in epochs (fractions allowed; 0 disables it).
    pub warmup_epochs: f32,
    /// Schedule after the warm-up.
    pub schedule: Schedule,
    /// Training-time augmentation.
    pub augment: data::Augment,
    /// Seed of the initialisation, the shuffling and the augmentation.
    pub seed: u64,
    /// Share of training (0 to 1) over which a norm with a settings warm-up reaches its final
    /// settings ([`norm_kernels::Norm::ramped`]; BatchRenorm's `r_max`, `d_max`); 0: none.
    #[serde(default)]
    pub norm_ramp: f32,
    /// A probe of rounding's part in training, 0 (the default) for none: before each update,
    /// every gradient element gets Gaussian noise of `grad_noise` times its tensor's RMS
    /// (float32 rounding is about 3e-7 of it in a typical step, docs/results.md), drawn from
    /// stream 2 of `seed`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub grad_noise: f32,
    /// Which tensors get `grad_noise` (a probe of where it acts).
    #[serde(default, skip_serializing_if = "is_default")]
    pub grad_noise_on: NoiseOn,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelConfig::default(),
            epochs: 20,
            batch: 32,
            workers: 1,
            running_from: RunningFrom::Worker0,
            base_lr: 0.1,
            lr_ref_batch: 32,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 1.0,
            schedule: Schedule::Cosine,
            augment: data::Augment::CIFAR,
            seed: 0,
            norm_ramp: 0.0,
            grad_noise: 0.0,
            grad_noise_on: NoiseOn::All,
        }
    }
}

impl TrainConfig {
    /// Peak learning rate, linearly scaled with the batch: `base_lr · batch / lr_ref_batch`.
    pub fn lr(&self) -> f32 {
        self.base_lr * self.batch as f32 / self.lr_ref_batch as f32
    }

    /// Checks every setting against a training set of `train_len` images.
    pub fn validate(&self, train_len: usize) -> Result<(), TrainError> {
        self.model.validate()?;
        if self.batch == 0 {
            return Err(TrainError::BatchZero);
        }
        if self.workers == 0 {
            return Err(TrainError::WorkersZero);
        }
        if !self.batch.is_multiple_of(self.workers) {
            return Err(TrainError::WorkersDivide {
                batch: self.batch,
                workers: self.workers,
            });
        }
        if train_len == 0 {
            return Err(TrainError::EmptyTrainSet);
        }
        if self.batch > train_len {
            return Err(TrainError::BatchTooLarge {
                batch: self.batch,
                train_len,
            });
        }
        if self.epochs == 0 {
            return Err(TrainError::EpochsZero);
        }
        let hyper = |name, value: f32, ok: bool, expected| {
            if ok {
                Ok(())
            } else {
                Err(TrainError::Hyper {
                    name,
                    value,
                    expected,
                })
            }
        };
        hyper(
            "base_lr",
            self.base_lr,
            self.base_lr.is_finite() && self.base_lr > 0.0,
            "finite and positive",
        )?;
        hyper(
            "lr_ref_batch",
            self.lr_ref_batch as f32,
            self.lr_ref_batch > 0,
            "at least 1",
        )?;
        let lr = self.lr();
        hyper("lr", lr, lr.is_finite() && lr > 0.0, "finite and positive")?;
        hyper(
            "momentum",
            self.momentum,
            (0.0..1.0).contains(&self.momentum),
            "in [0, 1)",
        )?;
        hyper(
            "weight_decay",
            self.weight_decay,
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "finite and non-negative",
        )?;
        hyper(
            "norm_ramp",
            self.norm_ramp,
            (0.0..=1.0).contains(&self.norm_ramp),
            "in [0, 1]",
        )?;
        hyper(
            "grad_noise",
            self.grad_noise,
            self.grad_noise.is_finite() && self.grad_noise >= 0.0,
            "finite and non-negative",
        )?;
        hyper(
            "warmup_epochs",
            self.warmup_epochs,
            self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0,
            "finite and non-negative",
        )?;
        Ok(())
    }
}
