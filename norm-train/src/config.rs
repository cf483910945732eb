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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Output channels of the three 3×3 convolutions.
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
            widths: [16, 32, 64],
            norm: Some(model_norm(NormKind::Group, DEFAULT_GROUPS, DEFAULT_EPS)),
        }
    }
}

impl ModelConfig {
    /// `widths` with `choice` as the study's networks use it ([`model_norm`]).
    pub fn new(widths: [usize; 3], choice: NormChoice, groups: usize, eps: f32) -> Self {
        Self {
            widths,
            norm: choice.kind().map(|k| model_norm(k, groups, eps)),
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

    /// Checks widths and the norm's settings against every layer.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.widths.contains(&0) {
            return Err(TrainError::Width {
                widths: self.widths,
            });
        }
        if let Some(norm) = &self.norm {
            if !(norm.eps().is_finite() && norm.eps() >= 0.0) {
                return Err(TrainError::Hyper {
                    name: "eps",
                    value: norm.eps(),
                    expected: "finite and non-negative",
                });
            }
            for &width in &self.widths {
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

/// Everything [`crate::train`] needs besides the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The network.
    pub model: ModelConfig,
    /// Passes over the training set (the same for every batch size).
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
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
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelConfig::default(),
            epochs: 20,
            batch: 32,
            base_lr: 0.1,
            lr_ref_batch: 32,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 1.0,
            schedule: Schedule::Cosine,
            augment: data::Augment {
                crop_pad: 4,
                flip: true,
            },
            seed: 0,
            norm_ramp: 0.0,
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
            "warmup_epochs",
            self.warmup_epochs,
            self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0,
            "finite and non-negative",
        )?;
        Ok(())
    }
}
