//! Checkpoint round trips and load errors.

use std::path::Path;

use norm_train::{Model, ModelConfig, NormKind, TrainConfig, TrainError, data, train};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn save_then_load_restores_parameters_statistics_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let split = data::synthetic(2, 96, 60);
    let norm = data::Normalizer::from_dataset(&split.train);
    for kind in NormKind::ALL {
        let mut cfg = TrainConfig {
            epochs: 1,
            batch: 16,
            ..TrainConfig::default()
        };
        cfg.model = ModelConfig {
            widths: [8, 16, 16],
            norm: kind,
            groups: 4,
            eps: 1e-4,
            ..ModelConfig::default()
        };
        let mut out = train(&cfg, &split, &mut |_| {}).unwrap();
        let path = dir.path().join(format!("{kind}.ckpt"));
        out.model.save(&path).unwrap();
        let mut back = Model::load(&path).unwrap();
        assert_eq!(back.config(), &cfg.model);
        assert!(!back.is_training());
        for (a, b) in out.model.params().iter().zip(back.params()) {
            assert_eq!(
                (&a.name, &a.shape, bits(&a.data)),
                (&b.name, &b.shape, bits(&b.data))
            );
        }
        assert_eq!(out.model.running(), back.running());
        if kind == NormKind::Batch {
            assert!(back.running()[0].num_batches_tracked > 0);
        }
        assert_eq!(
            out.model.evaluate(&split.test, &norm),
            back.evaluate(&split.test, &norm)
        );
    }
}

fn load_err(path: &Path) -> String {
    match Model::load(path) {
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

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.ckpt");
    let model = Model::new(
        &ModelConfig {
            norm: NormKind::Batch,
            ..ModelConfig::default()
        },
        1,
    )
    .unwrap();
    model.save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let missing = dir.path().join("missing.ckpt");
    assert!(matches!(Model::load(&missing), Err(TrainError::Io { .. })));
    load_err(&missing);

    let write = |name: &str, b: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    assert!(
        load_err(&write("magic.ckpt", b"PK\x03\x04 not a checkpoint at all")).contains("magic")
    );
    let mut v2 = bytes.clone();
    v2[7] = 2;
    assert!(load_err(&write("version.ckpt", &v2)).contains("version 2"));
    assert!(
        load_err(&write("truncated.ckpt", &bytes[..bytes.len() - 4]))
            .contains("bytes of tensor data")
    );
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 4]);
    assert!(load_err(&write("trailing.ckpt", &longer)).contains("bytes of tensor data"));
    assert!(load_err(&write("short.ckpt", &bytes[..10])).contains("magic"));
    let mut huge = bytes.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(load_err(&write("header_len.ckpt", &huge)).contains("header length"));

    // A header edited to another config no longer matches its tensors.
    let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[16..16 + hlen]).unwrap();
    let edited = header.replacen("\"widths\":[16,32,64]", "\"widths\":[16,32,32]", 1);
    assert_ne!(edited, header);
    let mut b = bytes[..8].to_vec();
    b.extend_from_slice(&(edited.len() as u64).to_le_bytes());
    b.extend_from_slice(edited.as_bytes());
    b.extend_from_slice(&bytes[16 + hlen..]);
    assert!(load_err(&write("mismatch.ckpt", &b)).contains("does not match"));
    let bad_groups = header.replacen("\"groups\":8", "\"groups\":5", 1).replacen(
        "\"norm\":\"batch\"",
        "\"norm\":\"group\"",
        1,
    );
    let mut b = bytes[..8].to_vec();
    b.extend_from_slice(&(bad_groups.len() as u64).to_le_bytes());
    b.extend_from_slice(bad_groups.as_bytes());
    b.extend_from_slice(&bytes[16 + hlen..]);
    assert!(load_err(&write("groups.ckpt", &b)).contains("groups = 5"));
    let mut b = bytes[..8].to_vec();
    b.extend_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(b"{x}");
    assert!(load_err(&write("json.ckpt", &b)).contains("bad header"));
}
