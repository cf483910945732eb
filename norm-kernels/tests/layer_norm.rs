//! LayerNorm over `[C, H, W]`: the SIMD + rayon kernels against the f64 reference twin
//! (proptest over odd shapes, with large means), finite differences, the PyTorch fixtures,
//! thread-count independence, errors and a rounded snapshot. The test bodies, shared with
//! GroupNorm, are in `common/sample.rs`.

mod common;

use common::check::{DIMS, f64s, loss};
use common::sample::{self as t, Inputs, Outputs, as_ref64};
use norm_kernels::{
    Affine, AffineGrads, Grads, LayerNorm, Nchw, NormError, Output, Parallelism, Saved, Stats,
    StatsMut, layer_norm_backward, layer_norm_forward, reference,
};
use proptest::prelude::*;

/// Inputs with gamma and beta of `[C, H, W]`.
fn inputs(shape: Nchw, affine: bool, shift: f32, seed: u64) -> Inputs {
    t::inputs(shape.len(), shape.chw(), affine, shift, seed)
}

fn run(shape: Nchw, inp: &Inputs, eps: f32, par: Parallelism) -> Outputs {
    let norm = LayerNorm {
        eps,
        affine: inp.affine.is_some(),
    };
    let n = shape.n;
    let (mut y, mut mean, mut rstd) = (
        vec![f32::NAN; shape.len()],
        vec![f32::NAN; n],
        vec![f32::NAN; n],
    );
    let out = Output {
        y: &mut y,
        stats: StatsMut {
            mean: &mut mean,
            rstd: &mut rstd,
        },
    };
    layer_norm_forward(&norm, shape, &inp.x, inp.affine(), out, par).unwrap();
    let mut dx = vec![f32::NAN; shape.len()];
    let (mut dgamma, mut dbeta) = (vec![f32::NAN; shape.chw()], vec![f32::NAN; shape.chw()]);
    let grads = Grads {
        dx: &mut dx,
        affine: Some(AffineGrads {
            dgamma: &mut dgamma,
            dbeta: &mut dbeta,
        }),
    };
    let saved = Saved {
        x: &inp.x,
        stats: Stats {
            mean: &mean,
            rstd: &rstd,
        },
    };
    layer_norm_backward(&norm, shape, saved, &inp.dy, inp.gamma(), grads, par).unwrap();
    Outputs {
        y,
        mean,
        rstd,
        dx,
        dgamma,
        dbeta,
    }
}

/// The kernels against the reference twin, with the tolerances of
/// [`t::check_against_reference`]; the statistics are per sample.
fn check_against_reference(shape: Nchw, inp: &Inputs, eps: f32) {
    let out = run(shape, inp, eps, Parallelism::Rayon);
    let (x, dy) = (f64s(&inp.x), f64s(&inp.dy));
    let aff = inp.affine64();
    let fwd = reference::layer_norm_forward(shape, &x, as_ref64(&aff), eps as f64);
    let gamma = aff.as_ref().map(|(g, _)| &g[..]);
    let m = shape.chw();
    t::check_against_reference(
        inp,
        &out,
        [&fwd.y, &fwd.mean, &fwd.rstd],
        |mean, rstd| {
            let b = reference::layer_norm_backward(shape, &x, &dy, mean, rstd, gamma);
            [b.dx, b.dgamma, b.dbeta]
        },
        |i| i / m,
        |i| i % m,
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn matches_reference_on_odd_shapes(
        n in prop::sample::select(&DIMS[..]),
        c in prop::sample::select(&DIMS[..]),
        h in prop::sample::select(&DIMS[..]),
        w in prop::sample::select(&DIMS[..]),
        affine in any::<bool>(),
        shifted in any::<bool>(),
        eps in prop::sample::select(&[1e-5f32, 1e-8][..]),
        seed in any::<u64>(),
    ) {
        let shape = Nchw::new(n, c, h, w);
        let inp = inputs(shape, affine, if shifted { 1000.0 } else { 0.0 }, seed);
        check_against_reference(shape, &inp, eps);
    }
}

/// Samples longer than a 16 Ki-element tile and a 2 Ki-element backward strip, and batches of
/// samples in the backward: 40 small samples in one batch; 3 samples of 700 K elements in
/// batches of 2 and 1; the ResNets' sample shapes.
#[test]
fn matches_reference_on_long_samples_and_batches() {
    let shapes = [
        Nchw::new(2, 3, 97, 61),
        Nchw::new(3, 7, 100, 1000),
        Nchw::new(40, 3, 17, 9),
        Nchw::new(4, 64, 8, 8),
        Nchw::new(4, 32, 16, 16),
        Nchw::new(4, 16, 32, 32),
    ];
    for shape in shapes {
        for (affine, shift) in [(true, 0.0), (false, 1000.0), (true, 1000.0)] {
            check_against_reference(shape, &inputs(shape, affine, shift, 9), 1e-5);
        }
    }
}

#[test]
fn reference_backward_matches_finite_differences_and_kernel() {
    let shape = Nchw::new(3, 2, 3, 2);
    let inp = inputs(shape, true, 0.5, 13);
    let (x, w) = (f64s(&inp.x), f64s(&inp.dy));
    let (g, b) = inp.affine64().unwrap();
    let fwd = reference::layer_norm_forward(shape, &x, Some((&g, &b)), 1e-8);
    let an = reference::layer_norm_backward(shape, &x, &w, &fwd.mean, &fwd.rstd, Some(&g));
    t::check_fd(
        &inp,
        [&an.dx, &an.dgamma, &an.dbeta],
        |x, g, b| {
            loss(
                &reference::layer_norm_forward(shape, x, Some((g, b)), 1e-8).y,
                &w,
            )
        },
        &run(shape, &inp, 1e-8, Parallelism::None),
    );
}

#[test]
fn gamma_none_means_identity_affine() {
    let shape = Nchw::new(3, 4, 5, 3);
    t::check_gamma_none_means_identity(inputs(shape, true, 0.0, 5), shape.chw(), |inp| {
        run(shape, inp, 1e-5, Parallelism::None)
    });
}

fn case_shape(case: &common::Case) -> Nchw {
    let [n, c, h, w] = case.shape;
    Nchw::new(n, c, h, w)
}

#[test]
fn matches_pytorch_fixtures() {
    t::check_fixtures(
        "layer",
        |case, inp, par| run(case_shape(case), inp, case.eps, par),
        |case, inp| {
            let (aff, x) = (inp.affine64(), f64s(&inp.x));
            reference::layer_norm_forward(case_shape(case), &x, as_ref64(&aff), case.eps as f64).y
        },
    );
}

#[test]
fn bit_identical_for_any_thread_count() {
    // N = 2 with long samples: each sample is split into fixed tiles and strips; samples whose
    // parameters exceed L2 (the forward in column strips); many small samples.
    for shape in [
        Nchw::new(2, 16, 64, 64),
        Nchw::new(3, 7, 100, 1000),
        Nchw::new(64, 8, 16, 16),
    ] {
        let inp = inputs(shape, true, 3.0, 21);
        t::check_thread_count_invariance(&shape.to_string(), |par| run(shape, &inp, 1e-5, par));
    }
}

#[test]
fn errors_name_the_fault() {
    let (op_f, op_b) = ("layer_norm_forward", "layer_norm_backward");
    let s = Nchw::new(2, 4, 3, 3);
    let fwd = |shape: Nchw, eps: f32, lens: [usize; 6]| {
        let [lx, ly, lm, lr, lg, lb] = lens;
        let (x, gamma, beta) = (vec![0.5; lx], vec![1.0; lg], vec![0.0; lb]);
        let (mut y, mut m, mut r) = (vec![0.0; ly], vec![0.0; lm], vec![0.0; lr]);
        let affine = Some(Affine {
            gamma: &gamma,
            beta: &beta,
        });
        let out = Output {
            y: &mut y,
            stats: StatsMut {
                mean: &mut m,
                rstd: &mut r,
            },
        };
        let norm = LayerNorm { eps, affine: true };
        layer_norm_forward(&norm, shape, &x, affine, out, Parallelism::None)
    };
    let ok = [s.len(), s.len(), 2, 2, s.chw(), s.chw()];
    assert_eq!(fwd(s, 1e-8, ok), Ok(()));
    for (shape, dim) in [
        (Nchw::new(0, 4, 3, 3), "n"),
        (Nchw::new(2, 0, 3, 3), "c"),
        (Nchw::new(2, 4, 0, 3), "h"),
        (Nchw::new(2, 4, 3, 0), "w"),
    ] {
        assert_eq!(
            fwd(shape, 1e-8, ok),
            Err(NormError::ZeroDim { op: op_f, dim })
        );
    }
    assert_eq!(
        fwd(s, -1e-8, ok),
        Err(NormError::Eps {
            op: op_f,
            eps: -1e-8
        })
    );
    assert!(matches!(
        fwd(s, f32::INFINITY, ok),
        Err(NormError::Eps { .. })
    ));
    let names = ["x", "y", "mean", "rstd", "gamma", "beta"];
    t::check_buffer_len_errors(op_f, names, ok, 1, |lens| fwd(s, 1e-8, lens));

    let bwd = |shape: Nchw, lens: [usize; 8]| {
        let [lx, ldy, ldx, lm, lr, lg, ldg, ldb] = lens;
        let (x, dy) = (vec![0.5; lx], vec![0.1; ldy]);
        let (m, r, gamma) = (vec![0.0; lm], vec![1.0; lr], vec![1.0; lg]);
        let (mut dx, mut dg, mut db) = (vec![0.0; ldx], vec![0.0; ldg], vec![0.0; ldb]);
        let grads = Grads {
            dx: &mut dx,
            affine: Some(AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            }),
        };
        let saved = Saved {
            x: &x,
            stats: Stats { mean: &m, rstd: &r },
        };
        let norm = LayerNorm {
            eps: 1e-8,
            affine: true,
        };
        layer_norm_backward(
            &norm,
            shape,
            saved,
            &dy,
            Some(&gamma),
            grads,
            Parallelism::None,
        )
    };
    let ok = [s.len(), s.len(), s.len(), 2, 2, s.chw(), s.chw(), s.chw()];
    assert_eq!(bwd(s, ok), Ok(()));
    assert_eq!(
        bwd(Nchw::new(2, 4, 3, 0), ok),
        Err(NormError::ZeroDim { op: op_b, dim: "w" })
    );
    let names = ["x", "dy", "dx", "mean", "rstd", "gamma", "dgamma", "dbeta"];
    t::check_buffer_len_errors(op_b, names, ok, -1, |lens| bwd(s, lens));
}

/// `gamma`/`beta` that the settings do not announce, or missing ones they do:
/// `NormError::Settings`, nothing written.
#[test]
fn settings_mismatches() {
    let shape = Nchw::new(2, 4, 3, 3);
    let norm = |affine| LayerNorm { eps: 1e-8, affine };
    t::check_settings_errors(
        ["layer_norm_forward", "layer_norm_backward"],
        &inputs(shape, true, 0.0, 3),
        (shape.n, shape.chw()),
        |affine, inp, out| {
            layer_norm_forward(
                &norm(affine),
                shape,
                &inp.x,
                inp.affine(),
                out,
                Parallelism::None,
            )
        },
        |affine, inp, stats, grads| {
            let saved = Saved { x: &inp.x, stats };
            let p = Parallelism::None;
            layer_norm_backward(&norm(affine), shape, saved, &inp.dy, inp.gamma(), grads, p)
        },
    );
}

#[test]
fn snapshot_small_case() {
    let shape = Nchw::new(2, 3, 2, 3);
    let inp = inputs(shape, true, 0.0, 2024);
    let out = run(shape, &inp, 1e-8, Parallelism::None);
    insta::assert_snapshot!("layer_norm_2x3x2x3", out.render());
}
