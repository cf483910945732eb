//! InstanceNorm2d, train mode (PyTorch's default `track_running_stats = False`): forward, and
//! forward + backward, on the kernel shapes. Reference twin (f64, one thread) vs SIMD on the
//! calling thread vs SIMD + rayon (see `normlab_benches::bench_shape` for the groups and the
//! throughput).

use criterion::{Criterion, criterion_group, criterion_main};
use norm_kernels::{
    Affine, AffineGrads, Parallelism, instance_norm_backward_train, instance_norm_forward_train,
    reference,
};
use normlab_benches::{Buffers, SHAPES, bench_shape, print_setup};
use std::hint::black_box;

fn forward(b: &mut Buffers, par: Parallelism) {
    let affine = Some(Affine {
        gamma: &b.gamma,
        beta: &b.beta,
    });
    instance_norm_forward_train(
        b.shape,
        &b.x,
        affine,
        1e-5,
        None,
        &mut b.y,
        &mut b.mean,
        &mut b.rstd,
        par,
    )
    .unwrap();
}

fn backward(b: &mut Buffers, par: Parallelism) {
    let grads = AffineGrads {
        dgamma: &mut b.dgamma,
        dbeta: &mut b.dbeta,
    };
    instance_norm_backward_train(
        b.shape,
        &b.x,
        &b.dy,
        &b.mean,
        &b.rstd,
        Some(&b.gamma),
        &mut b.dx,
        Some(grads),
        par,
    )
    .unwrap();
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
