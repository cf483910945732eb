//! Every kind of bad input ends in a one-line `error: ...` naming the problem and a non-zero
//! exit code — never a panic or a backtrace.

mod common;

use std::fs;

use common::{TINY, cli, fixtures, one_line_error};
use norm_cli::npy::write_f32;

/// Writes a 20/10-image synthetic set in CIFAR-10 format to `dir`.
fn export_small(dir: &std::path::Path) {
    cli()
        .args([
            "data",
            "export",
            "--train-size",
            "20",
            "--test-size",
            "10",
            "--out",
        ])
        .arg(dir)
        .assert()
        .success();
}

fn contains(msg: &str, want: &str) {
    assert!(msg.contains(want), "expected {want:?} in {msg:?}");
}

#[test]
fn unknown_norm() {
    let msg = one_line_error(cli().args(["train", "--norm", "groupp"]));
    contains(&msg, "invalid value 'groupp' for '--norm <NORM>'");
    contains(
        &msg,
        "possible values: batch, layer, instance, group, renorm, none",
    );
    let msg = one_line_error(cli().args(["sweep", "--norms", "batch,foo", "--out", "x"]));
    contains(&msg, "invalid value 'foo'");
    let out = cli().args(["apply", "--norm", "none"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn groups_not_dividing_channels() {
    let msg = one_line_error(cli().args(["train", "--groups", "3"]).args(TINY));
    contains(
        &msg,
        "groups = 3 must be at least 1 and divide channels = 16",
    );
    let tmp = tempfile::tempdir().unwrap();
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "group", "--groups", "3", "--input"])
            .arg(fixtures().join("gn_g2/x.npy"))
            .arg("--out-dir")
            .arg(tmp.path()),
    );
    contains(
        &msg,
        "GroupNorm: groups = 3 must be at least 1 and divide channels = 8",
    );
}

#[test]
fn batch_zero_too_large_and_epochs_zero() {
    let msg = one_line_error(cli().args(["train", "--batch", "0"]).args(TINY));
    contains(&msg, "batch size must be at least 1");
    let msg = one_line_error(cli().args(["train", "--batch", "65"]).args(TINY));
    contains(
        &msg,
        "batch size 65 is larger than the training set (64 images)",
    );
    let msg = one_line_error(cli().args(["train", "--epochs", "0", "--train-size", "64"]));
    contains(&msg, "epochs must be at least 1");
    let tmp = tempfile::tempdir().unwrap();
    let msg = one_line_error(
        cli()
            .args(["sweep", "--batches", "2,128", "--out"])
            .arg(tmp.path().join("s"))
            .args(TINY),
    );
    contains(
        &msg,
        "batch 128: batch size 128 is larger than the training set",
    );
    assert!(
        !tmp.path().join("s").exists(),
        "nothing is created before the check"
    );
    let msg = one_line_error(
        cli()
            .args(["sweep", "--seeds", "0", "--out"])
            .arg(tmp.path().join("s"))
            .args(TINY),
    );
    contains(&msg, "selects no seed");
    let msg = one_line_error(cli().args(["train", "--threads", "0"]).args(TINY));
    contains(&msg, "--threads must be at least 1");
}

#[test]
fn missing_or_truncated_cifar10() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = one_line_error(
        cli()
            .args(["train", "--data", "cifar10", "--data-dir"])
            .arg(tmp.path())
            .args(TINY),
    );
    contains(&msg, "cannot load CIFAR-10 from");
    contains(&msg, "missing CIFAR-10 file");
    let msg = one_line_error(
        cli()
            .args(["train", "--data", "cifar10", "--data-dir"])
            .arg(tmp.path().join("nope")),
    );
    contains(&msg, "does not exist");
    let msg = one_line_error(cli().args(["train", "--data", "cifar10"]));
    contains(&msg, "--data-dir");

    let d = tmp.path().join("c");
    export_small(&d);
    let f = d.join("test_batch.bin");
    fs::remove_file(&f).unwrap();
    let msg = one_line_error(
        cli()
            .args(["train", "--data", "cifar10", "--data-dir"])
            .arg(&d),
    );
    contains(&msg, "missing CIFAR-10 file");
    contains(&msg, "test_batch.bin");
    export_small(&d);
    let f = d.join("data_batch_1.bin");
    let bytes = fs::read(&f).unwrap();
    fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let msg = one_line_error(
        cli()
            .args(["train", "--data", "cifar10", "--data-dir"])
            .arg(&d),
    );
    contains(&msg, "is not a multiple of the 3073-byte CIFAR-10 record");
    export_small(&d);
    let msg = one_line_error(
        cli()
            .args([
                "train",
                "--data",
                "cifar10",
                "--train-size",
                "30",
                "--data-dir",
            ])
            .arg(tmp.path().join("c"))
            .args(["--batch", "2"]),
    );
    contains(&msg, "--train-size 30 is more than the 20 train images");
}

#[test]
fn bad_npy_files() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let out = t.join("out");
    let x = fixtures().join("gn_g2/x.npy");
    let apply = |input: &std::path::Path| {
        let mut c = cli();
        c.args(["apply", "--norm", "group", "--groups", "2", "--input"])
            .arg(input)
            .arg("--out-dir")
            .arg(&out);
        c
    };

    let f64_path = t.join("f64.npy");
    npyz::to_file_1d(&f64_path, [1.0f64, 2.0, 3.0]).unwrap();
    contains(
        &one_line_error(&mut apply(&f64_path)),
        "has dtype '<f8', expected float32 ('<f4')",
    );

    let two_d = t.join("2d.npy");
    write_f32(&two_d, &[2, 3], &[0.0; 6]).unwrap();
    contains(
        &one_line_error(&mut apply(&two_d)),
        "has shape [2, 3], expected a 4-D NCHW array",
    );

    let trunc = t.join("trunc.npy");
    let bytes = fs::read(&x).unwrap();
    fs::write(&trunc, &bytes[..bytes.len() - 10]).unwrap();
    contains(&one_line_error(&mut apply(&trunc)), "is truncated");

    let junk = t.join("junk.npy");
    fs::write(&junk, b"not an npy file at all").unwrap();
    contains(
        &one_line_error(&mut apply(&junk)),
        "is not a valid .npy file",
    );

    contains(
        &one_line_error(&mut apply(&t.join("absent.npy"))),
        "cannot open",
    );
    assert!(!out.exists(), "no output folder on failure");
}

#[test]
fn mismatched_weight_and_grad_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let x = fixtures().join("gn_g2/x.npy"); // [2, 8, 4, 4]
    let w3 = t.join("w3.npy");
    write_f32(&w3, &[3], &[1.0; 3]).unwrap();
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "group", "--groups", "2", "--input"])
            .arg(&x)
            .arg("--weight")
            .arg(&w3)
            .arg("--bias")
            .arg(&w3)
            .arg("--out-dir")
            .arg(t.join("o")),
    );
    contains(
        &msg,
        "has shape [3], expected [8] (one value per channel of the input)",
    );
    let w8 = t.join("w8.npy");
    write_f32(&w8, &[8], &[1.0; 8]).unwrap();
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "layer", "--input"])
            .arg(&x)
            .arg("--weight")
            .arg(&w8)
            .arg("--bias")
            .arg(&w8)
            .arg("--out-dir")
            .arg(t.join("o")),
    );
    contains(
        &msg,
        "expected [8, 4, 4] (LayerNorm's affine is per element",
    );
    let dy = t.join("dy.npy");
    write_f32(&dy, &[2, 8, 4, 2], &[0.5; 128]).unwrap();
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "instance", "--input"])
            .arg(&x)
            .arg("--grad-output")
            .arg(&dy)
            .arg("--out-dir")
            .arg(t.join("o")),
    );
    contains(
        &msg,
        "has shape [2, 8, 4, 2], expected [2, 8, 4, 4] (the shape of the input)",
    );
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "batch", "--eval", "--running-mean"])
            .arg(&w3)
            .arg("--running-var")
            .arg(&w3)
            .arg("--input")
            .arg(&x)
            .arg("--out-dir")
            .arg(t.join("o")),
    );
    contains(&msg, "w3.npy has shape [3], expected [8]");
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "layer", "--eval", "--input"])
            .arg(&x)
            .arg("--out-dir")
            .arg(t.join("o")),
    );
    contains(&msg, "--running-mean");
}

#[test]
fn unwritable_output_folder() {
    // Under a regular file, so the check holds even for root.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "instance", "--input"])
            .arg(fixtures().join("in_plain/x.npy"))
            .arg("--out-dir")
            .arg(file.join("out")),
    );
    contains(&msg, "cannot create output folder");
    let msg = one_line_error(
        cli()
            .args(["sweep", "--out"])
            .arg(file.join("s"))
            .args(TINY),
    );
    contains(&msg, "cannot create output folder");
    let msg = one_line_error(
        cli()
            .args([
                "data",
                "export",
                "--train-size",
                "10",
                "--test-size",
                "10",
                "--out",
            ])
            .arg(file.join("d")),
    );
    contains(&msg, "cannot export the data set");
    let msg = one_line_error(
        cli()
            .args(["train", "--save"])
            .arg(file.join("m.ckpt"))
            .args(TINY),
    );
    contains(&msg, "cannot save the model");
    let msg = one_line_error(
        cli()
            .arg("report")
            .arg(tmp.path())
            .arg("--out")
            .arg(file.join("r")),
    );
    contains(&msg, "has no results");
}

#[test]
fn nan_in_apply_input() {
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x.npy");
    let mut data = vec![0.25f32; 2 * 4 * 3 * 3];
    data[13] = f32::NAN;
    write_f32(&x, &[2, 4, 3, 3], &data).unwrap();
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "batch", "--input"])
            .arg(&x)
            .arg("--out-dir")
            .arg(tmp.path().join("o")),
    );
    contains(&msg, "contains NaN at index [0, 1, 1, 1]");
    data[13] = f32::INFINITY;
    write_f32(&x, &[2, 4, 3, 3], &data).unwrap();
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "batch", "--input"])
            .arg(&x)
            .arg("--out-dir")
            .arg(tmp.path().join("o")),
    );
    contains(&msg, "contains an infinity");
}

#[test]
fn kernel_rejections_are_one_line_too() {
    // BatchNorm in train mode with one value per channel: PyTorch's error, from the kernel.
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x.npy");
    write_f32(&x, &[1, 3, 1, 1], &[1.0, 2.0, 3.0]).unwrap();
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "batch", "--input"])
            .arg(&x)
            .arg("--out-dir")
            .arg(tmp.path().join("o")),
    );
    contains(&msg, "expected more than 1 value per channel when training");
    let msg = one_line_error(
        cli()
            .args(["apply", "--norm", "layer", "--eps=-1", "--input"])
            .arg(&x)
            .arg("--out-dir")
            .arg(tmp.path()),
    );
    contains(&msg, "--eps -1 must be finite and non-negative");
}

#[test]
fn divergence_stops_the_run_with_a_hint() {
    let msg = one_line_error(
        cli()
            .args(["train", "--lr", "1e30", "--batch", "8"])
            .args(TINY),
    );
    contains(&msg, "error: training diverged: the loss is ");
    contains(&msg, " at epoch 1/1, step ");
    contains(&msg, "(learning rate ");
    contains(&msg, "try a lower --lr, e.g. --lr 1e29");
}

#[test]
fn negative_values_are_taken_as_values_and_rejected_by_the_option() {
    for (flag, want) in [
        ("--lr", "--lr -1 is invalid: must be finite and positive"),
        (
            "--eps",
            "--eps -1 is invalid: must be finite and non-negative",
        ),
        (
            "--warmup",
            "--warmup -1 is invalid: must be finite and non-negative",
        ),
        ("--momentum", "--momentum -1 is invalid: must be in [0, 1)"),
        (
            "--weight-decay",
            "--weight-decay -1 is invalid: must be finite and non-negative",
        ),
    ] {
        let msg = one_line_error(cli().args(["train", flag, "-1"]).args(TINY));
        contains(&msg, want);
        let msg = one_line_error(
            cli()
                .args(["sweep", "--out", "unused", flag, "-1"])
                .args(TINY),
        );
        contains(&msg, want);
    }
    assert!(!std::path::Path::new("unused").exists());
    for flag in ["--epochs", "--batch", "--seed", "--groups", "--threads"] {
        let msg = one_line_error(cli().args(["train", flag, "-1"]));
        contains(&msg, &format!("invalid value '-1' for '{flag} <"));
    }
    let msg = one_line_error(cli().args([
        "apply",
        "--norm",
        "layer",
        "--eps",
        "-1",
        "--input",
        "x.npy",
        "--out-dir",
        "o",
    ]));
    contains(&msg, "--eps -1 must be finite and non-negative");
}

#[test]
fn empty_cifar10_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("c");
    for file in ["test_batch.bin", "data_batch_1.bin"] {
        export_small(&d);
        fs::write(d.join(file), b"").unwrap();
        let msg = one_line_error(
            cli()
                .args(["train", "--data", "cifar10", "--data-dir"])
                .arg(&d),
        );
        contains(&msg, &format!("{} is empty", d.join(file).display()));
        assert!(!msg.contains("--test-size 0"), "{msg}");
    }
}

/// A reader that closes stdout at once: the program ends quietly with exit 0.
#[test]
fn closed_stdout_exits_quietly() {
    use std::process::{Command, Stdio};
    let bin = assert_cmd::cargo::cargo_bin("norm-cli");
    let tmp = tempfile::tempdir().unwrap();
    let x = fixtures().join("gn_g2/x.npy");
    let runs: Vec<Vec<std::ffi::OsString>> = vec![
        ["train", "--batch", "8"]
            .iter()
            .chain(TINY.iter())
            .map(Into::into)
            .collect(),
        vec![
            "apply".into(),
            "--norm".into(),
            "group".into(),
            "--groups".into(),
            "2".into(),
            "--input".into(),
            x.into(),
            "--out-dir".into(),
            tmp.path().join("o").into(),
        ],
        vec!["--help".into()],
    ];
    for args in runs {
        let mut child = Command::new(&bin)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away before anything is written
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("Broken pipe") && !stderr.contains("internal error"),
            "{args:?}: {stderr}"
        );
    }
}

fn spawn_piped(args: &[&str]) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("norm-cli"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn train_prints_the_header_and_each_epoch_as_it_goes() {
    use std::io::{BufRead, BufReader};
    let mut child = spawn_piped(&[
        "train",
        "--batch",
        "8",
        "--epochs",
        "4",
        "--train-size",
        "1024",
        "--test-size",
        "32",
        "--threads",
        "1",
    ]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("GroupNorm (G = 8), batch 8"), "{first}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the header comes before training"
    );
    let row1 = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.trim_start().starts_with("1  "))
        .unwrap();
    assert!(row1.contains('%'), "{row1}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "epoch 1's row comes while epochs 2-4 still run"
    );
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(
        rest.iter().any(|l| l.starts_with("final test accuracy")),
        "{rest:?}"
    );
    assert!(child.wait().unwrap().success());
}

fn interrupt(child: &mut std::process::Child, after_stderr_line: &str) -> (i32, String) {
    use std::io::{BufRead, BufReader};
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut l = String::new();
        if err.read_line(&mut l).unwrap() == 0 {
            panic!("ended before {after_stderr_line:?}: {seen}");
        }
        seen.push_str(&l);
        if l.starts_with(after_stderr_line) {
            break;
        }
    }
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let code = child.wait().unwrap().code().expect("exited, not killed");
    (code, rest)
}

#[test]
fn ctrl_c_says_what_was_interrupted_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = spawn_piped(&[
        "train",
        "--batch",
        "8",
        "--epochs",
        "50",
        "--train-size",
        "512",
        "--test-size",
        "32",
        "--threads",
        "1",
    ]);
    let (code, rest) = interrupt(&mut child, "epoch 1/50");
    assert_eq!(code, 130, "{rest}");
    assert!(
        rest.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("interrupted: training stopped after "),
        "{rest}"
    );
    assert!(rest.contains("nothing was saved"), "{rest}");

    let dir = tmp.path().join("s");
    let mut child = spawn_piped(&[
        "sweep",
        "--norms",
        "batch,group",
        "--batches",
        "2,4",
        "--seeds",
        "2",
        "--train-size",
        "256",
        "--test-size",
        "32",
        "--epochs",
        "2",
        "--threads",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let (code, rest) = interrupt(&mut child, "done 1/8");
    assert_eq!(code, 130, "{rest}");
    let last = rest.trim_end().lines().last().unwrap().to_owned();
    assert!(
        last.starts_with("interrupted: sweep stopped while running "),
        "{rest}"
    );
    let (kept, rep) = norm_cli::store::read_results(&dir.join("results.jsonl")).unwrap();
    assert_eq!(rep.partial_tail, 0);
    assert!(
        last.contains(&format!("the {} finished cell(s) are kept in", kept.len())),
        "{last} vs {} lines",
        kept.len()
    );
    assert!(last.contains("run the same command to resume"), "{last}");
}

/// PyTorch gives finite outputs for finite inputs near `f32::MAX`; so must `apply`.
#[test]
fn group_norm_of_values_near_f32_max_is_finite() {
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x.npy");
    let data: Vec<f32> = (0..2 * 4 * 3 * 3)
        .map(|i| {
            if i % 2 == 0 {
                3e38
            } else {
                -3e38 + i as f32 * 1e36
            }
        })
        .collect();
    write_f32(&x, &[2, 4, 3, 3], &data).unwrap();
    let out = tmp.path().join("o");
    cli()
        .args(["apply", "--norm", "group", "--groups", "2", "--input"])
        .arg(&x)
        .arg("--out-dir")
        .arg(&out)
        .assert()
        .success();
    let y = norm_cli::npy::read_f32(&out.join("y.npy")).unwrap();
    assert!(y.data.iter().all(|v| v.is_finite()), "{:?}", &y.data[..8]);
}
