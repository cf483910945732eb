//! GroupNorm: the SIMD + rayon kernels against the f64 reference twin (proptest over odd shapes,
//! with large means), finite differences, the PyTorch fixtures, thread-count independence,
//! errors and a rounded snapshot. The test bodies, shared with LayerNorm, are in
//! `common/sample.rs`.

mod common;

use common::check::{DIMS, f64s, loss};
use common::sample::{self as t, Inputs, Outputs, as_ref64};
use norm_kernels::{
    Affine, AffineGrads, Grads, GroupNorm, Nchw, NormError, Output, Parallelism, Saved, Stats,
    StatsMut, group_norm_backward, group_norm_forward, reference,
};
use proptest::prelude::*;

fn inputs(shape: Nchw, affine: bool, shift: f32, seed: u64) -> Inputs {
    t::inputs(shape.len(), shape.c, affine, shift, seed)
}

/// GroupNorm's settings for a call with affine parameters iff `affine`.
fn settings(groups: usize, eps: f32, affine: bool) -> GroupNorm {
    GroupNorm {
        groups,
        eps,
        affine,
    }
}

fn run(shape: Nchw, groups: usize, inp: &Inputs, eps: f32, par: Parallelism) -> Outputs {
    let norm = settings(groups, eps, inp.affine.is_some());
    let ng = shape.n * groups;
    let (mut y, mut mean, mut rstd) = (vec![0.0; shape.len()], vec![0.0; ng], vec![0.0; ng]);
    let out = Output {
        y: &mut y,
        stats: StatsMut {
            mean: &mut mean,
            rstd: &mut rstd,
        },
    };
    group_norm_forward(&norm, shape, &inp.x, inp.affine(), out, par).unwrap();
    let mut dx = vec![f32::NAN; shape.len()];
    let (mut dgamma, mut dbeta) = (vec![f32::NAN; shape.c], vec![f32::NAN; shape.c]);
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
    group_norm_backward(&norm, shape, saved, &inp.dy, inp.gamma(), grads, par).unwrap();
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
/// [`t::check_against_reference`]; the statistics are per (sample, group).
fn check_against_reference(shape: Nchw, groups: usize, inp: &Inputs, eps: f32) {
    let out = run(shape, groups, inp, eps, Parallelism::Rayon);
    let (x, dy) = (f64s(&inp.x), f64s(&inp.dy));
    let aff = inp.affine64();
    let fwd = reference::group_norm_forward(shape, groups, &x, as_ref64(&aff), eps as f64);
    let gamma = aff.as_ref().map(|(g, _)| &g[..]);
    let (hw, cpg) = (shape.hw(), shape.c / groups);
    t::check_against_reference(
        inp,
        &out,
        [&fwd.y, &fwd.mean, &fwd.rstd],
        |m, r| {
            let b = reference::group_norm_backward(shape, groups, &x, &dy, m, r, gamma);
            [b.dx, b.dgamma, b.dbeta]
        },
        |i| (i / hw / shape.c) * groups + (i / hw % shape.c) / cpg,
        |i| i / hw % shape.c,
    );
}

const CHANNELS: [usize; 8] = [1, 2, 3, 6, 7, 9, 12, 17];

fn divisors(c: usize) -> Vec<usize> {
    (1..=c).filter(|&g| c.is_multiple_of(g)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn matches_reference_on_odd_shapes(
        n in prop::sample::select(&DIMS[..]),
        c in prop::sample::select(&CHANNELS[..]),
        h in prop::sample::select(&DIMS[..]),
        w in prop::sample::select(&DIMS[..]),
        g_pick in 0usize..6,
        affine in any::<bool>(),
        shifted in any::<bool>(),
        eps in prop::sample::select(&[1e-5f32, 1e-8][..]),
        seed in any::<u64>(),
    ) {
        let shape = Nchw::new(n, c, h, w);
        let ds = divisors(c);
        let groups = ds[g_pick % ds.len()];
        let inp = inputs(shape, affine, if shifted { 1000.0 } else { 0.0 }, seed);
        check_against_reference(shape, groups, &inp, eps);
    }
}

/// Groups longer than a 16 Ki-element tile, with tile boundaries inside channel planes.
#[test]
fn matches_reference_on_groups_spanning_tiles() {
    for (shape, groups) in [(Nchw::new(2, 6, 97, 61), 2), (Nchw::new(1, 3, 129, 131), 1)] {
        for (affine, shift) in [(true, 0.0), (false, 1000.0), (true, 1000.0)] {
            check_against_reference(shape, groups, &inputs(shape, affine, shift, 7), 1e-5);
        }
    }
}

#[test]
fn reference_backward_matches_finite_differences_and_kernel() {
    let shape = Nchw::new(2, 6, 3, 2);
    let groups = 3;
    let inp = inputs(shape, true, 0.5, 11);
    let (x, w) = (f64s(&inp.x), f64s(&inp.dy));
    let (g, b) = inp.affine64().unwrap();
    let fwd = reference::group_norm_forward(shape, groups, &x, Some((&g, &b)), 1e-5);
    let an = reference::group_norm_backward(shape, groups, &x, &w, &fwd.mean, &fwd.rstd, Some(&g));
    t::check_fd(
        &inp,
        [&an.dx, &an.dgamma, &an.dbeta],
        |x, g, b| {
            let y = reference::group_norm_forward(shape, groups, x, Some((g, b)), 1e-5).y;
            loss(&y, &w)
        },
        &run(shape, groups, &inp, 1e-5, Parallelism::None),
    );
}

#[test]
fn gamma_none_means_identity_affine() {
    let shape = Nchw::new(3, 4, 5, 3);
    t::check_gamma_none_means_identity(inputs(shape, true, 0.0, 5), shape.c, |inp| {
        run(shape, 2, inp, 1e-5, Parallelism::None)
    });
}

fn case_shape(case: &common::Case) -> (Nchw, usize) {
    let [n, c, h, w] = case.shape;
    let groups = case.groups.expect("group case without groups");
    (Nchw::new(n, c, h, w), groups)
}

#[test]
fn matches_pytorch_fixtures() {
    t::check_fixtures(
        "group",
        |case, inp, par| {
            let (shape, groups) = case_shape(case);
            run(shape, groups, inp, case.eps, par)
        },
        |case, inp| {
            let (shape, groups) = case_shape(case);
            let aff = inp.affine64();
            let x = f64s(&inp.x);
            reference::group_norm_forward(shape, groups, &x, as_ref64(&aff), case.eps as f64).y
        },
    );
}

#[test]
fn bit_identical_for_any_thread_count() {
    // Many small groups; and few groups longer than a tile (nested tile parallelism).
    for (shape, groups) in [(Nchw::new(4, 32, 40, 40), 8), (Nchw::new(2, 8, 96, 96), 2)] {
        let inp = inputs(shape, true, 3.0, 21);
        t::check_thread_count_invariance(&format!("{shape} G={groups}"), |par| {
            run(shape, groups, &inp, 1e-5, par)
        });
    }
}

#[test]
fn errors_name_the_fault() {
    let op_f = "group_norm_forward";
    let op_b = "group_norm_backward";
    let s = Nchw::new(2, 4, 3, 3);
    let fwd = |shape: Nchw, groups: usize, eps: f32, lens: [usize; 6]| {
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
        let norm = settings(groups, eps, true);
        group_norm_forward(&norm, shape, &x, affine, out, Parallelism::None)
    };
    let ok = [s.len(), s.len(), 4, 4, 4, 4];
    assert_eq!(fwd(s, 2, 1e-5, ok), Ok(()));
    assert_eq!(
        fwd(Nchw::new(2, 4, 0, 3), 2, 1e-5, ok),
        Err(NormError::ZeroDim { op: op_f, dim: "h" })
    );
    for groups in [0, 3] {
        assert_eq!(
            fwd(s, groups, 1e-5, ok),
            Err(NormError::Groups {
                op: op_f,
                groups,
                channels: 4
            })
        );
    }
    assert_eq!(
        fwd(s, 2, -1.0, ok),
        Err(NormError::Eps {
            op: op_f,
            eps: -1.0
        })
    );
    assert!(matches!(
        fwd(s, 2, f32::NAN, ok),
        Err(NormError::Eps { .. })
    ));
    let names = ["x", "y", "mean", "rstd", "gamma", "beta"];
    t::check_buffer_len_errors(op_f, names, ok, -1, |lens| fwd(s, 2, 1e-5, lens));

    let bwd = |shape: Nchw, groups: usize, lens: [usize; 8]| {
        let [lx, ldy, ldx, lm, lr, lg, ldg, ldb] = lens;
        let (xx, dy, m, r, gamma) = (
            vec![0.5; lx],
            vec![0.1; ldy],
            vec![0.0; lm],
            vec![1.0; lr],
            vec![1.0; lg],
        );
        let (mut dx, mut dg, mut db) = (vec![0.0; ldx], vec![0.0; ldg], vec![0.0; ldb]);
        let grads = Grads {
            dx: &mut dx,
            affine: Some(AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            }),
        };
        let saved = Saved {
            x: &xx,
            stats: Stats { mean: &m, rstd: &r },
        };
        let norm = settings(groups, 1e-5, true);
        group_norm_backward(
            &norm,
            shape,
            saved,
            &dy,
            Some(&gamma),
            grads,
            Parallelism::None,
        )
    };
    let ok = [s.len(), s.len(), s.len(), 4, 4, 4, 4, 4];
    assert_eq!(bwd(s, 2, ok), Ok(()));
    assert_eq!(
        bwd(Nchw::new(0, 4, 3, 3), 2, ok),
        Err(NormError::ZeroDim { op: op_b, dim: "n" })
    );
    for groups in [0, 8] {
        assert_eq!(
            bwd(s, groups, ok),
            Err(NormError::Groups {
                op: op_b,
                groups,
                channels: 4
            })
        );
    }
    let names = ["x", "dy", "dx", "mean", "rstd", "gamma", "dgamma", "dbeta"];
    t::check_buffer_len_errors(op_b, names, ok, 1, |lens| bwd(s, 2, lens));
}

/// `gamma`/`beta` that the settings do not announce, or missing ones they do:
/// `NormError::Settings`, nothing written.
#[test]
fn settings_mismatches() {
    let shape = Nchw::new(2, 4, 3, 3);
    t::check_settings_errors(
        ["group_norm_forward", "group_norm_backward"],
        &inputs(shape, true, 0.0, 3),
        (shape.n * 2, shape.c),
        |affine, inp, out| {
            group_norm_forward(
                &settings(2, 1e-5, affine),
                shape,
                &inp.x,
                inp.affine(),
                out,
                Parallelism::None,
            )
        },
        |affine, inp, stats, grads| {
            let saved = Saved { x: &inp.x, stats };
            let norm = settings(2, 1e-5, affine);
            group_norm_backward(
                &norm,
                shape,
                saved,
                &inp.dy,
                inp.gamma(),
                grads,
                Parallelism::None,
            )
        },
    );
}

#[test]
fn snapshot_small_case() {
    let shape = Nchw::new(2, 4, 2, 3);
    let inp = inputs(shape, true, 0.0, 2024);
    let out = run(shape, 2, &inp, 1e-5, Parallelism::None);
    insta::assert_snapshot!("group_norm_2x4x2x3_g2", out.render());
}
