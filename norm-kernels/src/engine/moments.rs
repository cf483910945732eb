//! Numerically stable mean / variance of f32 data, accumulated in f64.
//!
//! Each block of at most [`BLOCK`] elements gets the corrected two-pass algorithm (pass 1: an
//! approximate mean; pass 2, on data still in L1: `Σ(x-m)` and `Σ(x-m)²`), and blocks are merged
//! with Chan et al.'s pairwise update, tile by tile ([`TILE`]). The whole slice is read from
//! memory once, and no `E[x²] - mean²` cancellation happens in f32, so inputs with a large mean
//! (x + 1000) keep their variance. A block whose f32 sums overflow (|x| beyond about 1e19) is
//! summed again in f64, so any finite input has finite moments. Blocks and tiles are fixed by
//! the data, never by the thread count.

use rayon::prelude::*;

use crate::simd::{self, Center};
use crate::tuning::{BLOCK, TILE};

/// Count, mean and sum of squared deviations (M2) of a set of values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Moments {
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
        if !(m.is_finite() && s1.is_finite() && s2.is_finite()) {
            return Self::of_block_f64(x);
        }
        Self {
            count: n,
            mean: m as f64 + s1 / n,
            m2: (s2 - s1 * s1 / n).max(0.0),
        }
    }

    /// [`Self::of_block`] in scalar f64: for blocks of huge values, whose f32 sums overflow.
    #[cold]
    fn of_block_f64(x: &[f32]) -> Self {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let m2 = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
        Self { count: n, mean, m2 }
    }

    /// Moments of a plane or group of any length: [`Self::of_slice`] per [`TILE`], merged in
    /// tile order; the tiles are spread over the pool if `nested`.
    pub fn tiled(x: &[f32], nested: bool) -> Self {
        if nested && x.len() > TILE {
            let tiles: Vec<Moments> = x.par_chunks(TILE).map(Moments::of_slice).collect();
            tiles.into_iter().fold(Moments::default(), Moments::merge)
        } else {
            // The same merges in the same order, without a vector.
            x.chunks(TILE)
                .map(Moments::of_slice)
                .fold(Moments::default(), Moments::merge)
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

    /// `1 / sqrt(var + eps)` of the biased variance.
    #[inline]
    pub fn rstd(&self, eps: f32) -> f64 {
        rstd_of(self.var_biased(), eps)
    }

    /// How the output pass centres `x`: on the mean rounded to f32 (the pivot, whose rounding
    /// [`fold_affine`] folds into the shift), halving first when `x - mean` could overflow f32
    /// (a spread beyond `f32::MAX / 2`: every `|x - mean|` is at most `sqrt(m2)`).
    #[inline]
    pub fn center(&self) -> Center {
        Center::new(self.mean as f32, self.m2.sqrt() >= f32::MAX as f64 / 2.0)
    }
}

/// `1 / sqrt(var + eps)`, in scalar f64 (never `wide`'s approximate `recip_sqrt`).
#[inline]
pub(crate) fn rstd_of(var: f64, eps: f32) -> f64 {
    1.0 / (var + eps as f64).sqrt()
}

/// The `(a, b)` of `y = (x - pivot)·a + b` that normalises with `(mean, rstd)` and applies
/// `(g, beta)`; the difference between `pivot` (the f32 mean) and the exact mean is folded into
/// `b`.
#[inline]
pub(crate) fn fold_affine(pivot: f32, mean: f64, rstd: f64, g: f64, beta: f64) -> (f32, f32) {
    let a = rstd * g;
    (a as f32, (beta + (pivot as f64 - mean) * a) as f32)
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
    fn huge_values_have_finite_moments() {
        let big = f32::MAX;
        for &n in &[3usize, 40, 5000] {
            let x: Vec<f32> = (0..n)
                .map(|i| if i % 2 == 0 { big } else { -big / 2.0 })
                .collect();
            let got = Moments::of_slice(&x);
            let (m, m2) = exact(&x);
            assert!(got.mean.is_finite() && got.m2.is_finite(), "n={n}");
            assert!((got.mean - m).abs() <= 1e-9 * m.abs(), "n={n}");
            assert!((got.m2 - m2).abs() <= 1e-9 * m2, "n={n}");
            assert_eq!(got.center().s, 0.5);
        }
        assert_eq!(Moments::of_slice(&[1.0, 3.0]).center(), Center::at(2.0));
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
