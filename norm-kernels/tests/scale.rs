//! Scale safety of the statistics: the forward of every norm on inputs reaching `f32::MAX / 2`
//! in magnitude with mixed signs (where `Σx`, `Σx²` and even `x - mean` overflow f32), at
//! `f32::MAX` itself, and on groups that are constant at `f32::MAX`, gives finite outputs that
//! match the f64 reference twin — never NaN.
//!
//! The only value that cannot stay finite is a running variance above `f32::MAX` (the variance
//! of such data is about 1e76): it must be `+inf`, the f64 value rounded to f32, as in PyTorch.

mod common;

use common::check::data;
use norm_kernels::reference as r;
use norm_kernels::*;

const MAX: f32 = f32::MAX;

/// The inputs of one case, by name: uniform in `[-MAX/2, MAX/2)`; alternating `±MAX` with
/// uniform values in `[-MAX, MAX)` in between; every value `MAX` (zero variance).
fn cases(len: usize, seed: u64) -> [(&'static str, Vec<f32>); 3] {
    let u = data(len, seed, -1.0, 1.0);
    let half = u.iter().map(|v| v * (MAX / 2.0)).collect();
    let full = u
        .iter()
        .enumerate()
        .map(|(i, v)| match i % 3 {
            0 => MAX,
            1 => -MAX,
            _ => v * MAX,
        })
        .collect();
    [
        ("half_max", half),
        ("max", full),
        ("constant_max", vec![MAX; len]),
    ]
}

/// What a forward gave, or the reference in f64: y, mean, rstd and the running statistics.
struct Fwd<T> {
    y: Vec<T>,
    mean: Vec<T>,
    rstd: Vec<T>,
    running: Option<(Vec<T>, Vec<T>)>,
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// `got` is finite and within `tol·max(|want|, scale)` of `want`.
fn assert_rel(what: &str, got: &[f32], want: &[f64], scale: f64, tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}]: got {g}, want {w}");
        let err = (g as f64 - w).abs() / w.abs().max(scale);
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (err {err:e} > {tol:e})"
        );
    }
}

/// A running statistic: as [`assert_rel`] where the f64 value fits in f32, else exactly the
/// `±inf` it rounds to.
fn assert_running(what: &str, got: &[f32], want: &[f64], scale: f64) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if (w as f32).is_infinite() {
            assert_eq!(g, w as f32, "{what}[{i}]: want {w}");
        } else {
            assert_rel(&format!("{what}[{i}]"), &[g], &[w], scale, 1e-5);
        }
    }
}

/// The reference twin of `norm`'s forward in `mode` (running statistics from `rm`, `rv`;
/// momentum 0.1 in the train update).
fn reference(
    norm: &Norm,
    mode: Mode,
    shape: Nchw,
    x: &[f32],
    (g, b): (&[f32], &[f32]),
    (rm, rv): (&[f32], &[f32]),
) -> Fwd<f64> {
    let (x, g, b, rm, rv) = (f64s(x), f64s(g), f64s(b), f64s(rm), f64s(rv));
    let (ga, ba) = if norm.affine() {
        (Some(&g[..]), Some(&b[..]))
    } else {
        (None, None)
    };
    let pair = ga.zip(ba);
    let eps = norm.eps() as f64;
    if mode == Mode::Eval && norm.tracks_running() {
        let y = match norm {
            Norm::Batch(_) => r::batch_norm_forward_eval(shape, &x, &rm, &rv, ga, ba, eps),
            _ => r::instance_norm_forward_eval(shape, &x, &rm, &rv, ga, ba, eps),
        };
        return Fwd {
            y,
            mean: rm.clone(),
            rstd: rv.clone(),
            running: None,
        };
    }
    let update = |(bm, bv): (Vec<f64>, Vec<f64>)| {
        norm.tracks_running().then(|| {
            (
                r::running_update(&rm, &bm, 0.1),
                r::running_update(&rv, &bv, 0.1),
            )
        })
    };
    match norm {
        Norm::Batch(_) => {
            let (y, st) = r::batch_norm_forward_train(shape, &x, ga, ba, eps);
            let running = update((st.mean.clone(), st.var_unbiased.clone()));
            Fwd {
                y,
                mean: st.mean,
                rstd: st.rstd,
                running,
            }
        }
        Norm::Instance(_) => {
            let (y, st) = r::instance_norm_forward_train(shape, &x, ga, ba, eps);
            let running = update(r::instance_norm_batch_running(shape, &st));
            Fwd {
                y,
                mean: st.mean,
                rstd: st.rstd,
                running,
            }
        }
        Norm::Layer(_) => {
            let f = r::layer_norm_forward(shape, &x, pair, eps);
            Fwd {
                y: f.y,
                mean: f.mean,
                rstd: f.rstd,
                running: None,
            }
        }
        Norm::Group(s) => {
            let f = r::group_norm_forward(shape, s.groups, &x, pair, eps);
            Fwd {
                y: f.y,
                mean: f.mean,
                rstd: f.rstd,
                running: None,
            }
        }
        Norm::BatchRenorm(_) => unreachable!("not in this test's list"),
    }
}

/// The kernel's forward through the descriptor (which the descriptor tests hold bit-identical
/// to the free functions).
fn kernel(
    norm: &Norm,
    mode: Mode,
    shape: Nchw,
    x: &[f32],
    (g, b): (&[f32], &[f32]),
    (rm, rv): (&[f32], &[f32]),
    par: Parallelism,
) -> Fwd<f32> {
    let (mut rm, mut rv, mut nbt) = (rm.to_vec(), rv.to_vec(), 0u64);
    let mut y = vec![f32::NAN; shape.len()];
    let mut saved = vec![f32::NAN; norm.saved_len(shape, mode)];
    let fwd = Forward {
        shape,
        x,
        affine: norm.affine().then_some(Affine { gamma: g, beta: b }),
        running: norm.tracks_running().then_some(RunningStats {
            mean: &mut rm,
            var: &mut rv,
            num_batches_tracked: &mut nbt,
        }),
        y: &mut y,
        saved: &mut saved,
    };
    norm.forward(mode, fwd, par).unwrap();
    let (mean, rstd) = saved.split_at(saved.len() / 2);
    let train = mode == Mode::Train || !norm.tracks_running();
    Fwd {
        y,
        mean: mean.to_vec(),
        rstd: rstd.to_vec(),
        running: (train && norm.tracks_running()).then_some((rm, rv)),
    }
}

fn norms() -> Vec<Norm> {
    let momentum = Momentum::Exponential(0.1);
    vec![
        Norm::Batch(BatchNorm::default()),
        Norm::Batch(BatchNorm {
            affine: false,
            ..BatchNorm::default()
        }),
        Norm::Instance(InstanceNorm {
            affine: true,
            track_running_stats: true,
            momentum,
            ..InstanceNorm::default()
        }),
        Norm::Instance(InstanceNorm::default()),
        Norm::Layer(LayerNorm::default()),
        Norm::Layer(LayerNorm {
            eps: 1e-8,
            affine: false,
        }),
        Norm::Group(GroupNorm::new(2)),
        Norm::Group(GroupNorm {
            affine: false,
            ..GroupNorm::new(3)
        }),
    ]
}

/// One norm's forward in `mode` on input `x` (case `case`) against the reference twin, with
/// and without rayon.
fn check(
    norm: &Norm,
    mode: Mode,
    shape: Nchw,
    (case, x): (&str, &[f32]),
    gb: (&[f32], &[f32]),
    running: (&[f32], &[f32]),
) {
    let scale = x.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    let want = reference(norm, mode, shape, x, gb, running);
    for par in [Parallelism::None, Parallelism::Rayon] {
        let got = kernel(norm, mode, shape, x, gb, running, par);
        let what = |v: &str| format!("{} {shape} {case} {mode:?} {par:?}: {v}", norm.spec());
        assert_rel(&what("y"), &got.y, &want.y, 1.0, 1e-5);
        if mode == Mode::Eval && norm.tracks_running() {
            // The saved values are the running statistics, copied.
            assert_eq!(got.mean, running.0, "{}", what("saved mean"));
            assert_eq!(got.rstd, running.1, "{}", what("saved var"));
            continue;
        }
        assert_rel(&what("mean"), &got.mean, &want.mean, scale, 1e-6);
        assert_rel(&what("rstd"), &got.rstd, &want.rstd, 0.0, 1e-5);
        if let (Some((grm, grv)), Some((wrm, wrv))) = (&got.running, &want.running) {
            assert_running(&what("running_mean"), grm, wrm, scale);
            assert_running(&what("running_var"), grv, wrv, scale * scale);
        }
    }
}

#[test]
fn huge_inputs_give_finite_outputs_matching_the_reference() {
    let mut failures = Vec::new();
    // Odd planes; and groups longer than a block (4096) and a tile (16 Ki elements), whose
    // partial moments are merged.
    for shape in [Nchw::new(3, 6, 5, 3), Nchw::new(2, 6, 90, 70)] {
        for norm in norms() {
            let params: usize = norm.affine_shape(shape).iter().product();
            let (g, b) = (data(params, 3, -1.5, 1.5), data(params, 4, -1.0, 1.0));
            // Eval mode normalises with running statistics that are huge too.
            let rm: Vec<f32> = data(shape.c, 5, -0.25, 0.25)
                .iter()
                .map(|v| v * MAX)
                .collect();
            let rv: Vec<f32> = data(shape.c, 6, 0.5, 1.0).iter().map(|v| v * MAX).collect();
            for (case, x) in cases(shape.len(), 9) {
                for mode in [Mode::Train, Mode::Eval] {
                    let run = || check(&norm, mode, shape, (case, &x), (&g, &b), (&rm, &rv));
                    if let Err(e) = std::panic::catch_unwind(run) {
                        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                        failures.push(msg);
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
