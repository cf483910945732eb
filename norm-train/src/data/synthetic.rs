//! The synthetic CIFAR-like data set: ten shape/texture classes over cluttered backgrounds.
//!
//! Each image is drawn in `f32` RGB in `[0, 1]` and quantised to `u8`:
//!
//! 1. **Background**: a linear gradient between two random colours in a random direction, three
//!    or four soft translucent blobs of random colour and size, sometimes a faint low-frequency
//!    wave.
//! 2. **Object** (the class): a shape or textured patch ([`Class`]) centred within ±6 px of the
//!    image centre, 5.5–11 px in radius, with random rotation, shear and aspect ratio, a random
//!    colour kept apart from the background colour under it, and a linear shading across it.
//!    Shapes are rendered from signed distance functions with one pixel of analytic
//!    anti-aliasing.
//! 3. **Distractors**: up to three thin strokes (line segments or circular arcs) of random colour,
//!    drawn under or over the object.
//! 4. **Photometry**: contrast and brightness jitter, a per-channel gain (colour cast), Gaussian
//!    pixel noise of random strength.
//!
//! Colours are drawn from the same distribution for every class, so colour alone says nothing of
//! the class. Image `i` of a split has label `i % 10` (exactly balanced classes) and draws
//! everything from `ChaCha8Rng::seed_from_u64(image_seed(seed, split, i))`, so the data are a
//! pure function of `(seed, size)` whatever the number of rayon threads, and the train and test
//! splits come from disjoint streams of the same distribution.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{Dataset, IMAGE_BYTES, IMAGE_SIZE, NUM_CLASSES, PLANE, Split};

/// Default number of synthetic train images.
pub const DEFAULT_TRAIN: usize = 10_000;
/// Default number of synthetic test images.
pub const DEFAULT_TEST: usize = 2_000;

/// Stream tag of the train split in [`image_seed`].
const TRAIN_STREAM: u64 = 0x7472_6169_6e00_0001;
/// Stream tag of the test split in [`image_seed`].
const TEST_STREAM: u64 = 0x7465_7374_0000_0002;

/// Generates the synthetic data set: `train_size` train and `test_size` test images, a pure
/// function of its arguments (see the module docs and `docs/data.md`). Image `i` of either split
/// has label `i % 10`; image `i` is the same whatever the split size.
pub fn synthetic(seed: u64, train_size: usize, test_size: usize) -> Split {
    Split {
        train: generate(seed, TRAIN_STREAM, train_size),
        test: generate(seed, TEST_STREAM, test_size),
    }
}

/// SplitMix64 finaliser: a bijective mix of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The RNG seed of image `index` of the split tagged `stream`.
fn image_seed(seed: u64, stream: u64, index: u64) -> u64 {
    mix64(mix64(mix64(seed) ^ stream) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn generate(seed: u64, stream: u64, n: usize) -> Dataset {
    let mut images = vec![0u8; n * IMAGE_BYTES];
    let labels: Vec<u8> = (0..n).map(|i| (i % NUM_CLASSES) as u8).collect();
    images
        .par_chunks_mut(IMAGE_BYTES)
        .enumerate()
        .for_each(|(i, img)| {
            let mut rng = ChaCha8Rng::seed_from_u64(image_seed(seed, stream, i as u64));
            render(&mut rng, Class::ALL[i % NUM_CLASSES], img);
        });
    Dataset { images, labels }
}

/// The ten classes, in label order (names in [`super::CLASS_NAMES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Filled disc.
    Disc,
    /// Annulus, thickness 30–55 % of its radius.
    Ring,
    /// Filled square, rotated by at most ±20°.
    Square,
    /// Square outline, thickness 30–50 % of its half-side.
    Frame,
    /// Filled equilateral triangle, any rotation.
    Triangle,
    /// Upright cross of two bars (`+`), rotated by at most ±20°.
    Plus,
    /// Diagonal cross (`×`): a plus turned by 45° ± 20°.
    Cross,
    /// Disc or square patch filled with parallel two-colour stripes of any orientation.
    Stripes,
    /// Disc or square patch filled with a two-colour checkerboard of any orientation.
    Checker,
    /// Three to six small discs scattered in a cluster.
    Dots,
}

impl Class {
    pub(crate) const ALL: [Class; NUM_CLASSES] = [
        Class::Disc,
        Class::Ring,
        Class::Square,
        Class::Frame,
        Class::Triangle,
        Class::Plus,
        Class::Cross,
        Class::Stripes,
        Class::Checker,
        Class::Dots,
    ];
}

type Rgb = [f32; 3];

/// An `f32` RGB canvas, planar like the output.
struct Canvas {
    px: [[f32; PLANE]; 3],
}

impl Canvas {
    /// Blends `colour(x, y)` over the canvas with opacity `alpha(x, y)` (skipped where 0).
    fn paint(&mut self, mut f: impl FnMut(f32, f32) -> Option<(f32, Rgb)>) {
        for y in 0..IMAGE_SIZE {
            for x in 0..IMAGE_SIZE {
                if let Some((a, col)) = f(x as f32 + 0.5, y as f32 + 0.5)
                    && a > 0.0
                {
                    let k = y * IMAGE_SIZE + x;
                    for (plane, v) in self.px.iter_mut().zip(col) {
                        plane[k] += a * (v - plane[k]);
                    }
                }
            }
        }
    }

    /// Mean colour inside the disc of radius `r` at `(cx, cy)`.
    fn mean_colour(&self, cx: f32, cy: f32, r: f32) -> Rgb {
        let mut s = [0.0f32; 3];
        let mut n = 0.0f32;
        for y in 0..IMAGE_SIZE {
            for x in 0..IMAGE_SIZE {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                if dx * dx + dy * dy <= r * r {
                    let k = y * IMAGE_SIZE + x;
                    for (sc, plane) in s.iter_mut().zip(&self.px) {
                        *sc += plane[k];
                    }
                    n += 1.0;
                }
            }
        }
        if n == 0.0 {
            return [0.5; 3];
        }
        s.map(|v| v / n)
    }
}

fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

fn random_colour(rng: &mut ChaCha8Rng) -> Rgb {
    [rng.random(), rng.random(), rng.random()]
}

fn dist(a: Rgb, b: Rgb) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// A random colour at RGB distance at least `min` from `from` (the best of a few tries).
fn contrasting_colour(rng: &mut ChaCha8Rng, from: Rgb, min: f32) -> Rgb {
    let mut best = random_colour(rng);
    for _ in 0..16 {
        if dist(best, from) >= min {
            break;
        }
        let c = random_colour(rng);
        if dist(c, from) > dist(best, from) {
            best = c;
        }
    }
    best
}

/// Coverage of a pixel by the region `sd < 0`, `sd` in pixels: a one-pixel linear ramp.
fn coverage(sd: f32) -> f32 {
    (0.5 - sd).clamp(0.0, 1.0)
}

/// Signed distance to the axis-aligned box of half-sizes `(hx, hy)`.
fn sd_box(x: f32, y: f32, hx: f32, hy: f32) -> f32 {
    let (qx, qy) = (x.abs() - hx, y.abs() - hy);
    let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
    outside + qx.max(qy).min(0.0)
}

/// Signed distance to the equilateral triangle of circumradius `r`, pointing up (-y).
fn sd_triangle(x: f32, y: f32, r: f32) -> f32 {
    // Inigo Quilez's exact equilateral-triangle distance, with side 2a = r * sqrt(3).
    let k = 3f32.sqrt();
    let a = r * k / 2.0;
    let mut px = x.abs() - a;
    let mut py = -y + r / 2.0;
    if px + k * py > 0.0 {
        let (nx, ny) = ((px - k * py) / 2.0, (-k * px - py) / 2.0);
        px = nx;
        py = ny;
    }
    px -= px.clamp(-2.0 * a, 0.0);
    -(px * px + py * py).sqrt() * py.signum()
}

/// Distance to the segment from `a` to `b`.
fn dist_segment(x: f32, y: f32, a: (f32, f32), b: (f32, f32)) -> f32 {
    let (bax, bay) = (b.0 - a.0, b.1 - a.1);
    let (pax, pay) = (x - a.0, y - a.1);
    let h = ((pax * bax + pay * bay) / (bax * bax + bay * bay).max(1e-6)).clamp(0.0, 1.0);
    ((pax - bax * h).powi(2) + (pay - bay * h).powi(2)).sqrt()
}

/// Anti-aliased square wave of period `period` pixels at coordinate `u`: 1 on one half, 0 on the
/// other, linear over one pixel at each edge.
fn square_wave(u: f32, period: f32) -> f32 {
    let f = (u / period).rem_euclid(1.0);
    coverage((f - 0.5).abs() * period - 0.25 * period)
}

/// The geometry of the object: pixel offset from its centre → local coordinates.
struct Placement {
    cx: f32,
    cy: f32,
    /// Inverse of the local → pixel linear map.
    inv: [f32; 4],
    /// Pixels per local unit (geometric mean of the map's scales).
    scale: f32,
}

impl Placement {
    fn random(rng: &mut ChaCha8Rng, radius: f32, angle: f32) -> Self {
        let cx = 16.0 + uniform(rng, -6.0, 6.0);
        let cy = 16.0 + uniform(rng, -6.0, 6.0);
        let aspect = uniform(rng, -0.22, 0.22).exp();
        let shear = uniform(rng, -0.25, 0.25);
        let (s, c) = angle.sin_cos();
        // M = R(angle) · [[1, shear], [0, 1]] · diag(radius * aspect, radius / aspect).
        let (sx, sy) = (radius * aspect, radius / aspect);
        let m = [c * sx, (c * shear - s) * sy, s * sx, (s * shear + c) * sy];
        let det = m[0] * m[3] - m[1] * m[2];
        let inv = [m[3] / det, -m[1] / det, -m[2] / det, m[0] / det];
        Placement {
            cx,
            cy,
            inv,
            scale: det.abs().sqrt(),
        }
    }

    fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (
            self.inv[0] * dx + self.inv[1] * dy,
            self.inv[2] * dx + self.inv[3] * dy,
        )
    }
}

/// Draws one image of class `class` into `out` (3072 bytes, R, G, B planes).
fn render(rng: &mut ChaCha8Rng, class: Class, out: &mut [u8]) {
    let mut cv = Canvas {
        px: [[0.0; PLANE]; 3],
    };

    // 1. Background: gradient, blobs, sometimes a faint wave.
    let c0 = random_colour(rng);
    let c1 = random_colour(rng);
    let ga = uniform(rng, 0.0, std::f32::consts::TAU);
    let gstrength = uniform(rng, 0.3, 1.0);
    let (gs, gc) = ga.sin_cos();
    cv.paint(|x, y| {
        let t = (((x - 16.0) * gc + (y - 16.0) * gs) / 32.0 * gstrength + 0.5).clamp(0.0, 1.0);
        Some((1.0, [0, 1, 2].map(|c| c0[c] + t * (c1[c] - c0[c]))))
    });
    for _ in 0..rng.random_range(3..=4) {
        let (bx, by) = (uniform(rng, -4.0, 36.0), uniform(rng, -4.0, 36.0));
        let (rx, ry) = (uniform(rng, 3.0, 12.0), uniform(rng, 3.0, 12.0));
        let col = random_colour(rng);
        let alpha = uniform(rng, 0.2, 0.6);
        let soft = uniform(rng, 1.5, 5.0);
        cv.paint(|x, y| {
            let (u, v) = ((x - bx) / rx, (y - by) / ry);
            let sd = ((u * u + v * v).sqrt() - 1.0) * rx.min(ry);
            Some((alpha * ((0.5 - sd / soft).clamp(0.0, 1.0)), col))
        });
    }
    if rng.random_bool(0.3) {
        let col = random_colour(rng);
        let alpha = uniform(rng, 0.1, 0.3);
        let wa = uniform(rng, 0.0, std::f32::consts::TAU);
        let period = uniform(rng, 10.0, 24.0);
        let phase = uniform(rng, 0.0, std::f32::consts::TAU);
        let (ws, wc) = wa.sin_cos();
        cv.paint(|x, y| {
            let u = x * wc + y * ws;
            let w = 0.5 + 0.5 * (u / period * std::f32::consts::TAU + phase).sin();
            Some((alpha * w, col))
        });
    }

    // 3a. Distractor strokes under the object.
    let n_strokes = rng.random_range(0..=3);
    let strokes: Vec<Stroke> = (0..n_strokes).map(|_| Stroke::random(rng)).collect();
    let under = rng.random_range(0..=n_strokes);
    for s in &strokes[..under] {
        s.draw(&mut cv);
    }

    // 2. The object.
    let radius = uniform(rng, 5.5, 11.0);
    let small_angle = uniform(rng, -20f32, 20.0).to_radians();
    let any_angle = uniform(rng, 0.0, std::f32::consts::TAU);
    let angle = match class {
        Class::Cross => small_angle + std::f32::consts::FRAC_PI_4,
        Class::Triangle | Class::Stripes | Class::Checker | Class::Dots => any_angle,
        _ => small_angle,
    };
    let fr = Placement::random(rng, radius, angle);
    let under_colour = cv.mean_colour(fr.cx, fr.cy, radius);
    let fg = contrasting_colour(rng, under_colour, 0.45);
    // Linear shading across the object: ±(0..20) % brightness.
    let sh_a = uniform(rng, 0.0, std::f32::consts::TAU);
    let sh_k = uniform(rng, 0.0, 0.2) / radius;
    let (shs, shc) = sh_a.sin_cos();
    let shade = |x: f32, y: f32, col: Rgb| -> Rgb {
        let f = 1.0 + sh_k * ((x - fr.cx) * shc + (y - fr.cy) * shs);
        col.map(|v| (v * f).clamp(0.0, 1.0))
    };
    match class {
        Class::Disc
        | Class::Ring
        | Class::Square
        | Class::Frame
        | Class::Triangle
        | Class::Plus
        | Class::Cross => {
            let ring_w = uniform(rng, 0.3, 0.55);
            let half = 0.82; // half-side of squares: area close to the unit disc's
            let frame_w = uniform(rng, 0.3, 0.5) * half;
            let arm = uniform(rng, 0.2, 0.34);
            let sd_local = |u: f32, v: f32| -> f32 {
                match class {
                    Class::Disc => (u * u + v * v).sqrt() - 1.0,
                    Class::Ring => {
                        ((u * u + v * v).sqrt() - (1.0 - ring_w / 2.0)).abs() - ring_w / 2.0
                    }
                    Class::Square => sd_box(u, v, half, half),
                    Class::Frame => {
                        sd_box(u, v, half - frame_w / 2.0, half - frame_w / 2.0).abs()
                            - frame_w / 2.0
                    }
                    Class::Triangle => sd_triangle(u, v, 1.15),
                    _ => sd_box(u, v, 1.0, arm).min(sd_box(u, v, arm, 1.0)),
                }
            };
            cv.paint(|x, y| {
                let (u, v) = fr.local(x, y);
                let a = coverage(sd_local(u, v) * fr.scale);
                Some((a, shade(x, y, fg)))
            });
        }
        Class::Stripes | Class::Checker => {
            let fg2 = contrasting_colour(rng, fg, 0.45);
            let period = uniform(rng, 3.5, 6.5);
            let (ts, tc) = any_angle.sin_cos();
            let (ox, oy) = (uniform(rng, 0.0, period), uniform(rng, 0.0, period));
            let round = rng.random_bool(0.5);
            let checker = class == Class::Checker;
            cv.paint(|x, y| {
                let (u, v) = fr.local(x, y);
                let sd = if round {
                    (u * u + v * v).sqrt() - 1.0
                } else {
                    sd_box(u, v, 0.85, 0.85)
                };
                let a = coverage(sd * fr.scale);
                if a == 0.0 {
                    return None;
                }
                let (dx, dy) = (x - fr.cx, y - fr.cy);
                let p = square_wave(dx * tc + dy * ts + ox, period);
                let t = if checker {
                    let q = square_wave(-dx * ts + dy * tc + oy, period);
                    p * (1.0 - q) + (1.0 - p) * q
                } else {
                    p
                };
                let col = [0, 1, 2].map(|c| fg[c] + t * (fg2[c] - fg[c]));
                Some((a, shade(x, y, col)))
            });
        }
        Class::Dots => {
            let n = rng.random_range(3..=6);
            let mut dots: Vec<(f32, f32, f32)> = Vec::with_capacity(n);
            let mut tries = 0;
            while dots.len() < n && tries < 200 {
                tries += 1;
                let (u, v) = (uniform(rng, -1.0, 1.0), uniform(rng, -1.0, 1.0));
                if u * u + v * v > 1.0 {
                    continue;
                }
                let r = uniform(rng, 1.3, 2.4);
                let (px, py) = (fr.cx + radius * u, fr.cy + radius * v);
                if dots.iter().all(|&(qx, qy, qr)| {
                    ((px - qx).powi(2) + (py - qy).powi(2)).sqrt() > r + qr + 1.5
                }) {
                    dots.push((px, py, r));
                }
            }
            cv.paint(|x, y| {
                let sd = dots
                    .iter()
                    .map(|&(px, py, r)| ((x - px).powi(2) + (y - py).powi(2)).sqrt() - r)
                    .fold(f32::INFINITY, f32::min);
                Some((coverage(sd), shade(x, y, fg)))
            });
        }
    }

    // 3b. Distractor strokes over the object.
    for s in &strokes[under..] {
        s.draw(&mut cv);
    }

    // 4. Photometry and noise, then quantisation.
    let contrast = uniform(rng, 0.7, 1.3);
    let brightness = uniform(rng, -0.12, 0.12);
    let gain = [0; 3].map(|_| uniform(rng, 0.85, 1.15));
    let sigma = uniform(rng, 0.01, 0.06);
    for c in 0..3 {
        for k in 0..PLANE {
            let v = (cv.px[c][k] - 0.5) * contrast + 0.5 + brightness;
            let v = v * gain[c] + sigma * gaussian(rng);
            out[c * PLANE + k] = (v * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// An approximately standard normal draw: the centred, scaled sum of four 16-bit uniforms
/// (Irwin–Hall), one `u64` per draw.
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let r = rng.next_u64();
    let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
    // Mean 4 · 32767.5, variance 4 · (65536² - 1) / 12.
    (s as f32 - 131_070.0) * (3.0f32.sqrt() / 65_536.0)
}

/// A thin distractor stroke: a line segment or a circular arc.
struct Stroke {
    kind: StrokeKind,
    width: f32,
    alpha: f32,
    colour: Rgb,
}

enum StrokeKind {
    Line((f32, f32), (f32, f32)),
    Arc {
        cx: f32,
        cy: f32,
        r: f32,
        start: f32,
        span: f32,
    },
}

impl Stroke {
    fn random(rng: &mut ChaCha8Rng) -> Self {
        let kind = if rng.random_bool(0.6) {
            let a = (uniform(rng, 0.0, 32.0), uniform(rng, 0.0, 32.0));
            let len = uniform(rng, 8.0, 26.0);
            let t = uniform(rng, 0.0, std::f32::consts::TAU);
            StrokeKind::Line(a, (a.0 + len * t.cos(), a.1 + len * t.sin()))
        } else {
            StrokeKind::Arc {
                cx: uniform(rng, 0.0, 32.0),
                cy: uniform(rng, 0.0, 32.0),
                r: uniform(rng, 4.0, 12.0),
                start: uniform(rng, 0.0, std::f32::consts::TAU),
                span: uniform(rng, 1.0, 3.2),
            }
        };
        Stroke {
            kind,
            width: uniform(rng, 0.8, 1.8),
            alpha: uniform(rng, 0.5, 1.0),
            colour: random_colour(rng),
        }
    }

    fn draw(&self, cv: &mut Canvas) {
        cv.paint(|x, y| {
            let d = match self.kind {
                StrokeKind::Line(a, b) => dist_segment(x, y, a, b),
                StrokeKind::Arc {
                    cx,
                    cy,
                    r,
                    start,
                    span,
                } => {
                    let (dx, dy) = (x - cx, y - cy);
                    let t = (dy.atan2(dx) - start).rem_euclid(std::f32::consts::TAU);
                    if t <= span {
                        ((dx * dx + dy * dy).sqrt() - r).abs()
                    } else {
                        let end = |a: f32| {
                            ((x - cx - r * a.cos()).powi(2) + (y - cy - r * a.sin()).powi(2)).sqrt()
                        };
                        end(start).min(end(start + span))
                    }
                }
            };
            Some((self.alpha * coverage(d - self.width / 2.0), self.colour))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_has_unit_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| f64::from(gaussian(&mut rng))).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn sdfs_have_the_right_sign_and_scale() {
        assert_eq!(sd_box(0.0, 0.0, 1.0, 2.0), -1.0);
        assert_eq!(sd_box(3.0, 0.0, 1.0, 2.0), 2.0);
        assert_eq!(sd_box(4.0, 6.0, 1.0, 2.0), 5.0);
        // Triangle of circumradius 1: inradius 1/2, apex at (0, -1).
        assert!((sd_triangle(0.0, 0.0, 1.0) + 0.5).abs() < 1e-6);
        assert!((sd_triangle(0.0, -2.0, 1.0) - 1.0).abs() < 1e-6);
        assert!((sd_triangle(0.0, 1.5, 1.0) - 1.0).abs() < 1e-6);
        assert!((dist_segment(1.0, 1.0, (0.0, 0.0), (2.0, 0.0)) - 1.0).abs() < 1e-6);
        assert!((dist_segment(5.0, 0.0, (0.0, 0.0), (2.0, 0.0)) - 3.0).abs() < 1e-6);
    }

    #[test]
    fn coverage_ramps_over_one_pixel() {
        assert_eq!(coverage(-1.0), 1.0);
        assert_eq!(coverage(0.0), 0.5);
        assert_eq!(coverage(1.0), 0.0);
        assert_eq!(square_wave(2.0, 4.0), 1.0);
        assert_eq!(square_wave(0.0, 4.0), 0.0);
        assert_eq!(square_wave(-4.0, 4.0), 0.0);
        assert_eq!(square_wave(1.0, 4.0), 0.5);
        assert_eq!(square_wave(3.0, 4.0), 0.5);
    }

    #[test]
    fn image_seeds_differ_by_split_and_index() {
        let a = image_seed(0, TRAIN_STREAM, 0);
        assert_ne!(a, image_seed(0, TEST_STREAM, 0));
        assert_ne!(a, image_seed(0, TRAIN_STREAM, 1));
        assert_ne!(a, image_seed(1, TRAIN_STREAM, 0));
    }
}
