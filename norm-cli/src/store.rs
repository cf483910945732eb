//! The sweep's on-disk state: `results.jsonl` (one finished cell per line, appended atomically)
//! and `recipe.json` (what every cell of the folder shares).
//!
//! Crash safety rests on two rules. A line is written with one `write` of the complete line
//! (newline included) on a file opened in append mode, then `fsync`ed before the cell counts as
//! done; and on open, bytes after the last newline — the tail of a line a killed run was
//! writing — are cut off before anything is appended. So a finished cell is never lost and a
//! half-written one is never read.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use norm_train::NormChoice;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// File name of the results inside a sweep folder.
pub const RESULTS_FILE: &str = "results.jsonl";
/// File name of the recipe inside a sweep folder.
pub const RECIPE_FILE: &str = "recipe.json";

/// How a cell ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellStatus {
    /// Trained every epoch (lines written before the field existed read as `ok`).
    #[default]
    Ok,
    /// The loss became NaN or infinite; the cell has no accuracy.
    Diverged,
}

/// Where a diverged cell stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Step within the epoch, from 1.
    pub step: usize,
    /// Learning rate of that step.
    pub lr: f64,
}

/// One finished cell: one line of `results.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// Normalisation layer (`batch`, `layer`, `instance`, `group`, `none`).
    pub norm: NormChoice,
    /// Batch size per step.
    pub batch: usize,
    /// Images per worker of a `--per-worker` sweep (BatchNorm's statistics over this many
    /// images; `batch / per_worker` workers); absent in a batch sweep (one worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_worker: Option<usize>,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
    /// `ok` or `diverged`.
    #[serde(default)]
    pub status: CellStatus,
    /// Where the loss became non-finite (diverged cells only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<Divergence>,
    /// Everything else that defines the run (see [`crate::sweep::recipe`]).
    pub recipe: Value,
    /// Test accuracy (0..1) after each epoch (a diverged cell: the epochs it finished).
    pub test_acc_per_epoch: Vec<f64>,
    /// Mean training loss of each epoch (a diverged cell: the epochs it finished).
    pub train_loss_per_epoch: Vec<f64>,
    /// Test accuracy (0..1) after the last epoch; `null` for a diverged cell.
    pub final_test_acc: Option<f64>,
    /// Test accuracies with re-estimated running statistics (`sweep --recalibrate-bn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recalibrated: Option<RecalibratedAcc>,
    /// Training throughput over the whole run, images per second.
    pub images_per_sec: f64,
    /// Wall time of the cell, seconds.
    pub seconds: f64,
    /// SIMD level of the kernels that ran it.
    #[serde(default)]
    pub simd: String,
    /// Rayon threads it ran on.
    #[serde(default)]
    pub threads: usize,
}

/// A finished cell's test accuracy after its running statistics were re-estimated (precise BN:
/// the cumulative average of train-mode batch statistics, weights fixed, one worker).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecalibratedAcc {
    /// Training images the statistics were averaged over.
    pub images: usize,
    /// Test accuracy (0..1), statistics from batches of the cell's images per worker (its
    /// batch, without workers).
    pub per_worker: f64,
    /// Test accuracy (0..1), statistics from batches of the cell's whole batch.
    pub whole_batch: f64,
    /// Whether the images had the cell's training augmentation (absent in records from before
    /// the option: plain images).
    #[serde(default)]
    pub augmented: bool,
}

/// A cell's identity: norm, batch, images per worker (`None`: one worker), seed.
pub type CellKey = (NormChoice, usize, Option<usize>, u64);

impl CellResult {
    /// The cell's identity: norm, batch, images per worker, seed.
    pub fn key(&self) -> CellKey {
        (self.norm, self.batch, self.per_worker, self.seed)
    }
}

/// What [`read_results`] found besides the results.
#[derive(Debug, Default)]
pub struct ReadReport {
    /// Bytes after the last newline: a partial line left by an interrupted run.
    pub partial_tail: usize,
    /// The cell (norm, batch, seed) the partial line was recording, when its start says so.
    pub partial_cell: Option<CellKey>,
    /// Complete lines that repeat an earlier line's cell (they are returned too; readers keep
    /// the first).
    pub duplicates: Vec<Duplicate>,
}

/// A line of `results.jsonl` whose cell an earlier line already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// Its line number, from 1.
    pub line: usize,
    /// The line number of the first line of the same cell.
    pub first_line: usize,
    /// The cell: norm, batch, seed.
    pub cell: CellKey,
}

impl Duplicate {
    /// `warning: F line 7 repeats the cell of line 3 (batch norm, batch 2, seed 0); the first is kept`.
    pub fn warning(&self, path: &Path) -> String {
        format!(
            "warning: {} line {} repeats the cell of line {} ({} norm, batch {}{}, seed {}); the \
             first is kept",
            path.display(),
            self.line,
            self.first_line,
            self.cell.0,
            self.cell.1,
            self.cell
                .2
                .map(|k| format!(" ({k} per worker)"))
                .unwrap_or_default(),
            self.cell.3
        )
    }
}

/// The cell a partial line was recording: its first fields,
/// `{"norm":"…","batch":N[,"per_worker":K],"seed":S,`, written in that order by
/// [`ResultsFile::append`]; `None` if the line stops before them.
fn partial_cell(tail: &[u8]) -> Option<CellKey> {
    let text = std::str::from_utf8(tail).ok()?;
    let rest = text.strip_prefix(r#"{"norm":""#)?;
    let (norm, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(r#","batch":"#)?;
    let (batch, mut rest) = rest.split_once(',')?;
    let mut per_worker = None;
    if let Some(r) = rest.strip_prefix(r#""per_worker":"#) {
        let (k, r) = r.split_once(',')?;
        per_worker = Some(k.parse().ok()?);
        rest = r;
    }
    let rest = rest.strip_prefix(r#""seed":"#)?;
    let (seed, _) = rest.split_once(',')?;
    Some((
        norm.parse().ok()?,
        batch.parse().ok()?,
        per_worker,
        seed.parse().ok()?,
    ))
}

/// Parses `results.jsonl`, ignoring a partial last line (reported in [`ReadReport`]).
/// A missing file reads as empty. A complete line that does not parse is an error: such a
/// file was not written by this tool and is not mixed in.
pub fn read_results(path: &Path) -> Result<(Vec<CellResult>, ReadReport)> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), ReadReport::default()));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut report = ReadReport {
        partial_tail: bytes.len() - complete,
        partial_cell: partial_cell(&bytes[complete..]),
        duplicates: Vec::new(),
    };
    let text = std::str::from_utf8(&bytes[..complete])
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let mut results = Vec::new();
    let mut first_line: std::collections::HashMap<CellKey, usize> =
        std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: CellResult = serde_json::from_str(line)
            .with_context(|| format!("{} line {} is not a cell result", path.display(), i + 1))?;
        let cell = r.key();
        match first_line.get(&cell) {
            Some(&first) => report.duplicates.push(Duplicate {
                line: i + 1,
                first_line: first,
                cell,
            }),
            None => {
                first_line.insert(cell, i + 1);
            }
        }
        results.push(r);
    }
    Ok((results, report))
}

/// `results.jsonl` opened for appending, its partial tail (if any) already cut off.
#[derive(Debug)]
pub struct ResultsFile {
    path: PathBuf,
    file: File,
}

impl ResultsFile {
    /// Opens (creating) `path`, truncates a partial last line, returns the finished cells.
    pub fn open(path: &Path) -> Result<(Self, Vec<CellResult>, ReadReport)> {
        let (results, report) = read_results(path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        if report.partial_tail > 0 {
            let len = file
                .metadata()
                .with_context(|| format!("cannot stat {}", path.display()))?
                .len();
            file.set_len(len - report.partial_tail as u64)
                .and_then(|()| file.sync_all())
                .with_context(|| {
                    format!("cannot cut the partial last line of {}", path.display())
                })?;
        }
        Ok((
            Self {
                path: path.to_owned(),
                file,
            },
            results,
            report,
        ))
    }

    /// Appends one complete line with a single write and flushes it to disk.
    pub fn append(&mut self, r: &CellResult) -> Result<()> {
        let mut line = serde_json::to_string(r).context("cannot serialise a cell result")?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }
}

/// Reads `recipe.json`; `None` when the file does not exist.
pub fn read_recipe(path: &Path) -> Result<Option<Value>> {
    match fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .with_context(|| format!("{} is not valid JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `bytes` to `path` atomically ([`norm_train::atomic::write_atomic`]: temporary file,
/// fsync, rename), so readers and a kill in the middle never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    norm_train::atomic::write_atomic(path, |f, _| f.write_all(bytes))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Lets `write` fill a temporary file beside `path` (same extension) given its path, then
/// replaces `path` with it, as [`write_atomic`]. The temporary file is removed if anything fails.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut failure = None;
    let res = norm_train::atomic::write_atomic(path, |_, tmp| {
        write(tmp).map_err(|e| {
            let io = std::io::Error::other(format!("{e:#}"));
            failure = Some(e);
            io
        })
    });
    match (res, failure) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e.context(format!("cannot write {}", path.display()))),
        (Err(e), None) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// Lists the keys (dotted paths) where two recipes differ, as `key: a vs b`.
pub fn recipe_diff(a: &Value, b: &Value) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, x.get(k), y.get(k), out);
                }
            }
            (x, y) if x == y => {}
            (x, y) => {
                let show = |v: Option<&Value>| v.map_or("(absent)".to_owned(), Value::to_string);
                out.push(format!("{prefix}: {} vs {}", show(x), show(y)));
            }
        }
    }
    let mut out = Vec::new();
    walk("", Some(a), Some(b), &mut out);
    out
}

/// Fails unless `found` equals `expected`; the message is `what(differences)`, the
/// differences listed as `key: found vs expected`.
pub fn check_same_recipe(
    expected: &Value,
    found: &Value,
    what: impl FnOnce(&str) -> String,
) -> Result<()> {
    let diff = recipe_diff(found, expected);
    if diff.is_empty() {
        return Ok(());
    }
    bail!("{}", what(&diff.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn cell(norm: &str, batch: usize, seed: u64, acc: f64) -> CellResult {
        let norm = norm.parse().expect("a test norm");
        CellResult {
            norm,
            batch,
            per_worker: None,
            seed,
            status: CellStatus::Ok,
            diverged: None,
            recipe: json!({"epochs": 1}),
            test_acc_per_epoch: vec![acc],
            train_loss_per_epoch: vec![1.0],
            final_test_acc: Some(acc),
            recalibrated: None,
            images_per_sec: 100.0,
            seconds: 1.0,
            simd: "scalar".into(),
            threads: 1,
        }
    }

    #[test]
    fn append_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESULTS_FILE);
        let (mut f, got, rep) = ResultsFile::open(&path).unwrap();
        assert!(got.is_empty());
        assert_eq!(rep.partial_tail, 0);
        f.append(&cell("group", 2, 0, 0.5)).unwrap();
        f.append(&cell("batch", 4, 1, 0.25)).unwrap();
        drop(f);
        let (got, rep) = read_results(&path).unwrap();
        assert_eq!(
            got,
            vec![cell("group", 2, 0, 0.5), cell("batch", 4, 1, 0.25)]
        );
        assert_eq!(rep.partial_tail, 0);
    }

    #[test]
    fn partial_tail_is_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESULTS_FILE);
        let mut text = serde_json::to_string(&cell("group", 2, 0, 0.5)).unwrap();
        text.push('\n');
        let full = text.len();
        text.push_str(r#"{"norm":"batch","batch":4,"se"#);
        fs::write(&path, &text).unwrap();
        let (mut f, got, rep) = ResultsFile::open(&path).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(rep.partial_tail, text.len() - full);
        assert_eq!(fs::metadata(&path).unwrap().len() as usize, full);
        f.append(&cell("batch", 4, 0, 0.3)).unwrap();
        let (got, rep) = read_results(&path).unwrap();
        assert_eq!(
            got,
            vec![cell("group", 2, 0, 0.5), cell("batch", 4, 0, 0.3)]
        );
        assert_eq!(rep.partial_tail, 0);
    }

    #[test]
    fn partial_cell_and_duplicates_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESULTS_FILE);
        let line = |c: &CellResult| serde_json::to_string(c).unwrap() + "\n";
        let a = line(&cell("group", 2, 0, 0.5));
        let b = line(&cell("batch", 4, 1, 0.25));
        let text = format!("{a}{b}{a}{}", &b[..40]);
        fs::write(&path, &text).unwrap();
        let (got, rep) = read_results(&path).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            rep.partial_cell,
            Some(("batch".parse().unwrap(), 4, None, 1))
        );
        assert_eq!(
            rep.duplicates,
            vec![Duplicate {
                line: 3,
                first_line: 1,
                cell: ("group".parse().unwrap(), 2, None, 0)
            }]
        );
        assert!(
            rep.duplicates[0]
                .warning(&path)
                .contains("line 3 repeats the cell of line 1")
        );
        // A tail that stops before the seed names no cell.
        for cut in [0, 10, 25, b.find(r#""seed":"#).unwrap() + 8] {
            assert_eq!(partial_cell(&b.as_bytes()[..cut]), None, "{cut}");
        }
    }

    #[test]
    fn corrupt_complete_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESULTS_FILE);
        fs::write(&path, "{\"norm\": 3}\n").unwrap();
        let err = format!("{:#}", read_results(&path).unwrap_err());
        assert!(err.contains("line 1 is not a cell result"), "{err}");
    }

    #[test]
    fn diff_names_changed_keys() {
        let a = json!({"epochs": 1, "data": {"source": "synthetic", "train_size": 64}});
        let b = json!({"epochs": 2, "data": {"source": "synthetic", "train_size": 64, "x": 1}});
        assert_eq!(
            recipe_diff(&a, &b),
            vec!["data.x: (absent) vs 1", "epochs: 1 vs 2"]
        );
        assert!(recipe_diff(&a, &a).is_empty());
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
