//! Training throughput of the default CNN: images per second of one train step (forward +
//! backward + SGD update) for each norm at the given batch sizes.
//!
//! `cargo run --release -p norm-train --example train_step -- [batch ...]` (default: 2 32).
//! Threads: `RAYON_NUM_THREADS` (default: all cores). By default each case runs at least 1.5 s;
//! `TRAIN_STEP_STEPS=n` runs exactly `n` timed steps instead (for `perf stat` comparisons).

use std::time::Instant;

use norm_train::{DEFAULT_EPS, DEFAULT_GROUPS, Model, ModelConfig, NormChoice, Sgd, data};
use rand::{SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    // Measure on a worker of the rayon pool, as `norm-cli` trains: rayon calls made from a thread
    // outside the pool each pay a hand-off to the pool and back (docs/performance.md).
    rayon::scope(|_| run())
}

fn run() -> Result<(), BoxError> {
    let batches: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let batches = if batches.is_empty() {
        vec![2, 32]
    } else {
        batches
    };
    let split = data::synthetic(0, 512, 0);
    let norm = data::Normalizer::from_dataset(&split.train);
    println!(
        "threads: {}, simd: {}",
        rayon::current_num_threads(),
        norm_kernels::simd_level()
    );
    println!(
        "{:<9} {:>6} {:>12} {:>10}",
        "norm", "batch", "images/s", "ms/step"
    );
    for kind in NormChoice::all() {
        for &batch in &batches {
            let cfg = ModelConfig::new([16, 32, 64], kind, DEFAULT_GROUPS, DEFAULT_EPS);
            let mut model = Model::new(&cfg, 0)?;
            let mut sgd = Sgd::new(0.9, 5e-4);
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let mut order: Vec<usize> = (0..split.train.len()).collect();
            let mut x = vec![0.0f32; batch * data::IMAGE_BYTES];
            let mut labels = vec![0usize; batch];
            // Warm up (buffers, caches), then time at least ~1.5 s of steps.
            let mut step = |model: &mut Model, rng: &mut ChaCha8Rng| -> Result<f64, BoxError> {
                order.shuffle(rng);
                data::fill_batch(
                    &split.train,
                    &order[..batch],
                    &norm,
                    &data::Augment::NONE,
                    rng,
                    &mut x,
                    &mut labels,
                );
                let t = Instant::now();
                let (_, _, grads) = model.loss_and_grads(&x, &labels)?;
                sgd.step(model, &grads, 0.01);
                Ok(t.elapsed().as_secs_f64())
            };
            for _ in 0..5 {
                step(&mut model, &mut rng)?;
            }
            let (mut secs, mut steps) = (0.0, 0usize);
            let fixed: Option<usize> = std::env::var("TRAIN_STEP_STEPS")
                .ok()
                .and_then(|v| v.parse().ok());
            while fixed.map_or(secs < 1.5 || steps < 20, |f| steps < f) {
                secs += step(&mut model, &mut rng)?;
                steps += 1;
            }
            println!(
                "{:<9} {:>6} {:>12.0} {:>10.3}",
                kind,
                batch,
                (steps * batch) as f64 / secs,
                1e3 * secs / steps as f64
            );
        }
    }
    Ok(())
}
