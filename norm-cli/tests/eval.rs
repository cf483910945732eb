//! `norm-cli eval`: reproduces train's final test accuracy bit for bit, recalibrates BatchNorm,
//! and refuses what it cannot do in one line.

mod common;

use common::{TINY, cli, one_line_error};
use serde_json::Value;

fn json(cmd: &mut assert_cmd::Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn eval_reproduces_the_final_test_accuracy_of_train() {
    let tmp = tempfile::tempdir().unwrap();
    for norm in ["batch", "group", "layer"] {
        let ckpt = tmp.path().join(format!("{norm}.safetensors"));
        let trained = json(
            cli()
                .args(["train", "--norm", norm, "--batch", "8", "--json", "--save"])
                .arg(&ckpt)
                .args(["--train-size", "64", "--test-size", "300", "--epochs", "2"]),
        );
        let eval = json(cli().args(["eval", "--json", "--checkpoint"]).arg(&ckpt));
        assert_eq!(eval["test_acc"], trained["final_test_acc"], "{norm}");
        assert_eq!(eval["same_data_as_training"], true);
        assert_eq!(eval["data"]["fingerprint"], trained["data"]["fingerprint"]);
        // Other threads, same bits.
        let eval1 = json(
            cli()
                .args(["eval", "--json", "--threads", "1", "--checkpoint"])
                .arg(&ckpt),
        );
        assert_eq!(eval1["test_acc"], trained["final_test_acc"]);
    }
    // Other data: said so.
    let ckpt = tmp.path().join("group.safetensors");
    let out = cli()
        .args(["eval", "--test-size", "40", "--checkpoint"])
        .arg(&ckpt)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("40 test images, other data than it was trained on"),
        "{stdout}"
    );
    assert!(stdout.contains("test accuracy        "), "{stdout}");
}

#[test]
fn recalibrate_bn_reports_before_and_after_and_saves() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("bn.safetensors");
    let trained = json(
        cli()
            .args([
                "train", "--norm", "batch", "--batch", "4", "--json", "--save",
            ])
            .arg(&ckpt)
            .args(TINY),
    );
    let re = tmp.path().join("bn-precise.safetensors");
    let r = json(
        cli()
            .args([
                "eval",
                "--json",
                "--recalibrate-bn",
                "64",
                "--recalibrate-batch",
                "16",
            ])
            .arg("--checkpoint")
            .arg(&ckpt)
            .arg("--save")
            .arg(&re),
    );
    let c = &r["recalibrated"];
    assert_eq!(c["test_acc_before"], trained["final_test_acc"]);
    assert_eq!(
        (c["images"].as_u64(), c["batches"].as_u64()),
        (Some(64), Some(4))
    );
    assert_eq!(c["test_acc_after"], r["test_acc"]);
    let again = json(cli().args(["eval", "--json", "--checkpoint"]).arg(&re));
    assert_eq!(
        again["test_acc"], r["test_acc"],
        "the saved model is the recalibrated one"
    );
    let m = norm_train::checkpoint::load(&re).unwrap();
    assert!(m.model.running().iter().all(|s| s.num_batches_tracked == 4));
    let text = cli()
        .args(["eval", "--recalibrate-bn", "64", "--checkpoint"])
        .arg(&ckpt)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("test accuracy before ") && text.contains("test accuracy after  "),
        "{text}"
    );
    assert!(!text.contains("augmented"), "{text}");
    // With the training augmentation: other statistics, reported as such.
    let aug = cli()
        .args([
            "eval",
            "--recalibrate-bn",
            "64",
            "--recalibrate-augment",
            "--json",
        ])
        .arg("--checkpoint")
        .arg(&ckpt)
        .output()
        .unwrap();
    let aug: Value = serde_json::from_slice(&aug.stdout).unwrap();
    assert_eq!(aug["recalibrated"]["augmented"], true, "{aug}");
    let plain = cli()
        .args(["eval", "--recalibrate-bn", "64", "--json", "--checkpoint"])
        .arg(&ckpt)
        .output()
        .unwrap();
    let plain: Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(plain["recalibrated"]["augmented"], false, "{plain}");
}

#[test]
fn eval_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("none.safetensors");
    let msg = one_line_error(cli().args(["eval", "--checkpoint"]).arg(&missing));
    assert!(msg.contains("none.safetensors"), "{msg}");
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    let msg = one_line_error(cli().args(["eval", "--checkpoint"]).arg(&junk));
    assert!(
        msg.contains("junk.safetensors") && msg.contains("not a safetensors file"),
        "{msg}"
    );
    let g = tmp.path().join("g.safetensors");
    cli()
        .args(["train", "--batch", "8", "--save"])
        .arg(&g)
        .args(TINY)
        .assert()
        .success();
    let msg = one_line_error(
        cli()
            .args(["eval", "--recalibrate-bn", "8", "--checkpoint"])
            .arg(&g),
    );
    assert!(
        msg.contains("--recalibrate-bn needs a model whose norm keeps running statistics")
            && msg.contains("GroupNorm (G = 8)"),
        "{msg}"
    );
    let msg = one_line_error(
        cli()
            .args(["eval", "--data", "cifar10", "--checkpoint"])
            .arg(&g),
    );
    assert!(msg.contains("needs --data-dir"), "{msg}");
    let msg = one_line_error(
        cli()
            .args(["eval", "--save", "x.safetensors", "--checkpoint"])
            .arg(&g),
    );
    assert!(msg.contains("--recalibrate-bn"), "{msg}");
}
