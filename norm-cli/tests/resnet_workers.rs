//! `--model`, `--width`, `--workers` and the `--per-worker` sweep from the command line.

mod common;

use std::fs;

use common::{TINY, cli, one_line_error};
use norm_cli::store::read_results;

fn contains(msg: &str, want: &str) {
    assert!(msg.contains(want), "expected {want:?} in {msg:?}");
}

#[test]
fn bad_models_and_worker_counts_are_one_line_errors() {
    let msg = one_line_error(cli().args(["train", "--model", "resnet9"]));
    contains(&msg, "invalid value 'resnet9' for '--model <MODEL>'");
    contains(&msg, "possible values: plain, resnet8, resnet14, resnet20");
    let msg = one_line_error(cli().args(["train", "--workers", "0"]).args(TINY));
    contains(&msg, "workers must be at least 1");
    let msg = one_line_error(
        cli()
            .args(["train", "--workers", "3", "--batch", "32"])
            .args(TINY),
    );
    contains(
        &msg,
        "3 workers do not divide the batch of 32 into equal shares",
    );
    let msg = one_line_error(cli().args(["train", "--width", "2"]).args(TINY));
    contains(&msg, "width = 2 is invalid: must be 1 for the plain CNN");
    let msg = one_line_error(
        cli()
            .args(["train", "--model", "resnet8", "--width", "0"])
            .args(TINY),
    );
    contains(&msg, "width = 0 is invalid");
    let msg = one_line_error(
        cli()
            .args(["sweep", "--per-worker", "3,4", "--batch", "8", "--out", "x"])
            .args(TINY),
    );
    contains(&msg, "--per-worker 3 does not divide --batch 8");
    let msg = one_line_error(
        cli()
            .args(["sweep", "--recalibrate-bn", "100000", "--out"])
            .arg(tempfile::tempdir().unwrap().path().join("s"))
            .args(TINY),
    );
    contains(&msg, "--recalibrate-bn 100000: needs 1 to");
    let msg = one_line_error(cli().args(["sweep", "--per-worker", "4", "--out", "x"]));
    contains(&msg, "--batch <B>");
}

#[test]
fn resnet_trains_with_workers_and_saves_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("r8.ckpt");
    let out = cli()
        .args([
            "train",
            "--model",
            "resnet8",
            "--width",
            "0.25",
            "--norm",
            "batch",
            "--batch",
            "8",
            "--workers",
            "4",
            "--json",
            "--threads",
            "2",
            "--save",
        ])
        .arg(&ckpt)
        .args(TINY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["config"]["model"]["arch"], "resnet8");
    assert_eq!(report["config"]["workers"], 4);
    let bytes = fs::read(&ckpt).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains(r#"\"arch\":\"resnet8\""#)
            && text.contains("layer3.0.shortcut.1.running_mean"),
        "{text}"
    );
    // The text report names the model and the split.
    let out = cli()
        .args([
            "train", "--model", "resnet14", "--width", "0.25", "--norm", "batch", "--batch", "8",
        ])
        .args(["--workers", "2", "--threads", "1"])
        .args(TINY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    contains(&text, "batch 8 over 2 workers (4 per worker)");
    contains(&text, "resnet14, width 0.25 (stages [4, 8, 16])");
}

#[test]
fn per_worker_sweep_records_the_axis_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        cli()
            .args([
                "sweep",
                "--norms",
                "batch,group",
                "--per-worker",
                "2,4",
                "--batch",
                "4",
            ])
            .args([
                "--seeds", "1", "--model", "resnet8", "--width", "0.25", "--groups", "2",
            ])
            .args(["--threads", "2", "--recalibrate-bn", "8", "--save-models"])
            .args(TINY)
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rs, _) = read_results(&dir.path().join("results.jsonl")).unwrap();
    let mut cells: Vec<(String, usize, Option<usize>)> = rs
        .iter()
        .map(|r| (r.norm.to_string(), r.batch, r.per_worker))
        .collect();
    cells.sort();
    // GroupNorm does not depend on the split: one cell, with one worker.
    assert_eq!(
        cells,
        [
            ("batch".into(), 4, Some(2)),
            ("batch".into(), 4, Some(4)),
            ("group".into(), 4, Some(4))
        ]
    );
    // Re-estimated statistics for the norm that keeps them, at both batch sizes.
    for r in &rs {
        let rc = r.recalibrated;
        assert_eq!(rc.is_some(), r.norm.to_string() == "batch", "{r:?}");
        assert!(rc.is_none_or(|rc| rc.images == 8
            && rc.augmented
            && (0.0..=1.0).contains(&rc.per_worker)
            && (0.0..=1.0).contains(&rc.whole_batch)));
    }
    // Every cell's model, saved before its re-estimate: eval gives the cell's own accuracy.
    let mut models: Vec<String> = fs::read_dir(dir.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    models.sort();
    assert_eq!(
        models,
        [
            "batch-b4-k2-s0.safetensors",
            "batch-b4-k4-s0.safetensors",
            "group-b4-k4-s0.safetensors"
        ]
    );
    let bn2 = rs.iter().find(|r| r.per_worker == Some(2)).unwrap();
    let out = cli()
        .args(["eval", "--json", "--threads", "2", "--checkpoint"])
        .arg(dir.path().join("models/batch-b4-k2-s0.safetensors"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["test_acc"].as_f64().map(|a| a as f32),
        bn2.final_test_acc.map(|a| a as f32)
    );
    let recipe = fs::read_to_string(dir.path().join("recipe.json")).unwrap();
    contains(&recipe, r#""batch": 4"#);
    contains(&recipe, r#""arch": "resnet8""#);
    let md = fs::read_to_string(dir.path().join("summary.md")).unwrap();
    contains(&md, "images per worker (total batch 4)");
    contains(&md, "| 2 per worker | 4 per worker |");
    contains(&md, "GroupNorm does not depend on the worker split");
    contains(&md, "## Re-estimated running statistics");
    contains(
        &md,
        "| BatchNorm (augmented images), re-estimated, whole batch |",
    );
    let gn_rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| GroupNorm |"))
        .collect();
    assert_eq!(gn_rows.len(), 2, "{md}");
    assert!(gn_rows.iter().all(|l| !l.contains('—')), "{md}");
    let csv = fs::read_to_string(dir.path().join("summary.csv")).unwrap();
    contains(&csv, "per_worker2_mean");
    let svg = fs::read_to_string(dir.path().join("accuracy_vs_batch.svg")).unwrap();
    contains(&svg, "images per worker");
    let out = run();
    assert!(out.status.success());
    contains(&String::from_utf8_lossy(&out.stderr), "3 already in");
    // A batch sweep's folder is not mixed with a per-worker one.
    let msg = one_line_error(
        cli()
            .args([
                "sweep",
                "--norms",
                "batch",
                "--batches",
                "4",
                "--seeds",
                "1",
            ])
            .args(["--model", "resnet8", "--width", "0.25", "--groups", "2"])
            .args(TINY)
            .arg("--out")
            .arg(dir.path()),
    );
    contains(&msg, "different recipe");
}
