//! Image data for the batch-size study: a deterministic synthetic CIFAR-like data set, the
//! CIFAR-10 binary format (read and write), per-channel normalisation and the standard CIFAR
//! augmentation (random crop after zero padding, horizontal flip).
//!
//! * **Layout**: every image is `3 × 32 × 32` `u8`, stored as in CIFAR-10's binary files: the R
//!   plane, then the G plane, then the B plane, each row-major (`IMAGE_BYTES = 3072` bytes).
//!   [`Dataset::images`] concatenates the images; [`Dataset::labels`] holds one class in `0..10`
//!   per image.
//! * **Synthetic set** ([`synthetic`]): ten shape/texture classes drawn over cluttered backgrounds
//!   with geometric and photometric nuisances; each image comes from its own ChaCha8 stream seeded
//!   from `(seed, split, index)`, so the bytes are identical for any number of rayon threads.
//!   `docs/data.md` describes the classes and the measured baselines.
//! * **CIFAR-10** ([`load_cifar10`], [`write_cifar10`]): records of one label byte followed by the
//!   3072 image bytes, in `data_batch_K.bin` (train) and `test_batch.bin` (test).
//! * **Batches** ([`fill_batch`]): images become normalised `f32` NCHW, `(pixel/255 - mean)/std`
//!   per channel with the [`Normalizer`] of the train split, after the optional [`Augment`]ation.

mod batch;
mod cifar;
mod synthetic;

pub use batch::{Augment, Normalizer, fill_batch};
pub use cifar::{
    DataError, MAX_TRAIN_BATCHES, META_FILE, RECORD_BYTES, TEST_FILE, load_cifar10, train_file,
    write_cifar10,
};
pub use synthetic::{DEFAULT_TEST, DEFAULT_TRAIN, synthetic};

/// Height and width of every image, in pixels.
pub const IMAGE_SIZE: usize = 32;
/// Colour channels per image (R, G, B).
pub const CHANNELS: usize = 3;
/// Pixels in one channel plane of an image (`32 × 32`).
pub const PLANE: usize = IMAGE_SIZE * IMAGE_SIZE;
/// Bytes per image: `CHANNELS × IMAGE_SIZE × IMAGE_SIZE`.
pub const IMAGE_BYTES: usize = CHANNELS * PLANE;
/// Number of classes (labels are `0..NUM_CLASSES`).
pub const NUM_CLASSES: usize = 10;

/// Names of the classes of the synthetic data set, indexed by label. [`write_cifar10`] writes
/// them to `batches.meta.txt`, one per line.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "disc", "ring", "square", "frame", "triangle", "plus", "cross", "stripes", "checker", "dots",
];

/// Names of the CIFAR-10 classes, indexed by label (the order of the official
/// `batches.meta.txt`), for reports on data read with [`load_cifar10`] from the official files.
pub const CIFAR10_CLASS_NAMES: [&str; NUM_CLASSES] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// A set of labelled `3 × 32 × 32` `u8` images in CIFAR-10 layout.
///
/// The fields are public; a consistent data set has `images.len() == labels.len() * IMAGE_BYTES`
/// and every label below [`NUM_CLASSES`]. Everything this module builds is consistent, and
/// [`write_cifar10`] checks it.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `len() * IMAGE_BYTES` bytes; per image the R plane, G plane and B plane, each row-major
    /// `32 × 32`.
    pub images: Vec<u8>,
    /// One class in `0..NUM_CLASSES` per image.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the data set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The `IMAGE_BYTES` bytes of image `i` (R, G, B planes). Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// Number of images of each class. Panics on a label of `NUM_CLASSES` or more.
    pub fn class_counts(&self) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// A train split and a test split.
#[derive(Clone, Debug)]
pub struct Split {
    /// Images to fit on (and to compute the [`Normalizer`] from).
    pub train: Dataset,
    /// Held-out images for evaluation.
    pub test: Dataset,
}
