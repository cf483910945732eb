//! The whole model's gradients against central finite differences of its loss, for every norm
//! and model.
//!
//! The loss is evaluated in f32, so the check is directional: for a few unit directions `v` per
//! parameter tensor, `(L(p + h·v) − L(p − h·v)) / 2h` must match `∇L · v`.

use norm_train::{Arch, Model, ModelConfig, NormChoice, NormKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn loss(model: &mut Model, x: &[f32], labels: &[usize]) -> f64 {
    model.loss_and_grads(x, labels).unwrap().0 as f64
}

/// `(numeric, analytic)` derivative of the loss along `v` (normalised here) for parameter `pi`,
/// whose gradient is `g`; the parameter is restored afterwards.
fn along(
    model: &mut Model,
    (x, labels): (&[f32], &[usize]),
    (pi, g): (usize, &[f32]),
    v: &[f32],
    h: f32,
) -> (f64, f64) {
    let norm_v = v
        .iter()
        .map(|a| (a * a) as f64)
        .sum::<f64>()
        .sqrt()
        .max(1e-30) as f32;
    let v: Vec<f32> = v.iter().map(|a| a / norm_v).collect();
    let analytic: f64 = g.iter().zip(&v).map(|(a, b)| (a * b) as f64).sum();
    let orig = model.params()[pi].data.clone();
    let shifted = |s: f32| {
        orig.iter()
            .zip(&v)
            .map(|(p, d)| p + s * d)
            .collect::<Vec<_>>()
    };
    model.params_mut()[pi].data = shifted(h);
    let lp = loss(model, x, labels);
    model.params_mut()[pi].data = shifted(-h);
    let lm = loss(model, x, labels);
    model.params_mut()[pi].data = orig;
    ((lp - lm) / (2.0 * h as f64), analytic)
}

/// A batch of `n` random images and labels.
fn batch(n: usize, rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<usize>) {
    let x = (0..n * 3 * 32 * 32)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    (x, (0..n).map(|i| (i * 7) % 10).collect())
}

#[test]
fn model_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (x, labels) = batch(3, &mut rng);
    for norm in NormChoice::all() {
        let cfg = ModelConfig::new([4, 8, 8], norm, 2, 1e-5);
        let mut model = Model::new(&cfg, 11).unwrap();
        // BatchRenorm's r, d are constants of its backward (the paper's stop-gradient), so its
        // loss gradient is not the finite difference unless they are 1 and 0: the start of its
        // ramp. Its kernels' check with r, d frozen is norm-kernels/tests/batch_renorm.rs.
        model.ramp_norm(0.0);
        // Train mode throughout: BatchNorm uses batch statistics, which makes the loss a smooth
        // function of the parameters. Its running statistics change between evaluations but
        // do not enter the train-mode loss.
        let (_, _, grads) = model.loss_and_grads(&x, &labels).unwrap();
        for (pi, g) in grads.iter().enumerate() {
            let name = model.params()[pi].name.clone();
            let gnorm = g.iter().map(|a| (a * a) as f64).sum::<f64>().sqrt();
            for _ in 0..2 {
                let v: Vec<f32> = (0..g.len()).map(|_| rng.random_range(-1.0..1.0)).collect();
                let (numeric, analytic) = along(&mut model, (&x, &labels), (pi, g), &v, 3e-3);
                let err = (numeric - analytic).abs();
                assert!(
                    err <= 3e-2 * gnorm.max(1e-3) + 3e-4,
                    "{norm} {name}: numeric {numeric:.6} vs analytic {analytic:.6} (|g| = {gnorm:.4})"
                );
            }
        }
    }
}

/// A ResNet-8 at width 1/4 for every norm, with and without a worker split.
#[test]
fn resnet_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (x, labels) = batch(4, &mut rng);
    for norm in NormChoice::all() {
        for workers in [1, 2] {
            if workers == 2 && norm != NormChoice::Norm(NormKind::Batch) {
                continue;
            }
            let cfg = ModelConfig {
                arch: Arch::Resnet8,
                width: 0.25,
                ..ModelConfig::new([16, 32, 64], norm, 2, 1e-5)
            };
            let mut model = Model::new(&cfg, 11).unwrap();
            model.ramp_norm(0.0); // as above
            model.set_workers(workers, Default::default()).unwrap();
            let (_, _, grads) = model.loss_and_grads(&x, &labels).unwrap();
            for (pi, g) in grads.iter().enumerate() {
                let name = model.params()[pi].name.clone();
                let gnorm = g.iter().map(|a| (a * a) as f64).sum::<f64>().sqrt();
                // Along the gradient itself (the largest signal, |g|) and along a random unit
                // direction, whose small derivative (~|g|/√len) meets the f32 loss's rounding
                // noise (~5e-4 at this h, which sets both absolute floors).
                let random_dir: Vec<f32> =
                    (0..g.len()).map(|_| rng.random_range(-1.0..1.0)).collect();
                for (v, floor) in [(g.clone(), 1e-3), (random_dir, 1.5e-3)] {
                    let (numeric, analytic) = along(&mut model, (&x, &labels), (pi, g), &v, 1e-3);
                    let err = (numeric - analytic).abs();
                    assert!(
                        err <= 3e-2 * gnorm + floor,
                        "{norm} W={workers} {name}: numeric {numeric:.6} vs analytic {analytic:.6} (|g| = {gnorm:.4})"
                    );
                }
            }
        }
    }
}
