//! BatchNorm2d, train mode: forward, and forward + backward, on the kernel shapes.
//! Reference twin (f64, one thread) vs SIMD on the calling thread vs SIMD + rayon.
//! Throughput is the minimum memory traffic: 8 bytes/element forward (read x, write y),
//! 20 bytes/element forward + backward (+ read x, dy, write dx).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use norm_kernels::{
    Affine, AffineGrads, Momentum, Nchw, Parallelism, RunningStats, batch_norm_backward_train,
    batch_norm_forward_train, reference,
};
use normlab_benches::{SHAPES, data, print_setup};
use std::hint::black_box;

/// Buffers of one shape.
struct Bufs {
    x: Vec<f32>,
    dy: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    y: Vec<f32>,
    dx: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
    dg: Vec<f32>,
    db: Vec<f32>,
    nbt: u64,
}

impl Bufs {
    fn new(s: Nchw) -> Self {
        Self {
            x: data(s.len(), 1),
            dy: data(s.len(), 2),
            gamma: data(s.c, 3),
            beta: data(s.c, 4),
            y: vec![0.0; s.len()],
            dx: vec![0.0; s.len()],
            mean: vec![0.0; s.c],
            rstd: vec![0.0; s.c],
            rm: vec![0.0; s.c],
            rv: vec![1.0; s.c],
            dg: vec![0.0; s.c],
            db: vec![0.0; s.c],
            nbt: 0,
        }
    }

    fn forward(&mut self, s: Nchw, par: Parallelism) {
        let running = RunningStats {
            mean: &mut self.rm,
            var: &mut self.rv,
            num_batches_tracked: &mut self.nbt,
            momentum: Momentum::Exponential(0.1),
        };
        let affine = Some(Affine {
            gamma: &self.gamma,
            beta: &self.beta,
        });
        batch_norm_forward_train(
            s,
            &self.x,
            affine,
            1e-5,
            Some(running),
            &mut self.y,
            &mut self.mean,
            &mut self.rstd,
            par,
        )
        .unwrap();
    }

    fn backward(&mut self, s: Nchw, par: Parallelism) {
        let grads = AffineGrads {
            dgamma: &mut self.dg,
            dbeta: &mut self.db,
        };
        batch_norm_backward_train(
            s,
            &self.x,
            &self.dy,
            &self.mean,
            &self.rstd,
            Some(&self.gamma),
            &mut self.dx,
            Some(grads),
            par,
        )
        .unwrap();
    }
}

/// The reference takes f64; skipped on the seed shape, where one call takes most of a second.
fn with_reference(s: Nchw) -> bool {
    s.len() <= 4 << 20
}

fn bench(c: &mut Criterion) {
    print_setup();
    for (mode, bytes_per_elem) in [("forward", 8u64), ("forward_backward", 20)] {
        let mut g = c.benchmark_group(format!("batch_norm_train/{mode}"));
        g.sample_size(10);
        for s in SHAPES {
            g.throughput(Throughput::Bytes(bytes_per_elem * s.len() as u64));
            let mut b = Bufs::new(s);
            let backward = mode == "forward_backward";
            if with_reference(s) {
                let (x, dy) = (
                    b.x.iter().map(|&a| a as f64).collect::<Vec<_>>(),
                    b.dy.iter().map(|&a| a as f64).collect::<Vec<_>>(),
                );
                let (gm, bt) = (
                    b.gamma.iter().map(|&a| a as f64).collect::<Vec<_>>(),
                    b.beta.iter().map(|&a| a as f64).collect::<Vec<_>>(),
                );
                g.bench_function(BenchmarkId::new("reference", s), |it| {
                    it.iter(|| {
                        let out =
                            reference::batch_norm_forward_train(s, &x, Some(&gm), Some(&bt), 1e-5);
                        if backward {
                            black_box(reference::batch_norm_backward_train(
                                s,
                                &x,
                                &dy,
                                Some(&gm),
                                1e-5,
                            ));
                        }
                        black_box(out)
                    })
                });
            }
            for (name, par) in [
                ("simd_1t", Parallelism::None),
                ("simd_rayon", Parallelism::Rayon),
            ] {
                g.bench_function(BenchmarkId::new(name, s), |it| {
                    it.iter(|| {
                        b.forward(s, par);
                        if backward {
                            b.backward(s, par);
                        }
                        black_box(&b.y);
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
