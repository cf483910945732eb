//! Configuration parsing, validation messages, the learning-rate schedule and the optimiser.

use norm_train::{
    Model, ModelConfig, NormChoice, NormKind, Schedule, Sgd, TrainConfig, TrainError,
    learning_rate, model_norm,
};

#[test]
fn norm_choice_round_trips_through_strings_and_serde() {
    for k in NormChoice::all() {
        assert_eq!(k.to_string().parse::<NormChoice>().unwrap(), k);
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
    }
    let err = "batchnorm".parse::<NormChoice>().unwrap_err().to_string();
    for name in ["batchnorm", "batch", "layer", "instance", "group", "none"] {
        assert!(err.contains(name), "{err}");
    }
    // The model configuration keeps the norm's settings.
    let cfg = ModelConfig::default();
    let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn the_model_norms_have_affine_and_batchnorm_tracks_running_statistics() {
    for &k in NormKind::ALL {
        let n = model_norm(k, 4, 1e-5);
        assert!(n.affine(), "{k}");
        assert_eq!(n.tracks_running(), k.mixes_samples(), "{k}");
    }
}

#[test]
fn validation_rejects_bad_settings_with_one_line_messages() {
    let ok = TrainConfig::default();
    ok.validate(1000).unwrap();
    let check = |cfg: TrainConfig, len: usize, needles: &[&str]| {
        let msg = cfg.validate(len).unwrap_err().to_string();
        assert!(!msg.contains('\n'));
        for n in needles {
            assert!(msg.contains(n), "`{msg}` lacks `{n}`");
        }
    };
    check(
        TrainConfig {
            batch: 0,
            ..ok.clone()
        },
        1000,
        &["batch"],
    );
    check(
        TrainConfig {
            batch: 64,
            ..ok.clone()
        },
        50,
        &["64", "50"],
    );
    check(
        TrainConfig {
            epochs: 0,
            ..ok.clone()
        },
        1000,
        &["epochs"],
    );
    check(
        TrainConfig {
            base_lr: f32::NAN,
            ..ok.clone()
        },
        1000,
        &["base_lr"],
    );
    check(
        TrainConfig {
            base_lr: -0.1,
            ..ok.clone()
        },
        1000,
        &["base_lr"],
    );
    check(
        TrainConfig {
            momentum: 1.0,
            ..ok.clone()
        },
        1000,
        &["momentum"],
    );
    check(
        TrainConfig {
            weight_decay: -1.0,
            ..ok.clone()
        },
        1000,
        &["weight_decay"],
    );
    check(
        TrainConfig {
            lr_ref_batch: 0,
            ..ok.clone()
        },
        1000,
        &["lr_ref_batch"],
    );
    let mut g = ok.clone();
    g.model.norm = Some(model_norm(NormKind::Group, 3, 1e-5));
    check(g.clone(), 1000, &["groups = 3", "16"]);
    g.model.norm = Some(model_norm(NormKind::Group, 0, 1e-5));
    check(g.clone(), 1000, &["groups = 0"]);
    // Groups only matter for GroupNorm.
    g.model.norm = Some(model_norm(NormKind::Batch, 3, 1e-5));
    g.validate(1000).unwrap();
    let mut b = ok.clone();
    b.model.norm = Some(
        model_norm(NormKind::Batch, 8, 1e-5)
            .with("track_running_stats", false)
            .unwrap(),
    );
    check(b, 1000, &["BatchNorm in a model needs running statistics"]);
    let mut w = ok.clone();
    w.model.widths = [16, 0, 64];
    check(w, 1000, &["widths"]);
    assert!(matches!(
        Model::new(
            &ModelConfig {
                norm: Some(model_norm(NormKind::Group, 64, 1e-5)),
                ..ModelConfig::default()
            },
            0
        ),
        Err(TrainError::Norm { width: 16, .. })
    ));
}

#[test]
fn learning_rate_scales_with_batch_and_follows_warmup_then_schedule() {
    let cfg = TrainConfig {
        batch: 128,
        base_lr: 0.1,
        lr_ref_batch: 32,
        ..TrainConfig::default()
    };
    assert!((cfg.lr() - 0.4).abs() < 1e-6);
    let (peak, warm, total) = (0.4f32, 10, 110);
    // Linear warm-up reaching the peak at its last step.
    for t in 0..warm {
        let lr = learning_rate(Schedule::Cosine, peak, t, warm, total);
        assert!((lr - peak * (t + 1) as f32 / warm as f32).abs() < 1e-6);
    }
    // Cosine: peak right after the warm-up, half way at the middle, near 0 at the end, decreasing.
    assert!((learning_rate(Schedule::Cosine, peak, warm, warm, total) - peak).abs() < 1e-6);
    assert!(
        (learning_rate(Schedule::Cosine, peak, warm + 50, warm, total) - peak / 2.0).abs() < 1e-6
    );
    let lrs: Vec<f32> = (warm..total)
        .map(|t| learning_rate(Schedule::Cosine, peak, t, warm, total))
        .collect();
    assert!(lrs.windows(2).all(|p| p[1] <= p[0]));
    assert!(*lrs.last().unwrap() < peak * 1e-3);
    // Step: ×0.1 from half the run, ×0.01 from three quarters.
    assert_eq!(learning_rate(Schedule::Step, peak, 54, warm, total), peak);
    assert!((learning_rate(Schedule::Step, peak, 55, warm, total) - peak * 0.1).abs() < 1e-7);
    assert!((learning_rate(Schedule::Step, peak, 83, warm, total) - peak * 0.01).abs() < 1e-7);
    // No warm-up.
    assert_eq!(learning_rate(Schedule::Cosine, peak, 0, 0, total), peak);
}

#[test]
fn sgd_follows_pytorch_semantics() {
    let mut model = Model::new(&ModelConfig::default(), 0).unwrap();
    let before: Vec<Vec<f32>> = model.params().iter().map(|p| p.data.clone()).collect();
    let grads: Vec<Vec<f32>> = model
        .params()
        .iter()
        .map(|p| vec![0.5; p.data.len()])
        .collect();
    let (m, wd, lr) = (0.9f32, 0.01f32, 0.1f32);
    let mut sgd = Sgd::new(m, wd);
    sgd.step(&mut model, &grads, lr);
    sgd.step(&mut model, &grads, lr);
    for (p, p0) in model.params().iter().zip(&before) {
        let decay = if p.decay { wd } else { 0.0 };
        assert_eq!(
            p.decay,
            p.name.ends_with("weight") && !p.name.starts_with("norm"),
            "{}",
            p.name
        );
        for (&x, &x0) in p.data.iter().zip(p0) {
            // Step 1: buf = d1, p1 = p0 - lr d1. Step 2: buf = m d1 + d2, p2 = p1 - lr buf.
            let d1 = 0.5 + decay * x0;
            let x1 = x0 - lr * d1;
            let d2 = 0.5 + decay * x1;
            let x2 = x1 - lr * (m * d1 + d2);
            assert!(
                (x - x2).abs() <= 1e-6 * x2.abs().max(1.0),
                "{}: {x} vs {x2}",
                p.name
            );
        }
    }
}
