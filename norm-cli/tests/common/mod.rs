//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The binary under test.
pub fn cli() -> Command {
    let mut c = Command::cargo_bin("norm-cli").expect("binary built");
    c.env_remove("RAYON_NUM_THREADS");
    // Tests run inside a Slurm array job must not pick up a share.
    for v in ["ID", "COUNT", "MIN", "MAX", "STEP"] {
        c.env_remove(format!("SLURM_ARRAY_TASK_{v}"));
    }
    c
}

/// The PyTorch fixtures: `$NORMLAB_FIXTURES` or `../../shared/fixtures/pytorch`.
pub fn fixtures() -> PathBuf {
    std::env::var_os("NORMLAB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/pytorch")
        })
}

/// Runs `cmd`, expects failure, and returns its stderr after checking that it is exactly one
/// line starting with `error: `, with no panic or backtrace.
pub fn one_line_error(cmd: &mut Command) -> String {
    let out = cmd.output().expect("ran");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "killed by a signal? {stderr}"
    );
    let msg = stderr.trim_end();
    assert!(!msg.contains('\n'), "error is not one line:\n{stderr}");
    assert!(msg.starts_with("error: "), "{stderr}");
    assert!(
        !msg.contains("panicked") && !msg.contains("backtrace"),
        "{stderr}"
    );
    assert!(!msg.contains("internal error"), "{stderr}");
    msg.to_owned()
}

/// Tiny settings for real training runs.
pub const TINY: [&str; 6] = ["--train-size", "64", "--test-size", "32", "--epochs", "1"];
