//! Checkpoints as [safetensors](https://github.com/huggingface/safetensors) files that PyTorch
//! loads as they are: `model.load_state_dict(safetensors.torch.load_file(path))` on a module
//! with the same structure (`docs/training.md` shows one).
//!
//! * **Tensors**: [`Model::state_dict`], with PyTorch's names and shapes — `conv1.weight`
//!   `[C_out, C_in, 3, 3]`, `norm1.weight`, `norm1.running_mean`, `norm1.num_batches_tracked`
//!   (`int64`, shape `[]`), `fc.weight` `[10, C]`, ... — every float tensor `float32`.
//! * **Metadata** (string → string, JSON values): `format` = `pt` (as PyTorch's own
//!   `save_file`), `normlab.checkpoint` = `1` (this layout), `normlab.model` (the
//!   [`ModelConfig`]), `normlab.input_normalization` (per-channel `mean` and `std` of
//!   `pixel / 255`, the [`Normalizer`] the model was trained with) and, when known,
//!   `normlab.data` ([`DataIdentity`]: which images it was trained on).
//!
//! Loading reads the configuration, builds that model, and checks that the file holds exactly
//! its tensors, each with its shape and dtype; every error is one line naming the file. Writing
//! goes through [`crate::atomic::write_atomic`], so an interrupted save leaves the previous file.
//! The code only sees the list of named tensors, so it serves any model that provides one.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::data::Normalizer;
use crate::{Model, ModelConfig, StateData, StateDataMut, StateTensor, TrainError};

/// Value of the `normlab.checkpoint` metadata key this version writes and reads.
pub const LAYOUT_VERSION: &str = "1";

/// Metadata keys.
pub mod keys {
    /// `1`: the layout of this module.
    pub const CHECKPOINT: &str = "normlab.checkpoint";
    /// The [`crate::ModelConfig`] as JSON.
    pub const MODEL: &str = "normlab.model";
    /// The input [`crate::data::Normalizer`] as JSON (`{"mean": [..3], "std": [..3]}`).
    pub const INPUT_NORMALIZATION: &str = "normlab.input_normalization";
    /// The [`super::DataIdentity`] as JSON (absent when unknown).
    pub const DATA: &str = "normlab.data";
}

/// Which images a model was trained on: enough to regenerate a synthetic set, and to recognise
/// a CIFAR-10 folder by its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIdentity {
    /// `synthetic` or `cifar10`.
    pub source: String,
    /// Seed of the synthetic set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Train images.
    pub train_size: usize,
    /// Test images.
    pub test_size: usize,
    /// 64-bit FNV-1a of every label and pixel of both splits, in hex.
    pub fingerprint: String,
}

/// What a checkpoint stores besides the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointMeta {
    /// The input normalisation the model expects.
    pub normalizer: Normalizer,
    /// The data it was trained on, if known.
    pub data: Option<DataIdentity>,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// The model, in eval mode.
    pub model: Model,
    /// Its input normalisation and data.
    pub meta: CheckpointMeta,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The file's bytes for `tensors` and `metadata`.
fn serialize(
    tensors: &[StateTensor<'_>],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let bytes: Vec<(Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|t| match t.data {
            StateData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            // PyTorch's num_batches_tracked is int64; a count never reaches 2^63.
            StateData::Count(n) => (Dtype::I64, (n as i64).to_le_bytes().to_vec()),
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, (dtype, b))| Ok((t.name.clone(), TensorView::new(*dtype, t.shape.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize(views, Some(metadata))
}

/// Writes `model` with `meta` to `path` (atomically).
pub fn save(path: &Path, model: &Model, meta: &CheckpointMeta) -> Result<(), TrainError> {
    let mut metadata = HashMap::from([
        ("format".to_owned(), "pt".to_owned()),
        (keys::CHECKPOINT.to_owned(), LAYOUT_VERSION.to_owned()),
        (keys::MODEL.to_owned(), json(model.config())),
        (keys::INPUT_NORMALIZATION.to_owned(), json(&meta.normalizer)),
    ]);
    if let Some(d) = &meta.data {
        metadata.insert(keys::DATA.to_owned(), json(d));
    }
    let bytes = serialize(&model.state_dict(), metadata)
        .map_err(|e| corrupt(path, format!("cannot serialise the tensors: {e}")))?;
    crate::atomic::write_atomic(path, |f, _| f.write_all(&bytes)).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data always serialises")
}

/// Reads a checkpoint written by [`save`]. The model comes back in eval mode.
pub fn load(path: &Path) -> Result<Checkpoint, TrainError> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })?;
    if bytes.starts_with(b"NLCKPT") {
        return Err(corrupt(
            path,
            "is in the checkpoint format of earlier normlab versions (NLCKPT), which is no \
             longer read; train again with --save to write a .safetensors checkpoint",
        ));
    }
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(path, format!("not a safetensors file ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(path, format!("not a safetensors file ({e})")))?;
    let empty = HashMap::new();
    let meta = header.metadata().as_ref().unwrap_or(&empty);
    let get = |key: &str| -> Result<&String, TrainError> {
        meta.get(key).ok_or_else(|| {
            corrupt(
                path,
                format!(
                    "a safetensors file without normlab's metadata (no `{key}`): not a \
                     norm-cli checkpoint"
                ),
            )
        })
    };
    let version = get(keys::CHECKPOINT)?;
    if version != LAYOUT_VERSION {
        return Err(corrupt(
            path,
            format!(
                "checkpoint layout {version} is not supported (this version reads {LAYOUT_VERSION})"
            ),
        ));
    }
    let parse = |key: &str| -> Result<serde_json::Value, TrainError> {
        serde_json::from_str(get(key)?)
            .map_err(|e| corrupt(path, format!("metadata `{key}` is not JSON: {e}")))
    };
    let cfg: ModelConfig = serde_json::from_value(parse(keys::MODEL)?)
        .map_err(|e| corrupt(path, format!("metadata `{}`: {e}", keys::MODEL)))?;
    let normalizer: Normalizer = serde_json::from_value(parse(keys::INPUT_NORMALIZATION)?)
        .map_err(|e| {
            corrupt(
                path,
                format!("metadata `{}`: {e}", keys::INPUT_NORMALIZATION),
            )
        })?;
    if !(normalizer.mean.iter().all(|m| m.is_finite())
        && normalizer.std.iter().all(|s| s.is_finite() && *s > 0.0))
    {
        return Err(corrupt(
            path,
            format!(
                "metadata `{}` has a non-finite mean or a std that is not positive: {normalizer:?}",
                keys::INPUT_NORMALIZATION
            ),
        ));
    }
    let data: Option<DataIdentity> = match meta.get(keys::DATA) {
        None => None,
        Some(_) => Some(
            serde_json::from_value(parse(keys::DATA)?)
                .map_err(|e| corrupt(path, format!("metadata `{}`: {e}", keys::DATA)))?,
        ),
    };
    let mut model = Model::new(&cfg, 0)
        .map_err(|e| corrupt(path, format!("invalid model configuration: {e}")))?;
    fill(path, &st, &mut model)?;
    model.eval_mode();
    Ok(Checkpoint {
        model,
        meta: CheckpointMeta { normalizer, data },
    })
}

/// Overwrites every tensor of `model` with the file's, after checking that the file holds
/// exactly the model's tensor names, each with the model's shape and dtype.
fn fill(path: &Path, st: &SafeTensors<'_>, model: &mut Model) -> Result<(), TrainError> {
    let cfg = model.config().clone();
    let mut expected = model.state_dict_mut();
    let want: BTreeSet<String> = expected.iter().map(|t| t.name.clone()).collect();
    let have: BTreeSet<String> = st.names().into_iter().map(str::to_owned).collect();
    let for_cfg = || {
        format!(
            "{}, {} widths {:?}",
            cfg.norm_label(),
            cfg.arch,
            cfg.stage_widths()
        )
    };
    if let Some(missing) = want.difference(&have).next() {
        return Err(corrupt(
            path,
            format!(
                "lacks tensor {missing}, which the model ({}) has",
                for_cfg()
            ),
        ));
    }
    if let Some(extra) = have.difference(&want).next() {
        return Err(corrupt(
            path,
            format!(
                "has tensor {extra}, which the model ({}) does not have",
                for_cfg()
            ),
        ));
    }
    for t in &mut expected {
        let view = st
            .tensor(&t.name)
            .map_err(|e| corrupt(path, format!("tensor {}: {e}", t.name)))?;
        if view.shape() != t.shape.as_slice() {
            return Err(corrupt(
                path,
                format!(
                    "tensor {} has shape {:?}, the model ({}) needs {:?}",
                    t.name,
                    view.shape(),
                    for_cfg(),
                    t.shape
                ),
            ));
        }
        let bytes = view.data();
        match &mut t.data {
            StateDataMut::F32(dst) => {
                if view.dtype() != Dtype::F32 {
                    return Err(corrupt(
                        path,
                        format!("tensor {} is {:?}, expected F32", t.name, view.dtype()),
                    ));
                }
                for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
            StateDataMut::Count(dst) => {
                let n = match view.dtype() {
                    Dtype::I64 => i64::from_le_bytes(bytes.try_into().expect("8 bytes")),
                    other => {
                        return Err(corrupt(
                            path,
                            format!("tensor {} is {other:?}, expected I64", t.name),
                        ));
                    }
                };
                **dst = u64::try_from(n)
                    .map_err(|_| corrupt(path, format!("tensor {} is negative ({n})", t.name)))?;
            }
        }
    }
    Ok(())
}
