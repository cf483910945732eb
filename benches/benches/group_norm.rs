//! GroupNorm (G = 32) forward and forward+backward: f64 reference twin vs SIMD on one thread vs
//! SIMD + rayon, over the shapes of `normlab_benches::SHAPES` (see
//! `normlab_benches::bench_shape` for the groups and the throughput).
//!
//! `cargo bench -p normlab-benches --bench group_norm -- --warm-up-time 1 --measurement-time 3`

use criterion::{Criterion, criterion_group, criterion_main};
use norm_kernels::{
    Affine, AffineGrads, Grads, GroupNorm, Output, Parallelism, Saved, Stats, StatsMut,
    group_norm_backward, group_norm_forward, reference,
};
use normlab_benches::{Buffers, SHAPES, bench_shape, print_setup};
use std::hint::black_box;

const GROUPS: usize = 32;
const EPS: f32 = 1e-5;
const NORM: GroupNorm = GroupNorm {
    groups: GROUPS,
    eps: EPS,
    affine: true,
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
    group_norm_forward(&NORM, b.shape, &b.x, affine, out, par).unwrap();
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
    group_norm_backward(&NORM, b.shape, saved, &b.dy, Some(&b.gamma), grads, par).unwrap();
}

fn bench(c: &mut Criterion) {
    print_setup();
    for shape in SHAPES {
        let mut b = Buffers::new(shape, shape.c, shape.n * GROUPS);
        b.gamma.iter_mut().for_each(|g| *g = 1.0 + 0.25 * *g);
        let [x, dy, g, bt] = b.inputs64();
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
        bench_shape(
            c,
            "group_norm_g32",
            shape,
            reference,
            &mut b,
            forward,
            backward,
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
