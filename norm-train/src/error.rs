//! The crate's error type.

use std::path::PathBuf;

/// Everything [`crate::train`], [`crate::Model`] and the checkpoint code can reject.
/// Every message is one line and names the value or file at fault.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum TrainError {
    /// `batch = 0`.
    #[error("batch size must be at least 1")]
    BatchZero,
    /// The batch is larger than the training set, so not one full step fits in an epoch.
    #[error("batch size {batch} is larger than the training set ({train_len} images)")]
    BatchTooLarge {
        /// Requested batch size.
        batch: usize,
        /// Images in the training set.
        train_len: usize,
    },
    /// `workers = 0`.
    #[error("workers must be at least 1")]
    WorkersZero,
    /// The batch does not split into equal worker shares.
    #[error("{workers} workers do not divide the batch of {batch} into equal shares")]
    WorkersDivide {
        /// Images per step.
        batch: usize,
        /// Requested workers.
        workers: usize,
    },
    /// `epochs = 0`.
    #[error("epochs must be at least 1")]
    EpochsZero,
    /// A layer width is zero.
    #[error("layer widths must be at least 1, got {widths:?}")]
    Width {
        /// The widths given.
        widths: [usize; 3],
    },
    /// The norm's settings do not fit a layer (GroupNorm's groups not dividing its width).
    #[error("the norm does not fit layer width {width}: {reason}")]
    Norm {
        /// The first width it does not fit.
        width: usize,
        /// What the kernels say.
        reason: norm_kernels::NormError,
    },
    /// A hyper-parameter is out of range (learning rate, momentum, weight decay, warm-up, eps).
    #[error("{name} = {value} is invalid: must be {expected}")]
    Hyper {
        /// Which hyper-parameter.
        name: &'static str,
        /// The value given.
        value: f32,
        /// What is allowed.
        expected: &'static str,
    },
    /// The training set is empty.
    #[error("the training set is empty")]
    EmptyTrainSet,
    /// Reading or writing a checkpoint failed.
    #[error("cannot read or write checkpoint {}", path.display())]
    Io {
        /// The checkpoint file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is not in the documented format or is inconsistent.
    #[error("corrupt checkpoint {}: {reason}", path.display())]
    Corrupt {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The loss became NaN or infinite: training stopped at that step (the learning rate is the
    /// usual cause).
    #[error(
        "training diverged: the loss is {loss} at epoch {epoch}/{epochs}, step {step}/{steps} \
         (learning rate {} at that step)",
        short_num(.lr)
    )]
    Diverged {
        /// Epoch, from 1.
        epoch: usize,
        /// Epochs of the run.
        epochs: usize,
        /// Step within the epoch, from 1.
        step: usize,
        /// Steps per epoch.
        steps: usize,
        /// Learning rate of that step (after warm-up and schedule).
        lr: f32,
        /// The non-finite loss.
        loss: f32,
    },
    /// [`crate::Model::recalibrate_batch_norm`] cannot run.
    #[error("cannot recalibrate BatchNorm: {reason}")]
    Recalibration {
        /// Why.
        reason: String,
    },
    /// A normalisation kernel rejected its arguments.
    #[error(transparent)]
    Kernel(#[from] norm_kernels::NormError),
    /// What the model cannot take: inputs of the wrong size or labels out of range given to
    /// [`crate::Model`] directly.
    #[error("{0}")]
    Input(String),
    /// A model's norm mixes the samples of a batch (BatchNorm) but keeps no running statistics,
    /// so it has nothing to evaluate with.
    #[error("{norm} in a model needs running statistics (track_running_stats = true)")]
    NeedsRunningStats {
        /// The norm's label.
        norm: String,
    },
    /// A tensor operation failed (allocation or element count); the message of the autodiff
    /// library, which is not part of this crate's interface.
    #[error("tensor operation failed: {0}")]
    Tensor(String),
}

/// `0.05` as `0.05`, `1e30` as `1e30` (not thirty digits): plain notation between 1e-4 and 1e6.
pub fn short_num(x: &f32) -> String {
    let a = x.abs();
    if a == 0.0 || (1e-4..1e6).contains(&a) || !a.is_finite() {
        x.to_string()
    } else {
        format!("{x:e}")
    }
}

/// A dfdx error as a [`TrainError::Tensor`] (its message only): `.map_err(tensor)?` at the
/// crate's dfdx calls, so no dfdx type appears in the crate's interface, not even in a trait
/// impl.
pub(crate) fn tensor(e: dfdx::tensor::CpuError) -> TrainError {
    TrainError::Tensor(e.to_string())
}
