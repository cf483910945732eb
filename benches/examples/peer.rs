//! Our side of the PyTorch peer harness (`tools/peer/run.py`): times the cases named on the
//! command line and prints one JSON line per case, `{"case": ..., "median_ms": ..., ...}`.
//!
//! Cases (the same strings `tools/peer/torch_peer.py` takes):
//! - `kernel:<norm>:<N>x<C>x<H>x<W>:<fwd|fwdbwd>` — a train-mode norm forward (and backward), the
//!   calls of `normlab_benches::kernels::Case` (`norm`: batch, layer, instance, group);
//! - `floor:<N>x<C>x<H>x<W>` — the `bandwidth` bench's `y = a·x + b` on the rayon pool;
//! - `floor-stream:<N>x<C>x<H>x<W>` — the same with streaming stores, as the kernels write an
//!   output larger than the last-level cache;
//! - `fma:<lanes>` — the cores' multiply-add throughput (`floor::fma_chains`, 8 lanes, or 16
//!   where the CPU has AVX-512F), the compute floor under the training steps; the line adds
//!   `gflops`;
//! - `train:<model>:<norm>:<batch>` — one training step (forward + backward + SGD update, as
//!   `norm-train/examples/train_step.rs`), batch preparation not timed (`model`: cnn (alias
//!   plain), resnet8, resnet14, resnet20).
//!
//! Everything runs on a worker of the rayon pool (`RAYON_NUM_THREADS`, default all cores), as
//! `norm-cli` trains. A case is timed in samples of at least [`SAMPLE_MS`] (several calls when
//! one is shorter) until [`CASE_MS`] have passed and at least [`MIN_SAMPLES`] samples exist;
//! the median of the per-call times is reported.
//!
//! `cargo run --release -p normlab-benches --example peer -- kernel:group:8x64x120x120:fwd`

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use norm_kernels::{Nchw, Parallelism};
use norm_train::{Arch, DEFAULT_EPS, DEFAULT_GROUPS, Model, ModelConfig, NormChoice, Sgd, data};
use normlab_benches::kernels::{Case, Norm};
use normlab_benches::{floor, machine};
use rand::{SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

/// Shortest sample, ms.
const SAMPLE_MS: f64 = 5.0;
/// Time per case, ms (after the warm-up).
const CASE_MS: f64 = 600.0;
/// Fewest samples per case.
const MIN_SAMPLES: usize = 7;
/// Warm-up per case, ms.
const WARMUP_MS: f64 = 150.0;
/// Rounds of `floor::fma_chains` per call: about 1 ms at 3 GHz.
const FMA_ITERS: u64 = 250_000;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cases: Vec<String> = std::env::args().skip(1).collect();
    if cases.is_empty() || cases.iter().any(|c| c == "-h" || c == "--help") {
        eprintln!(
            "usage: peer CASE... (kernel:<norm>:<NxCxHxW>:<fwd|fwdbwd>, floor[-stream]:<NxCxHxW>, fma:<8|16>, train:<model>:<norm>:<batch>, info)"
        );
        return ExitCode::from(2);
    }
    match rayon::scope(|_| cases.iter().try_for_each(|c| run(c))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(case: &str) -> Result<(), BoxError> {
    let parts: Vec<&str> = case.split(':').collect();
    let (median, samples) = match parts.as_slice() {
        ["info"] => {
            println!(
                "{{\"case\": \"info\", \"threads\": {}, \"simd\": \"{}\", \"caches\": \"{}\", \"dram_shape\": \"{}\", \"fma_widths\": {:?}}}",
                rayon::current_num_threads(),
                norm_kernels::simd_level(),
                machine::describe_caches(),
                machine::dram_shape(),
                floor::fma_widths()
            );
            return Ok(());
        }
        ["kernel", norm, shape, mode] => {
            let norm = Norm::parse(norm).ok_or_else(|| format!("{case}: unknown norm `{norm}`"))?;
            let backward = match *mode {
                "fwd" => false,
                "fwdbwd" => true,
                _ => return Err(format!("{case}: mode must be fwd or fwdbwd, not `{mode}`").into()),
            };
            let mut c = Case::new(norm, parse_shape(case, shape)?);
            time(|| {
                c.forward(Parallelism::Rayon);
                if backward {
                    c.backward(Parallelism::Rayon);
                }
                black_box(&c.b);
            })
        }
        ["floor" | "floor-stream", shape] => {
            let s = parse_shape(case, shape)?;
            let x = normlab_benches::Lines::of(&normlab_benches::data(s.len(), 1));
            let mut y = normlab_benches::Lines::zeros(s.len());
            let f = match parts[0] {
                "floor" => floor::axpb_rayon,
                _ => floor::axpb_stream_rayon,
            };
            time(|| {
                f(&x, &mut y, black_box(1.5), black_box(0.25));
                black_box(&y);
            })
        }
        ["fma", lanes] => {
            let lanes: usize = lanes
                .parse()
                .map_err(|_| format!("{case}: lanes `{lanes}` is not a number"))?;
            let flops = floor::fma_chains(lanes, FMA_ITERS)
                .ok_or_else(|| format!("{case}: this CPU has no {lanes}-lane multiply-add"))?;
            let (ms, samples) = time(|| {
                black_box(floor::fma_chains(lanes, FMA_ITERS));
            });
            println!(
                "{{\"case\": \"{case}\", \"median_ms\": {ms:.6}, \"samples\": {samples}, \"gflops\": {:.1}}}",
                flops / ms / 1e6
            );
            return Ok(());
        }
        ["train", model, norm, batch] => {
            let norm: NormChoice = norm.parse().map_err(|e| format!("{case}: {e}"))?;
            let batch: usize = batch
                .parse()
                .map_err(|_| format!("{case}: batch `{batch}` is not a number"))?;
            train_step(case, model, norm, batch)?
        }
        _ => return Err(format!("{case}: not a case (run with --help)").into()),
    };
    println!("{{\"case\": \"{case}\", \"median_ms\": {median:.6}, \"samples\": {samples}}}");
    Ok(())
}

fn parse_shape(case: &str, s: &str) -> Result<Nchw, BoxError> {
    let d: Vec<usize> = s
        .split('x')
        .map(|v| v.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{case}: shape `{s}` is not NxCxHxW"))?;
    match d.as_slice() {
        &[n, c, h, w] if n * c * h * w > 0 => Ok(Nchw::new(n, c, h, w)),
        _ => Err(format!("{case}: shape `{s}` is not NxCxHxW with every dimension > 0").into()),
    }
}

/// Warms `f` up, then returns the median per-call time in ms and the number of samples.
fn time(mut f: impl FnMut()) -> (f64, usize) {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let mut calls = 0usize;
    while calls < 3 || ms(t0) < WARMUP_MS {
        f();
        calls += 1;
    }
    let per_call = ms(t0) / calls as f64;
    let reps = ((SAMPLE_MS / per_call).ceil() as usize).max(1);
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < MIN_SAMPLES || ms(start) < CASE_MS {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        samples.push(ms(t) / reps as f64);
    }
    (median(&mut samples), samples.len())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// The models the harness knows; a new architecture plugs in here (and in `torch_peer.py`).
fn build_model(case: &str, model: &str, norm: NormChoice) -> Result<Model, BoxError> {
    // `cnn` is the plain CNN's name in the harness's tables from before the ResNets.
    let arch: Arch = match model {
        "cnn" => Arch::Plain,
        m => m.parse().map_err(|e| format!("{case}: {e} (or cnn)"))?,
    };
    let cfg = ModelConfig {
        arch,
        ..ModelConfig::new([16, 32, 64], norm, DEFAULT_GROUPS, DEFAULT_EPS)
    };
    Ok(Model::new(&cfg, 0)?)
}

/// One training step of `model` at `batch`, timed per step: median ms per step.
fn train_step(
    case: &str,
    model: &str,
    norm: NormChoice,
    batch: usize,
) -> Result<(f64, usize), BoxError> {
    let mut model = build_model(case, model, norm)?;
    let split = data::synthetic(0, 512.max(batch), 0);
    let normalizer = data::Normalizer::from_dataset(&split.train);
    let mut sgd = Sgd::new(0.9, 5e-4);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut order: Vec<usize> = (0..split.train.len()).collect();
    let mut x = vec![0.0f32; batch * data::IMAGE_BYTES];
    let mut labels = vec![0usize; batch];
    let mut step = || -> Result<f64, BoxError> {
        order.shuffle(&mut rng);
        data::fill_batch(
            &split.train,
            &order[..batch],
            &normalizer,
            &data::Augment::NONE,
            &mut rng,
            &mut x,
            &mut labels,
        );
        let t = Instant::now();
        let (_, _, grads) = model.loss_and_grads(&x, &labels)?;
        sgd.step(&mut model, &grads, 0.01);
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let t0 = Instant::now();
    let mut warm = 0;
    while warm < 5 || t0.elapsed().as_secs_f64() * 1e3 < WARMUP_MS {
        step()?;
        warm += 1;
    }
    let mut samples = Vec::new();
    let mut total = 0.0;
    while samples.len() < 20 || total < 2.0 * CASE_MS {
        let ms = step()?;
        total += ms;
        samples.push(ms);
    }
    Ok((median(&mut samples), samples.len()))
}
