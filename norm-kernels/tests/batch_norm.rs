//! BatchNorm2d kernels against their f64 reference twin (proptest over odd shapes, large means),
//! finite differences, the PyTorch fixtures, thread-count invariance, errors and a snapshot.

mod common;

use norm_kernels::reference as r;
use norm_kernels::{
    Affine, AffineGrads, Momentum, Nchw, NormError, Parallelism, RunningStats,
    batch_norm_backward_eval, batch_norm_backward_train, batch_norm_forward_eval,
    batch_norm_forward_train,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn data(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// Asserts `|got - want| <= tol·max(1, |want|)` elementwise.
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / w.abs().max(1.0);
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (err {err:e} > {tol:e})"
        );
    }
}

/// Asserts `|got - want| <= tol·max(1, |want|, scale)`: for a per-channel sum of `M` terms of
/// unit size, `scale = sqrt(M)` is its typical magnitude. A sum that happens to cancel to near
/// zero is judged against that scale, not against its own small value (the f32 partial sums
/// carry an absolute error that grows with the terms, not with the result).
fn assert_close_sum(what: &str, got: &[f32], want: &[f64], count: usize, tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = (count as f64).sqrt();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / w.abs().max(1.0).max(scale);
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (err {err:e} > {tol:e})"
        );
    }
}

/// Inputs of one case: x (optionally shifted), dy, gamma, beta, running mean and var.
struct Inputs {
    x: Vec<f32>,
    dy: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
}

fn inputs(s: Nchw, seed: u64, shift: f32) -> Inputs {
    Inputs {
        x: data(s.len(), seed, -2.0 + shift, 2.0 + shift),
        dy: data(s.len(), seed + 1, -1.0, 1.0),
        gamma: data(s.c, seed + 2, 0.5, 1.5),
        beta: data(s.c, seed + 3, -0.5, 0.5),
        rm: data(s.c, seed + 4, -0.5 + shift, 0.5 + shift),
        rv: data(s.c, seed + 5, 0.5, 2.0),
    }
}

const EPS: f32 = 1e-5;

fn dim() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![1usize, 2, 3, 7, 9, 17])
}

fn odd_shape() -> impl Strategy<Value = Nchw> {
    (dim(), dim(), dim(), dim())
        .prop_map(|(n, c, h, w)| Nchw::new(n, c, h, w))
        .prop_filter("h·w a multiple of 8, or one value per channel", |s| {
            s.hw() % 8 != 0 && s.n * s.hw() > 1
        })
}

/// Runs the train forward (+ running stats) and backward of the kernel and the reference and
/// compares everything.
fn check_train(s: Nchw, seed: u64, affine: bool, shift: f32, momentum: Momentum, par: Parallelism) {
    let inp = inputs(s, seed, shift);
    let aff = affine.then_some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    let (mut y, mut mean, mut rstd) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), 4u64);
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
        momentum,
    };
    batch_norm_forward_train(
        s,
        &inp.x,
        aff,
        EPS,
        Some(running),
        &mut y,
        &mut mean,
        &mut rstd,
        par,
    )
    .unwrap();

    let x64 = f64s(&inp.x);
    let (g64, b64) = (f64s(&inp.gamma), f64s(&inp.beta));
    let (g, b) = if affine {
        (Some(&g64[..]), Some(&b64[..]))
    } else {
        (None, None)
    };
    let (want_y, st) = r::batch_norm_forward_train(s, &x64, g, b, EPS as f64);
    assert_close("y", &y, &want_y, 2e-5);
    assert_close("mean", &mean, &st.mean, 1e-6);
    assert_close("rstd", &rstd, &st.rstd, 1e-5);
    assert_eq!(nbt, 5);
    let f = match momentum {
        Momentum::Exponential(m) => m as f64,
        Momentum::CumulativeAverage => 1.0 / 5.0,
    };
    assert_close(
        "running_mean",
        &rm,
        &r::running_update(&f64s(&inp.rm), &st.mean, f),
        1e-6,
    );
    assert_close(
        "running_var",
        &rv,
        &r::running_update(&f64s(&inp.rv), &st.var_unbiased, f),
        1e-5,
    );

    let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let grads = AffineGrads {
        dgamma: &mut dg,
        dbeta: &mut db,
    };
    let gamma = affine.then_some(&inp.gamma[..]);
    batch_norm_backward_train(
        s,
        &inp.x,
        &inp.dy,
        &mean,
        &rstd,
        gamma,
        &mut dx,
        Some(grads),
        par,
    )
    .unwrap();
    let want = r::batch_norm_backward_train(s, &x64, &f64s(&inp.dy), g, EPS as f64);
    assert_close("dx", &dx, &want.dx, 1e-4);
    let count = s.n * s.hw();
    assert_close_sum("dgamma", &dg, &want.dgamma, count, 1e-4);
    assert_close_sum("dbeta", &db, &want.dbeta, count, 1e-4);
}

fn check_eval(s: Nchw, seed: u64, affine: bool, shift: f32, par: Parallelism) {
    let inp = inputs(s, seed, shift);
    let aff = affine.then_some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    let mut y = vec![0.0; s.len()];
    batch_norm_forward_eval(s, &inp.x, &inp.rm, &inp.rv, aff, EPS, &mut y, par).unwrap();
    let (x64, rm64, rv64) = (f64s(&inp.x), f64s(&inp.rm), f64s(&inp.rv));
    let (g64, b64) = (f64s(&inp.gamma), f64s(&inp.beta));
    let (g, b) = if affine {
        (Some(&g64[..]), Some(&b64[..]))
    } else {
        (None, None)
    };
    let want = r::batch_norm_forward_eval(s, &x64, &rm64, &rv64, g, b, EPS as f64);
    assert_close("y_eval", &y, &want, 2e-5);

    let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let grads = AffineGrads {
        dgamma: &mut dg,
        dbeta: &mut db,
    };
    let gamma = affine.then_some(&inp.gamma[..]);
    batch_norm_backward_eval(
        s,
        &inp.x,
        &inp.dy,
        &inp.rm,
        &inp.rv,
        gamma,
        EPS,
        &mut dx,
        Some(grads),
        par,
    )
    .unwrap();
    let want = r::batch_norm_backward_eval(s, &x64, &f64s(&inp.dy), &rm64, &rv64, g, EPS as f64);
    assert_close("dx_eval", &dx, &want.dx, 1e-5);
    let count = s.n * s.hw();
    assert_close_sum("dgamma_eval", &dg, &want.dgamma, count, 1e-4);
    assert_close_sum("dbeta_eval", &db, &want.dbeta, count, 1e-4);
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
        check_train(s, seed, affine, shift, momentum, par);
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
        check_eval(s, seed, affine, shift, par);
    }
}

/// Few channels and planes longer than one 64 Ki-element work unit: the nested split path.
#[test]
fn few_channels_long_planes_match_reference() {
    let s = Nchw::new(2, 3, 200, 333);
    check_train(
        s,
        7,
        true,
        1000.0,
        Momentum::Exponential(0.3),
        Parallelism::Rayon,
    );
    check_eval(s, 8, true, 0.0, Parallelism::Rayon);
}

/// `Σ y·dy` of the reference forward, the loss whose gradient backward returns.
fn loss(y: &[f64], dy: &[f64]) -> f64 {
    y.iter().zip(dy).map(|(a, b)| a * b).sum()
}

/// Central differences of `f` at `v`, one coordinate at a time.
fn numeric_grad(v: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    (0..v.len())
        .map(|i| {
            let (mut p, mut m) = (v.to_vec(), v.to_vec());
            p[i] += h;
            m[i] -= h;
            (f(&p) - f(&m)) / (2.0 * h)
        })
        .collect()
}

fn assert_close64(what: &str, got: &[f64], want: &[f64], tol: f64) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(
            err <= tol,
            "{what}[{i}]: analytic {g}, numeric {w} (err {err:e})"
        );
    }
}

#[test]
fn train_backward_matches_finite_differences() {
    let s = Nchw::new(2, 3, 3, 5);
    let inp = inputs(s, 11, 0.0);
    let (x, dy, g, b) = (
        f64s(&inp.x),
        f64s(&inp.dy),
        f64s(&inp.gamma),
        f64s(&inp.beta),
    );
    let eps = 1e-5;
    let fwd = |x: &[f64], g: &[f64], b: &[f64]| {
        loss(
            &r::batch_norm_forward_train(s, x, Some(g), Some(b), eps).0,
            &dy,
        )
    };
    let an = r::batch_norm_backward_train(s, &x, &dy, Some(&g), eps);
    assert_close64("dx", &an.dx, &numeric_grad(&x, |x| fwd(x, &g, &b)), 1e-6);
    assert_close64(
        "dgamma",
        &an.dgamma,
        &numeric_grad(&g, |g| fwd(&x, g, &b)),
        1e-6,
    );
    assert_close64(
        "dbeta",
        &an.dbeta,
        &numeric_grad(&b, |b| fwd(&x, &g, b)),
        1e-6,
    );
    // Without affine: dx of the plain normalisation.
    let plain = r::batch_norm_backward_train(s, &x, &dy, None, eps);
    let num = numeric_grad(&x, |x| {
        loss(&r::batch_norm_forward_train(s, x, None, None, eps).0, &dy)
    });
    assert_close64("dx (no affine)", &plain.dx, &num, 1e-6);

    // The f32 kernel agrees with the analytic gradient.
    let (mut y, mut mean, mut rstd) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let aff = Some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    batch_norm_forward_train(
        s,
        &inp.x,
        aff,
        1e-5,
        None,
        &mut y,
        &mut mean,
        &mut rstd,
        Parallelism::None,
    )
    .unwrap();
    let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let grads = AffineGrads {
        dgamma: &mut dg,
        dbeta: &mut db,
    };
    batch_norm_backward_train(
        s,
        &inp.x,
        &inp.dy,
        &mean,
        &rstd,
        Some(&inp.gamma),
        &mut dx,
        Some(grads),
        Parallelism::Rayon,
    )
    .unwrap();
    assert_close("kernel dx", &dx, &an.dx, 1e-5);
    assert_close("kernel dgamma", &dg, &an.dgamma, 1e-5);
    assert_close("kernel dbeta", &db, &an.dbeta, 1e-5);
}

#[test]
fn eval_backward_matches_finite_differences() {
    let s = Nchw::new(2, 3, 3, 5);
    let inp = inputs(s, 12, 0.0);
    let (x, dy, g, b) = (
        f64s(&inp.x),
        f64s(&inp.dy),
        f64s(&inp.gamma),
        f64s(&inp.beta),
    );
    let (rm, rv) = (f64s(&inp.rm), f64s(&inp.rv));
    let eps = 1e-5;
    let fwd = |x: &[f64], g: &[f64], b: &[f64]| {
        loss(
            &r::batch_norm_forward_eval(s, x, &rm, &rv, Some(g), Some(b), eps),
            &dy,
        )
    };
    let an = r::batch_norm_backward_eval(s, &x, &dy, &rm, &rv, Some(&g), eps);
    assert_close64("dx", &an.dx, &numeric_grad(&x, |x| fwd(x, &g, &b)), 1e-6);
    assert_close64(
        "dgamma",
        &an.dgamma,
        &numeric_grad(&g, |g| fwd(&x, g, &b)),
        1e-6,
    );
    assert_close64(
        "dbeta",
        &an.dbeta,
        &numeric_grad(&b, |b| fwd(&x, &g, b)),
        1e-6,
    );

    let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let grads = AffineGrads {
        dgamma: &mut dg,
        dbeta: &mut db,
    };
    batch_norm_backward_eval(
        s,
        &inp.x,
        &inp.dy,
        &inp.rm,
        &inp.rv,
        Some(&inp.gamma),
        1e-5,
        &mut dx,
        Some(grads),
        Parallelism::None,
    )
    .unwrap();
    assert_close("kernel dx", &dx, &an.dx, 1e-5);
    assert_close("kernel dgamma", &dg, &an.dgamma, 1e-5);
    assert_close("kernel dbeta", &db, &an.dbeta, 1e-5);
}

/// `gamma = None` with `grads`: dx of the plain normalisation, and the gradients of a unit scale
/// and zero shift — the same dgamma/dbeta as with any gamma.
#[test]
fn no_affine_still_writes_grads() {
    let s = Nchw::new(3, 4, 5, 3);
    let inp = inputs(s, 13, 0.0);
    let (mut y, mut mean, mut rstd) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    batch_norm_forward_train(
        s,
        &inp.x,
        None,
        EPS,
        None,
        &mut y,
        &mut mean,
        &mut rstd,
        Parallelism::None,
    )
    .unwrap();
    let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![f32::NAN; s.c], vec![f32::NAN; s.c]);
    let grads = AffineGrads {
        dgamma: &mut dg,
        dbeta: &mut db,
    };
    batch_norm_backward_train(
        s,
        &inp.x,
        &inp.dy,
        &mean,
        &rstd,
        None,
        &mut dx,
        Some(grads),
        Parallelism::None,
    )
    .unwrap();
    let want = r::batch_norm_backward_train(s, &f64s(&inp.x), &f64s(&inp.dy), None, EPS as f64);
    assert_close("dx", &dx, &want.dx, 1e-5);
    let with_gamma = r::batch_norm_backward_train(
        s,
        &f64s(&inp.x),
        &f64s(&inp.dy),
        Some(&f64s(&inp.gamma)),
        EPS as f64,
    );
    assert_close("dgamma", &dg, &with_gamma.dgamma, 1e-5);
    assert_close("dbeta", &db, &with_gamma.dbeta, 1e-5);
}

#[test]
fn matches_pytorch_fixtures() {
    for case in common::cases(Some("batch")) {
        let [n, c, h, w] = case.shape;
        let s = Nchw::new(n, c, h, w);
        let x = case.load("x");
        let dy = case.load("dy");
        let (gamma, beta) = if case.affine {
            (case.load("weight"), case.load("bias"))
        } else {
            (vec![], vec![])
        };
        let aff = case.affine.then_some(Affine {
            gamma: &gamma,
            beta: &beta,
        });
        let momentum = case
            .momentum
            .map_or(Momentum::CumulativeAverage, Momentum::Exponential);
        let (mut rm, mut rv, mut nbt) = (vec![0.0; c], vec![1.0; c], 0u64);
        let running = RunningStats {
            mean: &mut rm,
            var: &mut rv,
            num_batches_tracked: &mut nbt,
            momentum,
        };
        let (mut y, mut mean, mut rstd) = (vec![0.0; s.len()], vec![0.0; c], vec![0.0; c]);
        batch_norm_forward_train(
            s,
            &x,
            aff,
            case.eps,
            Some(running),
            &mut y,
            &mut mean,
            &mut rstd,
            Parallelism::Rayon,
        )
        .unwrap();
        let name = &case.name;
        let check = |what: &str, got: &[f32]| {
            let e = common::max_err(got, &case.load(what));
            assert!(e <= 1e-4, "{name}: {what} max_err {e:e}");
        };
        check("y", &y);
        check("running_mean", &rm);
        check("running_var", &rv);

        let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; c], vec![0.0; c]);
        let grads = AffineGrads {
            dgamma: &mut dg,
            dbeta: &mut db,
        };
        let g = case.affine.then_some(&gamma[..]);
        batch_norm_backward_train(
            s,
            &x,
            &dy,
            &mean,
            &rstd,
            g,
            &mut dx,
            Some(grads),
            Parallelism::Rayon,
        )
        .unwrap();
        check("dx", &dx);
        if case.affine {
            check("dweight", &dg);
            check("dbias", &db);
        }

        let x_eval = case.load("x_eval");
        let mut y_eval = vec![0.0; x_eval.len()];
        batch_norm_forward_eval(
            s,
            &x_eval,
            &rm,
            &rv,
            aff,
            case.eps,
            &mut y_eval,
            Parallelism::Rayon,
        )
        .unwrap();
        check("y_eval", &y_eval);
    }
}

/// All outputs of every entry point, as bits.
fn all_outputs(s: Nchw, par: Parallelism) -> Vec<u32> {
    let inp = inputs(s, 21, 3.0);
    let aff = Some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    let (mut y, mut mean, mut rstd) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), 0u64);
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
        momentum: Momentum::Exponential(0.1),
    };
    batch_norm_forward_train(
        s,
        &inp.x,
        aff,
        EPS,
        Some(running),
        &mut y,
        &mut mean,
        &mut rstd,
        par,
    )
    .unwrap();
    let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let grads = AffineGrads {
        dgamma: &mut dg,
        dbeta: &mut db,
    };
    batch_norm_backward_train(
        s,
        &inp.x,
        &inp.dy,
        &mean,
        &rstd,
        Some(&inp.gamma),
        &mut dx,
        Some(grads),
        par,
    )
    .unwrap();
    let mut ye = vec![0.0; s.len()];
    batch_norm_forward_eval(s, &inp.x, &rm, &rv, aff, EPS, &mut ye, par).unwrap();
    let (mut dxe, mut dge, mut dbe) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let grads = AffineGrads {
        dgamma: &mut dge,
        dbeta: &mut dbe,
    };
    batch_norm_backward_eval(
        s,
        &inp.x,
        &inp.dy,
        &rm,
        &rv,
        Some(&inp.gamma),
        EPS,
        &mut dxe,
        Some(grads),
        par,
    )
    .unwrap();
    [y, mean, rstd, rm, rv, dx, dg, db, ye, dxe, dge, dbe]
        .iter()
        .flat_map(|v| v.iter().map(|a| a.to_bits()))
        .collect()
}

#[test]
fn bit_identical_for_any_thread_count() {
    // Many channels (one task each) and few channels with planes split into work units.
    for s in [Nchw::new(4, 24, 40, 41), Nchw::new(2, 3, 300, 301)] {
        let pool = |k| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()
                .unwrap()
        };
        let one = pool(1).install(|| all_outputs(s, Parallelism::Rayon));
        let two = pool(2).install(|| all_outputs(s, Parallelism::Rayon));
        let four = pool(4).install(|| all_outputs(s, Parallelism::Rayon));
        let serial = all_outputs(s, Parallelism::None);
        assert!(
            one == two && two == four,
            "{s}: rayon results depend on the thread count"
        );
        assert!(one == serial, "{s}: rayon and serial results differ");
    }
}

#[test]
fn errors() {
    let s = Nchw::new(2, 3, 4, 5);
    let inp = inputs(s, 1, 0.0);
    let p = Parallelism::None;
    let (mut y, mut mean, mut rstd) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let aff = Some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    const FT: &str = "batch_norm_forward_train";
    let len = |op, buffer, expected, actual| NormError::BufferLen {
        op,
        buffer,
        expected,
        actual,
    };

    // Forward train.
    let zero = Nchw::new(2, 0, 4, 5);
    assert_eq!(
        batch_norm_forward_train(zero, &[], None, EPS, None, &mut [], &mut [], &mut [], p),
        Err(NormError::ZeroDim { op: FT, dim: "c" })
    );
    assert_eq!(
        batch_norm_forward_train(
            s,
            &inp.x[1..],
            aff,
            EPS,
            None,
            &mut y,
            &mut mean,
            &mut rstd,
            p
        ),
        Err(len(FT, "x", 120, 119))
    );
    assert_eq!(
        batch_norm_forward_train(
            s,
            &inp.x,
            aff,
            EPS,
            None,
            &mut y[1..],
            &mut mean,
            &mut rstd,
            p
        ),
        Err(len(FT, "y", 120, 119))
    );
    assert_eq!(
        batch_norm_forward_train(
            s,
            &inp.x,
            aff,
            EPS,
            None,
            &mut y,
            &mut mean[1..],
            &mut rstd,
            p
        ),
        Err(len(FT, "mean", 3, 2))
    );
    assert_eq!(
        batch_norm_forward_train(
            s,
            &inp.x,
            aff,
            EPS,
            None,
            &mut y,
            &mut mean,
            &mut rstd[1..],
            p
        ),
        Err(len(FT, "rstd", 3, 2))
    );
    let bad = Some(Affine {
        gamma: &inp.gamma[1..],
        beta: &inp.beta,
    });
    assert_eq!(
        batch_norm_forward_train(s, &inp.x, bad, EPS, None, &mut y, &mut mean, &mut rstd, p),
        Err(len(FT, "gamma", 3, 2))
    );
    let bad = Some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta[1..],
    });
    assert_eq!(
        batch_norm_forward_train(s, &inp.x, bad, EPS, None, &mut y, &mut mean, &mut rstd, p),
        Err(len(FT, "beta", 3, 2))
    );
    for eps in [-1.0, f32::NAN, f32::INFINITY] {
        let got =
            batch_norm_forward_train(s, &inp.x, aff, eps, None, &mut y, &mut mean, &mut rstd, p);
        assert!(
            matches!(got, Err(NormError::Eps { op: FT, .. })),
            "eps {eps}: {got:?}"
        );
    }
    let (mut rm, mut rv, mut nbt) = (vec![0.0; 3], vec![1.0; 2], 0u64);
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
        momentum: Momentum::Exponential(0.1),
    };
    assert_eq!(
        batch_norm_forward_train(
            s,
            &inp.x,
            aff,
            EPS,
            Some(running),
            &mut y,
            &mut mean,
            &mut rstd,
            p
        ),
        Err(len(FT, "running_var", 3, 2))
    );
    let (mut rm2, mut rv2) = (vec![0.0; 2], vec![1.0; 3]);
    let running = RunningStats {
        mean: &mut rm2,
        var: &mut rv2,
        num_batches_tracked: &mut nbt,
        momentum: Momentum::Exponential(0.1),
    };
    assert_eq!(
        batch_norm_forward_train(
            s,
            &inp.x,
            aff,
            EPS,
            Some(running),
            &mut y,
            &mut mean,
            &mut rstd,
            p
        ),
        Err(len(FT, "running_mean", 3, 2))
    );
    let mut rv3 = vec![1.0; 3];
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv3,
        num_batches_tracked: &mut nbt,
        momentum: Momentum::Exponential(1.5),
    };
    assert_eq!(
        batch_norm_forward_train(
            s,
            &inp.x,
            aff,
            EPS,
            Some(running),
            &mut y,
            &mut mean,
            &mut rstd,
            p
        ),
        Err(NormError::Momentum {
            op: FT,
            momentum: 1.5
        })
    );
    assert_eq!(nbt, 0, "a rejected call must not touch num_batches_tracked");
    let one = Nchw::new(1, 3, 1, 1);
    let err = batch_norm_forward_train(
        one,
        &[1.0; 3],
        None,
        EPS,
        None,
        &mut [0.0; 3],
        &mut mean,
        &mut rstd,
        p,
    )
    .unwrap_err();
    assert_eq!(err, NormError::OneValuePerChannel { op: FT, shape: one });
    assert_eq!(
        err.to_string(),
        "batch_norm_forward_train: expected more than 1 value per channel when training, got input of shape 1x3x1x1"
    );

    // Forward eval.
    const FE: &str = "batch_norm_forward_eval";
    assert_eq!(
        batch_norm_forward_eval(zero, &[], &[], &[], None, EPS, &mut [], p),
        Err(NormError::ZeroDim { op: FE, dim: "c" })
    );
    assert_eq!(
        batch_norm_forward_eval(s, &inp.x, &inp.rm[1..], &inp.rv, aff, EPS, &mut y, p),
        Err(len(FE, "running_mean", 3, 2))
    );
    assert_eq!(
        batch_norm_forward_eval(s, &inp.x, &inp.rm, &inp.rv[1..], aff, EPS, &mut y, p),
        Err(len(FE, "running_var", 3, 2))
    );
    assert_eq!(
        batch_norm_forward_eval(s, &inp.x, &inp.rm, &inp.rv, aff, EPS, &mut y[1..], p),
        Err(len(FE, "y", 120, 119))
    );
    assert!(matches!(
        batch_norm_forward_eval(s, &inp.x, &inp.rm, &inp.rv, aff, -1.0, &mut y, p),
        Err(NormError::Eps { op: FE, .. })
    ));
    // One value per channel is fine in eval mode.
    let mut y1 = [0.0; 3];
    batch_norm_forward_eval(one, &[1.0; 3], &inp.rm, &inp.rv, None, EPS, &mut y1, p).unwrap();

    // Backward train.
    const BT: &str = "batch_norm_backward_train";
    let mut dx = vec![0.0; s.len()];
    let (mut dg, mut db) = (vec![0.0; 3], vec![0.0; 3]);
    let g = Some(&inp.gamma[..]);
    assert_eq!(
        batch_norm_backward_train(zero, &[], &[], &[], &[], None, &mut [], None, p),
        Err(NormError::ZeroDim { op: BT, dim: "c" })
    );
    assert_eq!(
        batch_norm_backward_train(s, &inp.x, &inp.dy[1..], &mean, &rstd, g, &mut dx, None, p),
        Err(len(BT, "dy", 120, 119))
    );
    assert_eq!(
        batch_norm_backward_train(s, &inp.x, &inp.dy, &mean, &rstd, g, &mut dx[1..], None, p),
        Err(len(BT, "dx", 120, 119))
    );
    assert_eq!(
        batch_norm_backward_train(s, &inp.x, &inp.dy, &mean[1..], &rstd, g, &mut dx, None, p),
        Err(len(BT, "mean", 3, 2))
    );
    assert_eq!(
        batch_norm_backward_train(
            s,
            &inp.x,
            &inp.dy,
            &mean,
            &rstd,
            Some(&inp.gamma[1..]),
            &mut dx,
            None,
            p
        ),
        Err(len(BT, "gamma", 3, 2))
    );
    let grads = AffineGrads {
        dgamma: &mut dg[1..],
        dbeta: &mut db,
    };
    assert_eq!(
        batch_norm_backward_train(s, &inp.x, &inp.dy, &mean, &rstd, g, &mut dx, Some(grads), p),
        Err(len(BT, "dgamma", 3, 2))
    );
    let grads = AffineGrads {
        dgamma: &mut dg,
        dbeta: &mut db[1..],
    };
    assert_eq!(
        batch_norm_backward_train(s, &inp.x, &inp.dy, &mean, &rstd, g, &mut dx, Some(grads), p),
        Err(len(BT, "dbeta", 3, 2))
    );

    // Backward eval.
    const BE: &str = "batch_norm_backward_eval";
    assert_eq!(
        batch_norm_backward_eval(zero, &[], &[], &[], &[], None, EPS, &mut [], None, p),
        Err(NormError::ZeroDim { op: BE, dim: "c" })
    );
    assert_eq!(
        batch_norm_backward_eval(
            s,
            &inp.x[1..],
            &inp.dy,
            &inp.rm,
            &inp.rv,
            g,
            EPS,
            &mut dx,
            None,
            p
        ),
        Err(len(BE, "x", 120, 119))
    );
    assert_eq!(
        batch_norm_backward_eval(
            s,
            &inp.x,
            &inp.dy,
            &inp.rm,
            &inp.rv[1..],
            g,
            EPS,
            &mut dx,
            None,
            p
        ),
        Err(len(BE, "running_var", 3, 2))
    );
    let grads = AffineGrads {
        dgamma: &mut dg,
        dbeta: &mut db[1..],
    };
    assert_eq!(
        batch_norm_backward_eval(
            s,
            &inp.x,
            &inp.dy,
            &inp.rm,
            &inp.rv,
            g,
            EPS,
            &mut dx,
            Some(grads),
            p
        ),
        Err(len(BE, "dbeta", 3, 2))
    );
    assert!(matches!(
        batch_norm_backward_eval(
            s,
            &inp.x,
            &inp.dy,
            &inp.rm,
            &inp.rv,
            g,
            f32::NAN,
            &mut dx,
            None,
            p
        ),
        Err(NormError::Eps { op: BE, .. })
    ));
}

fn fmt(v: &[f32]) -> String {
    v.iter()
        .map(|a| format!("{:.4}", a + 0.0))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn snapshot_small_case() {
    let s = Nchw::new(2, 3, 2, 3);
    let inp = inputs(s, 2024, 0.0);
    let aff = Some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    let (mut y, mut mean, mut rstd) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    let (mut rm, mut rv, mut nbt) = (vec![0.0; 3], vec![1.0; 3], 0u64);
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
        momentum: Momentum::Exponential(0.1),
    };
    let p = Parallelism::Rayon;
    batch_norm_forward_train(
        s,
        &inp.x,
        aff,
        EPS,
        Some(running),
        &mut y,
        &mut mean,
        &mut rstd,
        p,
    )
    .unwrap();
    let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; 3], vec![0.0; 3]);
    let grads = AffineGrads {
        dgamma: &mut dg,
        dbeta: &mut db,
    };
    batch_norm_backward_train(
        s,
        &inp.x,
        &inp.dy,
        &mean,
        &rstd,
        Some(&inp.gamma),
        &mut dx,
        Some(grads),
        p,
    )
    .unwrap();
    let mut ye = vec![0.0; s.len()];
    batch_norm_forward_eval(s, &inp.x, &rm, &rv, aff, EPS, &mut ye, p).unwrap();
    let mut out = format!("batch_norm {s}, eps {EPS}, momentum 0.1, seed 2024\n");
    for (name, v) in [
        ("x", &inp.x),
        ("y", &y),
        ("mean", &mean),
        ("rstd", &rstd),
        ("running_mean", &rm),
        ("running_var", &rv),
        ("dx", &dx),
        ("dgamma", &dg),
        ("dbeta", &db),
        ("y_eval", &ye),
    ] {
        out += &format!("{name}: {}\n", fmt(v));
    }
    insta::assert_snapshot!("batch_norm_small", out);
}
