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
