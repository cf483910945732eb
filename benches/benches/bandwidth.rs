//! The memory floor under every forward kernel, measured on the machine at hand: a streaming
//! `y = a·x + b` over the buffers of each shape in `normlab_benches::shapes()` (read `x`, write
//! `y`: the 8 bytes/element a forward must move, with nothing else to compute), on one thread
//! and on the rayon pool in tasks of at most 128 KiB. A norm forward cannot beat this figure;
//! it is the yardstick for "at the bandwidth bound" in `docs/performance.md`, next to the
//! 22 GB/s DRAM figure the kernels issue gives, because a working set that fits in the
//! last-level cache moves faster than DRAM.
//!
//! `cargo bench -p normlab-benches --bench bandwidth -- --warm-up-time 1 --measurement-time 3`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use normlab_benches::floor::{axpb, axpb_rayon};
use normlab_benches::{Lines, data, print_setup, shapes};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    print_setup();
    for shape in shapes() {
        let x = Lines::of(&data(shape.len(), 1));
        let mut y = Lines::zeros(shape.len());
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
                axpb_rayon(&x, &mut y, black_box(1.5), black_box(0.25));
                black_box(&y);
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
