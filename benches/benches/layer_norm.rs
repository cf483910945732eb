//! LayerNorm over `[C, H, W]` (per-element affine, eps = 1e-8 as in the seed) forward and
//! forward+backward: f64 reference twin vs SIMD on one thread vs SIMD + rayon, over the shapes
//! of `normlab_benches::SHAPES` (see `normlab_benches::bench_shape` for the groups and the
//! throughput).
//!
//! `cargo bench -p normlab-benches --bench layer_norm -- --warm-up-time 1 --measurement-time 3`

use criterion::{Criterion, criterion_group, criterion_main};
use norm_kernels::{
    Affine, AffineGrads, Grads, LayerNorm, Output, Parallelism, Saved, Stats, StatsMut,
    layer_norm_backward, layer_norm_forward, reference,
};
use normlab_benches::{Buffers, SHAPES, bench_shape, print_setup};
use std::hint::black_box;

const EPS: f32 = 1e-8;
const NORM: LayerNorm = LayerNorm {
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
    layer_norm_forward(&NORM, b.shape, &b.x, affine, out, par).unwrap();
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
    layer_norm_backward(&NORM, b.shape, saved, &b.dy, Some(&b.gamma), grads, par).unwrap();
}

fn bench(c: &mut Criterion) {
    print_setup();
    for shape in SHAPES {
        let mut b = Buffers::new(shape, shape.chw(), shape.n);
        b.gamma.iter_mut().for_each(|g| *g = 1.0 + 0.25 * *g);
        let [x, dy, g, bt] = b.inputs64();
        let reference = |with_backward| {
            let f = reference::layer_norm_forward(shape, &x, Some((&g, &bt)), EPS as f64);
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
        bench_shape(c, "layer_norm", shape, reference, &mut b, forward, backward);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
