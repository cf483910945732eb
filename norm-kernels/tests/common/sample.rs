//! GroupNorm and LayerNorm: statistics per sample (or per group of channels in one), no running
//! statistics, one forward and one backward. The test bodies here take the kernel and reference
//! calls as closures; `tests/{group,layer}_norm.rs` hold what differs.

use super::check::*;
use norm_kernels::{Affine, AffineGrads, Grads, NormError, Output, Parallelism, Stats, StatsMut};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Inputs of one case: x (shifted by `shift`), dy, and optional (gamma, beta).
pub struct Inputs {
    pub x: Vec<f32>,
    pub dy: Vec<f32>,
    pub affine: Option<(Vec<f32>, Vec<f32>)>,
}

/// Seeded inputs of `len` elements; gamma in [-1.5, 1.5) and beta in [-1, 1) of `params` each.
pub fn inputs(len: usize, params: usize, affine: bool, shift: f32, seed: u64) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = uniform(len, -2.0, 2.0, &mut rng)
        .into_iter()
        .map(|v| v + shift)
        .collect();
    let dy = uniform(len, -1.0, 1.0, &mut rng);
    let affine = affine.then(|| {
        (
            uniform(params, -1.5, 1.5, &mut rng),
            uniform(params, -1.0, 1.0, &mut rng),
        )
    });
    Inputs { x, dy, affine }
}

impl Inputs {
    pub fn affine(&self) -> Option<Affine<'_>> {
        self.affine
            .as_ref()
            .map(|(g, b)| Affine { gamma: g, beta: b })
    }

    pub fn gamma(&self) -> Option<&[f32]> {
        self.affine.as_ref().map(|(g, _)| &g[..])
    }

    /// (gamma, beta) in f64, if affine.
    pub fn affine64(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        self.affine.as_ref().map(|(g, b)| (f64s(g), f64s(b)))
    }
}

/// `Option<(gamma, beta)>` as the reference twins take it.
pub fn as_ref64(aff: &Option<(Vec<f64>, Vec<f64>)>) -> Option<(&[f64], &[f64])> {
    aff.as_ref().map(|(g, b)| (&g[..], &b[..]))
}

/// Everything the kernels produce for one case.
pub struct Outputs {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

impl Outputs {
    /// Every output with its name: y, mean, rstd, dx, dgamma, dbeta.
    pub fn named(&self) -> [(&'static str, &[f32]); 6] {
        [
            ("y", &self.y),
            ("mean", &self.mean),
            ("rstd", &self.rstd),
            ("dx", &self.dx),
            ("dgamma", &self.dgamma),
            ("dbeta", &self.dbeta),
        ]
    }

    /// The snapshot text: every output rounded to 4 decimals, one line each.
    pub fn render(&self) -> String {
        self.named().map(|(name, v)| render(name, v)).concat()
    }
}

/// The kernels' `out` against the reference twin: `fwd` = its (y, mean, rstd), `backward(mean,
/// rstd)` = its (dx, dgamma, dbeta) from the kernel's saved statistics, as a caller would use
/// them. `stat_of(i)` is element i's statistic, `param_of(i)` its gamma/beta entry.
///
/// Tolerances follow f32 error propagation: for `y` and `dx` they scale with each statistic's
/// `rstd` and the spread of its values, so a large mean (which a catastrophic `E[x²] - μ²` would
/// destroy) is held to f32 precision of `x - μ`.
pub fn check_against_reference(
    inp: &Inputs,
    out: &Outputs,
    fwd: [&[f64]; 3],
    backward: impl Fn(&[f64], &[f64]) -> [Vec<f64>; 3],
    stat_of: impl Fn(usize) -> usize,
    param_of: impl Fn(usize) -> usize,
) {
    let [fwd_y, fwd_mean, fwd_rstd] = fwd;
    let (x, dy) = (f64s(&inp.x), f64s(&inp.dy));
    let aff = inp.affine64();
    let gmax = aff.as_ref().map_or(1.0, |(g, b)| {
        g.iter().chain(b).fold(1.0f64, |m, v| m.max(v.abs()))
    });
    // Spread of each statistic's values: max |x - μ|.
    let mut spread = vec![0.0f64; fwd_mean.len()];
    for (i, &v) in x.iter().enumerate() {
        let g = stat_of(i);
        spread[g] = spread[g].max((v - fwd_mean[g]).abs());
    }
    let mean_tol: Vec<f64> = (0..spread.len())
        .map(|g| 1e-6 * (fwd_mean[g].abs() + spread[g]))
        .collect();
    assert_within("mean", &out.mean, fwd_mean, &mean_tol);
    let rstd_tol: Vec<f64> = fwd_rstd.iter().map(|r| 1e-5 * r).collect();
    assert_within("rstd", &out.rstd, fwd_rstd, &rstd_tol);
    let y_tol: Vec<f64> = (0..x.len())
        .map(|i| {
            let g = stat_of(i);
            2e-6 * gmax * (1.0 + fwd_rstd[g] * (fwd_mean[g].abs() + spread[g]))
        })
        .collect();
    assert_within("y", &out.y, fwd_y, &y_tol);

    let (m64, r64) = (f64s(&out.mean), f64s(&out.rstd));
    let gamma = aff.as_ref().map(|(g, _)| &g[..]);
    // The saved mean is only the pivot of the backward, which corrects its f32 rounding from
    // the data (`mean = m + Σ(x - m)/M`): the oracle is the backward at the exact mean.
    let [want_dx, want_dg, want_db] = backward(fwd_mean, &r64);
    let mut gdy_max = vec![0.0f64; spread.len()];
    let mut xh_max = vec![0.0f64; spread.len()];
    let params = out.dgamma.len();
    let (mut dg_mag, mut db_mag) = (vec![0.0f64; params], vec![0.0f64; params]);
    for i in 0..x.len() {
        let (g, e) = (stat_of(i), param_of(i));
        let xh = (x[i] - m64[g]) * r64[g];
        gdy_max[g] = gdy_max[g].max((dy[i] * gamma.map_or(1.0, |ga| ga[e])).abs());
        xh_max[g] = xh_max[g].max(xh.abs());
        dg_mag[e] += (dy[i] * xh).abs();
        db_mag[e] += dy[i].abs();
    }
    let dx_tol: Vec<f64> = (0..x.len())
        .map(|i| {
            let g = stat_of(i);
            4e-6 * r64[g] * gdy_max[g] * (1.0 + xh_max[g] * xh_max[g]) + 1e-7
        })
        .collect();
    assert_within("dx", &out.dx, &want_dx, &dx_tol);
    let dg_tol: Vec<f64> = dg_mag.iter().map(|m| 1e-5 * m + 1e-6).collect();
    assert_within("dgamma", &out.dgamma, &want_dg, &dg_tol);
    let db_tol: Vec<f64> = db_mag.iter().map(|m| 1e-5 * m + 1e-6).collect();
    assert_within("dbeta", &out.dbeta, &want_db, &db_tol);
}

/// The reference backward `an` = (dx, dgamma, dbeta) of an affine `inp` against central
/// differences (step 1e-5) of `loss(x, gamma, beta)`, within 1e-6; then the f32 kernel's
/// gradients in `out` against `an`, within 1e-5 (relative to max(1, |an|)).
pub fn check_fd(
    inp: &Inputs,
    an: [&[f64]; 3],
    loss: impl Fn(&[f64], &[f64], &[f64]) -> f64,
    out: &Outputs,
) {
    let x = f64s(&inp.x);
    let (g, b) = inp
        .affine64()
        .expect("finite differences need affine inputs");
    let num = |v: &[f64], f: &dyn Fn(&[f64]) -> f64| numeric_grad(v, 1e-5, f);
    assert_close64("dx", an[0], &num(&x, &|v| loss(v, &g, &b)), 1e-6);
    assert_close64("dgamma", an[1], &num(&g, &|v| loss(&x, v, &b)), 1e-6);
    assert_close64("dbeta", an[2], &num(&b, &|v| loss(&x, &g, v)), 1e-6);
    for (what, got, want) in [
        ("dx", &out.dx, an[0]),
        ("dgamma", &out.dgamma, an[1]),
        ("dbeta", &out.dbeta, an[2]),
    ] {
        let e = max_rel_err(got, want);
        assert!(e < 1e-5, "{what}: kernel vs analytic error {e:e}");
    }
}

/// `gamma = None` gives bit for bit what gamma = 1, beta = 0 (`params` each) gives.
pub fn check_gamma_none_means_identity(
    mut inp: Inputs,
    params: usize,
    run: impl Fn(&Inputs) -> Outputs,
) {
    inp.affine = Some((vec![1.0; params], vec![0.0; params]));
    let with = run(&inp);
    inp.affine = None;
    let without = run(&inp);
    assert_eq!(with.y, without.y);
    assert_eq!(with.dx, without.dx);
    assert_eq!(with.dgamma, without.dgamma);
    assert_eq!(with.dbeta, without.dbeta);
}

/// The PyTorch fixtures of `norm`: y, dx (and dweight, dbias if affine) of `run(case, inputs,
/// par)` with and without rayon, and `reference_y(case, inputs)` of the reference twin.
pub fn check_fixtures(
    norm: &str,
    run: impl Fn(&super::Case, &Inputs, Parallelism) -> Outputs,
    reference_y: impl Fn(&super::Case, &Inputs) -> Vec<f64>,
) {
    for case in super::cases(Some(norm)) {
        let affine = case
            .affine
            .then(|| (case.load("weight"), case.load("bias")));
        let inp = Inputs {
            x: case.load("x"),
            dy: case.load("dy"),
            affine,
        };
        for par in [Parallelism::None, Parallelism::Rayon] {
            let out = run(&case, &inp, par);
            let mut checks = vec![("y", &out.y), ("dx", &out.dx)];
            if case.affine {
                checks.push(("dweight", &out.dgamma));
                checks.push(("dbias", &out.dbeta));
            }
            for (name, got) in checks {
                let e = super::max_err(got, &case.load(name));
                assert!(e < 1e-4, "{}: {name} error {e:e} ({par:?})", case.name);
            }
        }
        // The reference twin agrees with PyTorch too.
        let y: Vec<f32> = reference_y(&case, &inp).iter().map(|&v| v as f32).collect();
        assert!(
            super::max_err(&y, &case.load("y")) < 1e-4,
            "{}: reference y",
            case.name
        );
    }
}

/// Every output of `run(Rayon)` in pools of 1 and 2 threads equals `run(None)` bit for bit;
/// `label` names the case in failures.
pub fn check_thread_count_invariance(label: &str, run: impl Fn(Parallelism) -> Outputs + Sync) {
    let serial = run(Parallelism::None);
    for threads in [1, 2] {
        let out = in_pool(threads, || run(Parallelism::Rayon));
        for ((what, a), (_, b)) in out.named().into_iter().zip(serial.named()) {
            assert_eq!(bits(a), bits(b), "{label}: {what} with {threads} threads");
        }
    }
}

/// For each buffer k, `call(lens)` with `lens[k] = ok[k] + delta` (the others as in `ok`) must
/// fail with `BufferLen { op, buffer: names[k], expected: ok[k], actual: ok[k] + delta }`.
pub fn check_buffer_len_errors<const N: usize>(
    op: &'static str,
    names: [&'static str; N],
    ok: [usize; N],
    delta: isize,
    call: impl Fn([usize; N]) -> Result<(), NormError>,
) {
    for (k, buffer) in names.into_iter().enumerate() {
        let mut lens = ok;
        lens[k] = ok[k].checked_add_signed(delta).unwrap();
        assert_eq!(
            call(lens),
            Err(NormError::BufferLen {
                op,
                buffer,
                expected: ok[k],
                actual: lens[k]
            })
        );
    }
}

/// Forward and backward (`ops`) reject `gamma`/`beta` the settings do not announce, and missing
/// ones they do, with `NormError::Settings`, writing nothing. `inp` is affine; `forward(affine,
/// inputs, out)` and `backward(affine, inputs, stats, grads)` call the kernels with settings
/// saying `affine` and the affine parameters of `inputs`; `stats` and `params` are the lengths of
/// the saved statistics and of gamma.
pub fn check_settings_errors(
    ops: [&'static str; 2],
    inp: &Inputs,
    (stats, params): (usize, usize),
    forward: impl Fn(bool, &Inputs, Output<'_>) -> Result<(), NormError>,
    backward: impl Fn(bool, &Inputs, Stats<'_>, Grads<'_>) -> Result<(), NormError>,
) {
    let [op_f, op_b] = ops;
    for (affine, given, what) in [
        (
            false,
            true,
            "settings say affine = false, but gamma/beta were given",
        ),
        (
            true,
            false,
            "settings say affine = true, but no gamma/beta were given",
        ),
    ] {
        let case = Inputs {
            x: inp.x.clone(),
            dy: inp.dy.clone(),
            affine: if given { inp.affine.clone() } else { None },
        };
        let (mut y, mut mean, mut rstd) =
            (vec![7.0; inp.x.len()], vec![7.0; stats], vec![7.0; stats]);
        let out = Output {
            y: &mut y,
            stats: StatsMut {
                mean: &mut mean,
                rstd: &mut rstd,
            },
        };
        let err = Err(NormError::Settings { op: op_f, what });
        assert_eq!(forward(affine, &case, out), err, "forward: affine {affine}");
        assert!(y.iter().chain(&mean).chain(&rstd).all(|&v| v == 7.0));

        let (m, r) = (vec![0.0; stats], vec![1.0; stats]);
        let (mut dx, mut dg, mut db) =
            (vec![7.0; inp.x.len()], vec![7.0; params], vec![7.0; params]);
        let grads = Grads {
            dx: &mut dx,
            affine: Some(AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            }),
        };
        let saved = Stats { mean: &m, rstd: &r };
        let err = Err(NormError::Settings { op: op_b, what });
        assert_eq!(
            backward(affine, &case, saved, grads),
            err,
            "backward: affine {affine}"
        );
        assert!(dx.iter().chain(&dg).chain(&db).all(|&v| v == 7.0));
    }
}
