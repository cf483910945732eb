//! insta snapshots of rendered output: the train report (from fixed epoch statistics), the
//! sweep summary (Markdown and CSV, from fixed cell results) and `--help`. Timings are fixed
//! inputs here, so nothing depends on the machine. Under CI=true a missing snapshot fails.

mod common;

use common::cli;
use norm_cli::store::CellResult;
use norm_cli::summary::{Summary, render_csv, render_markdown};
use norm_cli::train_cmd::{DataInfo, Report, render_report};
use norm_train::{EpochStats, NormKind, Schedule, TrainConfig, data::Augment};
use serde_json::json;

fn fixed_config() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.model.widths = [16, 32, 64];
    c.model.norm = Some(norm_train::model_norm(NormKind::Group, 8, 1e-5));
    c.epochs = 3;
    c.batch = 8;
    c.base_lr = 0.1;
    c.lr_ref_batch = 32;
    c.momentum = 0.9;
    c.weight_decay = 5e-4;
    c.warmup_epochs = 1.0;
    c.schedule = Schedule::Cosine;
    c.augment = Augment {
        crop_pad: 4,
        flip: true,
    };
    c.seed = 1;
    c
}

fn fixed_epochs() -> Vec<EpochStats> {
    let e = |epoch, lr, train_loss, train_acc, test_acc, images_per_sec, seconds| EpochStats {
        epoch,
        lr,
        train_loss,
        train_acc,
        test_acc,
        images_per_sec,
        seconds,
    };
    vec![
        e(0, 0.025, 2.1034, 0.2212, 0.3145, 812.4, 14.2),
        e(1, 0.0125, 1.6021, 0.4187, 0.4870, 830.9, 13.8),
        e(2, 0.0, 1.3388, 0.5223, 0.4815, 825.0, 13.9),
    ]
}

#[test]
fn train_report() {
    let data = DataInfo {
        source: "synthetic",
        seed: Some(0),
        train_size: 10_000,
        test_size: 2_000,
        fingerprint: "0123456789abcdef".into(),
    };
    let mut r = Report::new(&fixed_config(), data, fixed_epochs(), 42.0);
    r.simd = "avx2+fma".into();
    r.threads = 2;
    assert_eq!(r.best_epoch, 2);
    insta::assert_snapshot!("train_report", render_report(&r));
    r.saved = Some("model.safetensors".into());
    let text = render_report(&r);
    assert!(
        text.ends_with("model saved to       model.safetensors\n"),
        "{text}"
    );
}

fn cell(norm: &str, batch: usize, seed: u64, acc: f64) -> CellResult {
    CellResult {
        norm: norm.parse().unwrap(),
        batch,
        per_worker: None,
        seed,
        status: norm_cli::store::CellStatus::Ok,
        diverged: None,
        recipe: recipe(),
        test_acc_per_epoch: vec![acc / 2.0, acc],
        train_loss_per_epoch: vec![2.0, 1.5],
        final_test_acc: Some(acc),
        recalibrated: None,
        images_per_sec: 800.0,
        seconds: 30.0,
        simd: "avx2+fma".into(),
        threads: 2,
    }
}

fn recipe() -> serde_json::Value {
    json!({
        "augment": {"crop_pad": 4, "flip": true}, "base_lr": 0.1,
        "data": {"fingerprint": "0123456789abcdef", "seed": 0, "source": "synthetic", "test_size": 2000, "train_size": 10000},
        "epochs": 2, "lr_ref_batch": 32, "model": {"eps": 0.00001, "groups": 8, "widths": [16, 32, 64]},
        "momentum": 0.9, "schedule": "cosine", "warmup_epochs": 1.0, "weight_decay": 0.0005
    })
}

fn fixed_results() -> Vec<CellResult> {
    let mut v = Vec::new();
    for (norm, accs) in [
        ("group", [0.612, 0.618, 0.621, 0.615, 0.619]),
        ("batch", [0.452, 0.531, 0.583, 0.611, 0.624]),
        ("layer", [0.571, 0.575, 0.569, 0.580, 0.577]),
    ] {
        for (b, a) in [2, 4, 8, 16, 32].into_iter().zip(accs) {
            for seed in 0..3u64 {
                v.push(cell(norm, b, seed, a + 0.004 * seed as f64 - 0.004));
            }
        }
    }
    v
}

#[test]
fn sweep_summary() {
    let s = Summary::from_results(&fixed_results());
    insta::assert_snapshot!("summary_md", render_markdown(&s, &recipe()));
    insta::assert_snapshot!("summary_csv", render_csv(&s));
}

#[test]
fn sweep_summary_with_uneven_seeds_and_gaps() {
    let mut rs = fixed_results();
    let dropped = |r: &CellResult| {
        (r.norm.name() == "batch" && r.batch == 2) || (r.norm.name() == "layer" && r.seed == 2)
    };
    rs.retain(|r| !dropped(r));
    rs.push(cell("instance", 4, 0, 0.5));
    let s = Summary::from_results(&rs);
    insta::assert_snapshot!("summary_md_uneven", render_markdown(&s, &recipe()));
}

/// BatchNorm cells with re-estimated statistics (two of three seeds at batch 2): the section
/// averages over the seeds that have them, and its "of training" row over the same seeds.
#[test]
fn sweep_summary_with_recalibrated_cells() {
    let mut rs = fixed_results();
    for r in rs.iter_mut().filter(|r| r.norm.name() == "batch") {
        if r.batch == 2 && r.seed == 2 {
            continue;
        }
        let a = r.final_test_acc.unwrap_or(0.0);
        r.recalibrated = Some(norm_cli::store::RecalibratedAcc {
            images: 2000,
            per_worker: a + 0.01,
            whole_batch: a + 0.02 * (32.0 / r.batch as f64).log2(),
            augmented: r.seed != 1,
        });
    }
    let s = Summary::from_results(&rs);
    insta::assert_snapshot!("summary_md_recalibrated", render_markdown(&s, &recipe()));
}

/// `-h` of a subcommand with norm-train's defaults (which may be retuned) replaced by a marker.
fn help(args: &[&str]) -> String {
    let out = cli().args(args).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let from_train_config = [
        "--epochs",
        "--lr ",
        "--lr-ref-batch",
        "--schedule",
        "--warmup",
        "--momentum",
        "--weight-decay",
        "--widths",
        "--groups",
        "--eps",
        "--batch ",
    ];
    let redact = |l: &str, marker: &str| match l.find("[default: ") {
        Some(i) => {
            let rest = &l[i..];
            let end = rest.find(']').map_or(rest.len(), |j| j + 1);
            format!("{}[default: <{marker}>]{}", &l[..i], &rest[end..])
        }
        None => l.to_owned(),
    };
    text.lines()
        .map(|l| {
            let opt = l.trim_start();
            if args.contains(&"apply") {
                l.to_owned()
            } else if from_train_config.iter().any(|o| opt.starts_with(o)) {
                redact(l, "TrainConfig::default()")
            } else if opt.starts_with("--train-size") || opt.starts_with("--test-size") {
                redact(l, "norm_train::data::DEFAULT_*")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn help_texts() {
    insta::assert_snapshot!("help", help(&["--help"]));
    insta::assert_snapshot!("help_train", help(&["train", "-h"]));
    insta::assert_snapshot!("help_eval", help(&["eval", "-h"]));
    insta::assert_snapshot!("help_sweep", help(&["sweep", "-h"]));
    insta::assert_snapshot!("help_report", help(&["report", "-h"]));
    insta::assert_snapshot!("help_data_export", help(&["data", "export", "-h"]));
    insta::assert_snapshot!("help_apply", help(&["apply", "-h"]));
}
