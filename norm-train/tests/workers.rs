//! The worker split: `--workers 1` and the plain CNN train exactly as before the ResNets and
//! workers existed; GroupNorm, LayerNorm and InstanceNorm do not depend on the split; BatchNorm
//! with W workers equals BatchNorm on each share on its own; bad worker counts are refused.

use norm_train::{
    Arch, Model, ModelConfig, NormChoice, NormKind, RunningFrom, TrainConfig, TrainError, data,
    train,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fnv(h: &mut u64, v: &[f32]) {
    for x in v {
        for b in x.to_bits().to_le_bytes() {
            *h ^= u64::from(b);
            *h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// FNV-1a of every parameter and running statistic after two epochs of the plain CNN.
fn fingerprint(norm: NormChoice, workers: usize) -> u64 {
    let split = data::synthetic(2, 192, 50);
    let mut cfg = TrainConfig {
        epochs: 2,
        batch: 16,
        workers,
        ..TrainConfig::default()
    };
    cfg.model = ModelConfig::new([8, 16, 16], norm, 4, norm_train::DEFAULT_EPS);
    cfg.seed = 5;
    let out = train(&cfg, &split, &mut |_| {}).unwrap();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in out.model.params() {
        fnv(&mut h, &p.data);
    }
    for r in out.model.running() {
        fnv(&mut h, &r.mean);
        fnv(&mut h, &r.var);
    }
    h
}

/// Recorded on this build's SIMD level after the direct convolution and the norm descriptor
/// (GroupNorm's and LayerNorm's corrected mean rounding) changed the bits (docs/training.md);
/// the bits depend on the SIMD level, so other levels only check the norms that must not
/// depend on the split against the one-worker run. `NORMLAB_PRINT_FINGERPRINTS=1` prints them.
const BEFORE: [(NormChoice, u64); 6] = [
    (NormChoice::Norm(NormKind::Batch), 0x90311f9d0e1e7548),
    (NormChoice::Norm(NormKind::Layer), 0x133e0bddb587f55e),
    (NormChoice::Norm(NormKind::Instance), 0x96beec1582819d2e),
    (NormChoice::Norm(NormKind::Group), 0x98dc70e90c568114),
    (NormChoice::Norm(NormKind::BatchRenorm), 0x2e8a6f063ee1cc1e),
    (NormChoice::None, 0xa0f331aaac3c758b),
];
const BEFORE_SIMD: &str = "avx2+fma";

#[test]
fn one_worker_trains_as_before_and_only_batchnorm_depends_on_the_split() {
    let recorded = norm_kernels::simd_level() == BEFORE_SIMD;
    for (norm, before) in BEFORE {
        let one = fingerprint(norm, 1);
        if std::env::var_os("NORMLAB_PRINT_FINGERPRINTS").is_some() {
            println!("FP {norm} {one:#018x}");
        } else if recorded {
            assert_eq!(one, before, "{norm}: one worker changed the training");
        } else {
            eprintln!(
                "SIMD {} is not {BEFORE_SIMD}: not compared with the recording",
                norm_kernels::simd_level()
            );
        }
        let four = fingerprint(norm, 4);
        if norm.kind().is_some_and(norm_train::split_matters) {
            assert_ne!(
                four, one,
                "BatchNorm with 4 workers must use per-share statistics"
            );
        } else {
            assert_eq!(four, one, "{norm} must not depend on the worker split");
        }
    }
}

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-2.0..2.0)).collect()
}

/// One train-mode step of a BatchNorm model with W workers on a batch against W separate
/// one-worker steps on its shares: the same logits (bit for bit: every op but BatchNorm works
/// per image), the running statistics of share 0 (or of all shares in turn), and gradients
/// equal to the mean of the shares' gradients (the loss is the mean over the whole batch).
#[test]
fn batchnorm_with_workers_is_batchnorm_per_share() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let img = 3 * 32 * 32;
    for arch in [Arch::Plain, Arch::Resnet8] {
        let cfg = ModelConfig {
            arch,
            width: if arch == Arch::Plain { 1.0 } else { 0.25 },
            widths: [4, 8, 8],
            ..ModelConfig::new([4, 8, 8], NormChoice::Norm(NormKind::Batch), 8, 1e-5)
        };
        let (n, w) = (6, 3);
        let part = n / w;
        let x = random(&mut rng, n * img);
        let labels: Vec<usize> = (0..n).map(|i| (i * 3) % 10).collect();
        for from in [RunningFrom::Worker0, RunningFrom::Every] {
            let mut split = Model::new(&cfg, 1).unwrap();
            split.set_workers(w, from).unwrap();
            let (_, logits, grads) = split.loss_and_grads(&x, &labels).unwrap();
            let mut alone = Model::new(&cfg, 1).unwrap();
            let mut mean_grads: Vec<Vec<f64>> = grads.iter().map(|g| vec![0.0; g.len()]).collect();
            let mut logits_alone = Vec::new();
            let mut running_share0 = None;
            for s in 0..w {
                let (_, l, g) = alone
                    .loss_and_grads(
                        &x[s * part * img..(s + 1) * part * img],
                        &labels[s * part..(s + 1) * part],
                    )
                    .unwrap();
                logits_alone.extend(l);
                for (m, g) in mean_grads.iter_mut().zip(&g) {
                    m.iter_mut()
                        .zip(g)
                        .for_each(|(m, g)| *m += *g as f64 / w as f64);
                }
                if s == 0 {
                    running_share0 = Some(alone.running().into_iter().cloned().collect::<Vec<_>>());
                }
            }
            let tag = format!("{arch} {from:?}");
            assert_eq!(logits, logits_alone, "{tag}: logits");
            match from {
                RunningFrom::Worker0 => {
                    let want = running_share0.unwrap();
                    assert_eq!(split.running(), want.iter().collect::<Vec<_>>(), "{tag}")
                }
                RunningFrom::Every => assert_eq!(split.running(), alone.running(), "{tag}"),
            }
            for ((g, m), p) in grads.iter().zip(&mean_grads).zip(split.params()) {
                // A conv bias before BatchNorm has a zero gradient up to rounding: absolute 1e-6.
                let scale = m.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                for (a, b) in g.iter().zip(m) {
                    assert!(
                        (*a as f64 - b).abs() <= 1e-5 * scale + 1e-6,
                        "{tag} {}: {a} vs {b}",
                        p.name
                    );
                }
            }
        }
    }
}

#[test]
fn bad_worker_counts_are_refused() {
    let cfg = |workers| TrainConfig {
        batch: 32,
        workers,
        ..TrainConfig::default()
    };
    assert!(matches!(cfg(0).validate(100), Err(TrainError::WorkersZero)));
    let e = cfg(3).validate(100).unwrap_err();
    assert!(matches!(
        e,
        TrainError::WorkersDivide {
            batch: 32,
            workers: 3
        }
    ));
    assert_eq!(
        e.to_string(),
        "3 workers do not divide the batch of 32 into equal shares"
    );
    assert!(cfg(32).validate(100).is_ok());
    let split = data::synthetic(0, 64, 10);
    assert!(matches!(
        train(&cfg(5), &split, &mut |_| {}),
        Err(TrainError::WorkersDivide { .. })
    ));
}
