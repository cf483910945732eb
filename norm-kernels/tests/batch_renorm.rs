//! BatchRenorm (Ioffe, 2017) kernels against their f64 reference twins (proptest over odd
//! shapes, clipped and unclipped corrections, large means), finite differences with `r`, `d`
//! frozen, BatchNorm as its special case (`r_max = 1`, `d_max = 0`, and eval mode), errors,
//! thread-count invariance, and the descriptor arm (`Norm::BatchRenorm`).

mod common;

use common::check::*;
use common::running::{self as t, EPS};
use norm_kernels::reference::{self as r, RenormRef};
use norm_kernels::{
    Affine, AffineGrads, Backward, BatchNorm, BatchRenorm, Forward, Grads, Mode, Momentum, Nchw,
    Norm, NormError, Output, Parallelism, RenormStats, RenormStatsMut, RunningStats, Saved, Stats,
    StatsMut, batch_norm_backward_eval, batch_norm_backward_train, batch_norm_forward_eval,
    batch_norm_forward_train, batch_renorm_backward_eval, batch_renorm_backward_train,
    batch_renorm_forward_eval, batch_renorm_forward_train,
};
use proptest::prelude::*;

/// `num_batches_tracked` before every train forward here.
const NBT: u64 = 4;

fn settings(momentum: Momentum, affine: bool, r_max: f32, d_max: f32) -> BatchRenorm {
    BatchRenorm {
        eps: EPS,
        momentum,
        affine,
        r_max,
        d_max,
    }
}

/// The BatchNorm that BatchRenorm with `r_max = 1`, `d_max = 0` must be.
fn batch_norm_of(s: &BatchRenorm) -> BatchNorm {
    BatchNorm {
        eps: s.eps,
        momentum: s.momentum,
        affine: s.affine,
        track_running_stats: true,
    }
}

/// Seeded inputs whose running mean lies within ±3 of the batch mean and running variance in
/// [0.2, 5], so that `r` (about `sqrt(4/3 / var)`) and `d` land on both sides of the limits.
fn inputs(s: Nchw, seed: u64, shift: f32) -> t::Inputs {
    let mut inp = t::inputs(s, seed, shift);
    inp.rm = data(s.c, seed + 6, shift - 3.0, shift + 3.0);
    inp.rv = data(s.c, seed + 7, 0.2, 5.0);
    inp
}

fn affine_of(inp: &t::Inputs, affine: bool) -> Option<Affine<'_>> {
    affine.then_some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    })
}

/// Everything one train step (forward, then backward from what it saved) produces. BatchNorm's
/// step leaves `r`, `d` empty.
#[derive(Debug, PartialEq)]
struct Step {
    y: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    r: Vec<f32>,
    d: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    nbt: u64,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

impl Step {
    /// Every float output by name, for bit comparisons that name the offender.
    fn named(&self) -> [(&'static str, &[f32]); 10] {
        [
            ("y", &self.y),
            ("mean", &self.mean),
            ("rstd", &self.rstd),
            ("r", &self.r),
            ("d", &self.d),
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
            ("dx", &self.dx),
            ("dgamma", &self.dgamma),
            ("dbeta", &self.dbeta),
        ]
    }

    /// Asserts `self` and `other` equal bit for bit (except `r`, `d` if `skip_rd`).
    fn assert_bits_eq(&self, other: &Step, skip_rd: bool, label: &str) {
        for ((what, a), (_, b)) in self.named().into_iter().zip(other.named()) {
            if skip_rd && (what == "r" || what == "d") {
                continue;
            }
            assert_eq!(bits(a), bits(b), "{label}: {what}");
        }
        assert_eq!(self.nbt, other.nbt, "{label}: num_batches_tracked");
    }
}

/// Fresh NaN-filled gradient buffers, so that every output must be written.
fn nan_grads(s: Nchw) -> [Vec<f32>; 3] {
    [
        vec![f32::NAN; s.len()],
        vec![f32::NAN; s.c],
        vec![f32::NAN; s.c],
    ]
}

fn grads<'a>([dx, dg, db]: &'a mut [Vec<f32>; 3]) -> Grads<'a> {
    Grads {
        dx,
        affine: Some(AffineGrads {
            dgamma: dg,
            dbeta: db,
        }),
    }
}

/// BatchRenorm's train forward (running statistics from `inp`, `num_batches_tracked` = 4) and
/// backward from its saved statistics.
fn renorm_step(norm: &BatchRenorm, s: Nchw, inp: &t::Inputs, par: Parallelism) -> Step {
    let c = s.c;
    let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), NBT);
    let mut y = vec![f32::NAN; s.len()];
    let [mut mean, mut rstd, mut rr, mut dd] = [(); 4].map(|_| vec![f32::NAN; c]);
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
    };
    let out = Output {
        y: &mut y,
        stats: RenormStatsMut {
            mean: &mut mean,
            rstd: &mut rstd,
            r: &mut rr,
            d: &mut dd,
        },
    };
    let aff = affine_of(inp, norm.affine);
    batch_renorm_forward_train(norm, s, &inp.x, aff, running, out, par).unwrap();
    let mut g = nan_grads(s);
    let saved = Saved {
        x: &inp.x[..],
        stats: RenormStats {
            mean: &mean,
            rstd: &rstd,
            r: &rr,
            d: &dd,
        },
    };
    let gamma = norm.affine.then_some(&inp.gamma[..]);
    batch_renorm_backward_train(norm, s, saved, &inp.dy, gamma, grads(&mut g), par).unwrap();
    let [dx, dgamma, dbeta] = g;
    Step {
        y,
        mean,
        rstd,
        r: rr,
        d: dd,
        running_mean: rm,
        running_var: rv,
        nbt,
        dx,
        dgamma,
        dbeta,
    }
}

/// The same step through BatchNorm's kernels.
fn batch_norm_step(norm: &BatchNorm, s: Nchw, inp: &t::Inputs, par: Parallelism) -> Step {
    let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), NBT);
    let mut y = vec![f32::NAN; s.len()];
    let (mut mean, mut rstd) = (vec![f32::NAN; s.c], vec![f32::NAN; s.c]);
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
    };
    let out = Output {
        y: &mut y,
        stats: StatsMut {
            mean: &mut mean,
            rstd: &mut rstd,
        },
    };
    let aff = affine_of(inp, norm.affine);
    batch_norm_forward_train(norm, s, &inp.x, aff, Some(running), out, par).unwrap();
    let mut g = nan_grads(s);
    let saved = Saved {
        x: &inp.x[..],
        stats: Stats {
            mean: &mean,
            rstd: &rstd,
        },
    };
    let gamma = norm.affine.then_some(&inp.gamma[..]);
    batch_norm_backward_train(norm, s, saved, &inp.dy, gamma, grads(&mut g), par).unwrap();
    let [dx, dgamma, dbeta] = g;
    Step {
        y,
        mean,
        rstd,
        r: vec![],
        d: vec![],
        running_mean: rm,
        running_var: rv,
        nbt,
        dx,
        dgamma,
        dbeta,
    }
}

/// Eval forward `y` and backward `[dx, dgamma, dbeta]` through BatchRenorm's kernels.
fn renorm_eval(norm: &BatchRenorm, s: Nchw, inp: &t::Inputs, par: Parallelism) -> [Vec<f32>; 4] {
    let run = t::running(&inp.rm, &inp.rv);
    let mut y = vec![f32::NAN; s.len()];
    let aff = affine_of(inp, norm.affine);
    batch_renorm_forward_eval(norm, s, &inp.x, aff, run, &mut y, par).unwrap();
    let mut g = nan_grads(s);
    let saved = Saved {
        x: &inp.x[..],
        stats: run,
    };
    let gamma = norm.affine.then_some(&inp.gamma[..]);
    batch_renorm_backward_eval(norm, s, saved, &inp.dy, gamma, grads(&mut g), par).unwrap();
    let [dx, dg, db] = g;
    [y, dx, dg, db]
}

/// The same through BatchNorm's eval kernels.
fn batch_norm_eval(norm: &BatchNorm, s: Nchw, inp: &t::Inputs, par: Parallelism) -> [Vec<f32>; 4] {
    let run = t::running(&inp.rm, &inp.rv);
    let mut y = vec![f32::NAN; s.len()];
    let aff = affine_of(inp, norm.affine);
    batch_norm_forward_eval(norm, s, &inp.x, aff, run, &mut y, par).unwrap();
    let mut g = nan_grads(s);
    let saved = Saved {
        x: &inp.x[..],
        stats: run,
    };
    let gamma = norm.affine.then_some(&inp.gamma[..]);
    batch_norm_backward_eval(norm, s, saved, &inp.dy, gamma, grads(&mut g), par).unwrap();
    let [dx, dg, db] = g;
    [y, dx, dg, db]
}

fn par_of(rayon: bool) -> Parallelism {
    if rayon {
        Parallelism::Rayon
    } else {
        Parallelism::None
    }
}

fn momentum_of(cumulative: bool) -> Momentum {
    if cumulative {
        Momentum::CumulativeAverage
    } else {
        Momentum::Exponential(0.1)
    }
}

/// The train step of the kernels against the twins: `y`, the saved `mean`, `rstd`, `r`, `d`,
/// the running update and `num_batches_tracked`, then the backward with the twin's `r`, `d`.
fn check_train(norm: &BatchRenorm, s: Nchw, inp: &t::Inputs, par: Parallelism) {
    let got = renorm_step(norm, s, inp, par);
    let (x64, dy64) = (f64s(&inp.x), f64s(&inp.dy));
    let (g64, b64) = (f64s(&inp.gamma), f64s(&inp.beta));
    let aff64 = norm.affine.then_some((&g64[..], &b64[..]));
    let lim = RenormRef {
        eps: norm.eps as f64,
        r_max: norm.r_max as f64,
        d_max: norm.d_max as f64,
    };
    let (rm64, rv64) = (f64s(&inp.rm), f64s(&inp.rv));
    let (want_y, st, want_r, want_d) =
        r::batch_renorm_forward_train(s, &x64, aff64, (&rm64, &rv64), lim);
    assert_close("y", &got.y, &want_y, 2e-5);
    assert_close("mean", &got.mean, &st.mean, 1e-6);
    assert_close("rstd", &got.rstd, &st.rstd, 1e-5);
    assert_close("r", &got.r, &want_r, 1e-5);
    assert_close("d", &got.d, &want_d, 1e-5);

    assert_eq!(got.nbt, NBT + 1, "num_batches_tracked");
    let factor = match norm.momentum {
        Momentum::Exponential(m) => m as f64,
        Momentum::CumulativeAverage => 1.0 / (NBT + 1) as f64,
    };
    let want_rm = r::running_update(&rm64, &st.mean, factor);
    let want_rv = r::running_update(&rv64, &st.var_unbiased, factor);
    assert_close("running_mean", &got.running_mean, &want_rm, 1e-6);
    assert_close("running_var", &got.running_var, &want_rv, 1e-5);

    let gamma = norm.affine.then_some(&g64[..]);
    let want = r::batch_renorm_backward_train(s, &x64, &dy64, gamma, (&want_r, &want_d), lim.eps);
    assert_close("dx", &got.dx, &want.dx, 1e-4);
    let count = s.n * s.hw();
    assert_close_sum("dgamma", &got.dgamma, &want.dgamma, count, 1e-4);
    assert_close_sum("dbeta", &got.dbeta, &want.dbeta, count, 1e-4);
}

fn odd_shape() -> impl Strategy<Value = Nchw> {
    t::odd_shape(
        |s| s.n * s.hw(),
        "h·w a multiple of 8, or one value per channel",
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn train_matches_reference(
        s in odd_shape(),
        seed in 0u64..1000,
        affine in any::<bool>(),
        shift in prop::sample::select(vec![0.0f32, 1000.0]),
        r_max in 1.0f32..=4.0,
        d_max in 0.0f32..=6.0,
        cumulative in any::<bool>(),
        rayon in any::<bool>(),
    ) {
        let norm = settings(momentum_of(cumulative), affine, r_max, d_max);
        check_train(&norm, s, &inputs(s, seed, shift), par_of(rayon));
    }
}

/// Few channels and planes longer than one work unit (the nested split path), with limits
/// that clip some channels and not others.
#[test]
fn few_channels_long_planes_match_reference() {
    let s = Nchw::new(2, 3, 200, 333);
    let norm = settings(Momentum::Exponential(0.3), true, 1.5, 1.0);
    check_train(&norm, s, &inputs(s, 7, 1000.0), Parallelism::Rayon);
}

/// A case of the finite-difference check: the running statistics per channel, the limits,
/// and whether every channel's `r` and `d` must come out clipped (or none).
struct FdCase {
    label: &'static str,
    rm: Vec<f32>,
    rv: Vec<f32>,
    r_max: f32,
    d_max: f32,
    clipped: bool,
}

/// `Σ dy·(γ·(x̂_B(x)·r0 + d0) + β)`: the train forward with `r`, `d` frozen at `(r0, d0)`.
fn frozen_loss(
    s: Nchw,
    (x, dy): (&[f64], &[f64]),
    affine: Option<(&[f64], &[f64])>,
    (r0, d0): (&[f64], &[f64]),
) -> f64 {
    let (xhat, _) = r::batch_norm_forward_train(s, x, None, None, EPS as f64);
    let mut sum = 0.0;
    for (k, (&xh, &d)) in xhat.iter().zip(dy).enumerate() {
        let c = (k / s.hw()) % s.c;
        let (g, b) = affine.map_or((1.0, 0.0), |(g, b)| (g[c], b[c]));
        sum += d * (g * (xh * r0[c] + d0[c]) + b);
    }
    sum
}

/// The kernels' backward (and the twin's) against central differences of [`frozen_loss`] at
/// the `r`, `d` the kernel's forward saved. Where `r` and `d` are clipped they are locally
/// constant, so the full forward (r, d moving with x) has the same gradient; where they are not,
/// it must differ, or this check could not tell a backward that holds them constant from one
/// that does not.
fn check_fd_case(case: &FdCase) {
    let s = Nchw::new(3, 2, 3, 5);
    let mut inp = t::inputs(s, 31, 0.0);
    (inp.rm, inp.rv) = (case.rm.clone(), case.rv.clone());
    let norm = settings(Momentum::Exponential(0.1), true, case.r_max, case.d_max);
    let got = renorm_step(&norm, s, &inp, Parallelism::None);
    let label = case.label;
    // The case is what it claims: every channel clipped in both r and d, or none.
    let r_lo = (1.0 / case.r_max as f64) as f32;
    for c in 0..s.c {
        let r_clipped = got.r[c] == case.r_max || got.r[c] == r_lo;
        let d_clipped = got.d[c].abs() == case.d_max;
        assert_eq!(
            (r_clipped, d_clipped),
            (case.clipped, case.clipped),
            "{label}: channel {c} r {} d {}",
            got.r[c],
            got.d[c]
        );
    }

    let (x, dy) = (f64s(&inp.x), f64s(&inp.dy));
    let (g, b) = (f64s(&inp.gamma), f64s(&inp.beta));
    let (r0, d0) = (f64s(&got.r), f64s(&got.d));
    let frozen =
        |x: &[f64], g: &[f64], b: &[f64]| frozen_loss(s, (x, &dy), Some((g, b)), (&r0, &d0));
    // The frozen function is what the forward computed.
    let (xhat, _) = r::batch_norm_forward_train(s, &x, None, None, EPS as f64);
    let frozen_y: Vec<f64> = (0..s.len())
        .map(|k| {
            let c = (k / s.hw()) % s.c;
            g[c] * (xhat[k] * r0[c] + d0[c]) + b[c]
        })
        .collect();
    assert_close(&format!("{label}: y"), &got.y, &frozen_y, 2e-5);

    let h = 1e-6;
    let num_dx = numeric_grad(&x, h, |v| frozen(v, &g, &b));
    let num_dg = numeric_grad(&g, h, |v| frozen(&x, v, &b));
    let num_db = numeric_grad(&b, h, |v| frozen(&x, &g, v));
    let twin = r::batch_renorm_backward_train(s, &x, &dy, Some(&g), (&r0, &d0), EPS as f64);
    assert_close64(&format!("{label}: twin dx"), &twin.dx, &num_dx, 1e-6);
    assert_close64(
        &format!("{label}: twin dgamma"),
        &twin.dgamma,
        &num_dg,
        1e-6,
    );
    assert_close64(&format!("{label}: twin dbeta"), &twin.dbeta, &num_db, 1e-6);
    assert_close(&format!("{label}: kernel dx"), &got.dx, &num_dx, 1e-5);
    assert_close(
        &format!("{label}: kernel dgamma"),
        &got.dgamma,
        &num_dg,
        1e-5,
    );
    assert_close(&format!("{label}: kernel dbeta"), &got.dbeta, &num_db, 1e-5);

    // The full forward, r and d recomputed from the moving batch statistics.
    let (rm, rv) = (f64s(&inp.rm), f64s(&inp.rv));
    let lim = RenormRef {
        eps: EPS as f64,
        r_max: case.r_max as f64,
        d_max: case.d_max as f64,
    };
    let full = |v: &[f64]| {
        let (y, ..) = r::batch_renorm_forward_train(s, v, Some((&g, &b)), (&rm, &rv), lim);
        loss(&y, &dy)
    };
    let num_full = numeric_grad(&x, h, full);
    let gap = num_full
        .iter()
        .zip(&num_dx)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    if case.clipped {
        assert!(
            gap < 1e-6,
            "{label}: clipped r, d should be constant: gap {gap:e}"
        );
    } else {
        assert!(
            gap > 1e-3,
            "{label}: the case cannot tell frozen from moving r, d: gap {gap:e}"
        );
    }

    // Without affine: dx of `Σ dy·(x̂·r0 + d0)`.
    let plain = settings(Momentum::Exponential(0.1), false, case.r_max, case.d_max);
    let got = renorm_step(&plain, s, &inp, Parallelism::Rayon);
    let num = numeric_grad(&x, h, |v| frozen_loss(s, (v, &dy), None, (&r0, &d0)));
    assert_close(
        &format!("{label}: kernel dx (no affine)"),
        &got.dx,
        &num,
        1e-5,
    );
    // dgamma, dbeta of a unit scale and zero shift: the same as with gamma.
    assert_close(
        &format!("{label}: kernel dgamma (no affine)"),
        &got.dgamma,
        &num_dg,
        1e-5,
    );
    assert_close(
        &format!("{label}: kernel dbeta (no affine)"),
        &got.dbeta,
        &num_db,
        1e-5,
    );
}

/// x is uniform in [-2, 2] (variance 4/3, batch mean near 0): running statistics near the
/// batch's leave r, d inside the limits; a running variance of 0.2 or 5 and a running mean 1.5
/// away push r above r_max = 1.2 or below 1/1.2, and |d| above d_max = 0.25.
#[test]
fn train_backward_matches_finite_differences_with_r_d_frozen() {
    check_fd_case(&FdCase {
        label: "unclipped",
        rm: vec![0.3, -0.2],
        rv: vec![1.0, 1.6],
        r_max: 3.0,
        d_max: 5.0,
        clipped: false,
    });
    check_fd_case(&FdCase {
        label: "clipped",
        rm: vec![1.5, -1.5],
        rv: vec![0.2, 5.0],
        r_max: 1.2,
        d_max: 0.25,
        clipped: true,
    });
}

/// With `r_max = 1`, `d_max = 0` the train step is BatchNorm's bit for bit, running statistics
/// and `num_batches_tracked` included, whatever the running statistics (far from the batch's
/// here, so the limits clip).
#[test]
fn unit_limits_are_batch_norm_bit_for_bit() {
    let shapes = [
        Nchw::new(2, 3, 3, 5),
        Nchw::new(7, 9, 1, 17),
        Nchw::new(1, 2, 9, 9),
        Nchw::new(4, 24, 40, 41),
        Nchw::new(2, 3, 200, 333),
    ];
    for (i, s) in shapes.into_iter().enumerate() {
        for shift in [0.0, 1000.0] {
            let inp = inputs(s, 40 + i as u64, shift);
            for (affine, cumulative, rayon) in [
                (true, false, false),
                (false, true, true),
                (true, true, true),
                (false, false, false),
            ] {
                let norm = settings(momentum_of(cumulative), affine, 1.0, 0.0);
                let par = par_of(rayon);
                let got = renorm_step(&norm, s, &inp, par);
                let want = batch_norm_step(&batch_norm_of(&norm), s, &inp, par);
                let label = format!("{s} shift {shift} affine {affine} {par:?}");
                got.assert_bits_eq(&want, true, &label);
                assert!(got.r.iter().all(|&r| r == 1.0), "{label}: r {:?}", got.r);
                assert!(got.d.iter().all(|&d| d == 0.0), "{label}: d {:?}", got.d);
            }
        }
    }
}

/// Eval mode is BatchNorm's eval mode bit for bit, whatever the limits.
#[test]
fn eval_is_batch_norm_bit_for_bit() {
    for (i, s) in [
        Nchw::new(2, 3, 3, 5),
        Nchw::new(1, 17, 7, 1),
        Nchw::new(2, 3, 200, 333),
    ]
    .into_iter()
    .enumerate()
    {
        let inp = inputs(s, 60 + i as u64, 1000.0);
        for affine in [true, false] {
            for par in [Parallelism::None, Parallelism::Rayon] {
                let norm = settings(Momentum::Exponential(0.1), affine, 2.5, 4.0);
                let got = renorm_eval(&norm, s, &inp, par);
                let want = batch_norm_eval(&batch_norm_of(&norm), s, &inp, par);
                for (what, a, b) in [
                    ("y", &got[0], &want[0]),
                    ("dx", &got[1], &want[1]),
                    ("dgamma", &got[2], &want[2]),
                    ("dbeta", &got[3], &want[3]),
                ] {
                    assert_eq!(bits(a), bits(b), "{s} affine {affine} {par:?}: {what}");
                }
            }
        }
    }
}

/// The train step and eval mode in rayon pools of 1 and 2 threads equal the serial result
/// bit for bit: many channels (one task each) and few with planes split into work units.
#[test]
fn bit_identical_for_any_thread_count() {
    for s in [Nchw::new(4, 24, 40, 41), Nchw::new(2, 3, 300, 301)] {
        let inp = inputs(s, 5, 1000.0);
        let norm = settings(Momentum::Exponential(0.1), true, 2.0, 1.0);
        let serial = renorm_step(&norm, s, &inp, Parallelism::None);
        let serial_eval = renorm_eval(&norm, s, &inp, Parallelism::None);
        for threads in [1, 2] {
            let label = format!("{s}, {threads} threads");
            let got = in_pool(threads, || renorm_step(&norm, s, &inp, Parallelism::Rayon));
            got.assert_bits_eq(&serial, false, &label);
            let eval = in_pool(threads, || renorm_eval(&norm, s, &inp, Parallelism::Rayon));
            for (k, what) in ["y", "dx", "dgamma", "dbeta"].into_iter().enumerate() {
                assert_eq!(
                    bits(&eval[k]),
                    bits(&serial_eval[k]),
                    "{label}: eval {what}"
                );
            }
        }
    }
}

/// The train forward with settings `norm` and `r`, `d` buffers of `r_len`, `d_len` on a valid
/// 2x3x4x5 input; asserts that a failing call wrote nothing.
fn forward_with(norm: &BatchRenorm, (r_len, d_len): (usize, usize)) -> Result<(), NormError> {
    let s = Nchw::new(2, 3, 4, 5);
    let inp = inputs(s, 3, 0.0);
    let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), NBT);
    let mut y = vec![7.0; s.len()];
    let (mut mean, mut rstd) = (vec![7.0; s.c], vec![7.0; s.c]);
    let (mut rr, mut dd) = (vec![7.0; r_len], vec![7.0; d_len]);
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
    };
    let out = Output {
        y: &mut y,
        stats: RenormStatsMut {
            mean: &mut mean,
            rstd: &mut rstd,
            r: &mut rr,
            d: &mut dd,
        },
    };
    let aff = affine_of(&inp, norm.affine);
    let res = batch_renorm_forward_train(norm, s, &inp.x, aff, running, out, Parallelism::None);
    if res.is_err() {
        let untouched = [&y, &mean, &rstd, &rr, &dd]
            .into_iter()
            .all(|v| v.iter().all(|&a| a == 7.0));
        assert!(untouched, "a failing forward wrote its outputs");
        assert_eq!(
            (rm, rv, nbt),
            (inp.rm, inp.rv, NBT),
            "a failing forward updated running"
        );
    }
    res
}

/// The train backward with `r`, `d` of `r_len`, `d_len` on a valid 2x3x4x5 input.
fn backward_with((r_len, d_len): (usize, usize)) -> Result<(), NormError> {
    let s = Nchw::new(2, 3, 4, 5);
    let inp = inputs(s, 3, 0.0);
    let norm = BatchRenorm::default();
    let (mean, rstd) = (vec![0.0; s.c], vec![1.0; s.c]);
    let (rr, dd) = (vec![1.0; r_len], vec![0.0; d_len]);
    let saved = Saved {
        x: &inp.x[..],
        stats: RenormStats {
            mean: &mean,
            rstd: &rstd,
            r: &rr,
            d: &dd,
        },
    };
    let mut g = [vec![7.0; s.len()], vec![7.0; s.c], vec![7.0; s.c]];
    let gamma = Some(&inp.gamma[..]);
    let p = Parallelism::None;
    let res = batch_renorm_backward_train(&norm, s, saved, &inp.dy, gamma, grads(&mut g), p);
    if res.is_err() {
        assert!(
            g.iter().flatten().all(|&a| a == 7.0),
            "a failing backward wrote"
        );
    }
    res
}

#[test]
fn errors() {
    const FT: &str = "batch_renorm_forward_train";
    const BT: &str = "batch_renorm_backward_train";
    let ok = (3, 3);
    let with = |r_max, d_max| settings(Momentum::Exponential(0.1), true, r_max, d_max);
    assert_eq!(forward_with(&with(1.0, 0.0), ok), Ok(()));
    for (r_max, d_max) in [
        (0.5, 1.0),
        (0.999, 0.0),
        (2.0, -0.5),
        (f32::NAN, 1.0),
        (2.0, f32::NAN),
        (f32::INFINITY, 1.0),
        (2.0, f32::INFINITY),
    ] {
        let err = forward_with(&with(r_max, d_max), ok).unwrap_err();
        let NormError::RenormLimits {
            op,
            r_max: r,
            d_max: d,
        } = err
        else {
            panic!("r_max {r_max}, d_max {d_max}: {err:?}");
        };
        assert_eq!(op, FT);
        // NaN != NaN: compare the bits.
        assert_eq!(
            (r.to_bits(), d.to_bits()),
            (r_max.to_bits(), d_max.to_bits())
        );
    }
    assert_eq!(
        forward_with(&with(0.5, 1.0), ok).unwrap_err().to_string(),
        "batch_renorm_forward_train: r_max = 0.5 must be finite and >= 1, d_max = 1 finite and >= 0"
    );
    // The descriptor's check without running anything.
    let norm = Norm::BatchRenorm(with(2.0, -1.0));
    assert!(matches!(
        norm.validate(Nchw::new(2, 3, 4, 5)),
        Err(NormError::RenormLimits { .. })
    ));

    let len = |op, buffer, actual| {
        Err(NormError::BufferLen {
            op,
            buffer,
            expected: 3,
            actual,
        })
    };
    let norm = BatchRenorm::default();
    for n in [2, 4] {
        assert_eq!(forward_with(&norm, (n, 3)), len(FT, "r", n));
        assert_eq!(forward_with(&norm, (3, n)), len(FT, "d", n));
        assert_eq!(backward_with((n, 3)), len(BT, "r", n));
        assert_eq!(backward_with((3, n)), len(BT, "d", n));
    }
    assert_eq!(backward_with(ok), Ok(()));
}

/// One forward and backward through the descriptor: `[y, saved, running_mean, running_var,
/// dx, dgamma, dbeta]` and `num_batches_tracked`.
fn descriptor_step(
    norm: &Norm,
    mode: Mode,
    s: Nchw,
    inp: &t::Inputs,
    par: Parallelism,
) -> ([Vec<f32>; 7], u64) {
    let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), NBT);
    let mut y = vec![f32::NAN; s.len()];
    let mut saved = vec![f32::NAN; norm.saved_len(s, mode)];
    let fwd = Forward {
        shape: s,
        x: &inp.x,
        affine: affine_of(inp, norm.affine()),
        running: Some(RunningStats {
            mean: &mut rm,
            var: &mut rv,
            num_batches_tracked: &mut nbt,
        }),
        y: &mut y,
        saved: &mut saved,
    };
    norm.forward(mode, fwd, par).unwrap();
    let mut g = nan_grads(s);
    let bwd = Backward {
        shape: s,
        x: &inp.x,
        dy: &inp.dy,
        saved: &saved,
        gamma: norm.affine().then_some(&inp.gamma[..]),
        grads: grads(&mut g),
    };
    norm.backward(mode, bwd, par).unwrap();
    let [dx, dg, db] = g;
    ([y, saved, rm, rv, dx, dg, db], nbt)
}

#[test]
fn descriptor_parses_and_prints_its_settings() {
    let norm: Norm = "renorm:r_max=2,d_max=1".parse().unwrap();
    let want = BatchRenorm {
        r_max: 2.0,
        d_max: 1.0,
        ..BatchRenorm::default()
    };
    assert_eq!(norm, Norm::BatchRenorm(want));
    assert_eq!(norm.spec().parse::<Norm>().unwrap(), norm);
    assert_eq!(
        norm.spec(),
        "renorm:eps=0.00001,momentum=0.1,affine=true,r_max=2,d_max=1"
    );
    assert_eq!(
        "renorm".parse::<Norm>().unwrap(),
        Norm::BatchRenorm(BatchRenorm::default())
    );
    assert!(norm.tracks_running());
    let s = Nchw::new(3, 5, 2, 7);
    assert_eq!(norm.saved_len(s, Mode::Train), 4 * 5);
    assert_eq!(norm.saved_len(s, Mode::Eval), 2 * 5);
    assert_eq!(norm.stats_len(s), 5);
    assert_eq!(norm.affine_len(s), 5);
}

/// `ramped(t)` moves r_max from 1 and d_max from 0 to the settings, linearly; nothing else.
#[test]
fn descriptor_ramps_the_limits() {
    let base = BatchRenorm {
        eps: 1e-3,
        momentum: Momentum::CumulativeAverage,
        affine: false,
        r_max: 3.0,
        d_max: 5.0,
    };
    let norm = Norm::BatchRenorm(base);
    let at = |r_max: f32, d_max: f32| {
        Norm::BatchRenorm(BatchRenorm {
            r_max,
            d_max,
            ..base
        })
    };
    assert_eq!(norm.ramped(0.0), at(1.0, 0.0));
    assert_eq!(norm.ramped(0.5), at(2.0, 2.5));
    assert_eq!(norm.ramped(1.0), norm);
    // Outside [0, 1] the ramp holds at its ends.
    assert_eq!(norm.ramped(-1.0), at(1.0, 0.0));
    assert_eq!(norm.ramped(2.0), norm);
    // The start of the ramp is BatchNorm.
    let s = Nchw::new(2, 3, 3, 5);
    let inp = inputs(s, 77, 0.0);
    let Norm::BatchRenorm(start) = norm.ramped(0.0) else {
        unreachable!()
    };
    let got = renorm_step(&start, s, &inp, Parallelism::None);
    let want = batch_norm_step(&batch_norm_of(&start), s, &inp, Parallelism::None);
    got.assert_bits_eq(&want, true, "ramped(0)");
}

/// `Norm::forward` / `Norm::backward` equal the free functions bit for bit in both modes; the
/// train step saves `[mean, rstd, r, d]`, eval mode a copy of the running statistics and leaves
/// them alone.
#[test]
fn descriptor_dispatch_is_the_free_functions() {
    for (s, affine, par) in [
        (Nchw::new(2, 3, 3, 5), true, Parallelism::None),
        (Nchw::new(7, 2, 1, 9), false, Parallelism::Rayon),
        (Nchw::new(2, 3, 200, 333), true, Parallelism::Rayon),
    ] {
        let inp = inputs(s, 90, 1000.0);
        let set = settings(Momentum::Exponential(0.2), affine, 2.0, 1.0);
        let norm = "renorm:r_max=2,d_max=1,momentum=0.2"
            .parse::<Norm>()
            .unwrap()
            .with("affine", affine)
            .unwrap();
        assert_eq!(norm, Norm::BatchRenorm(set));
        let label = format!("{s} affine {affine}");

        let ([y, saved, rm, rv, dx, dg, db], nbt) =
            descriptor_step(&norm, Mode::Train, s, &inp, par);
        let want = renorm_step(&set, s, &inp, par);
        let got = Step {
            y,
            mean: saved[..s.c].to_vec(),
            rstd: saved[s.c..2 * s.c].to_vec(),
            r: saved[2 * s.c..3 * s.c].to_vec(),
            d: saved[3 * s.c..].to_vec(),
            running_mean: rm,
            running_var: rv,
            nbt,
            dx,
            dgamma: dg,
            dbeta: db,
        };
        got.assert_bits_eq(&want, false, &format!("{label}: train"));

        let ([y, saved, rm, rv, dx, dg, db], nbt) =
            descriptor_step(&norm, Mode::Eval, s, &inp, par);
        let want = renorm_eval(&set, s, &inp, par);
        let label = format!("{label}: eval");
        for (what, a, b) in [
            ("y", &y, &want[0]),
            ("dx", &dx, &want[1]),
            ("dgamma", &dg, &want[2]),
            ("dbeta", &db, &want[3]),
        ] {
            assert_eq!(bits(a), bits(b), "{label}: {what}");
        }
        assert_eq!(saved, [&inp.rm[..], &inp.rv[..]].concat(), "{label}: saved");
        assert_eq!(
            (rm, rv, nbt),
            (inp.rm.clone(), inp.rv.clone(), NBT),
            "{label}: running"
        );
    }
}
