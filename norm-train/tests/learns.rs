//! Short training runs of the default CNN on a small synthetic set: for every norm the loss falls
//! and the test accuracy ends well above chance (10 %).

use norm_train::{NormKind, TrainConfig, data, train};

fn short_run(norm: NormKind) -> norm_train::TrainOutcome {
    let split = data::synthetic(7, 1536, 500);
    let mut cfg = TrainConfig {
        epochs: 4,
        batch: 32,
        ..TrainConfig::default()
    };
    cfg.model.norm = norm;
    cfg.warmup_epochs = 0.5;
    let mut step_losses = Vec::new();
    let out = train(&cfg, &split, &mut |p| {
        if let norm_train::Progress::Step { loss, .. } = p {
            step_losses.push(*loss);
        }
    })
    .unwrap();
    for e in &out.epochs {
        eprintln!("{norm}: {e:?}");
    }
    assert_eq!(step_losses.len(), 4 * (1536 / 32));
    out
}

#[test]
fn every_norm_learns() {
    for norm in NormKind::ALL {
        let out = short_run(norm);
        let first = out.epochs[0].train_loss;
        let last = out.epochs.last().unwrap().train_loss;
        assert!(
            last < 0.8 * first,
            "{norm}: train loss {first} -> {last} did not fall"
        );
        assert!(
            last < (10f32).ln(),
            "{norm}: final train loss {last} not below chance level ln 10"
        );
        let acc = out.final_test_acc();
        assert!(
            acc > 0.4,
            "{norm}: test accuracy {acc} not well above chance (0.1)"
        );
    }
}
