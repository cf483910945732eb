//! BatchNorm2d and InstanceNorm2d: the norms with train and eval modes and running statistics.
//! Their kernels and reference twins share signatures (up to the settings type `S`), so one
//! [`Kernels`] describes either and the test bodies here take it; `tests/{batch,instance}_norm.rs`
//! hold what differs.

use super::check::*;
use norm_kernels::reference::{ChannelGrads, ChannelStats};
use norm_kernels::{
    Affine, AffineGrads, Grads, Momentum, Nchw, NormError, Output, Parallelism, Running,
    RunningStats, Saved, Stats, StatsMut,
};
use proptest::prelude::*;

pub const EPS: f32 = 1e-5;

/// PyTorch's default momentum, for the calls whose momentum does not matter.
pub const MOMENTUM: Momentum = Momentum::Exponential(0.1);

pub type ForwardTrain<S> = fn(
    &S,
    Nchw,
    &[f32],
    Option<Affine<'_>>,
    Option<RunningStats<'_>>,
    Output<'_>,
    Parallelism,
) -> Result<(), NormError>;
pub type ForwardEval<S> = fn(
    &S,
    Nchw,
    &[f32],
    Option<Affine<'_>>,
    Running<'_>,
    &mut [f32],
    Parallelism,
) -> Result<(), NormError>;
pub type BackwardTrain<S> = fn(
    &S,
    Nchw,
    Saved<'_>,
    &[f32],
    Option<&[f32]>,
    Grads<'_>,
    Parallelism,
) -> Result<(), NormError>;
pub type BackwardEval<S> = fn(
    &S,
    Nchw,
    Saved<'_, Running<'_>>,
    &[f32],
    Option<&[f32]>,
    Grads<'_>,
    Parallelism,
) -> Result<(), NormError>;
pub type RefForwardTrain =
    fn(Nchw, &[f64], Option<&[f64]>, Option<&[f64]>, f64) -> (Vec<f64>, ChannelStats);
pub type RefForwardEval =
    fn(Nchw, &[f64], &[f64], &[f64], Option<&[f64]>, Option<&[f64]>, f64) -> Vec<f64>;
pub type RefBackwardTrain = fn(Nchw, &[f64], &[f64], Option<&[f64]>, f64) -> ChannelGrads;
pub type RefBackwardEval =
    fn(Nchw, &[f64], &[f64], &[f64], &[f64], Option<&[f64]>, f64) -> ChannelGrads;

/// What one train forward must do to the running statistics.
pub struct RunningUpdate {
    /// `num_batches_tracked` after the call, from 4 before it.
    pub nbt: u64,
    /// The update factor `running = (1 - f)·running + f·batch`.
    pub factor: f64,
    /// The batch's mean and unbiased variance per channel.
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

/// One norm: its settings, its kernels, its reference twins and what differs between the two.
pub struct Kernels<S> {
    /// The entry points' prefix (`batch_norm`).
    pub name: &'static str,
    /// Length of the saved `mean` and `rstd`: C for BatchNorm, N·C for InstanceNorm.
    pub stats_len: fn(Nchw) -> usize,
    /// The settings `(eps, momentum, affine, track_running_stats)`.
    pub settings: fn(f32, Momentum, bool, bool) -> S,
    pub forward_train: ForwardTrain<S>,
    pub forward_eval: ForwardEval<S>,
    pub backward_train: BackwardTrain<S>,
    pub backward_eval: BackwardEval<S>,
    pub ref_forward_train: RefForwardTrain,
    pub ref_forward_eval: RefForwardEval,
    pub ref_backward_train: RefBackwardTrain,
    pub ref_backward_eval: RefBackwardEval,
    /// The expected running update from the reference's statistics and the momentum.
    pub running: fn(Nchw, &ChannelStats, Momentum) -> RunningUpdate,
}

impl<S> Kernels<S> {
    /// Settings with `eps` and `momentum` that agree with a call passing affine parameters iff
    /// `affine` and running statistics iff `track`.
    pub fn norm(&self, eps: f32, momentum: Momentum, affine: bool, track: bool) -> S {
        (self.settings)(eps, momentum, affine, track)
    }

    /// The train forward into fresh buffers: `[y, mean, rstd]`.
    pub fn train_forward(
        &self,
        norm: &S,
        s: Nchw,
        x: &[f32],
        affine: Option<Affine<'_>>,
        running: Option<RunningStats<'_>>,
        par: Parallelism,
    ) -> [Vec<f32>; 3] {
        let st = (self.stats_len)(s);
        // NaN-filled, as a reused buffer is dirty: every output must be written, not added to.
        let (mut y, mut mean, mut rstd) = (
            vec![f32::NAN; s.len()],
            vec![f32::NAN; st],
            vec![f32::NAN; st],
        );
        let out = Output {
            y: &mut y,
            stats: StatsMut {
                mean: &mut mean,
                rstd: &mut rstd,
            },
        };
        (self.forward_train)(norm, s, x, affine, running, out, par).unwrap();
        [y, mean, rstd]
    }

    /// The train backward with grads into fresh NaN-filled buffers (so every output must be
    /// written): `[dx, dgamma, dbeta]`.
    pub fn train_backward(
        &self,
        norm: &S,
        s: Nchw,
        (x, dy): (&[f32], &[f32]),
        stats: Stats<'_>,
        gamma: Option<&[f32]>,
        par: Parallelism,
    ) -> [Vec<f32>; 3] {
        let (mut dx, mut dg, mut db) = (
            vec![f32::NAN; s.len()],
            vec![f32::NAN; s.c],
            vec![f32::NAN; s.c],
        );
        let grads = Grads {
            dx: &mut dx,
            affine: Some(AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            }),
        };
        (self.backward_train)(norm, s, Saved { x, stats }, dy, gamma, grads, par).unwrap();
        [dx, dg, db]
    }

    /// The eval forward into a fresh buffer.
    pub fn eval_forward(
        &self,
        norm: &S,
        s: Nchw,
        x: &[f32],
        affine: Option<Affine<'_>>,
        running: Running<'_>,
        par: Parallelism,
    ) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        (self.forward_eval)(norm, s, x, affine, running, &mut y, par).unwrap();
        y
    }

    /// The eval backward with grads into fresh buffers: `[dx, dgamma, dbeta]`.
    pub fn eval_backward(
        &self,
        norm: &S,
        s: Nchw,
        (x, dy): (&[f32], &[f32]),
        running: Running<'_>,
        gamma: Option<&[f32]>,
        par: Parallelism,
    ) -> [Vec<f32>; 3] {
        let (mut dx, mut dg, mut db) = (
            vec![f32::NAN; s.len()],
            vec![f32::NAN; s.c],
            vec![f32::NAN; s.c],
        );
        let grads = Grads {
            dx: &mut dx,
            affine: Some(AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            }),
        };
        let saved = Saved { x, stats: running };
        (self.backward_eval)(norm, s, saved, dy, gamma, grads, par).unwrap();
        [dx, dg, db]
    }

    /// The name errors give for entry point `name_suffix` (`batch_norm_forward_train`).
    fn op(&self, suffix: &str) -> &'static str {
        Box::leak(format!("{}_{suffix}", self.name).into_boxed_str())
    }
}

/// `Stats { mean, rstd }`.
pub fn stats<'a>(mean: &'a [f32], rstd: &'a [f32]) -> Stats<'a> {
    Stats { mean, rstd }
}

/// `Running { mean, var }`.
pub fn running<'a>(mean: &'a [f32], var: &'a [f32]) -> Running<'a> {
    Running { mean, var }
}

/// Inputs of one case: x (optionally shifted), dy, gamma, beta, running mean and var.
pub struct Inputs {
    pub x: Vec<f32>,
    pub dy: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub rm: Vec<f32>,
    pub rv: Vec<f32>,
}

pub fn inputs(s: Nchw, seed: u64, shift: f32) -> Inputs {
    Inputs {
        x: data(s.len(), seed, -2.0 + shift, 2.0 + shift),
        dy: data(s.len(), seed + 1, -1.0, 1.0),
        gamma: data(s.c, seed + 2, 0.5, 1.5),
        beta: data(s.c, seed + 3, -0.5, 0.5),
        rm: data(s.c, seed + 4, -0.5 + shift, 0.5 + shift),
        rv: data(s.c, seed + 5, 0.5, 2.0),
    }
}

/// Shapes of odd sizes whose h·w is not a multiple of 8 and with more than one value
/// (`values_per_stat`) behind each train statistic; `whence` names what the filter rejects.
pub fn odd_shape(
    values_per_stat: fn(Nchw) -> usize,
    whence: &'static str,
) -> impl Strategy<Value = Nchw> {
    (dim(), dim(), dim(), dim())
        .prop_map(|(n, c, h, w)| Nchw::new(n, c, h, w))
        .prop_filter(whence, move |s| s.hw() % 8 != 0 && values_per_stat(*s) > 1)
}

/// `(gamma, beta)` of the reference, if `affine`.
fn ref_affine<'a>(
    affine: bool,
    g64: &'a [f64],
    b64: &'a [f64],
) -> (Option<&'a [f64]>, Option<&'a [f64]>) {
    if affine {
        (Some(g64), Some(b64))
    } else {
        (None, None)
    }
}

/// Runs the train forward (+ running stats) and backward of the kernel and the reference and
/// compares everything.
pub fn check_train<S>(
    k: &Kernels<S>,
    s: Nchw,
    seed: u64,
    affine: bool,
    shift: f32,
    momentum: Momentum,
    par: Parallelism,
) {
    let inp = inputs(s, seed, shift);
    let norm = k.norm(EPS, momentum, affine, true);
    let aff = affine.then_some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), 4u64);
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
    };
    let [y, mean, rstd] = k.train_forward(&norm, s, &inp.x, aff, Some(running), par);

    let x64 = f64s(&inp.x);
    let (g64, b64) = (f64s(&inp.gamma), f64s(&inp.beta));
    let (g, b) = ref_affine(affine, &g64, &b64);
    let (want_y, st) = (k.ref_forward_train)(s, &x64, g, b, EPS as f64);
    assert_close("y", &y, &want_y, 2e-5);
    assert_close("mean", &mean, &st.mean, 1e-6);
    assert_close("rstd", &rstd, &st.rstd, 1e-5);
    let want = (k.running)(s, &st, momentum);
    assert_eq!(nbt, want.nbt);
    let running_update = |old: &[f32], batch: &[f64]| {
        norm_kernels::reference::running_update(&f64s(old), batch, want.factor)
    };
    assert_close(
        "running_mean",
        &rm,
        &running_update(&inp.rm, &want.mean),
        1e-6,
    );
    assert_close(
        "running_var",
        &rv,
        &running_update(&inp.rv, &want.var),
        1e-5,
    );

    let gamma = affine.then_some(&inp.gamma[..]);
    let saved = stats(&mean, &rstd);
    let [dx, dg, db] = k.train_backward(&norm, s, (&inp.x, &inp.dy), saved, gamma, par);
    let want = (k.ref_backward_train)(s, &x64, &f64s(&inp.dy), g, EPS as f64);
    assert_close("dx", &dx, &want.dx, 1e-4);
    let count = s.n * s.hw();
    assert_close_sum("dgamma", &dg, &want.dgamma, count, 1e-4);
    assert_close_sum("dbeta", &db, &want.dbeta, count, 1e-4);
}

/// The eval forward and backward of the kernel against the reference.
pub fn check_eval<S>(
    k: &Kernels<S>,
    s: Nchw,
    seed: u64,
    affine: bool,
    shift: f32,
    par: Parallelism,
) {
    let inp = inputs(s, seed, shift);
    let norm = k.norm(EPS, MOMENTUM, affine, true);
    let aff = affine.then_some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    let run = running(&inp.rm, &inp.rv);
    let y = k.eval_forward(&norm, s, &inp.x, aff, run, par);
    let (x64, rm64, rv64) = (f64s(&inp.x), f64s(&inp.rm), f64s(&inp.rv));
    let (g64, b64) = (f64s(&inp.gamma), f64s(&inp.beta));
    let (g, b) = ref_affine(affine, &g64, &b64);
    let want = (k.ref_forward_eval)(s, &x64, &rm64, &rv64, g, b, EPS as f64);
    assert_close("y_eval", &y, &want, 2e-5);

    let gamma = affine.then_some(&inp.gamma[..]);
    let [dx, dg, db] = k.eval_backward(&norm, s, (&inp.x, &inp.dy), run, gamma, par);
    let want = (k.ref_backward_eval)(s, &x64, &f64s(&inp.dy), &rm64, &rv64, g, EPS as f64);
    assert_close("dx_eval", &dx, &want.dx, 1e-5);
    let count = s.n * s.hw();
    assert_close_sum("dgamma_eval", &dg, &want.dgamma, count, 1e-4);
    assert_close_sum("dbeta_eval", &db, &want.dbeta, count, 1e-4);
}

/// Few channels and planes longer than one 64 Ki-element work unit: the nested split path.
pub fn check_few_channels_long_planes<S>(k: &Kernels<S>) {
    let s = Nchw::new(2, 3, 200, 333);
    let (momentum, par) = (Momentum::Exponential(0.3), Parallelism::Rayon);
    check_train(k, s, 7, true, 1000.0, momentum, par);
    check_eval(k, s, 8, true, 0.0, par);
}

/// Central differences of the reference's `Σ y·dy` (step 1e-6) against `an`'s dx, dgamma and
/// dbeta, all with gamma; `fwd(x, gamma, beta)` is the reference forward.
fn check_fd(
    x: &[f64],
    g: &[f64],
    b: &[f64],
    an: &ChannelGrads,
    fwd: impl Fn(&[f64], &[f64], &[f64]) -> f64,
) {
    let num = |v: &[f64], f: &dyn Fn(&[f64]) -> f64| numeric_grad(v, 1e-6, f);
    assert_close64("dx", &an.dx, &num(x, &|x| fwd(x, g, b)), 1e-6);
    assert_close64("dgamma", &an.dgamma, &num(g, &|g| fwd(x, g, b)), 1e-6);
    assert_close64("dbeta", &an.dbeta, &num(b, &|b| fwd(x, g, b)), 1e-6);
}

/// Asserts the kernel's gradients equal the analytic ones within 1e-5.
fn assert_kernel_grads([dx, dg, db]: &[Vec<f32>; 3], an: &ChannelGrads) {
    assert_close("kernel dx", dx, &an.dx, 1e-5);
    assert_close("kernel dgamma", dg, &an.dgamma, 1e-5);
    assert_close("kernel dbeta", db, &an.dbeta, 1e-5);
}

/// The train reference backward against finite differences (with and without affine), and the
/// f32 kernel against it.
pub fn check_train_fd<S>(k: &Kernels<S>) {
    let s = Nchw::new(2, 3, 3, 5);
    let inp = inputs(s, 11, 0.0);
    let (x, dy, g, b) = (
        f64s(&inp.x),
        f64s(&inp.dy),
        f64s(&inp.gamma),
        f64s(&inp.beta),
    );
    let eps = 1e-5;
    let an = (k.ref_backward_train)(s, &x, &dy, Some(&g), eps);
    check_fd(&x, &g, &b, &an, |x, g, b| {
        loss(&(k.ref_forward_train)(s, x, Some(g), Some(b), eps).0, &dy)
    });
    // Without affine: dx of the plain normalisation.
    let plain = (k.ref_backward_train)(s, &x, &dy, None, eps);
    let num = numeric_grad(&x, 1e-6, |x| {
        loss(&(k.ref_forward_train)(s, x, None, None, eps).0, &dy)
    });
    assert_close64("dx (no affine)", &plain.dx, &num, 1e-6);

    // The f32 kernel agrees with the analytic gradient.
    let norm = k.norm(1e-5, MOMENTUM, true, false);
    let aff = Some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    let [_, mean, rstd] = k.train_forward(&norm, s, &inp.x, aff, None, Parallelism::None);
    let grads = k.train_backward(
        &norm,
        s,
        (&inp.x, &inp.dy),
        stats(&mean, &rstd),
        Some(&inp.gamma),
        Parallelism::Rayon,
    );
    assert_kernel_grads(&grads, &an);
}

/// The eval reference backward against finite differences, and the f32 kernel against it.
pub fn check_eval_fd<S>(k: &Kernels<S>) {
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
    let an = (k.ref_backward_eval)(s, &x, &dy, &rm, &rv, Some(&g), eps);
    check_fd(&x, &g, &b, &an, |x, g, b| {
        loss(
            &(k.ref_forward_eval)(s, x, &rm, &rv, Some(g), Some(b), eps),
            &dy,
        )
    });

    let norm = k.norm(1e-5, MOMENTUM, true, true);
    let grads = k.eval_backward(
        &norm,
        s,
        (&inp.x, &inp.dy),
        running(&inp.rm, &inp.rv),
        Some(&inp.gamma),
        Parallelism::None,
    );
    assert_kernel_grads(&grads, &an);
}

/// `gamma = None` with `grads`: dx of the plain normalisation, and the gradients of a unit scale
/// and zero shift — the same dgamma/dbeta as with any gamma.
pub fn check_no_affine_still_writes_grads<S>(k: &Kernels<S>) {
    let s = Nchw::new(3, 4, 5, 3);
    let inp = inputs(s, 13, 0.0);
    let norm = k.norm(EPS, MOMENTUM, false, false);
    let p = Parallelism::None;
    let [_, mean, rstd] = k.train_forward(&norm, s, &inp.x, None, None, p);
    let saved = stats(&mean, &rstd);
    let [dx, dg, db] = k.train_backward(&norm, s, (&inp.x, &inp.dy), saved, None, p);
    let (x64, dy64) = (f64s(&inp.x), f64s(&inp.dy));
    let want = (k.ref_backward_train)(s, &x64, &dy64, None, EPS as f64);
    assert_close("dx", &dx, &want.dx, 1e-5);
    let with_gamma = (k.ref_backward_train)(s, &x64, &dy64, Some(&f64s(&inp.gamma)), EPS as f64);
    assert_close("dgamma", &dg, &with_gamma.dgamma, 1e-5);
    assert_close("dbeta", &db, &with_gamma.dbeta, 1e-5);
}

/// The PyTorch fixtures of `norm`: train forward and backward; with `track_running`, also the
/// running statistics (from 0 and 1) and the eval forward of `x_eval` with them.
pub fn check_fixtures<S>(k: &Kernels<S>, norm: &str, track_running: bool) {
    for case in super::cases(Some(norm)) {
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
        let settings = k.norm(case.eps, momentum, case.affine, track_running);
        let (mut rm, mut rv, mut nbt) = (vec![0.0; c], vec![1.0; c], 0u64);
        let running_stats = track_running.then_some(RunningStats {
            mean: &mut rm,
            var: &mut rv,
            num_batches_tracked: &mut nbt,
        });
        let par = Parallelism::Rayon;
        let [y, mean, rstd] = k.train_forward(&settings, s, &x, aff, running_stats, par);
        let name = &case.name;
        let check = |what: &str, got: &[f32]| {
            let e = super::max_err(got, &case.load(what));
            assert!(e <= 1e-4, "{name}: {what} max_err {e:e}");
        };
        check("y", &y);
        if track_running {
            check("running_mean", &rm);
            check("running_var", &rv);
        }

        let g = case.affine.then_some(&gamma[..]);
        let saved = stats(&mean, &rstd);
        let [dx, dg, db] = k.train_backward(&settings, s, (&x, &dy), saved, g, par);
        check("dx", &dx);
        if case.affine {
            check("dweight", &dg);
            check("dbias", &db);
        }

        if track_running {
            let x_eval = case.load("x_eval");
            let y_eval = k.eval_forward(&settings, s, &x_eval, aff, running(&rm, &rv), par);
            check("y_eval", &y_eval);
        }
    }
}

/// Every output of a train forward (running stats from `inp`, momentum 0.1), train backward,
/// eval forward and eval backward (with the updated running stats), all with affine, in the
/// order `y, mean, rstd, running_mean, running_var, dx, dgamma, dbeta, y_eval, dx_eval,
/// dgamma_eval, dbeta_eval`.
fn all_outputs<S>(k: &Kernels<S>, s: Nchw, inp: &Inputs, par: Parallelism) -> [Vec<f32>; 12] {
    let norm = k.norm(EPS, MOMENTUM, true, true);
    let aff = Some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), 0u64);
    let running_stats = RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
    };
    let [y, mean, rstd] = k.train_forward(&norm, s, &inp.x, aff, Some(running_stats), par);
    let (x_dy, gamma) = ((&inp.x[..], &inp.dy[..]), Some(&inp.gamma[..]));
    let [dx, dg, db] = k.train_backward(&norm, s, x_dy, stats(&mean, &rstd), gamma, par);
    let ye = k.eval_forward(&norm, s, &inp.x, aff, running(&rm, &rv), par);
    let [dxe, dge, dbe] = k.eval_backward(&norm, s, x_dy, running(&rm, &rv), gamma, par);
    [y, mean, rstd, rm, rv, dx, dg, db, ye, dxe, dge, dbe]
}

/// All outputs of every entry point, as bits.
fn all_bits<S>(k: &Kernels<S>, s: Nchw, par: Parallelism) -> Vec<u32> {
    let out = all_outputs(k, s, &inputs(s, 21, 3.0), par);
    out.iter().flat_map(|v| bits(v)).collect()
}

/// Bit-identical outputs with rayon on 1, 2 and 4 threads and without rayon.
pub fn check_bit_identical_for_any_thread_count<S: Sync>(k: &Kernels<S>) {
    // Many channels (one task each) and few channels with planes split into work units.
    for s in [Nchw::new(4, 24, 40, 41), Nchw::new(2, 3, 300, 301)] {
        let one = in_pool(1, || all_bits(k, s, Parallelism::Rayon));
        let two = in_pool(2, || all_bits(k, s, Parallelism::Rayon));
        let four = in_pool(4, || all_bits(k, s, Parallelism::Rayon));
        let serial = all_bits(k, s, Parallelism::None);
        assert!(
            one == two && two == four,
            "{s}: rayon results depend on the thread count"
        );
        assert!(one == serial, "{s}: rayon and serial results differ");
    }
}

/// The errors every entry point gives for zero dimensions, each buffer one element short, bad
/// eps and bad running statistics (not the train-only "one value per statistic" check, whose
/// shape and error differ between the norms).
pub fn check_errors<S>(k: &Kernels<S>) {
    let s = Nchw::new(2, 3, 4, 5);
    let inp = inputs(s, 1, 0.0);
    let p = Parallelism::None;
    let st = (k.stats_len)(s);
    let len = |op, buffer, expected: usize| NormError::BufferLen {
        op,
        buffer,
        expected,
        actual: expected - 1,
    };
    let zero = Nchw::new(2, 0, 4, 5);
    let zero_c = |op| Err(NormError::ZeroDim { op, dim: "c" });
    // The settings of a call with affine parameters, without running statistics; and of one
    // with neither, for the zero shapes' empty calls.
    let affine = |eps| k.norm(eps, MOMENTUM, true, false);
    let plain = k.norm(EPS, MOMENTUM, false, false);
    let empty = || Output {
        y: &mut [],
        stats: StatsMut {
            mean: &mut [],
            rstd: &mut [],
        },
    };

    // Forward train: x, y, mean, rstd, gamma, beta of the given lengths.
    let ft = k.op("forward_train");
    let forward_train = |[lx, ly, lm, lr, lg, lb]: [usize; 6], eps: f32| {
        let (mut y, mut mean, mut rstd) = (vec![0.0; ly], vec![0.0; lm], vec![0.0; lr]);
        let aff = Some(Affine {
            gamma: &inp.gamma[..lg],
            beta: &inp.beta[..lb],
        });
        let out = Output {
            y: &mut y,
            stats: StatsMut {
                mean: &mut mean,
                rstd: &mut rstd,
            },
        };
        (k.forward_train)(&affine(eps), s, &inp.x[..lx], aff, None, out, p)
    };
    assert_eq!(
        (k.forward_train)(&plain, zero, &[], None, None, empty(), p),
        zero_c(ft)
    );
    let full = [s.len(), s.len(), st, st, s.c, s.c];
    for (i, buffer) in ["x", "y", "mean", "rstd", "gamma", "beta"]
        .into_iter()
        .enumerate()
    {
        let mut lens = full;
        lens[i] -= 1;
        assert_eq!(forward_train(lens, EPS), Err(len(ft, buffer, full[i])));
    }
    for eps in [-1.0, f32::NAN, f32::INFINITY] {
        let got = forward_train(full, eps);
        assert!(
            matches!(got, Err(NormError::Eps { op, .. }) if op == ft),
            "eps {eps}: {got:?}"
        );
    }
    // Running statistics: (running_mean length, running_var length, momentum, error).
    let mut nbt = 0u64;
    for (lm, lv, momentum, want) in [
        (3, 2, 0.1, len(ft, "running_var", 3)),
        (2, 3, 0.1, len(ft, "running_mean", 3)),
        (
            3,
            3,
            1.5,
            NormError::Momentum {
                op: ft,
                momentum: 1.5,
            },
        ),
    ] {
        let (mut rm, mut rv) = (vec![0.0; lm], vec![1.0; lv]);
        let running_stats = RunningStats {
            mean: &mut rm,
            var: &mut rv,
            num_batches_tracked: &mut nbt,
        };
        let (mut y, mut mean, mut rstd) = (vec![0.0; s.len()], vec![0.0; st], vec![0.0; st]);
        let aff = Some(Affine {
            gamma: &inp.gamma,
            beta: &inp.beta,
        });
        let out = Output {
            y: &mut y,
            stats: StatsMut {
                mean: &mut mean,
                rstd: &mut rstd,
            },
        };
        let norm = k.norm(EPS, Momentum::Exponential(momentum), true, true);
        assert_eq!(
            (k.forward_train)(&norm, s, &inp.x, aff, Some(running_stats), out, p),
            Err(want)
        );
    }
    assert_eq!(nbt, 0, "a rejected call must not touch num_batches_tracked");

    // Forward eval.
    let fe = k.op("forward_eval");
    let eval = |eps| k.norm(eps, MOMENTUM, true, true);
    let aff = Some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });
    let mut y = vec![0.0; s.len()];
    let plain_eval = k.norm(EPS, MOMENTUM, false, true);
    assert_eq!(
        (k.forward_eval)(&plain_eval, zero, &[], None, running(&[], &[]), &mut [], p),
        zero_c(fe)
    );
    let (rm, rv) = (&inp.rm[..], &inp.rv[..]);
    assert_eq!(
        (k.forward_eval)(&eval(EPS), s, &inp.x, aff, running(&rm[1..], rv), &mut y, p),
        Err(len(fe, "running_mean", 3))
    );
    assert_eq!(
        (k.forward_eval)(&eval(EPS), s, &inp.x, aff, running(rm, &rv[1..]), &mut y, p),
        Err(len(fe, "running_var", 3))
    );
    assert_eq!(
        (k.forward_eval)(&eval(EPS), s, &inp.x, aff, running(rm, rv), &mut y[1..], p),
        Err(len(fe, "y", 120))
    );
    assert!(matches!(
        (k.forward_eval)(&eval(-1.0), s, &inp.x, aff, running(rm, rv), &mut y, p),
        Err(NormError::Eps { op, .. }) if op == fe
    ));

    // Backward train: x, dy, dx, mean, rstd, gamma, dgamma, dbeta of the given lengths; the
    // grads only `with_grads`.
    let bt = k.op("backward_train");
    let backward_train = |[lx, ldy, ldx, lm, lr, lg, ldg, ldb]: [usize; 8], with_grads: bool| {
        let (mean, rstd) = (vec![0.0; lm], vec![0.0; lr]);
        let (mut dx, mut dg, mut db) = (vec![0.0; ldx], vec![0.0; ldg], vec![0.0; ldb]);
        let grads = Grads {
            dx: &mut dx,
            affine: with_grads.then_some(AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            }),
        };
        let g = Some(&inp.gamma[..lg]);
        let saved = Saved {
            x: &inp.x[..lx],
            stats: stats(&mean, &rstd),
        };
        (k.backward_train)(&affine(EPS), s, saved, &inp.dy[..ldy], g, grads, p)
    };
    let no_grads = || Grads {
        dx: &mut [],
        affine: None,
    };
    let empty_saved = Saved {
        x: &[],
        stats: stats(&[], &[]),
    };
    assert_eq!(
        (k.backward_train)(&plain, zero, empty_saved, &[], None, no_grads(), p),
        zero_c(bt)
    );
    let full = [s.len(), s.len(), s.len(), st, st, s.c, s.c, s.c];
    for (i, buffer, with_grads) in [
        (1, "dy", false),
        (2, "dx", false),
        (3, "mean", false),
        (5, "gamma", false),
        (6, "dgamma", true),
        (7, "dbeta", true),
    ] {
        let mut lens = full;
        lens[i] -= 1;
        assert_eq!(
            backward_train(lens, with_grads),
            Err(len(bt, buffer, full[i]))
        );
    }

    // Backward eval: x, dy, running_mean, running_var, gamma, dx, dgamma, dbeta of the given
    // lengths; the grads only `with_grads`.
    let be = k.op("backward_eval");
    let backward_eval =
        |[lx, ldy, lm, lv, lg, ldx, ldg, ldb]: [usize; 8], eps: f32, with_grads: bool| {
            let (mut dx, mut dg, mut db) = (vec![0.0; ldx], vec![0.0; ldg], vec![0.0; ldb]);
            let grads = Grads {
                dx: &mut dx,
                affine: with_grads.then_some(AffineGrads {
                    dgamma: &mut dg,
                    dbeta: &mut db,
                }),
            };
            let saved = Saved {
                x: &inp.x[..lx],
                stats: running(&inp.rm[..lm], &inp.rv[..lv]),
            };
            let g = Some(&inp.gamma[..lg]);
            (k.backward_eval)(&eval(eps), s, saved, &inp.dy[..ldy], g, grads, p)
        };
    let empty_saved = Saved {
        x: &[],
        stats: running(&[], &[]),
    };
    assert_eq!(
        (k.backward_eval)(&plain_eval, zero, empty_saved, &[], None, no_grads(), p),
        zero_c(be)
    );
    let full = [s.len(), s.len(), s.c, s.c, s.c, s.len(), s.c, s.c];
    for (i, buffer, with_grads) in [
        (0, "x", false),
        (3, "running_var", false),
        (7, "dbeta", true),
    ] {
        let mut lens = full;
        lens[i] -= 1;
        assert_eq!(
            backward_eval(lens, EPS, with_grads),
            Err(len(be, buffer, full[i]))
        );
    }
    assert!(matches!(
        backward_eval(full, f32::NAN, false),
        Err(NormError::Eps { op, .. }) if op == be
    ));
}

/// The texts of [`NormError::Settings`].
pub const AFFINE_MISSING: &str = "settings say affine = true, but no gamma/beta were given";
pub const AFFINE_UNEXPECTED: &str = "settings say affine = false, but gamma/beta were given";
pub const RUNNING_MISSING: &str =
    "settings say track_running_stats = true, but no running statistics were given";
pub const RUNNING_UNEXPECTED: &str =
    "settings say track_running_stats = false, but running statistics were given";

/// Every entry point rejects a call whose affine parameters or running statistics disagree with
/// the settings (`NormError::Settings`), before touching any output or the running statistics.
pub fn check_settings_errors<S>(k: &Kernels<S>) {
    let s = Nchw::new(2, 3, 4, 5);
    let inp = inputs(s, 1, 0.0);
    let p = Parallelism::None;
    let st = (k.stats_len)(s);
    let settings = |op, what| Err(NormError::Settings { op, what });
    let aff = Some(Affine {
        gamma: &inp.gamma,
        beta: &inp.beta,
    });

    // Forward train: (affine in the settings, affine given, tracking, running given, error).
    let ft = k.op("forward_train");
    for (affine, given, track, with_running, what) in [
        (false, true, false, false, AFFINE_UNEXPECTED),
        (true, false, false, false, AFFINE_MISSING),
        (true, true, true, false, RUNNING_MISSING),
        (true, true, false, true, RUNNING_UNEXPECTED),
    ] {
        let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), 4u64);
        let running_stats = with_running.then_some(RunningStats {
            mean: &mut rm,
            var: &mut rv,
            num_batches_tracked: &mut nbt,
        });
        let (mut y, mut mean, mut rstd) = (vec![7.0; s.len()], vec![7.0; st], vec![7.0; st]);
        let out = Output {
            y: &mut y,
            stats: StatsMut {
                mean: &mut mean,
                rstd: &mut rstd,
            },
        };
        let norm = k.norm(EPS, MOMENTUM, affine, track);
        let a = if given { aff } else { None };
        assert_eq!(
            (k.forward_train)(&norm, s, &inp.x, a, running_stats, out, p),
            settings(ft, what),
            "affine {affine} given {given} track {track} running {with_running}"
        );
        assert!(y.iter().chain(&mean).chain(&rstd).all(|&v| v == 7.0));
        assert_eq!((nbt, &rm, &rv), (4, &inp.rm, &inp.rv));
    }

    // Backward train: (affine in the settings, gamma given, error).
    let bt = k.op("backward_train");
    let (mean, rstd) = (vec![0.0; st], vec![1.0; st]);
    for (affine, given, what) in [
        (false, true, AFFINE_UNEXPECTED),
        (true, false, AFFINE_MISSING),
    ] {
        let (mut dx, mut dg, mut db) = (vec![7.0; s.len()], vec![7.0; s.c], vec![7.0; s.c]);
        let grads = Grads {
            dx: &mut dx,
            affine: Some(AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            }),
        };
        let saved = Saved {
            x: &inp.x,
            stats: stats(&mean, &rstd),
        };
        let g = given.then_some(&inp.gamma[..]);
        let norm = k.norm(EPS, MOMENTUM, affine, false);
        assert_eq!(
            (k.backward_train)(&norm, s, saved, &inp.dy, g, grads, p),
            settings(bt, what),
            "affine {affine} given {given}"
        );
        assert!(dx.iter().chain(&dg).chain(&db).all(|&v| v == 7.0));
    }

    // Forward eval and backward eval: the affine flag.
    let (fe, be) = (k.op("forward_eval"), k.op("backward_eval"));
    let run = running(&inp.rm, &inp.rv);
    for (affine, given, what) in [
        (false, true, AFFINE_UNEXPECTED),
        (true, false, AFFINE_MISSING),
    ] {
        let norm = k.norm(EPS, MOMENTUM, affine, true);
        let mut y = vec![7.0; s.len()];
        let a = if given { aff } else { None };
        assert_eq!(
            (k.forward_eval)(&norm, s, &inp.x, a, run, &mut y, p),
            settings(fe, what),
            "forward eval: affine {affine} given {given}"
        );
        let mut dx = vec![7.0; s.len()];
        let grads = Grads {
            dx: &mut dx,
            affine: None,
        };
        let saved = Saved {
            x: &inp.x,
            stats: run,
        };
        let g = given.then_some(&inp.gamma[..]);
        assert_eq!(
            (k.backward_eval)(&norm, s, saved, &inp.dy, g, grads, p),
            settings(be, what),
            "backward eval: affine {affine} given {given}"
        );
        assert!(y.iter().chain(&dx).all(|&v| v == 7.0));
    }
}

/// The eval entry points normalise with running statistics, so settings without
/// `track_running_stats` contradict them: `NormError::Settings`.
pub fn check_eval_needs_tracking<S>(k: &Kernels<S>) {
    let s = Nchw::new(2, 3, 4, 5);
    let inp = inputs(s, 1, 0.0);
    let p = Parallelism::None;
    let norm = k.norm(EPS, MOMENTUM, false, false);
    let run = running(&inp.rm, &inp.rv);
    let want = |op| {
        Err(NormError::Settings {
            op,
            what: RUNNING_UNEXPECTED,
        })
    };
    let mut y = vec![0.0; s.len()];
    assert_eq!(
        (k.forward_eval)(&norm, s, &inp.x, None, run, &mut y, p),
        want(k.op("forward_eval"))
    );
    let mut dx = vec![0.0; s.len()];
    let grads = Grads {
        dx: &mut dx,
        affine: None,
    };
    let saved = Saved {
        x: &inp.x,
        stats: run,
    };
    assert_eq!(
        (k.backward_eval)(&norm, s, saved, &inp.dy, None, grads, p),
        want(k.op("backward_eval"))
    );
}

/// The text of the snapshot test: a train step (affine, running stats from 0 and 1, momentum
/// 0.1) and an eval forward with the updated running stats on a 2x3x2x3 input, 4 decimals.
pub fn snapshot_small_case<S>(k: &Kernels<S>) -> String {
    let s = Nchw::new(2, 3, 2, 3);
    let mut inp = inputs(s, 2024, 0.0);
    (inp.rm, inp.rv) = (vec![0.0; 3], vec![1.0; 3]);
    let [y, mean, rstd, rm, rv, dx, dg, db, ye, ..] = all_outputs(k, s, &inp, Parallelism::Rayon);
    let mut out = format!("{} {s}, eps {EPS}, momentum 0.1, seed 2024\n", k.name);
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
    out
}
