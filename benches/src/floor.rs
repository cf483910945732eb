//! The memory floor under every forward kernel: a streaming `y = a·x + b` (read `x`, write `y`:
//! the 8 bytes/element a forward must move, with nothing else to compute), shared by the
//! `bandwidth` bench and the `peer` example; and the compute floor under the training steps, the
//! cores' multiply-add throughput ([`fma_chains`]).

use rayon::prelude::*;

/// Elements per chunk (64 KiB of f32), the kernels' tile size; a rayon task takes at most two
/// chunks, as the grouped kernels' tasks take at most 128 KiB of small groups, so that neither
/// thread is left with a long last run while the other idles.
pub const CHUNK: usize = 16 << 10;

/// `y = a·x + b`, which the compiler vectorises (AVX2 + FMA at this crate's build level).
pub fn axpb(x: &[f32], y: &mut [f32], a: f32, b: f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.mul_add(a, b);
    }
}

/// [`axpb`] on the rayon pool, in tasks of at most two [`CHUNK`]s.
pub fn axpb_rayon(x: &[f32], y: &mut [f32], a: f32, b: f32) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .with_max_len(2)
        .for_each(|(yc, xc)| axpb(xc, yc, a, b));
}

/// [`axpb_rayon`] with streaming (non-temporal) stores, as the kernels write an output larger
/// than ¾ of the last-level cache: a cached store first reads the line it writes, so this floor moves
/// 8 bytes/element where [`axpb_rayon`] moves 12. Off x86-64 AVX it is [`axpb_rayon`].
pub fn axpb_stream_rayon(x: &[f32], y: &mut [f32], a: f32, b: f32) {
    // The head up to the first 32-byte boundary of `y` is written cached; every chunk after it
    // starts aligned (CHUNK is a multiple of 8).
    let head = ((32 - y.as_ptr() as usize % 32) % 32 / 4).min(y.len());
    let (yh, yb) = y.split_at_mut(head);
    let (xh, xb) = x.split_at(head);
    axpb(xh, yh, a, b);
    yb.par_chunks_mut(CHUNK)
        .zip(xb.par_chunks(CHUNK))
        .with_max_len(2)
        .for_each(|(yc, xc)| axpb_stream(xc, yc, a, b));
}

fn axpb_stream(x: &[f32], y: &mut [f32], a: f32, b: f32) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx", target_feature = "fma"))]
    {
        use core::arch::x86_64::*;
        let n = y.len() / 8 * 8;
        // SAFETY: every access is inside `x` / `y` (i + 8 <= n <= len); `y` starts 32-byte
        // aligned (the caller's split) and i is a multiple of 8, as the streaming store needs.
        unsafe {
            let (av, bv) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
            for i in (0..n).step_by(8) {
                let v = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i)), av, bv);
                _mm256_stream_ps(y.as_mut_ptr().add(i), v);
            }
            _mm_sfence();
        }
        axpb(&x[n..], &mut y[n..], a, b);
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx", target_feature = "fma")))]
    axpb(x, y, a, b);
}

/// Independent accumulators per thread in [`fma_chains`]: more than latency × issue width (4 × 2
/// on the x86 cores seen here), so the loop is bound by multiply-add throughput, not latency.
pub const FMA_CHAINS: usize = 12;

/// Multiply-add widths [`fma_chains`] can run here: 8 lanes (AVX2 + FMA at this crate's build
/// level, else portable), and 16 where the CPU has AVX-512F, as the convolutions use.
pub fn fma_widths() -> Vec<usize> {
    let mut w = vec![8];
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if std::arch::is_x86_feature_detected!("avx512f") {
        w.push(16);
    }
    w
}

/// `iters` rounds of [`FMA_CHAINS`] vector multiply-adds `acc = acc·a + b` of `lanes` lanes (one
/// of [`fma_widths`]) on every thread of the rayon pool at once; returns the floating-point
/// operations done (2 per lane per multiply-add), or `None` for a width this CPU lacks. Time it
/// from outside for the cores' FLOP/s: the compute floor a convolution's arithmetic sits on.
pub fn fma_chains(lanes: usize, iters: u64) -> Option<f64> {
    if !fma_widths().contains(&lanes) {
        return None;
    }
    let sums = rayon::broadcast(|_| match lanes {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        // SAFETY: 16 is in `fma_widths` only where the CPU has AVX-512F.
        16 => unsafe { chains16(iters) },
        _ => chains8(iters),
    });
    std::hint::black_box(sums.iter().sum::<f32>());
    Some((sums.len() as u64 * iters * (FMA_CHAINS * lanes * 2) as u64) as f64)
}

fn chains8(iters: u64) -> f32 {
    use wide::f32x8;
    // acc → b / (1 − a) = 1: no overflow, no subnormals, whatever `iters`.
    let (a, b) = (
        std::hint::black_box(f32x8::splat(0.999)),
        std::hint::black_box(f32x8::splat(1e-3)),
    );
    let mut acc = [f32x8::splat(0.0); FMA_CHAINS];
    for _ in 0..iters {
        for v in &mut acc {
            *v = v.mul_add(a, b);
        }
    }
    acc.iter().map(|v| v.reduce_add()).sum()
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[target_feature(enable = "avx512f")]
fn chains16(iters: u64) -> f32 {
    use core::arch::x86_64::*;
    let (a, b) = (
        std::hint::black_box(_mm512_set1_ps(0.999)),
        std::hint::black_box(_mm512_set1_ps(1e-3)),
    );
    let mut acc = [_mm512_setzero_ps(); FMA_CHAINS];
    for _ in 0..iters {
        for v in &mut acc {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_floor_writes_what_the_cached_one_does() {
        for (start, len) in [(0, 0), (1, 7), (3, 40_001), (5, 3 * CHUNK + 13)] {
            let x: Vec<f32> = (0..start + len).map(|i| i as f32 * 0.25 - 3.0).collect();
            let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            axpb_rayon(&x[start..], &mut a[start..], 1.5, 0.25);
            axpb_stream_rayon(&x[start..], &mut b[start..], 1.5, 0.25);
            assert_eq!(a, b, "start {start} len {len}");
        }
    }

    #[test]
    fn fma_chains_count_what_they_do() {
        let threads = rayon::current_num_threads() as f64;
        for lanes in fma_widths() {
            let flops = fma_chains(lanes, 1000).unwrap();
            assert_eq!(flops, threads * 1000.0 * (FMA_CHAINS * lanes * 2) as f64);
        }
        assert_eq!(fma_chains(5, 10), None);
    }
}
