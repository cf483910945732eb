//! Checkpoint round trips (every norm, bit for bit) and load errors.

use std::collections::HashMap;
use std::path::Path;

use norm_train::checkpoint::{self, CheckpointMeta, DataIdentity, keys};
use norm_train::{
    Model, ModelConfig, NormChoice, NormKind, StateData, TrainConfig, TrainError, data, train,
};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn meta(split: &data::Split) -> CheckpointMeta {
    CheckpointMeta {
        normalizer: data::Normalizer::from_dataset(&split.train),
        data: Some(DataIdentity {
            source: "synthetic".into(),
            seed: Some(2),
            train_size: split.train.len(),
            test_size: split.test.len(),
            fingerprint: "0123456789abcdef".into(),
        }),
    }
}

#[test]
fn save_then_load_restores_tensors_config_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let split = data::synthetic(2, 96, 60);
    let m = meta(&split);
    for kind in NormChoice::all() {
        let mut cfg = TrainConfig {
            epochs: 1,
            batch: 16,
            ..TrainConfig::default()
        };
        cfg.model = ModelConfig::new([8, 16, 16], kind, 4, 1e-4);
        let mut out = train(&cfg, &split, &mut |_| {}).unwrap();
        let path = dir.path().join(format!("{kind}.safetensors"));
        checkpoint::save(&path, &out.model, &m).unwrap();
        let back = checkpoint::load(&path).unwrap();
        assert_eq!(back.meta, m);
        let mut model = back.model;
        assert_eq!(model.config(), &cfg.model);
        assert!(!model.is_training());
        let (a, b) = (out.model.state_dict(), model.state_dict());
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
            match (a.data, b.data) {
                (StateData::F32(x), StateData::F32(y)) => {
                    assert_eq!(bits(x), bits(y), "{}", a.name)
                }
                (x, y) => assert_eq!(x, y, "{}", a.name),
            }
        }
        if kind == NormChoice::Norm(NormKind::Batch) {
            assert!(model.running()[0].num_batches_tracked > 0);
        }
        assert_eq!(
            out.model
                .evaluate(&split.test, &m.normalizer)
                .unwrap()
                .to_bits(),
            model
                .evaluate(&split.test, &m.normalizer)
                .unwrap()
                .to_bits()
        );
        // PyTorch's names, dtypes and shapes, and its `format` key.
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let md = header.metadata().as_ref().unwrap();
        assert_eq!(md["format"], "pt");
        assert_eq!(md[keys::CHECKPOINT], "1");
        assert_eq!(st.tensor("conv1.weight").unwrap().shape(), &[8, 3, 3, 3]);
        assert_eq!(st.tensor("fc.weight").unwrap().shape(), &[10, 16]);
        match kind {
            NormChoice::Norm(NormKind::Batch | NormKind::BatchRenorm) => {
                let t = st.tensor("norm2.num_batches_tracked").unwrap();
                assert_eq!((t.dtype(), t.shape()), (Dtype::I64, &[][..]));
                assert_eq!(st.tensor("norm3.running_var").unwrap().shape(), &[16]);
                assert_eq!(st.len(), 3 * 7 + 2);
            }
            NormChoice::Norm(NormKind::Layer) => {
                assert_eq!(st.tensor("norm1.weight").unwrap().shape(), &[8, 32, 32]);
            }
            NormChoice::None => assert_eq!(st.len(), 3 * 2 + 2),
            _ => assert_eq!(st.len(), 3 * 4 + 2),
        }
    }
}

fn load_err(path: &Path) -> String {
    match checkpoint::load(path) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "error does not name the file: {msg}"
            );
            assert!(!msg.contains('\n'), "multi-line error: {msg}");
            msg
        }
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

/// A stored tensor taken apart: name, dtype, shape, bytes.
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

/// The tensors of a BatchNorm model and its metadata, to edit.
fn parts() -> (Vec<Raw>, HashMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let cfg = ModelConfig::new([16, 32, 64], NormChoice::Norm(NormKind::Batch), 8, 1e-5);
    let m = Model::new(&cfg, 1).unwrap();
    checkpoint::save(&p, &m, &meta(&data::synthetic(0, 10, 10))).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    (tensors, header.metadata().clone().unwrap())
}

fn write_parts(path: &Path, tensors: &[Raw], md: Option<HashMap<String, String>>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, md).unwrap()).unwrap();
}

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let f = |name: &str| dir.path().join(name);
    let missing = f("missing.safetensors");
    assert!(matches!(
        checkpoint::load(&missing),
        Err(TrainError::Io { .. })
    ));
    load_err(&missing);

    let (tensors, md) = parts();
    write_parts(&f("good.safetensors"), &tensors, Some(md.clone()));
    checkpoint::load(&f("good.safetensors")).unwrap();
    let good = std::fs::read(f("good.safetensors")).unwrap();

    std::fs::write(f("old.ckpt"), b"NLCKPT\0\x01 and the rest").unwrap();
    assert!(load_err(&f("old.ckpt")).contains("earlier normlab versions"));
    std::fs::write(f("junk"), b"PK\x03\x04 not a checkpoint at all").unwrap();
    assert!(load_err(&f("junk")).contains("not a safetensors file"));
    std::fs::write(f("trunc"), &good[..good.len() - 4]).unwrap();
    assert!(load_err(&f("trunc")).contains("not a safetensors file"));
    std::fs::write(f("short"), &good[..5]).unwrap();
    assert!(load_err(&f("short")).contains("not a safetensors file"));

    write_parts(&f("foreign"), &tensors, None);
    assert!(load_err(&f("foreign")).contains("without normlab's metadata"));
    let edit = |name: &str, key: &str, value: &str| {
        let mut m = md.clone();
        m.insert(key.into(), value.into());
        write_parts(&f(name), &tensors, Some(m));
        load_err(&f(name))
    };
    assert!(edit("v2", keys::CHECKPOINT, "2").contains("checkpoint layout 2 is not supported"));
    let cfg = &md[keys::MODEL];
    let other = cfg.replacen("[16,32,64]", "[16,32,32]", 1);
    assert_ne!(&other, cfg);
    let msg = edit("widths", keys::MODEL, &other);
    assert!(
        msg.contains("tensor conv3.weight has shape [64, 32, 3, 3], the model (BatchNorm, plain widths [16, 32, 32]) needs [32, 32, 3, 3]"),
        "{msg}"
    );
    // The norm is its descriptor's spec string, `"norm":"batch:eps=...,..."`.
    let with_norm = |spec: &str| {
        let at = cfg.find("\"norm\":\"").unwrap() + "\"norm\":\"".len();
        let end = at + cfg[at..].find('"').unwrap();
        format!("{}{spec}{}", &cfg[..at], &cfg[end..])
    };
    let group = with_norm("group:groups=5,eps=0.00001,affine=true");
    assert!(edit("groups", keys::MODEL, &group).contains("groups = 5"));
    let layer = with_norm("layer:eps=0.00001,affine=true");
    assert!(
        edit("layer", keys::MODEL, &layer)
            .contains("has tensor norm1.num_batches_tracked, which the model (LayerNorm")
    );
    assert!(edit("json", keys::MODEL, "{x}").contains("is not JSON"));
    assert!(
        edit(
            "norm",
            keys::INPUT_NORMALIZATION,
            r#"{"mean":[0.5,0.5,0.5],"std":[0.2,0.0,0.2]}"#
        )
        .contains("std that is not positive")
    );

    let without: Vec<_> = tensors
        .iter()
        .filter(|t| t.0 != "norm2.running_var")
        .cloned()
        .collect();
    write_parts(&f("lacks"), &without, Some(md.clone()));
    assert!(load_err(&f("lacks")).contains("lacks tensor norm2.running_var"));
    let mut dtype = tensors.clone();
    for t in &mut dtype {
        if t.0 == "norm1.num_batches_tracked" {
            t.1 = Dtype::F64;
        }
    }
    write_parts(&f("dtype"), &dtype, Some(md.clone()));
    assert!(load_err(&f("dtype")).contains("norm1.num_batches_tracked is F64, expected I64"));
}
