//! BatchNorm2d kernels against their f64 reference twin (proptest over odd shapes, large means),
//! finite differences, the PyTorch fixtures, thread-count invariance, errors and a snapshot.
//! The test bodies, shared with InstanceNorm2d, are in `common/running.rs`.

mod common;

use common::running::{self as t, EPS, Kernels, MOMENTUM, RunningUpdate};
use norm_kernels::reference as r;
use norm_kernels::{
    BatchNorm, Momentum, Nchw, NormError, Output, Parallelism, Running, StatsMut,
    batch_norm_backward_eval, batch_norm_backward_train, batch_norm_forward_eval,
    batch_norm_forward_train,
};
use proptest::prelude::*;

const BATCH: Kernels<BatchNorm> = Kernels {
    name: "batch_norm",
    stats_len: |s| s.c,
    settings: |eps, momentum, affine, track_running_stats| BatchNorm {
        eps,
        momentum,
        affine,
        track_running_stats,
    },
    forward_train: batch_norm_forward_train,
    forward_eval: batch_norm_forward_eval,
    backward_train: batch_norm_backward_train,
    backward_eval: batch_norm_backward_eval,
    ref_forward_train: r::batch_norm_forward_train,
    ref_forward_eval: r::batch_norm_forward_eval,
    ref_backward_train: r::batch_norm_backward_train,
    ref_backward_eval: r::batch_norm_backward_eval,
    // num_batches_tracked counts the call; `momentum = None` averages over all of them.
    running: |_, st, momentum| RunningUpdate {
        nbt: 5,
        factor: match momentum {
            Momentum::Exponential(m) => m as f64,
            Momentum::CumulativeAverage => 1.0 / 5.0,
        },
        mean: st.mean.clone(),
        var: st.var_unbiased.clone(),
    },
};

fn odd_shape() -> impl Strategy<Value = Nchw> {
    t::odd_shape(
        |s| s.n * s.hw(),
        "h·w a multiple of 8, or one value per channel",
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn train_matches_reference(
        s in odd_shape(),
        seed in 0u64..1000,
        affine in any::<bool>(),
        shift in prop::sample::select(vec![0.0f32, 1000.0]),
        cumulative in any::<bool>(),
        rayon in any::<bool>(),
    ) {
        let momentum = if cumulative { Momentum::CumulativeAverage } else { Momentum::Exponential(0.1) };
        let par = if rayon { Parallelism::Rayon } else { Parallelism::None };
        t::check_train(&BATCH, s, seed, affine, shift, momentum, par);
    }

    #[test]
    fn eval_matches_reference(
        s in odd_shape(),
        seed in 0u64..1000,
        affine in any::<bool>(),
        shift in prop::sample::select(vec![0.0f32, 1000.0]),
        rayon in any::<bool>(),
    ) {
        let par = if rayon { Parallelism::Rayon } else { Parallelism::None };
        t::check_eval(&BATCH, s, seed, affine, shift, par);
    }
}

/// Few channels and planes longer than one 64 Ki-element work unit: the nested split path.
#[test]
fn few_channels_long_planes_match_reference() {
    t::check_few_channels_long_planes(&BATCH);
}

#[test]
fn train_backward_matches_finite_differences() {
    t::check_train_fd(&BATCH);
}

#[test]
fn eval_backward_matches_finite_differences() {
    t::check_eval_fd(&BATCH);
}

/// `gamma = None` with `grads`: dx of the plain normalisation, and the gradients of a unit scale
/// and zero shift — the same dgamma/dbeta as with any gamma.
#[test]
fn no_affine_still_writes_grads() {
    t::check_no_affine_still_writes_grads(&BATCH);
}

#[test]
fn matches_pytorch_fixtures() {
    t::check_fixtures(&BATCH, "batch", true);
}

#[test]
fn bit_identical_for_any_thread_count() {
    t::check_bit_identical_for_any_thread_count(&BATCH);
}

#[test]
fn errors() {
    t::check_errors(&BATCH);
    // Training needs more than one value per channel; eval does not.
    const FT: &str = "batch_norm_forward_train";
    let one = Nchw::new(1, 3, 1, 1);
    let (mut mean, mut rstd) = (vec![0.0; 3], vec![0.0; 3]);
    let p = Parallelism::None;
    let norm = BATCH.norm(EPS, MOMENTUM, false, false);
    let out = Output {
        y: &mut [0.0; 3],
        stats: StatsMut {
            mean: &mut mean,
            rstd: &mut rstd,
        },
    };
    let err = batch_norm_forward_train(&norm, one, &[1.0; 3], None, None, out, p).unwrap_err();
    assert_eq!(err, NormError::OneValuePerChannel { op: FT, shape: one });
    assert_eq!(
        err.to_string(),
        "batch_norm_forward_train: expected more than 1 value per channel when training, got input of shape 1x3x1x1"
    );
    let inp = t::inputs(Nchw::new(2, 3, 4, 5), 1, 0.0);
    let mut y1 = [0.0; 3];
    let norm = BATCH.norm(EPS, MOMENTUM, false, true);
    let running = Running {
        mean: &inp.rm,
        var: &inp.rv,
    };
    batch_norm_forward_eval(&norm, one, &[1.0; 3], None, running, &mut y1, p).unwrap();
}

/// Affine parameters or running statistics that the settings do not announce, or missing ones
/// they do: `NormError::Settings`, nothing written.
#[test]
fn settings_mismatches() {
    t::check_settings_errors(&BATCH);
}

/// Eval mode with settings that track no running statistics is a contradiction, as it is for
/// InstanceNorm.
#[test]
fn eval_with_running_stats_needs_tracking() {
    t::check_eval_needs_tracking(&BATCH);
}

#[test]
fn snapshot_small_case() {
    insta::assert_snapshot!("batch_norm_small", t::snapshot_small_case(&BATCH));
}

/// The ResNets' planes (h·w a multiple of 8, which the odd-shape proptest never draws), one
/// thread and the pool.
#[test]
fn aligned_planes_match_reference() {
    for (n, c, h) in [
        (4, 64, 8),
        (4, 32, 16),
        (4, 16, 32),
        (2, 64, 8),
        (8, 64, 8),
        (4, 64, 4),
    ] {
        for par in [Parallelism::None, Parallelism::Rayon] {
            let s = Nchw::new(n, c, h, h);
            t::check_train(&BATCH, s, 3, true, 0.0, Momentum::Exponential(0.1), par);
        }
    }
}
