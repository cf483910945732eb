//! GroupNorm (G = 32) forward and forward+backward: f64 reference twin vs SIMD on one thread vs
//! SIMD + rayon, over `normlab_benches::shapes()` (the fixed shapes and this machine's
//! DRAM-resident one; see `normlab_benches::bench_shape` for the groups and the throughput).
//! The calls are `normlab_benches::kernels::Case`'s.
//!
//! `cargo bench -p normlab-benches --bench group_norm -- --warm-up-time 1 --measurement-time 3`

use criterion::{Criterion, criterion_group, criterion_main};
use norm_kernels::reference;
use normlab_benches::kernels::{Case, EPS, GROUPS, Norm};
use normlab_benches::{bench_shape, print_setup, shapes};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    print_setup();
    for shape in shapes() {
        let mut case = Case::new(Norm::Group, shape);
        let [x, dy, g, bt] = case.b.inputs64();
        let reference = |with_backward| {
            let f = reference::group_norm_forward(shape, GROUPS, &x, Some((&g, &bt)), EPS as f64);
            if with_backward {
                black_box(reference::group_norm_backward(
                    shape,
                    GROUPS,
                    &x,
                    &dy,
                    &f.mean,
                    &f.rstd,
                    Some(&g),
                ));
            }
            black_box(f);
        };
        let name = Norm::Group.bench_name();
        bench_shape(
            c,
            name,
            shape,
            reference,
            &mut case,
            Case::forward,
            Case::backward,
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
