//! GroupNorm: the SIMD + rayon kernels against the f64 reference twin (proptest over odd shapes,
//! with large means), finite differences, the PyTorch fixtures, thread-count independence,
//! errors and a rounded snapshot.

mod common;

use norm_kernels::{
    Affine, AffineGrads, Nchw, NormError, Parallelism, group_norm_backward, group_norm_forward,
    reference,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn uniform(len: usize, lo: f32, hi: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// Inputs of one case: x (shifted by `shift`), dy, and optional (gamma, beta).
struct Inputs {
    x: Vec<f32>,
    dy: Vec<f32>,
    affine: Option<(Vec<f32>, Vec<f32>)>,
}

fn inputs(shape: Nchw, affine: bool, shift: f32, seed: u64) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = uniform(shape.len(), -2.0, 2.0, &mut rng)
        .into_iter()
        .map(|v| v + shift)
        .collect();
    let dy = uniform(shape.len(), -1.0, 1.0, &mut rng);
    let affine = affine.then(|| {
        (
            uniform(shape.c, -1.5, 1.5, &mut rng),
            uniform(shape.c, -1.0, 1.0, &mut rng),
        )
    });
    Inputs { x, dy, affine }
}

/// Everything the kernels produce for one case.
struct Outputs {
    y: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

fn run(shape: Nchw, groups: usize, inp: &Inputs, eps: f32, par: Parallelism) -> Outputs {
    let ng = shape.n * groups;
    let (mut y, mut mean, mut rstd) = (vec![0.0; shape.len()], vec![0.0; ng], vec![0.0; ng]);
    let affine = inp
        .affine
        .as_ref()
        .map(|(g, b)| Affine { gamma: g, beta: b });
    group_norm_forward(
        shape, groups, &inp.x, affine, eps, &mut y, &mut mean, &mut rstd, par,
    )
    .unwrap();
    let mut dx = vec![f32::NAN; shape.len()];
    let (mut dgamma, mut dbeta) = (vec![f32::NAN; shape.c], vec![f32::NAN; shape.c]);
    let gamma = inp.affine.as_ref().map(|(g, _)| &g[..]);
    let grads = AffineGrads {
        dgamma: &mut dgamma,
        dbeta: &mut dbeta,
    };
    group_norm_backward(
        shape,
        groups,
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
    Outputs {
        y,
        mean,
        rstd,
        dx,
        dgamma,
        dbeta,
    }
}

/// Asserts `|got - want| <= tol` elementwise, naming the first offender.
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        assert!(
            err <= tol[i],
            "{what}[{i}]: got {} want {} (err {err:e}, tol {:e})",
            got[i],
            want[i],
            tol[i]
        );
    }
}

/// The kernels against the reference twin. Tolerances follow f32 error propagation: for
/// `y` and `dx` they scale with each group's `rstd` and the spread of its values, so a large
/// mean (which a catastrophic `E[x²] - μ²` would destroy) is held to f32 precision of `x - μ`.
fn check_against_reference(shape: Nchw, groups: usize, inp: &Inputs, eps: f32) {
    let out = run(shape, groups, inp, eps, Parallelism::Rayon);
    let (x, dy) = (f64s(&inp.x), f64s(&inp.dy));
    let aff: Option<(Vec<f64>, Vec<f64>)> = inp.affine.as_ref().map(|(g, b)| (f64s(g), f64s(b)));
    let fwd = reference::group_norm_forward(
        shape,
        groups,
        &x,
        aff.as_ref().map(|(g, b)| (&g[..], &b[..])),
        eps as f64,
    );
    let (hw, cpg) = (shape.hw(), shape.c / groups);
    let gmax = aff.as_ref().map_or(1.0, |(g, b)| {
        g.iter().chain(b).fold(1.0f64, |m, v| m.max(v.abs()))
    });
    let group_of = |i: usize| (i / hw / shape.c) * groups + (i / hw % shape.c) / cpg;
    // Spread of each group: |μ| + max |x - μ|.
    let mut spread = vec![0.0f64; shape.n * groups];
    for (i, &v) in x.iter().enumerate() {
        let g = group_of(i);
        spread[g] = spread[g].max((v - fwd.mean[g]).abs());
    }
    let mean_tol: Vec<f64> = (0..spread.len())
        .map(|g| 1e-6 * (fwd.mean[g].abs() + spread[g]))
        .collect();
    assert_close("mean", &out.mean, &fwd.mean, &mean_tol);
    let rstd_tol: Vec<f64> = fwd.rstd.iter().map(|r| 1e-5 * r).collect();
    assert_close("rstd", &out.rstd, &fwd.rstd, &rstd_tol);
    let y_tol: Vec<f64> = (0..x.len())
        .map(|i| {
            let g = group_of(i);
            2e-6 * gmax * (1.0 + fwd.rstd[g] * (fwd.mean[g].abs() + spread[g]))
        })
        .collect();
    assert_close("y", &out.y, &fwd.y, &y_tol);

    // Backward from the kernel's own saved statistics, as a caller would use it.
    let (m64, r64) = (f64s(&out.mean), f64s(&out.rstd));
    let gamma = aff.as_ref().map(|(g, _)| &g[..]);
    let bwd = reference::group_norm_backward(shape, groups, &x, &dy, &m64, &r64, gamma);
    let mut gdy_max = vec![0.0f64; spread.len()];
    let mut xh_max = vec![0.0f64; spread.len()];
    let (mut dg_mag, mut db_mag) = (vec![0.0f64; shape.c], vec![0.0f64; shape.c]);
    for i in 0..x.len() {
        let (g, ch) = (group_of(i), i / hw % shape.c);
        let xh = (x[i] - m64[g]) * r64[g];
        gdy_max[g] = gdy_max[g].max((dy[i] * gamma.map_or(1.0, |ga| ga[ch])).abs());
        xh_max[g] = xh_max[g].max(xh.abs());
        dg_mag[ch] += (dy[i] * xh).abs();
        db_mag[ch] += dy[i].abs();
    }
    let dx_tol: Vec<f64> = (0..x.len())
        .map(|i| {
            let g = group_of(i);
            4e-6 * r64[g] * gdy_max[g] * (1.0 + xh_max[g] * xh_max[g]) + 1e-7
        })
        .collect();
    assert_close("dx", &out.dx, &bwd.dx, &dx_tol);
    let dg_tol: Vec<f64> = dg_mag.iter().map(|m| 1e-5 * m + 1e-6).collect();
    assert_close("dgamma", &out.dgamma, &bwd.dgamma, &dg_tol);
    let db_tol: Vec<f64> = db_mag.iter().map(|m| 1e-5 * m + 1e-6).collect();
    assert_close("dbeta", &out.dbeta, &bwd.dbeta, &db_tol);
}

const DIMS: [usize; 6] = [1, 2, 3, 7, 9, 17];
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

/// `L(x, γ, β) = Σ y·w` for the reference forward, in f64.
fn loss(shape: Nchw, groups: usize, x: &[f64], g: &[f64], b: &[f64], w: &[f64]) -> f64 {
    let y = reference::group_norm_forward(shape, groups, x, Some((g, b)), 1e-5).y;
    y.iter().zip(w).map(|(a, b)| a * b).sum()
}

#[test]
fn reference_backward_matches_finite_differences_and_kernel() {
    let shape = Nchw::new(2, 6, 3, 2);
    let groups = 3;
    let inp = inputs(shape, true, 0.5, 11);
    let (x, w) = (f64s(&inp.x), f64s(&inp.dy));
    let (g, b) = inp
        .affine
        .as_ref()
        .map(|(g, b)| (f64s(g), f64s(b)))
        .unwrap();
    let fwd = reference::group_norm_forward(shape, groups, &x, Some((&g, &b)), 1e-5);
    let an = reference::group_norm_backward(shape, groups, &x, &w, &fwd.mean, &fwd.rstd, Some(&g));
    let h = 1e-5;
    let fd = |v: &[f64], i: usize, f: &dyn Fn(&[f64]) -> f64| {
        let (mut p, mut m) = (v.to_vec(), v.to_vec());
        p[i] += h;
        m[i] -= h;
        (f(&p) - f(&m)) / (2.0 * h)
    };
    for i in 0..x.len() {
        let num = fd(&x, i, &|v| loss(shape, groups, v, &g, &b, &w));
        assert!(
            (num - an.dx[i]).abs() < 1e-6 * num.abs().max(1.0),
            "dx[{i}]: fd {num} vs {}",
            an.dx[i]
        );
    }
    for c in 0..shape.c {
        let num = fd(&g, c, &|v| loss(shape, groups, &x, v, &b, &w));
        assert!(
            (num - an.dgamma[c]).abs() < 1e-6 * num.abs().max(1.0),
            "dgamma[{c}]"
        );
        let num = fd(&b, c, &|v| loss(shape, groups, &x, &g, v, &w));
        assert!(
            (num - an.dbeta[c]).abs() < 1e-6 * num.abs().max(1.0),
            "dbeta[{c}]"
        );
    }
    // The f32 kernel against the same analytic gradient.
    let out = run(shape, groups, &inp, 1e-5, Parallelism::None);
    for (what, got, want) in [
        ("dx", &out.dx, &an.dx),
        ("dgamma", &out.dgamma, &an.dgamma),
        ("dbeta", &out.dbeta, &an.dbeta),
    ] {
        let e = got
            .iter()
            .zip(want.iter())
            .map(|(&a, &b)| (a as f64 - b).abs() / b.abs().max(1.0));
        let e = e.fold(0.0, f64::max);
        assert!(e < 1e-5, "{what}: kernel vs analytic error {e:e}");
    }
}

#[test]
fn gamma_none_means_identity_affine() {
    let shape = Nchw::new(3, 4, 5, 3);
    let mut inp = inputs(shape, true, 0.0, 5);
    inp.affine = Some((vec![1.0; shape.c], vec![0.0; shape.c]));
    let with = run(shape, 2, &inp, 1e-5, Parallelism::None);
    inp.affine = None;
    let without = run(shape, 2, &inp, 1e-5, Parallelism::None);
    assert_eq!(with.y, without.y);
    assert_eq!(with.dx, without.dx);
    assert_eq!(with.dgamma, without.dgamma);
    assert_eq!(with.dbeta, without.dbeta);
}

#[test]
fn matches_pytorch_fixtures() {
    for case in common::cases(Some("group")) {
        let [n, c, h, w] = case.shape;
        let shape = Nchw::new(n, c, h, w);
        let groups = case.groups.expect("group case without groups");
        let affine = case
            .affine
            .then(|| (case.load("weight"), case.load("bias")));
        let inp = Inputs {
            x: case.load("x"),
            dy: case.load("dy"),
            affine,
        };
        for par in [Parallelism::None, Parallelism::Rayon] {
            let out = run(shape, groups, &inp, case.eps, par);
            let mut checks = vec![("y", out.y.clone()), ("dx", out.dx.clone())];
            if case.affine {
                checks.push(("dweight", out.dgamma.clone()));
                checks.push(("dbias", out.dbeta.clone()));
            }
            for (name, got) in checks {
                let e = common::max_err(&got, &case.load(name));
                assert!(e < 1e-4, "{}: {name} error {e:e} ({par:?})", case.name);
            }
        }
        // The reference twin agrees with PyTorch too.
        let aff = inp.affine.as_ref().map(|(g, b)| (f64s(g), f64s(b)));
        let fwd = reference::group_norm_forward(
            shape,
            groups,
            &f64s(&inp.x),
            aff.as_ref().map(|(g, b)| (&g[..], &b[..])),
            case.eps as f64,
        );
        let y: Vec<f32> = fwd.y.iter().map(|&v| v as f32).collect();
        assert!(
            common::max_err(&y, &case.load("y")) < 1e-4,
            "{}: reference y",
            case.name
        );
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|a| a.to_bits()).collect()
}

#[test]
fn bit_identical_for_any_thread_count() {
    // Many small groups; and few groups longer than a tile (nested tile parallelism).
    for (shape, groups) in [(Nchw::new(4, 32, 40, 40), 8), (Nchw::new(2, 8, 96, 96), 2)] {
        let inp = inputs(shape, true, 3.0, 21);
        let serial = run(shape, groups, &inp, 1e-5, Parallelism::None);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let out = pool.install(|| run(shape, groups, &inp, 1e-5, Parallelism::Rayon));
            for (what, a, b) in [
                ("y", &out.y, &serial.y),
                ("mean", &out.mean, &serial.mean),
                ("rstd", &out.rstd, &serial.rstd),
                ("dx", &out.dx, &serial.dx),
                ("dgamma", &out.dgamma, &serial.dgamma),
                ("dbeta", &out.dbeta, &serial.dbeta),
            ] {
                assert_eq!(
                    bits(a),
                    bits(b),
                    "{shape} G={groups}: {what} with {threads} threads"
                );
            }
        }
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
        group_norm_forward(
            shape,
            groups,
            &x,
            affine,
            eps,
            &mut y,
            &mut m,
            &mut r,
            Parallelism::None,
        )
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
    for (k, buffer) in ["x", "y", "mean", "rstd", "gamma", "beta"]
        .into_iter()
        .enumerate()
    {
        let mut lens = ok;
        lens[k] -= 1;
        let expected = ok[k];
        assert_eq!(
            fwd(s, 2, 1e-5, lens),
            Err(NormError::BufferLen {
                op: op_f,
                buffer,
                expected,
                actual: expected - 1
            })
        );
    }

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
        let grads = Some(AffineGrads {
            dgamma: &mut dg,
            dbeta: &mut db,
        });
        group_norm_backward(
            shape,
            groups,
            &xx,
            &dy,
            &m,
            &r,
            Some(&gamma),
            &mut dx,
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
    assert_eq!(
        bwd(s, 0, ok),
        Err(NormError::Groups {
            op: op_b,
            groups: 0,
            channels: 4
        })
    );
    assert_eq!(
        bwd(s, 8, ok),
        Err(NormError::Groups {
            op: op_b,
            groups: 8,
            channels: 4
        })
    );
    let names = ["x", "dy", "dx", "mean", "rstd", "gamma", "dgamma", "dbeta"];
    for (k, buffer) in names.into_iter().enumerate() {
        let mut lens = ok;
        lens[k] += 1;
        let expected = ok[k];
        assert_eq!(
            bwd(s, 2, lens),
            Err(NormError::BufferLen {
                op: op_b,
                buffer,
                expected,
                actual: expected + 1
            })
        );
    }
}

/// Rounds to 4 decimals and prints `0.0000` for a rounded zero of either sign.
fn render(name: &str, v: &[f32]) -> String {
    let cells: Vec<String> = v
        .iter()
        .map(|&a| {
            let r = (a as f64 * 1e4).round() / 1e4;
            format!("{:.4}", if r == 0.0 { 0.0 } else { r })
        })
        .collect();
    format!("{name}: [{}]\n", cells.join(", "))
}

#[test]
fn snapshot_small_case() {
    let shape = Nchw::new(2, 4, 2, 3);
    let out = run(
        shape,
        2,
        &inputs(shape, true, 0.0, 2024),
        1e-5,
        Parallelism::None,
    );
    let text = [
        render("y", &out.y),
        render("mean", &out.mean),
        render("rstd", &out.rstd),
        render("dx", &out.dx),
        render("dgamma", &out.dgamma),
        render("dbeta", &out.dbeta),
    ]
    .concat();
    insta::assert_snapshot!("group_norm_2x4x2x3_g2", text);
}
