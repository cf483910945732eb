//! BatchNorm2d, train mode (running statistics, momentum 0.1): forward, and forward + backward,
//! on the kernel shapes. Reference twin (f64, one thread) vs SIMD on the calling thread vs
//! SIMD + rayon (see `normlab_benches::bench_shape` for the groups and the throughput).

use criterion::{Criterion, criterion_group, criterion_main};
use norm_kernels::{
    Affine, AffineGrads, BatchNorm, Grads, Momentum, Output, Parallelism, RunningStats, Saved,
    Stats, StatsMut, batch_norm_backward_train, batch_norm_forward_train, reference,
};
use normlab_benches::{Buffers, SHAPES, bench_shape, print_setup};
use std::hint::black_box;

/// The buffers of one call and the running statistics.
struct Bufs {
    b: Buffers,
    rm: Vec<f32>,
    rv: Vec<f32>,
    nbt: u64,
}

/// PyTorch's defaults: eps 1e-5, momentum 0.1, affine, running statistics.
const NORM: BatchNorm = BatchNorm {
    eps: 1e-5,
    momentum: Momentum::Exponential(0.1),
    affine: true,
    track_running_stats: true,
};

fn forward(bufs: &mut Bufs, par: Parallelism) {
    let b = &mut bufs.b;
    let running = RunningStats {
        mean: &mut bufs.rm,
        var: &mut bufs.rv,
        num_batches_tracked: &mut bufs.nbt,
    };
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
    batch_norm_forward_train(&NORM, b.shape, &b.x, affine, Some(running), out, par).unwrap();
}

fn backward(bufs: &mut Bufs, par: Parallelism) {
    let b = &mut bufs.b;
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
    batch_norm_backward_train(&NORM, b.shape, saved, &b.dy, Some(&b.gamma), grads, par).unwrap();
}

fn bench(c: &mut Criterion) {
    print_setup();
    for s in SHAPES {
        let mut bufs = Bufs {
            b: Buffers::new(s, s.c, s.c),
            rm: vec![0.0; s.c],
            rv: vec![1.0; s.c],
            nbt: 0,
        };
        let [x, dy, g, bt] = bufs.b.inputs64();
        let reference = |with_backward| {
            let out = reference::batch_norm_forward_train(s, &x, Some(&g), Some(&bt), 1e-5);
            if with_backward {
                black_box(reference::batch_norm_backward_train(
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
            "batch_norm_train",
            s,
            reference,
            &mut bufs,
            forward,
            backward,
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
