//! From `u8` images to normalised `f32` NCHW batches, with the standard CIFAR augmentation.

use rand::Rng;

use super::{CHANNELS, Dataset, IMAGE_BYTES, IMAGE_SIZE, PLANE};

/// Per-channel normalisation `x ↦ (x - mean[c]) / std[c]` of pixels `x = byte / 255` in `[0, 1]`,
/// as torchvision's `ToTensor()` followed by `Normalize(mean, std)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalizer {
    /// Mean of each channel (R, G, B) in `[0, 1]` pixel units.
    pub mean: [f32; 3],
    /// Standard deviation of each channel in `[0, 1]` pixel units.
    pub std: [f32; 3],
}

impl Normalizer {
    /// The mean and population standard deviation (divisor `n`) of each channel over every pixel
    /// of every image of `d` (pass the train split), in `[0, 1]` pixel units.
    ///
    /// The sums of bytes and of squared bytes are exact integers, so the variance
    /// `(n Σx² - (Σx)²) / n²` is exact before its rounding to `f32`. An empty data set gives
    /// mean 0 and std 1; a channel with zero variance gets std 1 (never a division by zero).
    pub fn from_dataset(d: &Dataset) -> Self {
        let mut sum = [0u64; CHANNELS];
        let mut sum_sq = [0u64; CHANNELS];
        for img in d.images.chunks_exact(IMAGE_BYTES) {
            for (c, plane) in img.chunks_exact(PLANE).enumerate() {
                let (mut s, mut s2) = (0u64, 0u64);
                for &b in plane {
                    s += u64::from(b);
                    s2 += u64::from(b) * u64::from(b);
                }
                sum[c] += s;
                sum_sq[c] += s2;
            }
        }
        let n = (d.images.len() / IMAGE_BYTES * PLANE) as u128;
        let mut norm = Normalizer {
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        if n == 0 {
            return norm;
        }
        for c in 0..CHANNELS {
            let (s, s2) = (u128::from(sum[c]), u128::from(sum_sq[c]));
            // Exact in integers: n Σx² - (Σx)² >= 0.
            let var_n2 = n * s2 - s * s;
            let mean = s as f64 / n as f64 / 255.0;
            let std = (var_n2 as f64).sqrt() / n as f64 / 255.0;
            norm.mean[c] = mean as f32;
            norm.std[c] = if std > 0.0 { std as f32 } else { 1.0 };
        }
        norm
    }

    /// The normalised value of every byte in channel `c`: `(b as f32 / 255 - mean) / std`,
    /// computed in that order in `f32`.
    pub fn table(&self, c: usize) -> [f32; 256] {
        let mut t = [0.0; 256];
        for (b, v) in t.iter_mut().enumerate() {
            *v = (b as f32 / 255.0 - self.mean[c]) / self.std[c];
        }
        t
    }
}

/// Random augmentation applied by [`fill_batch`], as torchvision's
/// `RandomCrop(32, padding = crop_pad)` followed by `RandomHorizontalFlip()`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// 0: no crop. Otherwise the image is zero padded by `crop_pad` pixels on every side and a
    /// `32 × 32` window is cut at a uniformly random offset in `0..=2 * crop_pad` per axis.
    pub crop_pad: usize,
    /// Flip the (cropped) image left-right with probability 1/2.
    pub flip: bool,
}

impl Augment {
    /// No augmentation (evaluation).
    pub const NONE: Augment = Augment {
        crop_pad: 0,
        flip: false,
    };
    /// The standard CIFAR training augmentation: pad 4, random crop, random flip.
    pub const CIFAR: Augment = Augment {
        crop_pad: 4,
        flip: true,
    };

    /// One image's draws, as [`fill_batch`] makes them: the crop's shifts `(dy, dx)`, each in
    /// `-crop_pad..=crop_pad` (0 without a crop), then the flip.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> (isize, isize, bool) {
        let (dy, dx) = if self.crop_pad > 0 {
            let (p, span) = (self.crop_pad as isize, 2 * self.crop_pad as u32);
            let dy = rng.random_range(0..=span) as isize - p;
            let dx = rng.random_range(0..=span) as isize - p;
            (dy, dx)
        } else {
            (0, 0)
        };
        (dy, dx, self.flip && rng.random_bool(0.5))
    }
}

/// Writes images `indices` of `data` as normalised `f32` NCHW into `out`
/// (`indices.len() * 3072` values: image, channel, row, column) and their labels into `labels`;
/// augmentation draws from `rng`.
///
/// Each output value is `(byte / 255 - mean[c]) / std[c]` ([`Normalizer::table`]). With
/// `augment.crop_pad = p > 0`, output pixel `(y, x)` is source pixel `(y + dy - p, x + dx - p)`,
/// and a source pixel outside the image is a raw 0 (black) before normalisation, i.e.
/// `-mean[c] / std[c]` — the zero padding of torchvision's `RandomCrop(32, padding=p)` applied
/// before `Normalize`. With `augment.flip` and a heads draw, output column `x` reads the cropped
/// column `31 - x`.
///
/// Random draws per image: [`Augment::draw`] (`dy` then `dx`, each `rng.random_range(0..=2p)` on
/// `u32`, when `p > 0`, then `rng.random_bool(0.5)` when `flip` is set). Nothing is drawn for
/// [`Augment::NONE`].
///
/// Panics if `out.len() != indices.len() * IMAGE_BYTES`, `labels.len() != indices.len()`, or an
/// index is out of range.
pub fn fill_batch<R: Rng + ?Sized>(
    data: &Dataset,
    indices: &[usize],
    norm: &Normalizer,
    augment: &Augment,
    rng: &mut R,
    out: &mut [f32],
    labels: &mut [usize],
) {
    assert_eq!(
        out.len(),
        indices.len() * IMAGE_BYTES,
        "fill_batch: out must hold indices.len() * 3072 values"
    );
    assert_eq!(
        labels.len(),
        indices.len(),
        "fill_batch: labels must hold indices.len() values"
    );
    let tables = [norm.table(0), norm.table(1), norm.table(2)];
    for ((&i, dst), label) in indices
        .iter()
        .zip(out.chunks_exact_mut(IMAGE_BYTES))
        .zip(labels.iter_mut())
    {
        let src = data.image(i);
        *label = usize::from(data.labels[i]);
        let (dy, dx, flip) = augment.draw(rng);
        if dy == 0 && dx == 0 && !flip {
            for (c, (d, s)) in dst
                .chunks_exact_mut(PLANE)
                .zip(src.chunks_exact(PLANE))
                .enumerate()
            {
                let t = &tables[c];
                for (o, &b) in d.iter_mut().zip(s) {
                    *o = t[usize::from(b)];
                }
            }
            continue;
        }
        let n = IMAGE_SIZE as isize;
        for (c, (d, s)) in dst
            .chunks_exact_mut(PLANE)
            .zip(src.chunks_exact(PLANE))
            .enumerate()
        {
            let t = &tables[c];
            for (y, row) in d.chunks_exact_mut(IMAGE_SIZE).enumerate() {
                let sy = y as isize + dy;
                for (x, o) in row.iter_mut().enumerate() {
                    let cx = if flip { n - 1 - x as isize } else { x as isize };
                    let sx = cx + dx;
                    let b = if (0..n).contains(&sy) && (0..n).contains(&sx) {
                        s[(sy * n + sx) as usize]
                    } else {
                        0
                    };
                    *o = t[usize::from(b)];
                }
            }
        }
    }
}
