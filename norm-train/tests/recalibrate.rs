//! Precise BN: the re-estimated running statistics are the plain average of the batch
//! statistics, and nothing else changes.

use norm_train::{
    Model, ModelConfig, NormChoice, NormKind, Recalibrate, StateData, TrainError, data,
};

fn first(d: &data::Dataset, from: usize, n: usize) -> data::Dataset {
    data::Dataset {
        images: d.images[from * data::IMAGE_BYTES..(from + n) * data::IMAGE_BYTES].to_vec(),
        labels: d.labels[from..from + n].to_vec(),
    }
}

fn params(m: &Model) -> Vec<Vec<u32>> {
    m.params()
        .iter()
        .map(|p| p.data.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn recalibration_is_the_average_of_batch_statistics() {
    let cfg = ModelConfig::new([8, 8, 16], NormChoice::Norm(NormKind::Batch), 4, 1e-5);
    let split = data::synthetic(5, 48, 0);
    let norm = data::Normalizer::from_dataset(&split.train);
    let base = Model::new(&cfg, 7).unwrap();
    let stats = |set: &data::Dataset, images: usize, batch: usize| {
        let mut m = Model::new(&cfg, 7).unwrap();
        let r = m
            .recalibrate_batch_norm(
                set,
                &norm,
                Recalibrate {
                    images,
                    batch,
                    augment: data::Augment::NONE,
                },
            )
            .unwrap();
        assert!(!m.is_training());
        assert_eq!(params(&m), params(&base), "weights fixed");
        (m.running().into_iter().cloned().collect::<Vec<_>>(), r)
    };
    // One batch: the running statistics are that batch's (factor 1).
    let (a, ra) = stats(&first(&split.train, 0, 16), 16, 16);
    let (b, _) = stats(&first(&split.train, 16, 16), 16, 16);
    let (c, _) = stats(&first(&split.train, 32, 16), 16, 16);
    assert_eq!((ra.images, ra.batches, ra.batch), (16, 1, 16));
    // Three batches: their average, whatever the order of the running updates.
    let (all, r) = stats(&split.train, 48, 16);
    assert_eq!((r.images, r.batches, r.batch), (48, 3, 16));
    for (l, run) in all.iter().enumerate() {
        assert_eq!(run.num_batches_tracked, 3);
        for ch in 0..run.mean.len() {
            let avg = |f: fn(&norm_train::Running, usize) -> f32| {
                (f(&a[l], ch) as f64 + f(&b[l], ch) as f64 + f(&c[l], ch) as f64) / 3.0
            };
            let m = avg(|r, i| r.mean[i]);
            let v = avg(|r, i| r.var[i]);
            assert!(
                (run.mean[ch] as f64 - m).abs() <= 1e-5 * (1.0 + m.abs()),
                "mean {l} {ch}"
            );
            assert!(
                (run.var[ch] as f64 - v).abs() <= 1e-5 * (1.0 + v.abs()),
                "var {l} {ch}"
            );
        }
    }
    // A later train-mode forward is back to momentum 0.1, as in PyTorch after setting it back.
    let mut m = Model::new(&cfg, 7).unwrap();
    m.recalibrate_batch_norm(
        &split.train,
        &norm,
        Recalibrate {
            images: 48,
            batch: 16,
            augment: data::Augment::NONE,
        },
    )
    .unwrap();
    assert!(m.state_dict().iter().any(|t| t.data == StateData::Count(3)));
}

#[test]
fn recalibration_errors() {
    let split = data::synthetic(5, 8, 0);
    let norm = data::Normalizer::from_dataset(&split.train);
    let mut g = Model::new(&ModelConfig::default(), 0).unwrap();
    let e = g
        .recalibrate_batch_norm(
            &split.train,
            &norm,
            Recalibrate {
                images: 8,
                batch: 4,
                augment: data::Augment::NONE,
            },
        )
        .unwrap_err();
    assert!(matches!(e, TrainError::Recalibration { .. }));
    assert!(
        e.to_string()
            .contains("GroupNorm (G = 8), which keeps no running statistics"),
        "{e}"
    );
    let cfg = ModelConfig::new([16, 32, 64], NormChoice::Norm(NormKind::Batch), 8, 1e-5);
    let mut b = Model::new(&cfg, 0).unwrap();
    let e = b
        .recalibrate_batch_norm(
            &split.train,
            &norm,
            Recalibrate {
                images: 9,
                batch: 4,
                augment: data::Augment::NONE,
            },
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("9 images asked for, the training set has 8"),
        "{e}"
    );
    assert!(
        b.recalibrate_batch_norm(
            &split.train,
            &norm,
            Recalibrate {
                images: 0,
                batch: 4,
                augment: data::Augment::NONE
            }
        )
        .is_err()
    );
}
