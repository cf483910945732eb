//! Reading and writing float32 NumPy `.npy` arrays (C order), with errors that name the file
//! and what is wrong with it.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use npyz::{DType, NpyFile, Order, WriterBuilder};

/// A float32 array read from a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<f32>,
}

/// Formats a shape as `[2, 3, 4]`.
pub fn shape_str(shape: &[usize]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Reads a float32 (either byte order) C-order array of any rank.
pub fn read_f32(path: &Path) -> Result<Array> {
    let name = path.display();
    let file = File::open(path).with_context(|| format!("cannot open {name}"))?;
    // npyz's header errors can span lines (a parser's caret diagram): keep the first line.
    let npy = NpyFile::new(BufReader::new(file)).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default().trim().to_owned();
        anyhow::anyhow!("{name} is not a valid .npy file: {first}")
    })?;
    match npy.dtype() {
        DType::Plain(ts) if matches!(ts.to_string().as_str(), "<f4" | ">f4") => {}
        DType::Plain(ts) => bail!("{name} has dtype '{ts}', expected float32 ('<f4')"),
        other => bail!(
            "{name} has a structured dtype {}, expected float32 ('<f4')",
            other.descr()
        ),
    }
    if npy.order() != Order::C {
        bail!("{name} is stored in Fortran order; save a C-order (contiguous) array");
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    // Checked: a corrupt header can promise more values than fit in memory, or in a usize.
    let file_len = std::fs::metadata(path).map_or(u64::MAX, |m| m.len());
    let expected = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| (n as u64).saturating_mul(4) <= file_len)
        .with_context(|| {
            format!(
                "{name} is truncated: its header promises {} values (shape {}), more than its \
                 {file_len} bytes hold",
                shape
                    .iter()
                    .map(|&d| d as u128)
                    .try_fold(1u128, |a, d| a.checked_mul(d))
                    .map_or_else(|| "too many".into(), |n| n.to_string()),
                shape_str(&shape)
            )
        })?;
    let data: Vec<f32> = npy.into_vec().with_context(|| {
        format!(
            "{name} is truncated: its header promises {expected} values of shape {}",
            shape_str(&shape)
        )
    })?;
    if data.len() != expected {
        bail!(
            "{name} holds {} values, its shape {} needs {expected}",
            data.len(),
            shape_str(&shape)
        );
    }
    Ok(Array { shape, data })
}

/// Writes `data` as a little-endian float32 (`'<f4'`) C-order array of `shape`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    debug_assert_eq!(shape.iter().product::<usize>(), data.len());
    let write = || -> std::io::Result<()> {
        let mut w = BufWriter::new(File::create(path)?);
        let shape64: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut npy = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape64)
            .writer(&mut w)
            .begin_nd()?;
        npy.extend(data.iter().copied())?;
        npy.finish()?;
        w.flush()
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// `Err` naming the first NaN or infinity of `a` (read from `path`), if any.
pub fn check_finite(path: &Path, a: &Array) -> Result<()> {
    if let Some(i) = a.data.iter().position(|v| !v.is_finite()) {
        let mut idx = vec![0; a.shape.len()];
        let mut rest = i;
        for (k, d) in a.shape.iter().enumerate().rev() {
            idx[k] = rest % d;
            rest /= d;
        }
        let what = if a.data[i].is_nan() {
            "NaN"
        } else {
            "an infinity"
        };
        bail!(
            "{} contains {what} at index {} (and normalising it would spread it over its whole group)",
            path.display(),
            shape_str(&idx)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write_f32(&p, &[1, 2, 3, 4], &data).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        let header = String::from_utf8_lossy(&bytes[10..128]);
        assert!(header.contains("'descr': '<f4'"), "{header}");
        assert!(header.contains("'fortran_order': False"), "{header}");
        assert!(header.contains("'shape': (1, 2, 3, 4"), "{header}");
        let a = read_f32(&p).unwrap();
        assert_eq!(
            a,
            Array {
                shape: vec![1, 2, 3, 4],
                data
            }
        );
    }

    #[test]
    fn rejects_other_dtypes_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npy");
        npyz::to_file_1d(&p, [1.0f64, 2.0]).unwrap();
        let e = format!("{:#}", read_f32(&p).unwrap_err());
        assert!(e.contains("dtype '<f8'"), "{e}");
        write_f32(&p, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let e = format!("{:#}", read_f32(&p).unwrap_err());
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn reads_big_endian_float32() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("be.npy");
        let mut w = std::io::BufWriter::new(File::create(&p).unwrap());
        let mut npy = npyz::WriteOptions::<f32>::new()
            .dtype(DType::Plain(">f4".parse().unwrap()))
            .shape(&[1, 1, 1, 2])
            .writer(&mut w)
            .begin_nd()
            .unwrap();
        npy.extend([1.5f32, -2.0]).unwrap();
        npy.finish().unwrap();
        drop(w);
        assert_eq!(read_f32(&p).unwrap().data, vec![1.5, -2.0]);
    }

    #[test]
    fn names_the_first_nan() {
        let a = Array {
            shape: vec![1, 2, 2, 2],
            data: vec![0.0, 1.0, 2.0, 3.0, 4.0, f32::NAN, 0.0, 0.0],
        };
        let e = format!("{:#}", check_finite(Path::new("x.npy"), &a).unwrap_err());
        assert!(
            e.starts_with("x.npy contains NaN at index [0, 1, 0, 1]"),
            "{e}"
        );
    }
}
