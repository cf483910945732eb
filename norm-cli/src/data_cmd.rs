//! `norm-cli data export`: the synthetic data set as CIFAR-10 binary files (readable back with
//! `--data cifar10 --data-dir DIR`) plus `samples.png`, a grid of a few images per class.

use std::path::Path;

use anyhow::{Context, Result, bail};
use norm_train::data::{self, CLASS_NAMES, Dataset, IMAGE_SIZE, NUM_CLASSES, PLANE};
use plotters::prelude::*;

use crate::cli::ExportArgs;
use crate::font;

/// Images per class in `samples.png`.
pub const SAMPLES_PER_CLASS: usize = 8;
/// Magnification of each image in `samples.png`.
const SCALE: u32 = 3;
const PAD: u32 = 6;
const LABEL_W: u32 = 110;

/// Runs the command and returns a one-line description of what was written.
pub fn run(a: &ExportArgs) -> Result<String> {
    let (train_size, test_size) = (a.train_size, a.test_size);
    if train_size == 0 {
        bail!("--train-size must be at least 1");
    }
    let split = data::synthetic(a.seed, train_size, test_size);
    data::write_cifar10(&a.out, &split)
        .with_context(|| format!("cannot export the data set to {}", a.out.display()))?;
    let png = a.out.join("samples.png");
    write_samples(&split.train, &png)?;
    Ok(format!(
        "wrote {train_size} train and {test_size} test images (synthetic, seed {}) to {}: {}, {}, {}, samples.png",
        a.seed,
        a.out.display(),
        data::train_file(1),
        data::TEST_FILE,
        data::META_FILE
    ))
}

/// Indices of up to `k` images of each class, in order of appearance.
pub fn samples_by_class(d: &Dataset, k: usize) -> [Vec<usize>; NUM_CLASSES] {
    let mut out: [Vec<usize>; NUM_CLASSES] = Default::default();
    for (i, &l) in d.labels.iter().enumerate() {
        let v = &mut out[l as usize % NUM_CLASSES];
        if v.len() < k {
            v.push(i);
        }
    }
    out
}

/// Draws the grid: one row per class, its name on the left, [`SAMPLES_PER_CLASS`] images
/// magnified ×3.
pub fn write_samples(d: &Dataset, path: &Path) -> Result<()> {
    font::register();
    let cell = IMAGE_SIZE as u32 * SCALE;
    let size = (
        LABEL_W + SAMPLES_PER_CLASS as u32 * (cell + PAD) + PAD,
        NUM_CLASSES as u32 * (cell + PAD) + PAD,
    );
    let picks = samples_by_class(d, SAMPLES_PER_CLASS);
    crate::store::write_atomic_with(path, |tmp| {
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing samples.png: {e}");
        root.fill(&WHITE).map_err(err)?;
        let style = TextStyle::from((font::FAMILY, 18).into_font()).color(&BLACK);
        for (class, idx) in picks.iter().enumerate() {
            let y0 = PAD + class as u32 * (cell + PAD);
            root.draw_text(CLASS_NAMES[class], &style, (8, (y0 + cell / 2 - 9) as i32))
                .map_err(err)?;
            for (col, &i) in idx.iter().enumerate() {
                let x0 = LABEL_W + PAD + col as u32 * (cell + PAD);
                let img = d.image(i);
                for py in 0..cell {
                    for px in 0..cell {
                        let p = (py / SCALE) as usize * IMAGE_SIZE + (px / SCALE) as usize;
                        let c = RGBColor(img[p], img[PLANE + p], img[2 * PLANE + p]);
                        root.draw_pixel(((x0 + px) as i32, (y0 + py) as i32), &c)
                            .map_err(err)?;
                    }
                }
            }
        }
        root.present().map_err(err)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_first_images_of_each_class() {
        let d = Dataset {
            images: vec![0; 25 * data::IMAGE_BYTES],
            labels: (0..25).map(|i| (i % 10) as u8).collect(),
        };
        let p = samples_by_class(&d, 2);
        assert_eq!(p[0], vec![0, 10]);
        assert_eq!(p[4], vec![4, 14]);
        assert_eq!(p[9], vec![9, 19]);
        let p = samples_by_class(&d, 3);
        assert_eq!(p[4], vec![4, 14, 24]);
        assert_eq!(p[5], vec![5, 15]);
    }
}
