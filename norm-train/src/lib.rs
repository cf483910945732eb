//! # norm-train
//!
//! A small CNN for 3×32×32 images and 10 classes — three blocks of conv3×3 → norm → ReLU (2×2
//! max pool after the first two), global average pooling, linear — trained with dfdx's autodiff
//! on the CPU, with the normalisation layer chosen per run ([`Norm`], the kernels' descriptor):
//! BatchNorm, LayerNorm, InstanceNorm, GroupNorm or none. It is the training half of the batch-size study of the Group
//! Normalization paper (Wu & He, 2018).
//!
//! The CIFAR ResNets of He et al. (2016, §4.2) — ResNet-8, -14, -20 with a width multiplier,
//! the norm after every conv including the projection shortcuts — are the other networks
//! ([`Arch`]), and [`TrainConfig::workers`] splits each batch into data-parallel worker shares
//! over which BatchNorm computes its statistics, as in the paper's images-per-GPU protocol.
//!
//! * `ops` (crate-private, since they are written in dfdx types): custom tape ops with their own backward — the 3×3 convolution (im2col +
//!   `gemm`), the ResNets' strided and 1×1 convolutions and residual join, the batch split into
//!   worker shares, the norms (calling `norm-kernels`), 2×2 max pooling. ReLU, global average pooling,
//!   the linear layer and the loss are dfdx's own ops.
//! * [`Model`]: parameters initialised like PyTorch from a seed, train/eval modes, checkpoints.
//! * [`train`]: SGD with momentum and weight decay, learning rate scaled with the batch,
//!   warm-up + cosine or step schedule, per-epoch [`EpochStats`].
//! * [`data`]: the datasets (synthetic and CIFAR-10), normalisation and augmentation.
//!
//! Layout: NCHW `f32`, row-major. Results are bit-identical for any number of rayon threads.
//! See `docs/training.md` for the decisions, the checkpoint format and measured throughput.

#![warn(missing_docs)]

pub mod atomic;
pub mod checkpoint;
mod config;
pub mod data;
mod error;
mod model;
mod ops;
mod recalibrate;
mod resnet;
#[cfg(test)]
mod tests;
mod train;

pub use config::{
    Arch, DEFAULT_EPS, DEFAULT_GROUPS, ModelConfig, NoiseOn, NormChoice, RunningFrom, Schedule,
    TrainConfig, model_norm,
};
pub use error::TrainError;
pub use error::short_num;
pub use model::{
    EVAL_BATCH, INPUT, LossAndGrads, Model, Param, StateData, StateDataMut, StateTensor,
    StateTensorMut, count_correct, split_matters,
};
pub use norm_kernels::{Norm, NormKind, ParseNormError};
pub use ops::norm::Running;
pub use recalibrate::{Recalibrate, Recalibration};
pub use train::{
    EpochStats, Progress, Sgd, TrainOutcome, learning_rate, norm_ramp_progress, train,
};
