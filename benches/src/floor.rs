//! The memory floor under every forward kernel: a streaming `y = a·x + b` (read `x`, write `y`:
//! the 8 bytes/element a forward must move, with nothing else to compute), shared by the
//! `bandwidth` bench and the `peer` example.

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
}
