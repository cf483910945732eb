//! BatchNorm2d, train mode (running statistics, momentum 0.1): forward, and forward + backward,
//! over `normlab_benches::shapes()` (the fixed shapes and this machine's DRAM-resident one).
//! Reference twin (f64, one thread) vs SIMD on the calling thread vs SIMD + rayon (see
//! `normlab_benches::bench_shape` for the groups and the throughput). The calls are
//! `normlab_benches::kernels::Case`'s.

use criterion::{Criterion, criterion_group, criterion_main};
use norm_kernels::reference;
use normlab_benches::kernels::{Case, EPS, Norm};
use normlab_benches::{bench_shape, print_setup, shapes};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    print_setup();
    for s in shapes() {
        let mut case = Case::new(Norm::Batch, s);
        let [x, dy, g, bt] = case.b.inputs64();
        let eps = EPS as f64;
        let reference = |with_backward| {
            let out = reference::batch_norm_forward_train(s, &x, Some(&g), Some(&bt), eps);
            if with_backward {
                black_box(reference::batch_norm_backward_train(
                    s,
                    &x,
                    &dy,
                    Some(&g),
                    eps,
                ));
            }
            black_box(out);
        };
        let name = Norm::Batch.bench_name();
        bench_shape(
            c,
            name,
            s,
            reference,
            &mut case,
            Case::forward,
            Case::backward,
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
