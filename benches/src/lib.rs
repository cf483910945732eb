//! Shared set-up for the criterion benches in `benches/`: the shapes of the kernels issue and
//! deterministic inputs. Run with `cargo bench -p normlab-benches`.

use norm_kernels::Nchw;

/// The shapes every kernel bench runs: the seed's tensor, a batch-2 and a batch-32 CIFAR block.
pub const SHAPES: [Nchw; 3] =
    [Nchw::new(8, 64, 120, 120), Nchw::new(2, 64, 32, 32), Nchw::new(32, 64, 32, 32)];

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

/// Prints the SIMD level and thread count once, so every bench log says what it measured.
pub fn print_setup() {
    eprintln!(
        "norm-kernels SIMD level: {}; rayon threads: {}",
        norm_kernels::simd_level(),
        rayon_threads()
    );
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
