//! Checkpoints: the model configuration, every parameter and BatchNorm's running statistics.
//!
//! Layout (all integers little-endian):
//!
//! | bytes          | content                                                         |
//! |----------------|-----------------------------------------------------------------|
//! | 0..8           | magic `b"NLCKPT\0\x01"` (the last byte is the format version, 1)  |
//! | 8..16          | `u64` length `H` of the header                                  |
//! | 16..16+H       | UTF-8 JSON [`Header`]: model config, tensor names and shapes    |
//! | 16+H..         | the tensors' values as `f32`, in header order, nothing after    |
//!
//! Tensors are the parameters in [`Model::params`] order with PyTorch's names and shapes, then
//! for BatchNorm `{layer}.running_mean` and `{layer}.running_var` per norm layer
//! ([`Model::running_names`]: `norm1`.. for the plain CNN, `layer2.0.shortcut.1`.. for a ResNet).
//! The header's model configuration records the architecture (`arch`) and `width`. Loading checks the
//! magic, the configuration, every name and shape against a model built from that configuration,
//! and the exact file length; each error names the file.

use std::{
    io::{Read, Write},
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::{Model, ModelConfig, TrainError};

/// First 8 bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"NLCKPT\0\x01";

/// The JSON header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Format version (1).
    pub format: u32,
    /// The model's configuration.
    pub model: ModelConfig,
    /// Names and shapes of the stored tensors, in file order.
    pub tensors: Vec<TensorEntry>,
    /// BatchNorm's `num_batches_tracked` per block (empty for the other norms).
    pub num_batches_tracked: Vec<u64>,
}

/// One stored tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// PyTorch-style name.
    pub name: String,
    /// Shape; the tensor holds the product of its dimensions `f32` values.
    pub shape: Vec<usize>,
}

/// Every tensor of `model` with its name, shape and values, in file order.
fn tensors(model: &Model) -> Vec<(TensorEntry, &[f32])> {
    let mut out: Vec<(TensorEntry, &[f32])> = model
        .params()
        .iter()
        .map(|p| {
            (
                TensorEntry {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                },
                &p.data[..],
            )
        })
        .collect();
    for (r, layer) in model.running().iter().zip(model.running_names()) {
        let shape = vec![r.mean.len()];
        out.push((
            TensorEntry {
                name: format!("{layer}.running_mean"),
                shape: shape.clone(),
            },
            &r.mean,
        ));
        out.push((
            TensorEntry {
                name: format!("{layer}.running_var"),
                shape,
            },
            &r.var,
        ));
    }
    out
}

impl Model {
    /// Writes the checkpoint (see `docs/training.md` for the format).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_owned(),
            source,
        };
        let ts = tensors(self);
        let header = Header {
            format: 1,
            model: self.config().clone(),
            tensors: ts.iter().map(|(e, _)| e.clone()).collect(),
            num_batches_tracked: self
                .running()
                .iter()
                .map(|r| r.num_batches_tracked)
                .collect(),
        };
        let json = serde_json::to_vec(&header).expect("the header always serialises");
        let mut bytes = Vec::with_capacity(
            16 + json.len() + 4 * ts.iter().map(|(_, d)| d.len()).sum::<usize>(),
        );
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&json);
        for (_, data) in &ts {
            for v in *data {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        // Through a temporary file and a rename: a kill mid-save never leaves half a checkpoint
        // where a previous one (or nothing) was.
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(
            ".tmp{}.{}",
            std::process::id(),
            name.unwrap_or_default()
        ));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io)
    }

    /// Reads a checkpoint written by [`Model::save`]. The model comes back in eval mode.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let corrupt = |reason: String| TrainError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|source| TrainError::Io {
                path: path.to_owned(),
                source,
            })?;
        if bytes.len() < 16 || bytes[..6] != MAGIC[..6] {
            return Err(corrupt("not a normlab checkpoint (bad magic)".into()));
        }
        if bytes[..8] != MAGIC {
            return Err(corrupt(format!("unsupported format version {}", bytes[7])));
        }
        let hlen = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let hend = usize::try_from(hlen)
            .ok()
            .and_then(|h| h.checked_add(16))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "header length {hlen} exceeds the file ({} bytes)",
                    bytes.len()
                ))
            })?;
        let header: Header = serde_json::from_slice(&bytes[16..hend])
            .map_err(|e| corrupt(format!("bad header: {e}")))?;
        if header.format != 1 {
            return Err(corrupt(format!("header format {} is not 1", header.format)));
        }
        let mut model = Model::new(&header.model, 0)
            .map_err(|e| corrupt(format!("invalid model configuration: {e}")))?;
        let expected: Vec<TensorEntry> = tensors(&model).into_iter().map(|(e, _)| e).collect();
        if header.tensors != expected {
            let first = expected
                .iter()
                .zip(&header.tensors)
                .find(|(a, b)| a != b)
                .map(|(a, b)| {
                    format!(
                        "found {} {:?}, expected {} {:?}",
                        b.name, b.shape, a.name, a.shape
                    )
                })
                .unwrap_or_else(|| {
                    format!(
                        "{} tensors, expected {}",
                        header.tensors.len(),
                        expected.len()
                    )
                });
            return Err(corrupt(format!(
                "tensor list does not match the configuration: {first}"
            )));
        }
        if header.num_batches_tracked.len() != model.running().len() {
            return Err(corrupt(format!(
                "{} num_batches_tracked entries, expected {}",
                header.num_batches_tracked.len(),
                model.running().len()
            )));
        }
        let total: usize = expected
            .iter()
            .map(|e| e.shape.iter().product::<usize>())
            .sum();
        let blob = &bytes[hend..];
        if blob.len() != 4 * total {
            return Err(corrupt(format!(
                "{} bytes of tensor data, expected {}",
                blob.len(),
                4 * total
            )));
        }
        let mut values = blob
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")));
        let mut fill = |dst: &mut [f32]| {
            dst.iter_mut()
                .for_each(|d| *d = values.next().expect("length checked"))
        };
        for p in model.params_mut() {
            fill(&mut p.data);
        }
        for (r, &nbt) in model
            .running_mut()
            .iter_mut()
            .zip(&header.num_batches_tracked)
        {
            fill(&mut r.mean);
            fill(&mut r.var);
            r.num_batches_tracked = nbt;
        }
        model.eval_mode();
        Ok(model)
    }
}
