//! InstanceNorm2d, train mode (PyTorch's default `track_running_stats = False`): forward, and
//! forward + backward, on the kernel shapes. Reference twin (f64, one thread) vs SIMD on the
//! calling thread vs SIMD + rayon (see `normlab_benches::bench_shape` for the groups and the
//! throughput).

use criterion::{Criterion, criterion_group, criterion_main};
use norm_kernels::{
    Affine, AffineGrads, Grads, InstanceNorm, Momentum, Output, Parallelism, Saved, Stats,
    StatsMut, instance_norm_backward_train, instance_norm_forward_train, reference,
};
use normlab_benches::{Buffers, SHAPES, bench_shape, print_setup};
use std::hint::black_box;

/// Affine, without running statistics (PyTorch's default `track_running_stats = False`).
const NORM: InstanceNorm = InstanceNorm {
    eps: 1e-5,
    momentum: Momentum::Exponential(0.1),
    affine: true,
    track_running_stats: false,
};

fn forward(b: &mut Buffers, par: Parallelism) {
    let affine = Some(Affine {
        gamma: &b.gamma,
        beta: &b.beta,
    });
    let out = Output {
        y: &mut b.y,
        stats: StatsMut {
            mean: &mut b.mean,
            rstd: &mut b.rstd,
        },
    };
    instance_norm_forward_train(&NORM, b.shape, &b.x, affine, None, out, par).unwrap();
}

fn backward(b: &mut Buffers, par: Parallelism) {
    let grads = Grads {
        dx: &mut b.dx,
        affine: Some(AffineGrads {
            dgamma: &mut b.dgamma,
            dbeta: &mut b.dbeta,
        }),
    };
    let saved = Saved {
        x: &b.x,
        stats: Stats {
            mean: &b.mean,
            rstd: &b.rstd,
        },
    };
    instance_norm_backward_train(&NORM, b.shape, saved, &b.dy, Some(&b.gamma), grads, par).unwrap();
}

fn bench(c: &mut Criterion) {
    print_setup();
    for s in SHAPES {
        let mut b = Buffers::new(s, s.c, s.n * s.c);
        let [x, dy, g, bt] = b.inputs64();
        let reference = |with_backward| {
            let out = reference::instance_norm_forward_train(s, &x, Some(&g), Some(&bt), 1e-5);
            if with_backward {
                black_box(reference::instance_norm_backward_train(
                    s,
                    &x,
                    &dy,
                    Some(&g),
                    1e-5,
                ));
            }
            black_box(out);
        };
        bench_shape(
            c,
            "instance_norm_train",
            s,
            reference,
            &mut b,
            forward,
            backward,
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
