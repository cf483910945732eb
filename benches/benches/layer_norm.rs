//! LayerNorm over `[C, H, W]` (per-element affine, eps = 1e-8 as in the seed) forward and
//! forward+backward: f64 reference twin vs SIMD on one thread vs SIMD + rayon, over
//! `normlab_benches::shapes()` (the fixed shapes and this machine's DRAM-resident one; see
//! `normlab_benches::bench_shape` for the groups and the throughput). The calls are
//! `normlab_benches::kernels::Case`'s.
//!
//! `cargo bench -p normlab-benches --bench layer_norm -- --warm-up-time 1 --measurement-time 3`

use criterion::{Criterion, criterion_group, criterion_main};
use norm_kernels::reference;
use normlab_benches::kernels::{Case, LAYER_EPS, Norm};
use normlab_benches::{bench_shape, print_setup, shapes};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    print_setup();
    for shape in shapes() {
        let mut case = Case::new(Norm::Layer, shape);
        let [x, dy, g, bt] = case.b.inputs64();
        let eps = LAYER_EPS as f64;
        let reference = |with_backward| {
            let f = reference::layer_norm_forward(shape, &x, Some((&g, &bt)), eps);
            if with_backward {
                black_box(reference::layer_norm_backward(
                    shape,
                    &x,
                    &dy,
                    &f.mean,
                    &f.rstd,
                    Some(&g),
                ));
            }
            black_box(f);
        };
        let name = Norm::Layer.bench_name();
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
