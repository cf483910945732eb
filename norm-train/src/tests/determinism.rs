//! Same seed → same result, bit for bit, for any number of rayon threads and on any machine.

use crate::{
    DEFAULT_EPS, DEFAULT_GROUPS, ModelConfig, NoiseOn, NormChoice, NormKind, TrainConfig,
    TrainOutcome, data,
    ops::conv::{self, gemm_strided},
    train,
};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn run(norm: NormChoice, threads: usize, split: &data::Split) -> TrainOutcome {
    let mut cfg = TrainConfig {
        epochs: 2,
        batch: 24,
        ..TrainConfig::default()
    };
    cfg.model = ModelConfig::new(cfg.model.widths, norm, DEFAULT_GROUPS, DEFAULT_EPS);
    cfg.seed = 3;
    in_pool(threads, || train(&cfg, split, &mut |_| {}).unwrap())
}

#[test]
fn training_is_bit_identical_for_1_and_2_threads() {
    let split = data::synthetic(1, 240, 100);
    for norm in NormChoice::all() {
        let (a, b) = (run(norm, 1, &split), run(norm, 2, &split));
        for (ea, eb) in a.epochs.iter().zip(&b.epochs) {
            assert_eq!(
                ea.train_loss.to_bits(),
                eb.train_loss.to_bits(),
                "{norm}: train loss"
            );
            assert_eq!(ea.train_acc, eb.train_acc, "{norm}: train accuracy");
            assert_eq!(ea.test_acc, eb.test_acc, "{norm}: test accuracy");
            assert_eq!(ea.lr.to_bits(), eb.lr.to_bits(), "{norm}: lr");
        }
        for (pa, pb) in a.model.params().iter().zip(b.model.params()) {
            assert_eq!(bits(&pa.data), bits(&pb.data), "{norm}: {}", pa.name);
        }
        for (ra, rb) in a.model.running().iter().zip(b.model.running()) {
            assert_eq!(bits(&ra.mean), bits(&rb.mean), "{norm}: running mean");
            assert_eq!(bits(&ra.var), bits(&rb.var), "{norm}: running var");
        }
        // A different seed gives a different model (the comparison above is not vacuous).
        let mut cfg = TrainConfig {
            epochs: 1,
            batch: 24,
            ..TrainConfig::default()
        };
        cfg.model = ModelConfig::new(cfg.model.widths, norm, DEFAULT_GROUPS, DEFAULT_EPS);
        cfg.seed = 4;
        let c = train(&cfg, &split, &mut |_| {}).unwrap();
        assert_ne!(
            bits(&a.model.params()[0].data),
            bits(&c.model.params()[0].data)
        );
    }
}

/// dfdx's matmul (the linear layer) calls gemm with `Parallelism::Rayon(current_num_threads())`;
/// gemm splits the output over threads, never the inner dimension, so the result must not depend
/// on the pool (the inner dimension's blocking depends on the L1 instead: see `gemm_strided`).
#[test]
fn dfdx_matmul_and_conv_gemm_do_not_depend_on_the_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for &(m, k, n) in &[
        (32, 64, 10),
        (256, 64, 10),
        (300, 500, 200),
        (1000, 1000, 100),
    ] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mm = |threads| {
            in_pool(threads, || {
                let dev = Cpu::default();
                let at = dev.tensor_from_vec(a.clone(), (m, k));
                let bt = dev.tensor_from_vec(b.clone(), (k, n));
                bits(&at.matmul(bt).as_vec())
            })
        };
        assert_eq!(mm(1), mm(2), "dfdx matmul {m}x{k}x{n}");
    }
    let s = conv::ConvShape {
        n: 32,
        c_in: 16,
        c_out: 32,
        h: 16,
        w: 16,
    };
    let x: Vec<f32> = (0..s.x_len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let w: Vec<f32> = (0..s.weight_len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let bias: Vec<f32> = (0..s.c_out).map(|_| rng.random_range(-1.0..1.0)).collect();
    let dy: Vec<f32> = (0..s.y_len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let conv = |threads| {
        in_pool(threads, || {
            let mut y = vec![0.0; s.y_len()];
            conv::conv3x3_forward(s, &x, &w, &bias, &mut y);
            let (mut dx, mut dw, mut db) = (
                vec![0.0; s.x_len()],
                vec![0.0; s.weight_len()],
                vec![0.0; s.c_out],
            );
            conv::conv3x3_backward(s, &x, &w, &dy, Some(&mut dx), &mut dw, &mut db);
            (bits(&y), bits(&dx), bits(&dw), bits(&db))
        })
    };
    assert!(
        conv(1) == conv(2),
        "conv results differ between 1 and 2 threads"
    );
}

/// `gemm` splits an inner dimension above 512 by the L1 it detects, so `gemm_strided` hands it
/// chunks of at most 512 in order: its result is that chunked sum, whatever the machine. Checked on
/// the three paths `gemm` takes (small output, tiny output, blocked), with a 1,100-long inner
/// dimension, and against f64.
#[test]
fn gemm_strided_sums_the_inner_dimension_in_fixed_chunks() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let k = 1100;
    for &(m, n) in &[(40, 50), (8, 8), (130, 150)] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut got = vec![0.0; m * n];
        gemm_strided((m, n, k), (&mut got, false), (&a, (k, 1)), (&b, (n, 1)));
        let mut want = vec![0.0; m * n];
        for (i, d) in [(0, 512), (512, 1024), (1024, k)].into_iter().enumerate() {
            let (ac, bc) = (&a[d.0..], &b[d.0 * n..d.1 * n]);
            gemm_strided(
                (m, n, d.1 - d.0),
                (&mut want, i > 0),
                (ac, (k, 1)),
                (bc, (n, 1)),
            );
        }
        let differ = bits(&got)
            .iter()
            .zip(bits(&want))
            .filter(|(g, w)| *g != w)
            .count();
        assert_eq!(
            differ, 0,
            "{m}x{n}x{k}: elements that differ from the chunked sum"
        );
        for (idx, &g) in got.iter().enumerate() {
            let (r, c) = (idx / n, idx % n);
            let e: f64 = (0..k)
                .map(|p| a[r * k + p] as f64 * b[p * n + c] as f64)
                .sum();
            assert!(
                (g as f64 - e).abs() < 1e-3,
                "{m}x{n}x{k} [{r},{c}]: {g} vs {e}"
            );
        }
    }
}

/// The same with the ResNets and with BatchNorm split over workers.
#[test]
fn resnets_and_workers_are_bit_identical_for_1_and_2_threads() {
    use crate::{Arch, RunningFrom};
    let split = data::synthetic(1, 96, 40);
    let runs = [
        (
            Arch::Plain,
            NormChoice::Norm(NormKind::Batch),
            4,
            RunningFrom::Worker0,
        ),
        (
            Arch::Resnet8,
            NormChoice::Norm(NormKind::Batch),
            4,
            RunningFrom::Every,
        ),
        (
            Arch::Resnet8,
            NormChoice::Norm(NormKind::Group),
            1,
            RunningFrom::Worker0,
        ),
        (
            Arch::Resnet14,
            NormChoice::Norm(NormKind::Layer),
            2,
            RunningFrom::Worker0,
        ),
        (
            Arch::Resnet20,
            NormChoice::Norm(NormKind::Batch),
            2,
            RunningFrom::Worker0,
        ),
    ];
    for (arch, norm, workers, from) in runs {
        let run = |threads| {
            let mut cfg = TrainConfig {
                epochs: 1,
                batch: 16,
                workers,
                running_from: from,
                ..TrainConfig::default()
            };
            cfg.model.arch = arch;
            cfg.model.width = if arch == Arch::Plain { 1.0 } else { 0.5 };
            cfg.model.norm = norm
                .kind()
                .map(|k| crate::model_norm(k, crate::DEFAULT_GROUPS, crate::DEFAULT_EPS));
            in_pool(threads, || train(&cfg, &split, &mut |_| {}).unwrap())
        };
        let (a, b) = (run(1), run(2));
        let tag = format!("{arch} {norm} W={workers}");
        assert_eq!(
            a.epochs[0].train_loss.to_bits(),
            b.epochs[0].train_loss.to_bits(),
            "{tag}"
        );
        assert_eq!(a.epochs[0].test_acc, b.epochs[0].test_acc, "{tag}");
        for (pa, pb) in a.model.params().iter().zip(b.model.params()) {
            assert_eq!(bits(&pa.data), bits(&pb.data), "{tag}: {}", pa.name);
        }
        for (ra, rb) in a.model.running().iter().zip(b.model.running()) {
            assert_eq!(bits(&ra.mean), bits(&rb.mean), "{tag}: running mean");
            assert_eq!(bits(&ra.var), bits(&rb.var), "{tag}: running var");
        }
    }
}

/// One epoch of the plain CNN with BatchNorm at batch 24, with gradient noise `scale` on `on`.
fn noisy_config(scale: f32, on: NoiseOn) -> TrainConfig {
    let mut cfg = TrainConfig {
        epochs: 1,
        batch: 24,
        grad_noise: scale,
        grad_noise_on: on,
        ..TrainConfig::default()
    };
    cfg.model = ModelConfig::new(
        cfg.model.widths,
        NormChoice::Norm(NormKind::Batch),
        DEFAULT_GROUPS,
        DEFAULT_EPS,
    );
    cfg
}

/// `grad_noise_on` splits the noise between the weights and the rest: after one step, the
/// chosen tensors hold what noise on every tensor gives them, the others what no noise gives.
#[test]
fn gradient_noise_on_a_part_gets_that_parts_draws() {
    let split = data::synthetic(1, 24, 8);
    let run = |scale: f32, on: NoiseOn| {
        let cfg = noisy_config(scale, on);
        let out = in_pool(1, || train(&cfg, &split, &mut |_| {}).unwrap());
        let params = out.model.params();
        let decay: Vec<bool> = params.iter().map(|p| p.decay).collect();
        (
            decay,
            params.iter().map(|p| bits(&p.data)).collect::<Vec<_>>(),
        )
    };
    let (decay, plain) = run(0.0, NoiseOn::All);
    let (_, all) = run(1e-2, NoiseOn::All);
    assert!(decay.contains(&true) && decay.contains(&false));
    for on in [NoiseOn::Weights, NoiseOn::Others] {
        let (_, part) = run(1e-2, on);
        for (i, &d) in decay.iter().enumerate() {
            let want = if on.includes(d) { &all[i] } else { &plain[i] };
            assert_eq!(&part[i], want, "{on:?}, tensor {i}");
        }
        let moved = (0..decay.len()).any(|i| on.includes(decay[i]) && all[i] != plain[i]);
        assert!(moved, "{on:?}: the noise changes some chosen tensor");
    }
}

/// `grad_noise` changes training only when set, and its draws follow the seed.
#[test]
fn gradient_noise_is_seeded_and_off_by_default() {
    let split = data::synthetic(1, 96, 32);
    let noisy = |scale: f32| {
        let cfg = noisy_config(scale, NoiseOn::All);
        let out = in_pool(2, || train(&cfg, &split, &mut |_| {}).unwrap());
        out.model
            .params()
            .iter()
            .flat_map(|p| bits(&p.data))
            .collect::<Vec<_>>()
    };
    let (plain, a, b) = (noisy(0.0), noisy(1e-3), noisy(1e-3));
    assert_eq!(a, b, "the same seed draws the same noise");
    assert_ne!(plain, a, "noise of 1e-3 changes the weights");
    let bad = TrainConfig {
        grad_noise: -1.0,
        ..TrainConfig::default()
    };
    let err = bad.validate(1000).unwrap_err().to_string();
    assert!(err.contains("grad_noise"), "{err}");
}
