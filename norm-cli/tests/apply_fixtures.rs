//! `norm-cli apply` against the PyTorch fixtures: every case's y, dx, dweight, dbias (and for
//! BatchNorm running_mean, running_var, and y_eval in --eval mode) to 1e-4 abs-or-rel.

mod common;

use std::path::Path;

use common::{cli, fixtures};
use norm_cli::npy::read_f32;
use serde_json::Value;

fn assert_close(got: &Path, want: &Path) {
    let g = read_f32(got).unwrap();
    let w = read_f32(want).unwrap();
    assert_eq!(g.shape, w.shape, "{} vs {}", got.display(), want.display());
    for (i, (a, b)) in g.data.iter().zip(&w.data).enumerate() {
        let d = (a - b).abs();
        assert!(
            d <= 1e-4 || d <= 1e-4 * b.abs(),
            "{} [{i}]: got {a}, PyTorch {b} (|diff| {d})",
            got.display()
        );
    }
    // numpy.load needs a little-endian float32 header.
    let bytes = std::fs::read(got).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert!(String::from_utf8_lossy(&bytes[..128]).contains("'descr': '<f4'"));
}

fn manifest() -> Vec<Value> {
    let path = fixtures().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {} (set NORMLAB_FIXTURES): {e}", path.display()));
    let m: Value = serde_json::from_str(&text).unwrap();
    m["cases"].as_array().unwrap().clone()
}

#[test]
fn every_fixture_case_matches_pytorch() {
    let cases = manifest();
    assert!(cases.len() >= 7, "expected the 7 fixture cases");
    let tmp = tempfile::tempdir().unwrap();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let norm = case["norm"].as_str().unwrap();
        let dir = fixtures().join(name);
        let out = tmp.path().join(name);
        let mut cmd = cli();
        cmd.arg("apply")
            .args(["--norm", norm])
            .args(["--eps", &case["eps"].as_f64().unwrap().to_string()])
            .arg("--input")
            .arg(dir.join("x.npy"))
            .arg("--grad-output")
            .arg(dir.join("dy.npy"))
            .arg("--out-dir")
            .arg(&out);
        if let Some(g) = case.get("groups").and_then(Value::as_u64) {
            cmd.args(["--groups", &g.to_string()]);
        }
        if let Some(m) = case.get("momentum").and_then(Value::as_f64) {
            cmd.args(["--momentum", &m.to_string()]);
        }
        let affine = dir.join("weight.npy").exists();
        if affine {
            cmd.arg("--weight")
                .arg(dir.join("weight.npy"))
                .arg("--bias")
                .arg(dir.join("bias.npy"));
        }
        cmd.assert().success();
        let mut files = vec!["y", "dx"];
        if affine {
            files.extend(["dweight", "dbias"]);
        } else {
            assert!(
                !out.join("dweight.npy").exists(),
                "{name}: dweight without affine"
            );
        }
        if norm == "batch" {
            files.extend(["running_mean", "running_var"]);
        } else {
            assert!(
                !out.join("running_mean.npy").exists(),
                "{name}: running stats for {norm}"
            );
        }
        for f in files {
            assert_close(&out.join(format!("{f}.npy")), &dir.join(format!("{f}.npy")));
        }

        if norm == "batch" {
            let eval_out = tmp.path().join(format!("{name}_eval"));
            let mut cmd = cli();
            cmd.arg("apply")
                .args(["--norm", "batch", "--eval"])
                .args(["--eps", &case["eps"].as_f64().unwrap().to_string()])
                .arg("--input")
                .arg(dir.join("x_eval.npy"))
                .arg("--running-mean")
                .arg(dir.join("running_mean.npy"))
                .arg("--running-var")
                .arg(dir.join("running_var.npy"))
                .arg("--out-dir")
                .arg(&eval_out);
            if affine {
                cmd.arg("--weight")
                    .arg(dir.join("weight.npy"))
                    .arg("--bias")
                    .arg(dir.join("bias.npy"));
            }
            cmd.assert().success();
            assert_close(&eval_out.join("y.npy"), &dir.join("y_eval.npy"));
            assert!(
                !eval_out.join("running_mean.npy").exists(),
                "eval must not update running stats"
            );
        }
    }
}

#[test]
fn train_mode_batch_norm_starts_from_given_running_stats() {
    // Starting from the fixture's post-step statistics, one more step with momentum 0.1 gives
    // rm' = 0.9·rm + 0.1·batch_mean, where batch_mean = (rm − 0.9·0) / 0.1 from the first step.
    let dir = fixtures().join("bn_batch2");
    let tmp = tempfile::tempdir().unwrap();
    cli()
        .arg("apply")
        .args(["--norm", "batch", "--input"])
        .arg(dir.join("x.npy"))
        .arg("--running-mean")
        .arg(dir.join("running_mean.npy"))
        .arg("--running-var")
        .arg(dir.join("running_var.npy"))
        .arg("--out-dir")
        .arg(tmp.path())
        .assert()
        .success();
    let rm1 = read_f32(&dir.join("running_mean.npy")).unwrap().data;
    let rv1 = read_f32(&dir.join("running_var.npy")).unwrap().data;
    let rm2 = read_f32(&tmp.path().join("running_mean.npy")).unwrap().data;
    let rv2 = read_f32(&tmp.path().join("running_var.npy")).unwrap().data;
    for c in 0..rm1.len() {
        let batch_mean = rm1[c] / 0.1;
        let batch_var = (rv1[c] - 0.9) / 0.1;
        let want_m = 0.9 * rm1[c] + 0.1 * batch_mean;
        let want_v = 0.9 * rv1[c] + 0.1 * batch_var;
        assert!(
            (rm2[c] - want_m).abs() < 1e-4,
            "channel {c}: {} vs {want_m}",
            rm2[c]
        );
        assert!(
            (rv2[c] - want_v).abs() < 1e-4,
            "channel {c}: {} vs {want_v}",
            rv2[c]
        );
    }
    // Without --grad-output only y and the running statistics are written.
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["running_mean.npy", "running_var.npy", "y.npy"]);
}
