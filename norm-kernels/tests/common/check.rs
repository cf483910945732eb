//! Helpers every kernel test uses: seeded data, f32-against-f64 comparisons, finite differences,
//! proptest dimensions, rayon pools and snapshot formatting.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `len` values uniform in `[lo, hi)`, drawn from `rng`.
pub fn uniform(len: usize, lo: f32, hi: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// `len` values uniform in `[lo, hi)` from a fresh ChaCha8 stream of `seed`.
pub fn data(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    uniform(len, lo, hi, &mut ChaCha8Rng::seed_from_u64(seed))
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|a| a.to_bits()).collect()
}

/// Asserts `|got - want| <= tol·max(1, |want|)` elementwise.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / w.abs().max(1.0);
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (err {err:e} > {tol:e})"
        );
    }
}

/// Asserts `|got - want| <= tol·max(1, |want|, scale)`: for a per-channel sum of `M` terms of
/// unit size, `scale = sqrt(M)` is its typical magnitude. A sum that happens to cancel to near
/// zero is judged against that scale, not against its own small value (the f32 partial sums
/// carry an absolute error that grows with the terms, not with the result).
pub fn assert_close_sum(what: &str, got: &[f32], want: &[f64], count: usize, tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = (count as f64).sqrt();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / w.abs().max(1.0).max(scale);
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (err {err:e} > {tol:e})"
        );
    }
}

/// Asserts `|got - want| <= tol[i]` elementwise (absolute, one tolerance per element), naming
/// the first offender.
pub fn assert_within(what: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        assert!(
            err <= tol[i],
            "{what}[{i}]: got {} want {} (err {err:e}, tol {:e})",
            got[i],
            want[i],
            tol[i]
        );
    }
}

/// Max over i of `|got - want| / max(1, |want|)`.
pub fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b).abs() / b.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// Asserts `|analytic - numeric| < tol·max(1, |numeric|)` elementwise.
pub fn assert_close64(what: &str, analytic: &[f64], numeric: &[f64], tol: f64) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: length");
    for (i, (&g, &w)) in analytic.iter().zip(numeric).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(
            err < tol,
            "{what}[{i}]: analytic {g}, numeric {w} (err {err:e})"
        );
    }
}

/// `Σ y·dy`: the loss whose gradient a backward returns when given `dy`.
pub fn loss(y: &[f64], dy: &[f64]) -> f64 {
    y.iter().zip(dy).map(|(a, b)| a * b).sum()
}

/// Central differences of `f` at `v` with step `h`, one coordinate at a time.
pub fn numeric_grad(v: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    (0..v.len())
        .map(|i| {
            let (mut p, mut m) = (v.to_vec(), v.to_vec());
            p[i] += h;
            m[i] -= h;
            (f(&p) - f(&m)) / (2.0 * h)
        })
        .collect()
}

/// The odd sizes the proptests draw every dimension from.
pub const DIMS: [usize; 6] = [1, 2, 3, 7, 9, 17];

pub fn dim() -> impl Strategy<Value = usize> {
    prop::sample::select(DIMS.to_vec())
}

/// Runs `f` inside a fresh rayon pool of `threads` threads.
pub fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// `v` with 4 decimals, space-separated (`-0.0000` prints as `0.0000`).
pub fn fmt(v: &[f32]) -> String {
    v.iter()
        .map(|a| format!("{:.4}", a + 0.0))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `name: [a, b, ...]`, rounded to 4 decimals, printing `0.0000` for a rounded zero of either
/// sign.
pub fn render(name: &str, v: &[f32]) -> String {
    let cells: Vec<String> = v
        .iter()
        .map(|&a| {
            let r = (a as f64 * 1e4).round() / 1e4;
            format!("{:.4}", if r == 0.0 { 0.0 } else { r })
        })
        .collect();
    format!("{name}: [{}]\n", cells.join(", "))
}
