//! Precise BatchNorm statistics (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): after
//! training, replace the running statistics — an exponential average dominated by the last few
//! batches, taken while the weights still moved — by the plain average of the batch statistics
//! of many train-mode forwards with the final weights.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{Model, TrainError, data};

/// What [`Model::recalibrate_batch_norm`] averages over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recalibrate {
    /// Training images to average over (the first of the set).
    pub images: usize,
    /// Images per train-mode forward.
    pub batch: usize,
    /// Augmentation of those images (the training recipe's, to estimate the statistics of the
    /// distribution the weights were trained on; [`data::Augment::NONE`] for the plain images),
    /// drawn from a fixed seed.
    pub augment: data::Augment,
}

/// What [`Model::recalibrate_batch_norm`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recalibration {
    /// Images used (`batches × batch`).
    pub images: usize,
    /// Forward passes averaged.
    pub batches: usize,
    /// Images per forward pass.
    pub batch: usize,
}

impl Model {
    /// Re-estimates every BatchNorm layer's `running_mean` and `running_var` as the cumulative
    /// average (PyTorch's `momentum = None`) of the batch statistics of `⌊images / batch⌋`
    /// train-mode forwards over the first images of `set` (in order, with `augment` drawn from a
    /// fixed seed, `batch` at a time; one batch of all of them when `images < batch`),
    /// normalised with `norm`.
    /// The weights do not change; `num_batches_tracked` ends at the number of batches. The model
    /// is left in eval mode. Errors: the model has no BatchNorm, or `images` is 0 or more than
    /// `set` holds ([`TrainError::Recalibration`]).
    pub fn recalibrate_batch_norm(
        &mut self,
        set: &data::Dataset,
        norm: &data::Normalizer,
        how: Recalibrate,
    ) -> Result<Recalibration, TrainError> {
        let Recalibrate {
            images,
            batch,
            augment,
        } = how;
        let fail = |reason: String| Err(TrainError::Recalibration { reason });
        if !self.config().norm.is_some_and(|n| n.tracks_running()) {
            return fail(format!(
                "the model has {}, which keeps no running statistics to re-estimate",
                self.config().norm_label()
            ));
        }
        if images == 0 || batch == 0 {
            return fail("needs at least one image and a batch of at least 1".into());
        }
        if images > set.len() {
            return fail(format!(
                "{images} images asked for, the training set has {}",
                set.len()
            ));
        }
        let batch = batch.min(images);
        let batches = images / batch;
        for r in self.running_mut() {
            r.num_batches_tracked = 0;
        }
        self.set_cumulative_running(true);
        self.train_mode();
        let (c, h, w) = crate::INPUT;
        let mut x = vec![0.0f32; batch * c * h * w];
        let mut labels = vec![0usize; batch];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let indices: Vec<usize> = (0..batches * batch).collect();
        let mut result = Ok(());
        for idx in indices.chunks_exact(batch) {
            data::fill_batch(set, idx, norm, &augment, &mut rng, &mut x, &mut labels);
            if let Err(e) = self.logits(&x, batch) {
                result = Err(e);
                break;
            }
        }
        self.set_cumulative_running(false);
        self.eval_mode();
        result.map(|()| Recalibration {
            images: batches * batch,
            batches,
            batch,
        })
    }
}
