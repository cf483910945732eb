//! LayerNorm over `[C, H, W]` (per-element affine, eps = 1e-8 as in the seed) forward and
//! forward+backward: f64 reference twin vs SIMD on one thread vs SIMD + rayon, over the shapes
//! of `normlab_benches::SHAPES`. Throughput is the minimum memory traffic: 8 bytes/element for a
//! forward (read x, write y), 20 for forward+backward (+ read x, dy, write dx).
//!
//! `cargo bench -p normlab-benches --bench layer_norm -- --warm-up-time 1 --measurement-time 3`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use norm_kernels::{
    Affine, AffineGrads, Nchw, Parallelism, layer_norm_backward, layer_norm_forward, reference,
};
use normlab_benches::{SHAPES, data, print_setup};
use std::hint::black_box;

const EPS: f32 = 1e-8;
/// The f64 reference is skipped above this many elements (it takes seconds per sample).
const REFERENCE_MAX: usize = 4 << 20;

struct Buffers {
    shape: Nchw,
    x: Vec<f32>,
    dy: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    y: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

impl Buffers {
    fn new(shape: Nchw) -> Self {
        let (len, c, ng) = (shape.len(), shape.chw(), shape.n);
        Self {
            shape,
            x: data(len, 1),
            dy: data(len, 2),
            gamma: data(c, 3).iter().map(|g| 1.0 + 0.25 * g).collect(),
            beta: data(c, 4),
            y: vec![0.0; len],
            mean: vec![0.0; ng],
            rstd: vec![0.0; ng],
            dx: vec![0.0; len],
            dgamma: vec![0.0; c],
            dbeta: vec![0.0; c],
        }
    }

    fn forward(&mut self, par: Parallelism) {
        let affine = Some(Affine {
            gamma: &self.gamma,
            beta: &self.beta,
        });
        layer_norm_forward(
            self.shape,
            &self.x,
            affine,
            EPS,
            &mut self.y,
            &mut self.mean,
            &mut self.rstd,
            par,
        )
        .unwrap();
    }

    fn backward(&mut self, par: Parallelism) {
        let grads = Some(AffineGrads {
            dgamma: &mut self.dgamma,
            dbeta: &mut self.dbeta,
        });
        layer_norm_backward(
            self.shape,
            &self.x,
            &self.dy,
            &self.mean,
            &self.rstd,
            Some(&self.gamma),
            &mut self.dx,
            grads,
            par,
        )
        .unwrap();
    }
}

fn bench(c: &mut Criterion) {
    print_setup();
    for shape in SHAPES {
        let mut b = Buffers::new(shape);
        let len = shape.len() as u64;
        let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let (x64, dy64, g64, b64) = (f64s(&b.x), f64s(&b.dy), f64s(&b.gamma), f64s(&b.beta));
        let with_reference = shape.len() <= REFERENCE_MAX;

        let mut group = c.benchmark_group(format!("layer_norm/forward/{shape}"));
        group.sample_size(10).throughput(Throughput::Bytes(8 * len));
        if with_reference {
            group.bench_function(BenchmarkId::from_parameter("reference_f64"), |bch| {
                bch.iter(|| {
                    reference::layer_norm_forward(shape, &x64, Some((&g64, &b64)), EPS as f64)
                })
            });
        }
        for (name, par) in [
            ("simd_1t", Parallelism::None),
            ("simd_rayon", Parallelism::Rayon),
        ] {
            group.bench_function(BenchmarkId::from_parameter(name), |bch| {
                bch.iter(|| b.forward(black_box(par)))
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("layer_norm/forward_backward/{shape}"));
        group
            .sample_size(10)
            .throughput(Throughput::Bytes(20 * len));
        if with_reference {
            group.bench_function(BenchmarkId::from_parameter("reference_f64"), |bch| {
                bch.iter(|| {
                    let f =
                        reference::layer_norm_forward(shape, &x64, Some((&g64, &b64)), EPS as f64);
                    reference::layer_norm_backward(shape, &x64, &dy64, &f.mean, &f.rstd, Some(&g64))
                })
            });
        }
        for (name, par) in [
            ("simd_1t", Parallelism::None),
            ("simd_rayon", Parallelism::Rayon),
        ] {
            group.bench_function(BenchmarkId::from_parameter(name), |bch| {
                bch.iter(|| {
                    b.forward(black_box(par));
                    b.backward(black_box(par));
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
