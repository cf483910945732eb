//! Real (tiny) sweeps: outputs, resume after an interruption, refusal of a changed recipe,
//! `--cells` sharding merged by `report`.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::{TINY, cli, one_line_error};
use norm_cli::store::{CellResult, read_results};

const GRID: [&str; 6] = ["--norms", "batch,group", "--batches", "2,4", "--seeds", "2"];

fn sweep(out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    cli()
        .arg("sweep")
        .args(GRID)
        .args(TINY)
        .args(["--threads", "2"])
        .arg("--out")
        .arg(out)
        .args(extra)
        .assert()
}

fn results(dir: &Path) -> Vec<CellResult> {
    let (r, rep) = read_results(&dir.join("results.jsonl")).unwrap();
    assert_eq!(rep.partial_tail, 0);
    r
}

fn keys(rs: &[CellResult]) -> Vec<(String, usize, u64)> {
    let mut k: Vec<_> = rs
        .iter()
        .map(|r| (r.norm.to_string(), r.batch, r.seed))
        .collect();
    k.sort();
    k
}

fn assert_unique(rs: &[CellResult]) {
    let set: HashSet<_> = rs.iter().map(|r| (r.norm, r.batch, r.seed)).collect();
    assert_eq!(set.len(), rs.len(), "duplicate cells");
}

#[test]
fn sweep_writes_all_outputs_and_resumes_after_an_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let out = sweep(&dir, &[]).success().get_output().clone();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("| BatchNorm |") && stdout.contains("| batch 2 | batch 4 |"),
        "{stdout}"
    );
    let rs = results(&dir);
    assert_eq!(rs.len(), 8);
    assert_unique(&rs);
    for r in &rs {
        assert_eq!(r.test_acc_per_epoch.len(), 1);
        assert_eq!(r.final_test_acc, Some(r.test_acc_per_epoch[0]));
        assert!((0.0..=1.0).contains(&r.final_test_acc.unwrap()));
        assert!(r.images_per_sec > 0.0);
        assert_eq!(r.recipe["epochs"], 1);
        assert_eq!(r.recipe["data"]["train_size"], 64);
    }
    for f in [
        "recipe.json",
        "summary.md",
        "summary.csv",
        "accuracy_vs_batch.svg",
        "accuracy_vs_batch.png",
        "training_curves.svg",
        "training_curves.png",
    ] {
        assert!(dir.join(f).metadata().unwrap().len() > 0, "{f}");
    }
    let md = fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("over 2 seed(s) per cell (seeds 0, 1)"), "{md}");
    let csv = fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.starts_with("norm,batch2_mean,batch2_std,batch2_seeds,batch2_diverged,batch4_mean"),
        "{csv}"
    );
    let svg = fs::read_to_string(dir.join("accuracy_vs_batch.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("GroupNorm") && svg.contains("BatchNorm"));
    let png = fs::read(dir.join("accuracy_vs_batch.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let curves = fs::read_to_string(dir.join("training_curves.svg")).unwrap();
    assert!(
        curves.contains("batch 2") && curves.contains("batch 4") && curves.contains("GroupNorm"),
        "one column per batch size, a line per norm"
    );
    assert!(curves.contains("mean ± std over 2 seeds"));

    // Simulate a run killed while writing its 6th line: keep 5 lines and half of the 6th.
    let text = fs::read_to_string(dir.join("results.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut cut = lines[..5].join("\n");
    cut.push('\n');
    cut.push_str(&lines[5][..lines[5].len() / 2]);
    fs::write(dir.join("results.jsonl"), &cut).unwrap();

    let out = sweep(&dir, &[]).success().get_output().clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cut a partial last line"), "{stderr}");
    assert!(stderr.contains(") runs again"), "{stderr}");
    assert!(stderr.contains("5 already in"), "{stderr}");
    assert_eq!(
        stderr.matches("done ").count(),
        3,
        "only the 3 missing cells run: {stderr}"
    );
    let again = results(&dir);
    assert_eq!(again.len(), 8);
    assert_unique(&again);
    assert_eq!(keys(&again), keys(&rs));
    let text2 = fs::read_to_string(dir.join("results.jsonl")).unwrap();
    assert!(
        text2.starts_with(&lines[..5].join("\n")),
        "finished lines are kept as they were"
    );
    // Training is deterministic, so the re-run cells give the same accuracies.
    let acc = |rs: &[CellResult]| {
        let mut v: Vec<_> = rs
            .iter()
            .map(|r| {
                (
                    (r.norm, r.batch, r.seed),
                    r.final_test_acc.unwrap().to_bits(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(acc(&again), acc(&rs));

    // A third run has nothing to do.
    let out = sweep(&dir, &[]).success().get_output().clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("8 already in") && !stderr.contains("done "),
        "{stderr}"
    );
    assert_eq!(results(&dir).len(), 8);
}

#[test]
fn killed_sweep_keeps_finished_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k");
    let args = ["--train-size", "256", "--test-size", "32", "--epochs", "2"];
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("norm-cli"))
        .arg("sweep")
        .args(GRID)
        .args(args)
        .args(["--threads", "1"])
        .arg("--out")
        .arg(&dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(Ok(l)) = lines.next() {
        if l.starts_with("done 2/") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (rs, _) = read_results(&dir.join("results.jsonl")).unwrap();
    assert!(rs.len() >= 2, "finished cells were flushed before the kill");
    cli()
        .arg("sweep")
        .args(GRID)
        .args(args)
        .args(["--threads", "2"])
        .arg("--out")
        .arg(&dir)
        .assert()
        .success();
    let all = results(&dir);
    assert_eq!(all.len(), 8);
    assert_unique(&all);
}

#[test]
fn changed_recipe_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    cli()
        .args([
            "sweep",
            "--norms",
            "group",
            "--batches",
            "4",
            "--seeds",
            "1",
            "--lr",
            "0.1",
        ])
        .args(TINY)
        .arg("--out")
        .arg(&dir)
        .assert()
        .success();
    let before = fs::read(dir.join("results.jsonl")).unwrap();
    let msg = one_line_error(
        cli()
            .args([
                "sweep",
                "--norms",
                "group",
                "--batches",
                "4",
                "--seeds",
                "1",
            ])
            .args([
                "--train-size",
                "64",
                "--test-size",
                "32",
                "--epochs",
                "2",
                "--lr",
                "0.05",
            ])
            .arg("--out")
            .arg(&dir),
    );
    assert!(
        msg.contains("holds a sweep with a different recipe (recipe.json vs now: "),
        "{msg}"
    );
    assert!(
        msg.contains("epochs: 1 vs 2") && msg.contains("base_lr: 0.1 vs 0.05"),
        "{msg}"
    );
    // A different data set is a different recipe too.
    let msg = one_line_error(
        cli()
            .args([
                "sweep",
                "--norms",
                "group",
                "--batches",
                "4",
                "--seeds",
                "1",
            ])
            .args(TINY)
            .args(["--data-seed", "7", "--lr", "0.1"])
            .arg("--out")
            .arg(&dir),
    );
    assert!(
        msg.contains("data.seed: 0 vs 7") && msg.contains("data.fingerprint"),
        "{msg}"
    );
    assert_eq!(
        fs::read(dir.join("results.jsonl")).unwrap(),
        before,
        "nothing mixed in"
    );
    // More norms, batches or seeds with the same recipe are fine.
    cli()
        .args([
            "sweep",
            "--norms",
            "group,layer",
            "--batches",
            "4",
            "--seeds",
            "1",
            "--lr",
            "0.1",
        ])
        .args(TINY)
        .arg("--out")
        .arg(&dir)
        .assert()
        .success();
    assert_eq!(results(&dir).len(), 2);
}

#[test]
fn shards_merge_into_the_full_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    sweep(&t.join("full"), &[]).success();
    sweep(&t.join("a"), &["--cells", "1/3"]).success();
    sweep(&t.join("b"), &["--cells", "2/3"]).success();
    sweep(&t.join("c"), &["--cells", "3/3"]).success();
    let (a, b, c) = (
        results(&t.join("a")),
        results(&t.join("b")),
        results(&t.join("c")),
    );
    assert_eq!(a.len() + b.len() + c.len(), 8);
    let mut union: Vec<_> = [keys(&a), keys(&b), keys(&c)].concat();
    union.sort();
    assert_eq!(
        union,
        keys(&results(&t.join("full"))),
        "the shares partition the cells"
    );

    // Merge (with a duplicate input) and compare to the single-machine sweep.
    cli()
        .arg("report")
        .args([
            t.join("a"),
            t.join("b"),
            t.join("a").join("results.jsonl"),
            t.join("c"),
        ])
        .arg("--out")
        .arg(t.join("m"))
        .assert()
        .success()
        .stderr(predicates::str::contains("8 cell(s)"));
    let m = results(&t.join("m"));
    assert_eq!(m.len(), 8);
    assert_unique(&m);
    for f in ["summary.md", "summary.csv"] {
        assert_eq!(
            fs::read_to_string(t.join("m").join(f)).unwrap(),
            fs::read_to_string(t.join("full").join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(t.join("m/accuracy_vs_batch.png").exists() && t.join("m/recipe.json").exists());
    // Reporting again is idempotent; the merged folder resumes as a complete sweep.
    cli()
        .arg("report")
        .args([t.join("a"), t.join("b")])
        .arg("--out")
        .arg(t.join("m"))
        .assert()
        .success();
    assert_eq!(results(&t.join("m")).len(), 8);
    let out = sweep(&t.join("m"), &[]).success().get_output().clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("8 already in"));
    // A single folder is rebuilt in place.
    fs::remove_file(t.join("a/summary.md")).unwrap();
    cli().arg("report").arg(t.join("a")).assert().success();
    assert!(t.join("a/summary.md").exists());
    assert_eq!(results(&t.join("a")).len(), a.len());

    // Mixed recipes are refused.
    cli()
        .args([
            "sweep",
            "--norms",
            "group",
            "--batches",
            "2",
            "--seeds",
            "1",
        ])
        .args(["--train-size", "64", "--test-size", "32", "--epochs", "2"])
        .arg("--out")
        .arg(t.join("other"))
        .assert()
        .success();
    let msg = one_line_error(
        cli()
            .arg("report")
            .args([t.join("a"), t.join("other")])
            .arg("--out")
            .arg(t.join("x")),
    );
    assert!(
        msg.contains("refusing to mix recipes") && msg.contains("epochs: 2 vs 1"),
        "{msg}"
    );
    let msg = one_line_error(cli().arg("report").args([t.join("a"), t.join("b")]));
    assert!(msg.contains("--out"), "{msg}");
}

#[test]
fn diverged_cells_are_recorded_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let out = sweep(&dir, &["--lr", "1e30"])
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.matches("recorded as diverged").count(),
        8,
        "{stderr}"
    );
    let rs = results(&dir);
    assert_eq!(rs.len(), 8, "every cell ran");
    for r in &rs {
        assert_eq!(r.status, norm_cli::store::CellStatus::Diverged);
        assert_eq!(r.final_test_acc, None);
        let d = r.diverged.as_ref().unwrap();
        assert!(d.epoch == 1 && d.step >= 1 && d.lr > 0.0, "{d:?}");
    }
    let text = fs::read_to_string(dir.join("results.jsonl")).unwrap();
    assert!(
        text.contains(r#""status":"diverged","diverged":{"epoch":1,"step":"#),
        "{text}"
    );
    let md = fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        md.contains("| BatchNorm | diverged (2) | diverged (2) |"),
        "{md}"
    );
    assert!(md.contains("Every cell diverged"), "{md}");
    let csv = fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert!(csv.contains("group,,,0,2,,,0,2"), "{csv}");
    // A resumed sweep counts them as done.
    let out = sweep(&dir, &["--lr", "1e30"])
        .success()
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("8 already in"));
}

#[test]
fn partial_line_note_only_when_its_cell_runs_and_duplicates_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    sweep(&dir, &["--cells", "1/2"]).success();
    let path = dir.join("results.jsonl");
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    // A partial copy of line 2: its cell is done, nothing runs again.
    fs::write(&path, format!("{text}{}", &lines[1][..lines[1].len() / 2])).unwrap();
    let out = sweep(&dir, &["--cells", "1/2"])
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cut a partial last line"), "{stderr}");
    assert!(!stderr.contains("runs again"), "{stderr}");
    assert!(stderr.contains("which is done"), "{stderr}");
    // A partial line of a cell of the other share: not part of this run.
    let other = results(&tmp.path().join("p")); // 4 cells of share 1
    let mut foreign = other[0].clone();
    foreign.seed = 99;
    let line = serde_json::to_string(&foreign).unwrap();
    fs::write(&path, format!("{text}{}", &line[..line.len() / 2])).unwrap();
    let out = sweep(&dir, &["--cells", "1/2"])
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("is not part of this run"), "{stderr}");
    assert!(!stderr.contains("runs again"), "{stderr}");
    // A duplicated complete line: warned about, counted once.
    fs::write(&path, format!("{text}{}\n", lines[0])).unwrap();
    let out = sweep(&dir, &["--cells", "1/2"])
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("line 5 repeats the cell of line 1")
            && stderr.contains("the first is kept"),
        "{stderr}"
    );
    assert!(stderr.contains("4 already in"), "{stderr}");
    let md = fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("4 finished cell(s)"), "{md}");
}

#[test]
fn slurm_array_tasks_take_their_share_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for id in 1..=3 {
        let out = cli()
            .arg("sweep")
            .args(GRID)
            .args(TINY)
            .args(["--threads", "1"])
            .arg("--out")
            .arg(t.join(format!("task-{id}")))
            .env("SLURM_ARRAY_TASK_ID", id.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", "3")
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "sweep: share {id}/3 from SLURM_ARRAY_TASK_ID={id}"
            )),
            "{stderr}"
        );
        // The same cells as --cells I/3.
        cli()
            .arg("sweep")
            .args(GRID)
            .args(TINY)
            .args(["--threads", "1", "--cells", &format!("{id}/3")])
            .arg("--out")
            .arg(t.join(format!("cells-{id}")))
            .env_remove("SLURM_ARRAY_TASK_ID")
            .assert()
            .success();
        assert_eq!(
            keys(&results(&t.join(format!("task-{id}")))),
            keys(&results(&t.join(format!("cells-{id}"))))
        );
    }
    cli()
        .arg("report")
        .args((1..=3).map(|i| t.join(format!("task-{i}"))))
        .arg("--out")
        .arg(t.join("merged"))
        .assert()
        .success()
        .stderr(predicates::str::contains("8 cell(s)"));
    // --cells wins over the environment.
    let out = cli()
        .arg("sweep")
        .args(GRID)
        .args(TINY)
        .args(["--cells", "1/1"])
        .arg("--out")
        .arg(t.join("merged"))
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("8 already in"),
        "{stderr}"
    );
    assert!(!stderr.contains("SLURM"), "{stderr}");
    let msg = one_line_error(
        cli()
            .arg("sweep")
            .args(GRID)
            .args(TINY)
            .arg("--out")
            .arg(t.join("bad"))
            .env("SLURM_ARRAY_TASK_ID", "7")
            .env("SLURM_ARRAY_TASK_COUNT", "3"),
    );
    assert!(
        msg.contains("SLURM_ARRAY_TASK_ID=7 is not one of the 3 tasks"),
        "{msg}"
    );
}
