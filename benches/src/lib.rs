//! Shared set-up for the criterion benches in `benches/`: the shapes of the kernels issue,
//! deterministic inputs, the buffers of one kernel call and the registration of its variants.
//! Run with `cargo bench -p normlab-benches`.

pub mod floor;
pub mod kernels;
pub mod machine;

use criterion::{BenchmarkId, Criterion, Throughput};
use norm_kernels::{Nchw, Parallelism};
use std::hint::black_box;

/// The fixed shapes every kernel bench runs: the seed's tensor, a batch-2 and a batch-32 CIFAR
/// block.
pub const SHAPES: [Nchw; 3] = [
    Nchw::new(8, 64, 120, 120),
    Nchw::new(2, 64, 32, 32),
    Nchw::new(32, 64, 32, 32),
];

/// [`SHAPES`] and the DRAM-resident shape of this machine ([`machine::dram_shape`]: the seed's
/// C, H, W with a batch whose forward working set is ≥ 4× the last-level cache detected at run
/// time), so both regimes are measured on any machine.
pub fn shapes() -> Vec<Nchw> {
    let mut v = SHAPES.to_vec();
    v.push(machine::dram_shape());
    v
}

/// The f64 reference is skipped above this many elements (one call takes most of a second).
pub const REFERENCE_MAX: usize = 4 << 20;

/// Deterministic pseudo-random data in roughly [-2, 2) (xorshift; no `rand` needed).
pub fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// Prints the SIMD level and thread count once, so every bench log says what it measured.
pub fn print_setup() {
    eprintln!(
        "norm-kernels SIMD level: {}; rayon threads: {}; caches: {}; DRAM-resident shape: {}",
        norm_kernels::simd_level(),
        rayon_threads(),
        machine::describe_caches(),
        machine::dram_shape()
    );
}

/// The size of rayon's global pool (`RAYON_NUM_THREADS`, else all cores).
fn rayon_threads() -> usize {
    rayon::current_num_threads()
}

/// `f32` values that start on a 64-byte boundary, as PyTorch's CPU allocator aligns its
/// tensors. Where a buffer starts moves the SIMD loops by up to about 10 % (a vector that
/// straddles two cache lines costs two; docs/performance.md, "Alignment"), and a `Vec` starts
/// wherever the allocator's history puts it, so every timed buffer is one of these.
pub struct Lines {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl Lines {
    /// A copy of `v`, starting on a cache line.
    pub fn of(v: &[f32]) -> Lines {
        let mut l = Lines::zeros(v.len());
        l.copy_from_slice(v);
        l
    }

    /// `len` zeros, starting on a cache line.
    pub fn zeros(len: usize) -> Lines {
        let buf = vec![0.0f32; len + 15];
        let start = (64 - buf.as_ptr() as usize % 64) % 64 / 4;
        Lines { buf, start, len }
    }
}

impl std::ops::Deref for Lines {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// The buffers of one forward + backward call with affine parameters, each on a cache line.
pub struct Buffers {
    pub shape: Nchw,
    pub x: Lines,
    pub dy: Lines,
    pub gamma: Lines,
    pub beta: Lines,
    pub y: Lines,
    pub mean: Lines,
    pub rstd: Lines,
    pub dx: Lines,
    pub dgamma: Lines,
    pub dbeta: Lines,
}

impl Buffers {
    /// x = `data(len, 1)`, dy = `data(len, 2)`, gamma = `data(params, 3)`, beta =
    /// `data(params, 4)`; `stats` entries of mean and rstd; the outputs zero.
    pub fn new(shape: Nchw, params: usize, stats: usize) -> Self {
        let len = shape.len();
        Self {
            shape,
            x: Lines::of(&data(len, 1)),
            dy: Lines::of(&data(len, 2)),
            gamma: Lines::of(&data(params, 3)),
            beta: Lines::of(&data(params, 4)),
            y: Lines::zeros(len),
            mean: Lines::zeros(stats),
            rstd: Lines::zeros(stats),
            dx: Lines::zeros(len),
            dgamma: Lines::zeros(params),
            dbeta: Lines::zeros(params),
        }
    }

    /// x, dy, gamma and beta in f64, for the reference twins.
    pub fn inputs64(&self) -> [Vec<f64>; 4] {
        [&self.x, &self.dy, &self.gamma, &self.beta].map(|v| f64s(v))
    }
}

/// Registers one kernel's benches on `shape`: groups `{name}/forward/{shape}` and
/// `{name}/forward_backward/{shape}`, with the minimum memory traffic as throughput (8
/// bytes/element: read x, write y; 20 with the backward: + read x, dy, write dx), each with
/// `reference_f64` (`reference(backward)`, the f64 twin on one thread; only up to
/// [`REFERENCE_MAX`] elements), `simd_1t` and `simd_rayon` (`forward(bufs, par)`, then
/// `backward(bufs, par)` in the second group).
pub fn bench_shape<S>(
    c: &mut Criterion,
    name: &str,
    shape: Nchw,
    reference: impl Fn(bool),
    bufs: &mut S,
    forward: fn(&mut S, Parallelism),
    backward: fn(&mut S, Parallelism),
) {
    for (mode, bytes_per_elem, with_backward) in
        [("forward", 8u64, false), ("forward_backward", 20, true)]
    {
        let mut group = c.benchmark_group(format!("{name}/{mode}/{shape}"));
        group
            .sample_size(10)
            .throughput(Throughput::Bytes(bytes_per_elem * shape.len() as u64));
        if shape.len() <= REFERENCE_MAX {
            group.bench_function(BenchmarkId::from_parameter("reference_f64"), |it| {
                it.iter(|| reference(with_backward))
            });
        }
        for (id, par) in [
            ("simd_1t", Parallelism::None),
            ("simd_rayon", Parallelism::Rayon),
        ] {
            group.bench_function(BenchmarkId::from_parameter(id), |it| {
                it.iter(|| {
                    forward(bufs, black_box(par));
                    if with_backward {
                        backward(bufs, black_box(par));
                    }
                    black_box(&*bufs);
                })
            });
        }
        group.finish();
    }
}
