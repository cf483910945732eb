//! The CIFAR-10 binary format ("CIFAR-10 binary version" of
//! <https://www.cs.toronto.edu/~kriz/cifar.html>).
//!
//! Each file is a sequence of 3073-byte records: one label byte in `0..=9`, then the 3072 pixel
//! bytes of a `32 × 32` colour image, the red plane first, then green, then blue, each row-major.
//! The official set has `data_batch_1.bin` … `data_batch_5.bin` (10,000 records each, 50,000 train
//! images) and `test_batch.bin` (10,000 test images), plus `batches.meta.txt` with the ten class
//! names, one per line.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{CLASS_NAMES, Dataset, IMAGE_BYTES, NUM_CLASSES, Split};

/// Bytes per record: one label byte and the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

/// Largest `K` of the `data_batch_K.bin` files read by [`load_cifar10`].
pub const MAX_TRAIN_BATCHES: usize = 5;

/// Name of the test file.
pub const TEST_FILE: &str = "test_batch.bin";

/// Name of the class-name file written by [`write_cifar10`].
pub const META_FILE: &str = "batches.meta.txt";

/// Name of train file `k` (1-based): `data_batch_{k}.bin`.
pub fn train_file(k: usize) -> String {
    format!("data_batch_{k}.bin")
}

/// Why reading or writing CIFAR-10 binary files failed. Every message names the file or
/// directory at fault.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum DataError {
    /// The data directory does not exist (or is not a directory).
    #[error("CIFAR-10 data directory {} does not exist", path.display())]
    MissingDir {
        /// The directory.
        path: PathBuf,
    },
    /// A required file is absent.
    #[error("missing CIFAR-10 file {}", path.display())]
    MissingFile {
        /// The file that should exist.
        path: PathBuf,
    },
    /// None of `data_batch_1.bin` … `data_batch_5.bin` exists.
    #[error(
        "no train file in {}: expected at least one of data_batch_1.bin … data_batch_5.bin",
        dir.display()
    )]
    NoTrainBatches {
        /// The directory searched.
        dir: PathBuf,
    },
    /// A file's size is not a whole number of 3073-byte records.
    #[error(
        "{}: size {size} bytes is not a multiple of the 3073-byte CIFAR-10 record \
         (1 label byte + 3072 pixel bytes)",
        path.display()
    )]
    BadSize {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// A file has no record at all.
    #[error("{} is empty: a CIFAR-10 file holds 3073-byte records, this one none", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// A record's label byte is above 9.
    #[error("{}: record {record} (0-based) has label {label}, above 9", path.display())]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Index of the record in the file, from 0.
        record: usize,
        /// The offending label byte.
        label: u8,
    },
    /// A data set handed to [`write_cifar10`] is not consistent.
    #[error("cannot write {}: {reason}", path.display())]
    InvalidDataset {
        /// The file that would have received the data.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// [`write_cifar10`] would leave a `data_batch_K.bin`, `K >= 2`, from an earlier data set
    /// beside the new `data_batch_1.bin`, and [`load_cifar10`] would read it as part of the train
    /// split.
    #[error(
        "refusing to write into {}: {} exists and would be read as part of the train split; \
         remove it or choose another directory",
        dir.display(),
        stale.display()
    )]
    StaleTrainBatch {
        /// The output directory.
        dir: PathBuf,
        /// The file in the way.
        stale: PathBuf,
    },
    /// Any other I/O error, with the path it happened on.
    #[error("I/O error on {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the CIFAR-10 binary files in `dir`.
///
/// The train split is every `data_batch_K.bin` present for `K = 1..=5`, concatenated in order of
/// `K` (the official set has all five; `norm-cli data export` writes only `data_batch_1.bin`); at
/// least one is required. The test split is `test_batch.bin`, which is required.
/// `batches.meta.txt` is not read.
///
/// Errors: [`DataError::MissingDir`], [`DataError::MissingFile`] (no `test_batch.bin`),
/// [`DataError::NoTrainBatches`], [`DataError::EmptyFile`], [`DataError::BadSize`],
/// [`DataError::BadLabel`],
/// [`DataError::Io`].
pub fn load_cifar10(dir: &Path) -> Result<Split, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
        });
    }
    let test_path = dir.join(TEST_FILE);
    if !test_path.is_file() {
        return Err(DataError::MissingFile { path: test_path });
    }
    let mut train = Dataset {
        images: Vec::new(),
        labels: Vec::new(),
    };
    let mut found = false;
    for k in 1..=MAX_TRAIN_BATCHES {
        let path = dir.join(train_file(k));
        if path.is_file() {
            read_records(&path, &mut train)?;
            found = true;
        }
    }
    if !found {
        return Err(DataError::NoTrainBatches {
            dir: dir.to_path_buf(),
        });
    }
    let mut test = Dataset {
        images: Vec::new(),
        labels: Vec::new(),
    };
    read_records(&test_path, &mut test)?;
    Ok(Split { train, test })
}

/// Appends the records of the file at `path` to `out`.
fn read_records(path: &Path, out: &mut Dataset) -> Result<(), DataError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    // Said apart: an empty file would otherwise surface later as an empty split, far from the
    // file that caused it.
    if bytes.is_empty() {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    if bytes.len() % RECORD_BYTES != 0 {
        return Err(DataError::BadSize {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
        });
    }
    let n = bytes.len() / RECORD_BYTES;
    out.images.reserve(n * IMAGE_BYTES);
    out.labels.reserve(n);
    for (record, chunk) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = chunk[0];
        if label as usize >= NUM_CLASSES {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                record,
                label,
            });
        }
        out.labels.push(label);
        out.images.extend_from_slice(&chunk[1..]);
    }
    Ok(())
}

/// Writes `split` to `dir` (created if needed) in the CIFAR-10 binary format: the whole train
/// split as `data_batch_1.bin`, the test split as `test_batch.bin`, and [`CLASS_NAMES`] (the
/// synthetic classes) as `batches.meta.txt`, one name per line. Existing files of these names are
/// replaced.
///
/// [`load_cifar10`] on `dir` then returns `split` exactly. To keep that true, writing is refused
/// ([`DataError::StaleTrainBatch`]) if `dir` already holds a `data_batch_K.bin` with
/// `K = 2..=5`. Inconsistent data sets (image bytes not `3072 ×` the number of labels, a label
/// above 9) are refused with [`DataError::InvalidDataset`] before anything is written.
pub fn write_cifar10(dir: &Path, split: &Split) -> Result<(), DataError> {
    let train_path = dir.join(train_file(1));
    let test_path = dir.join(TEST_FILE);
    check_dataset(&split.train, &train_path)?;
    check_dataset(&split.test, &test_path)?;
    for k in 2..=MAX_TRAIN_BATCHES {
        let stale = dir.join(train_file(k));
        if stale.exists() {
            return Err(DataError::StaleTrainBatch {
                dir: dir.to_path_buf(),
                stale,
            });
        }
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_records(&train_path, &split.train)?;
    write_records(&test_path, &split.test)?;
    let meta_path = dir.join(META_FILE);
    let mut meta = String::new();
    for name in CLASS_NAMES {
        meta.push_str(name);
        meta.push('\n');
    }
    fs::write(&meta_path, meta).map_err(io_err(&meta_path))
}

fn check_dataset(d: &Dataset, path: &Path) -> Result<(), DataError> {
    let invalid = |reason: String| DataError::InvalidDataset {
        path: path.to_path_buf(),
        reason,
    };
    if d.images.len() != d.labels.len() * IMAGE_BYTES {
        return Err(invalid(format!(
            "{} image bytes for {} labels (expected {} bytes)",
            d.images.len(),
            d.labels.len(),
            d.labels.len() * IMAGE_BYTES
        )));
    }
    if let Some((i, &l)) = d
        .labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= NUM_CLASSES)
    {
        return Err(invalid(format!("image {i} has label {l}, above 9")));
    }
    Ok(())
}

fn write_records(path: &Path, d: &Dataset) -> Result<(), DataError> {
    let file = fs::File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    for (i, &label) in d.labels.iter().enumerate() {
        w.write_all(&[label]).map_err(io_err(path))?;
        w.write_all(d.image(i)).map_err(io_err(path))?;
    }
    w.flush().map_err(io_err(path))
}
