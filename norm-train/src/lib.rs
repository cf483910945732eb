//! # norm-train
//!
//! A small CNN for 3×32×32 images and 10 classes — three blocks of conv3×3 → norm → ReLU (2×2
//! max pool after the first two), global average pooling, linear — trained with dfdx's autodiff
//! on the CPU, with the normalisation layer chosen per run ([`NormKind`]): BatchNorm, LayerNorm,
//! InstanceNorm, GroupNorm or none. It is the training half of the batch-size study of the Group
//! Normalization paper (Wu & He, 2018).
//!
//! * [`ops`]: custom dfdx tape ops with their own backward — the 3×3 convolution (im2col +
//!   `gemm`), the norms (calling `norm-kernels`), 2×2 max pooling. ReLU, global average pooling,
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
pub mod ops;
mod recalibrate;
mod train;

pub use config::{ModelConfig, NormKind, ParseNormKindError, Schedule, TrainConfig};
pub use error::TrainError;
pub use error::short_num;
pub use model::{
    EVAL_BATCH, INPUT, LossAndGrads, Model, Param, StateData, StateDataMut, StateTensor,
    StateTensorMut, count_correct,
};
pub use recalibrate::Recalibration;
pub use train::{EpochStats, Progress, Sgd, TrainOutcome, learning_rate, train};
