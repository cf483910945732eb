//! Where does BatchNorm's small-batch loss come from? Loads a checkpoint of a model trained with
//! BatchNorm (e.g. `norm-cli train --norm batch --batch 2 --save bn2.safetensors`) and measures its test
//! accuracy on the default synthetic set in four ways:
//!
//! 1. eval mode with the running statistics gathered during training (what the study reports);
//! 2. eval mode after re-estimating the running statistics from the training images in large
//!    batches (one pass over the 10,000 images in 40 batches of 250; with momentum 0.1 the first
//!    batches' weight has decayed to 0.9^40 ≈ 1.5 % — "precise BN"), once from the plain images
//!    and once with the training-time augmentation (random crop with zero padding, flip);
//! 3. train mode, i.e. normalising with the statistics of each test batch, for test batches of
//!    2, 8, 32 and 250 images.
//!
//! (1) vs (2) isolates the running statistics; (3) shows what the noise of small-batch statistics
//! does to the same weights.
//!
//! `cargo run --release -p norm-train --example bn_statistics -- bn2.safetensors [data-seed]`
//!
//! `norm-cli eval --checkpoint bn2.safetensors --recalibrate-bn 10000` does (1) against (2) as a
//! feature, with a cumulative average over the batches instead of momentum.

use norm_train::{Model, count_correct, data};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn accuracy_in_batches(
    model: &mut Model,
    set: &data::Dataset,
    norm: &data::Normalizer,
    batch: usize,
    augment: &data::Augment,
) -> Result<f32, Box<dyn std::error::Error>> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let indices: Vec<usize> = (0..set.len()).collect();
    let (mut correct, mut seen) = (0, 0);
    let mut x = vec![0.0f32; batch * data::IMAGE_BYTES];
    let mut labels = vec![0usize; batch];
    for idx in indices.chunks_exact(batch) {
        data::fill_batch(set, idx, norm, augment, &mut rng, &mut x, &mut labels);
        let logits = model.logits(&x, batch)?;
        correct += count_correct(&logits, &labels);
        seen += batch;
    }
    Ok(correct as f32 / seen as f32)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or("usage: bn_statistics CHECKPOINT [data-seed]")?;
    let data_seed: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let mut model = norm_train::checkpoint::load(std::path::Path::new(path))?.model;
    let split = data::synthetic(data_seed, data::DEFAULT_TRAIN, data::DEFAULT_TEST);
    let norm = data::Normalizer::from_dataset(&split.train);
    println!("checkpoint {path}: {:?}", model.config());

    let reported = model.evaluate(&split.test, &norm)?;
    println!(
        "eval mode, running statistics from training:      {:5.1} %",
        100.0 * reported
    );

    let mut batch_stats = Vec::new();
    for b in [2, 8, 32, 250] {
        model.train_mode();
        let acc = accuracy_in_batches(&mut model, &split.test, &norm, b, &data::Augment::NONE)?;
        batch_stats.push((b, acc));
    }

    // Re-estimate the running statistics: train-mode forwards over the training images in
    // batches of 250 (each updates them with momentum 0.1), no weight update; once on the plain
    // images, once with the training-time augmentation (crop with zero padding + flip).
    let mut precise = Vec::new();
    for (what, augment) in [
        ("plain", data::Augment::NONE),
        ("augmented", data::Augment::CIFAR),
    ] {
        let mut m = norm_train::checkpoint::load(std::path::Path::new(path))?.model;
        m.train_mode();
        accuracy_in_batches(&mut m, &split.train, &norm, 250, &augment)?;
        precise.push((what, m.evaluate(&split.test, &norm)?));
    }
    for (what, acc) in precise {
        println!(
            "eval mode, statistics re-estimated ({what:>9}):  {:5.1} %",
            100.0 * acc
        );
    }
    for (b, acc) in batch_stats {
        println!(
            "train mode, statistics of test batches of {b:>3}:   {:5.1} %",
            100.0 * acc
        );
    }
    Ok(())
}
