//! The memory floor under every forward kernel, measured on the machine at hand: a streaming
//! `y = a·x + b` over the buffers of each shape in `normlab_benches::SHAPES` (read `x`, write
//! `y`: the 8 bytes/element a forward must move, with nothing else to compute), on one thread
//! and on the rayon pool in tasks of at most 128 KiB. A norm forward cannot beat this figure;
//! it is the yardstick for "at the bandwidth bound" in `docs/performance.md`, next to the
//! 22 GB/s DRAM figure the kernels issue gives, because a working set that fits in the
//! last-level cache moves faster than DRAM.
//!
//! `cargo bench -p normlab-benches --bench bandwidth -- --warm-up-time 1 --measurement-time 3`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use normlab_benches::{SHAPES, data, print_setup};
use rayon::prelude::*;
use std::hint::black_box;

/// Elements per chunk (64 KiB of f32), the kernels' tile size; a rayon task takes at most two
/// chunks, as the grouped kernels' tasks take at most 128 KiB of small groups, so that neither
/// thread is left with a long last run while the other idles.
const CHUNK: usize = 16 << 10;

/// `y = a·x + b`, which the compiler vectorises (AVX2 + FMA at this crate's build level).
fn axpb(x: &[f32], y: &mut [f32], a: f32, b: f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.mul_add(a, b);
    }
}

fn bench(c: &mut Criterion) {
    print_setup();
    for shape in SHAPES {
        let x = data(shape.len(), 1);
        let mut y = vec![0.0f32; shape.len()];
        let mut group = c.benchmark_group(format!("bandwidth/axpb/{shape}"));
        group
            .sample_size(10)
            .throughput(Throughput::Bytes(8 * shape.len() as u64));
        group.bench_function(BenchmarkId::from_parameter("1t"), |it| {
            it.iter(|| {
                axpb(&x, &mut y, black_box(1.5), black_box(0.25));
                black_box(&y);
            })
        });
        group.bench_function(BenchmarkId::from_parameter("rayon"), |it| {
            it.iter(|| {
                y.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK))
                    .with_max_len(2)
                    .for_each(|(yc, xc)| axpb(xc, yc, black_box(1.5), black_box(0.25)));
                black_box(&y);
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
