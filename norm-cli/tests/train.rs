//! Real (tiny) `train` runs: text and JSON reports, checkpoint, threads, and the exported data
//! set read back as CIFAR-10 giving the very same run.

mod common;

use common::{TINY, cli};
use serde_json::Value;

fn train_json(extra: &[&str]) -> Value {
    let out = cli()
        .args(["train", "--norm", "group", "--batch", "8", "--json"])
        .args(TINY)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.is_empty(),
        "--json prints nothing on stderr: {stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim_end().lines().count(),
        1,
        "one JSON object on one line"
    );
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn text_report() {
    let out = cli()
        .args(["train", "--norm", "batch", "--batch", "4", "--threads", "2"])
        .args(TINY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for want in [
        "BatchNorm, batch 4, seed 0, 1 epoch(s)",
        "data: synthetic (seed 0), 64 train / 32 test images",
        "final test accuracy",
        "best test accuracy",
        "final train loss",
        "wall time",
        "images/s",
        &format!(
            "SIMD                 {}, 2 thread(s)",
            norm_kernels::simd_level()
        ),
    ] {
        assert!(stdout.contains(want), "{want:?} missing in\n{stdout}");
    }
    // Without a terminal the bar is hidden, but each epoch is logged on stderr.
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("epoch 1/1: loss "), "{stderr}");
}

#[test]
fn json_report_and_thread_independence() {
    let one = train_json(&["--threads", "1"]);
    let two = train_json(&["--threads", "2"]);
    for key in [
        "final_test_acc",
        "best_test_acc",
        "final_train_loss",
        "images_per_sec",
        "wall_seconds",
    ] {
        assert!(one[key].is_number(), "{key}: {one}");
    }
    assert_eq!(one["simd"], norm_kernels::simd_level());
    assert_eq!(one["threads"], 1);
    assert_eq!(two["threads"], 2);
    assert_eq!(one["norm"], "group");
    assert_eq!(one["config"]["batch"], 8);
    assert_eq!(one["per_epoch"].as_array().unwrap().len(), 1);
    let acc = one["final_test_acc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    // Results are bit-identical for any number of threads.
    assert_eq!(
        one["per_epoch"][0]["train_loss"],
        two["per_epoch"][0]["train_loss"]
    );
    assert_eq!(one["final_test_acc"], two["final_test_acc"]);
}

#[test]
fn save_writes_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("model.safetensors");
    let out = cli()
        .args(["train", "--norm", "layer", "--batch", "8", "--save"])
        .arg(&p)
        .args(TINY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("model saved to"));
    // The curves go beside the checkpoint.
    assert!(stdout.contains("curves written to"), "{stdout}");
    let png = std::fs::read(tmp.path().join("model.curves.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(tmp.path().join("model.curves.svg").exists());
    let c = norm_train::checkpoint::load(&p).unwrap();
    assert_eq!(
        c.model.config().norm.map(|n| n.kind()),
        Some(norm_train::NormKind::Layer)
    );
    let data = c.meta.data.unwrap();
    assert_eq!(
        (data.source.as_str(), data.seed, data.train_size),
        ("synthetic", Some(0), 64)
    );
}

#[test]
fn exported_data_trains_identically_as_cifar10() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    cli()
        .args([
            "data",
            "export",
            "--seed",
            "3",
            "--train-size",
            "64",
            "--test-size",
            "32",
            "--out",
        ])
        .arg(&d)
        .assert()
        .success()
        .stderr(predicates::str::contains(
            "wrote 64 train and 32 test images",
        ));
    for f in [
        "data_batch_1.bin",
        "test_batch.bin",
        "batches.meta.txt",
        "samples.png",
    ] {
        assert!(d.join(f).exists(), "{f}");
    }
    let meta = std::fs::read_to_string(d.join("batches.meta.txt")).unwrap();
    assert_eq!(
        meta.lines().collect::<Vec<_>>(),
        norm_train::data::CLASS_NAMES
    );
    let png = std::fs::read(d.join("samples.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    let synth = train_json(&["--data-seed", "3"]);
    let cifar = train_json(&["--data", "cifar10", "--data-dir", d.to_str().unwrap()]);
    assert_eq!(
        synth["data"]["fingerprint"], cifar["data"]["fingerprint"],
        "same images"
    );
    assert_eq!(cifar["data"]["source"], "cifar10");
    assert_eq!(
        synth["per_epoch"][0]["train_loss"],
        cifar["per_epoch"][0]["train_loss"]
    );
    assert_eq!(synth["final_test_acc"], cifar["final_test_acc"]);
    // --train-size takes the first images of a CIFAR-10 folder.
    let out = cli()
        .args([
            "train",
            "--batch",
            "8",
            "--json",
            "--epochs",
            "1",
            "--train-size",
            "40",
        ])
        .args(["--data", "cifar10", "--data-dir", d.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["data"]["train_size"], 40);
}

#[test]
fn plot_draws_the_training_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plots");
    let out = cli()
        .args(["train", "--batch", "8", "--plot"])
        .arg(&dir)
        .args(TINY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(dir.join("training_curves.svg")).unwrap();
    assert!(
        svg.contains("test accuracy (%)")
            && svg.contains("train loss")
            && svg.contains("GroupNorm")
    );
    let png = std::fs::read(dir.join("training_curves.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}
