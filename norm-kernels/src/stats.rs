//! Numerically stable mean / variance of f32 data, accumulated in f64.
//!
//! Each block of at most [`BLOCK`] elements gets the corrected two-pass algorithm (pass 1: an
//! approximate mean; pass 2, on data still in L1: `Σ(x-m)` and `Σ(x-m)²`), and blocks are merged
//! with Chan et al.'s pairwise update. The whole slice is read from memory once, and no
//! `E[x²] - mean²` cancellation happens in f32, so inputs with a large mean (x + 1000) keep their
//! variance. Blocks are fixed by the data, never by the thread count.

use crate::simd::{self, BLOCK};

/// Count, mean and sum of squared deviations (M2) of a set of values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    /// Number of values.
    pub count: f64,
    /// Their mean.
    pub mean: f64,
    /// `Σ (x - mean)²`.
    pub m2: f64,
}

impl Moments {
    /// Moments of one block (corrected two-pass; call on at most [`BLOCK`] elements).
    #[inline(always)]
    pub fn of_block(x: &[f32]) -> Self {
        if x.is_empty() {
            return Self::default();
        }
        let n = x.len() as f64;
        let m = (simd::sum(x) / n) as f32;
        let (s1, s2) = simd::sum_dev(x, m);
        Self {
            count: n,
            mean: m as f64 + s1 / n,
            m2: (s2 - s1 * s1 / n).max(0.0),
        }
    }

    /// Moments of a slice of any length, block by block.
    #[inline]
    pub fn of_slice(x: &[f32]) -> Self {
        x.chunks(BLOCK)
            .fold(Self::default(), |acc, b| acc.merge(Self::of_block(b)))
    }

    /// Chan's parallel update: the moments of the union of two disjoint sets.
    #[inline]
    pub fn merge(self, o: Self) -> Self {
        if self.count == 0.0 {
            return o;
        }
        if o.count == 0.0 {
            return self;
        }
        let count = self.count + o.count;
        let delta = o.mean - self.mean;
        Self {
            count,
            mean: self.mean + delta * (o.count / count),
            m2: self.m2 + o.m2 + delta * delta * (self.count * o.count / count),
        }
    }

    /// Biased (population) variance, the one every norm divides by.
    #[inline]
    pub fn var_biased(&self) -> f64 {
        if self.count > 0.0 {
            self.m2 / self.count
        } else {
            0.0
        }
    }

    /// Unbiased variance (`m2 / (count - 1)`), what PyTorch's running statistics record.
    #[inline]
    pub fn var_unbiased(&self) -> f64 {
        if self.count > 1.0 {
            self.m2 / (self.count - 1.0)
        } else {
            f64::NAN
        }
    }

    /// `1 / sqrt(var + eps)`, in scalar f64 (never `wide`'s approximate `recip_sqrt`).
    #[inline]
    pub fn rstd(&self, eps: f32) -> f32 {
        (1.0 / (self.var_biased() + eps as f64).sqrt()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(x: &[f32]) -> (f64, f64) {
        let n = x.len() as f64;
        let m = x.iter().map(|&a| a as f64).sum::<f64>() / n;
        (m, x.iter().map(|&a| (a as f64 - m).powi(2)).sum::<f64>())
    }

    #[test]
    fn large_mean_keeps_variance() {
        for &n in &[1usize, 7, 17, 4095, 4096, 4097, 20_000] {
            let x: Vec<f32> = (0..n)
                .map(|i| 1000.0 + ((i * 7919 % 211) as f32 - 105.0) * 0.01)
                .collect();
            let got = Moments::of_slice(&x);
            let (m, m2) = exact(&x);
            assert!((got.mean - m).abs() < 1e-9 * m.abs().max(1.0), "n={n}");
            assert!(
                (got.m2 - m2).abs() <= 1e-5 * m2.max(1e-3),
                "n={n}: {} vs {m2}",
                got.m2
            );
        }
    }

    #[test]
    fn merge_is_union() {
        let x: Vec<f32> = (0..100).map(|i| (i as f32).sin() * 3.0 + 5.0).collect();
        let a = Moments::of_block(&x[..37]).merge(Moments::of_block(&x[37..]));
        let b = Moments::of_block(&x);
        assert!((a.mean - b.mean).abs() < 1e-6 && (a.m2 - b.m2).abs() < 1e-4);
        assert_eq!(Moments::default().merge(b), b);
    }
}
