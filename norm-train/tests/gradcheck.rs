//! The whole model's gradients against central finite differences of its loss, for every norm.
//!
//! The loss is evaluated in f32, so the check is directional: for a few random unit directions
//! `v` per parameter tensor, `(L(p + h·v) − L(p − h·v)) / 2h` must match `∇L · v`.

use norm_train::{Model, ModelConfig, NormChoice};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn loss(model: &mut Model, x: &[f32], labels: &[usize]) -> f64 {
    model.loss_and_grads(x, labels).unwrap().0 as f64
}

#[test]
fn model_gradients_match_finite_differences() {
    let n = 3;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let labels: Vec<usize> = (0..n).map(|i| (i * 7) % 10).collect();
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
        let h = 3e-3f32;
        for (pi, g) in grads.iter().enumerate() {
            let name = model.params()[pi].name.clone();
            for _ in 0..2 {
                let v: Vec<f32> = (0..g.len()).map(|_| rng.random_range(-1.0..1.0)).collect();
                let norm_v = v.iter().map(|a| (a * a) as f64).sum::<f64>().sqrt() as f32;
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
                let lp = loss(&mut model, &x, &labels);
                model.params_mut()[pi].data = shifted(-h);
                let lm = loss(&mut model, &x, &labels);
                model.params_mut()[pi].data = orig;
                let numeric = (lp - lm) / (2.0 * h as f64);
                let gnorm = g.iter().map(|a| (a * a) as f64).sum::<f64>().sqrt();
                let err = (numeric - analytic).abs();
                assert!(
                    err <= 3e-2 * gnorm.max(1e-3) + 3e-4,
                    "{norm} {name}: numeric {numeric:.6} vs analytic {analytic:.6} (|g| = {gnorm:.4})"
                );
            }
        }
    }
}
