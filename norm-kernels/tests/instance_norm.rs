//! InstanceNorm2d kernels against their f64 reference twin (proptest over odd shapes, large means),
//! finite differences, the PyTorch fixtures, thread-count invariance, errors and a snapshot.
//! The test bodies, shared with BatchNorm2d, are in `common/running.rs`.

mod common;

use common::running::{self as t, EPS, Kernels, MOMENTUM, RunningUpdate};
use norm_kernels::reference as r;
use norm_kernels::{
    InstanceNorm, Momentum, Nchw, NormError, Output, Parallelism, Running, StatsMut,
    instance_norm_backward_eval, instance_norm_backward_train, instance_norm_forward_eval,
    instance_norm_forward_train,
};
use proptest::prelude::*;

const INSTANCE: Kernels<InstanceNorm> = Kernels {
    name: "instance_norm",
    stats_len: |s| s.n * s.c,
    settings: |eps, momentum, affine, track_running_stats| InstanceNorm {
        eps,
        momentum,
        affine,
        track_running_stats,
    },
    forward_train: instance_norm_forward_train,
    forward_eval: instance_norm_forward_eval,
    backward_train: instance_norm_backward_train,
    backward_eval: instance_norm_backward_eval,
    ref_forward_train: r::instance_norm_forward_train,
    ref_forward_eval: r::instance_norm_forward_eval,
    ref_backward_train: r::instance_norm_backward_train,
    ref_backward_eval: r::instance_norm_backward_eval,
    // PyTorch's InstanceNorm: no num_batches_tracked, `momentum = None` passes 0.0.
    running: |s, st, momentum| {
        let (mean, var) = r::instance_norm_batch_running(s, st);
        RunningUpdate {
            nbt: 4,
            factor: match momentum {
                Momentum::Exponential(m) => m as f64,
                Momentum::CumulativeAverage => 0.0,
            },
            mean,
            var,
        }
    },
};

fn odd_shape() -> impl Strategy<Value = Nchw> {
    t::odd_shape(|s| s.hw(), "h·w a multiple of 8, or one value per instance")
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
        t::check_train(&INSTANCE, s, seed, affine, shift, momentum, par);
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
        t::check_eval(&INSTANCE, s, seed, affine, shift, par);
    }
}

/// Few channels and planes longer than one 64 Ki-element work unit: the nested split path.
#[test]
fn few_channels_long_planes_match_reference() {
    t::check_few_channels_long_planes(&INSTANCE);
}

#[test]
fn train_backward_matches_finite_differences() {
    t::check_train_fd(&INSTANCE);
}

#[test]
fn eval_backward_matches_finite_differences() {
    t::check_eval_fd(&INSTANCE);
}

/// `gamma = None` with `grads`: dx of the plain normalisation, and the gradients of a unit scale
/// and zero shift — the same dgamma/dbeta as with any gamma.
#[test]
fn no_affine_still_writes_grads() {
    t::check_no_affine_still_writes_grads(&INSTANCE);
}

#[test]
fn matches_pytorch_fixtures() {
    // The fixtures use `track_running_stats = False`: no running statistics, train forward only.
    t::check_fixtures(&INSTANCE, "instance", false);
}

#[test]
fn bit_identical_for_any_thread_count() {
    t::check_bit_identical_for_any_thread_count(&INSTANCE);
}

#[test]
fn errors() {
    t::check_errors(&INSTANCE);
    // Training needs more than one spatial element; eval does not.
    const FT: &str = "instance_norm_forward_train";
    let one = Nchw::new(2, 3, 1, 1);
    let (mut mean, mut rstd) = (vec![0.0; 6], vec![0.0; 6]);
    let p = Parallelism::None;
    let norm = INSTANCE.norm(EPS, MOMENTUM, false, false);
    let out = Output {
        y: &mut [0.0; 6],
        stats: StatsMut {
            mean: &mut mean,
            rstd: &mut rstd,
        },
    };
    let err = instance_norm_forward_train(&norm, one, &[1.0; 6], None, None, out, p).unwrap_err();
    assert_eq!(err, NormError::OneSpatialElement { op: FT, shape: one });
    assert_eq!(
        err.to_string(),
        "instance_norm_forward_train: expected more than 1 spatial element when training, got input of shape 2x3x1x1"
    );
    let inp = t::inputs(Nchw::new(2, 3, 4, 5), 1, 0.0);
    let mut y1 = [0.0; 6];
    let norm = INSTANCE.norm(EPS, MOMENTUM, false, true);
    let running = Running {
        mean: &inp.rm,
        var: &inp.rv,
    };
    instance_norm_forward_eval(&norm, one, &[1.0; 6], None, running, &mut y1, p).unwrap();
}

/// Affine parameters or running statistics that the settings do not announce, or missing ones
/// they do: `NormError::Settings`, nothing written.
#[test]
fn settings_mismatches() {
    t::check_settings_errors(&INSTANCE);
}

/// Eval mode with settings that track no running statistics (PyTorch's default for
/// InstanceNorm2d, which then normalises with the instance statistics) is a contradiction.
#[test]
fn eval_with_running_stats_needs_tracking() {
    t::check_eval_needs_tracking(&INSTANCE);
}

#[test]
fn snapshot_small_case() {
    insta::assert_snapshot!("instance_norm_small", t::snapshot_small_case(&INSTANCE));
}
