//! Sweep bookkeeping: the cell list (norm × batch × seed), its deterministic sharding for
//! `--cells I/K`, and a sweep folder (`recipe.json` check, `results.jsonl` resume, outputs
//! rewritten after every cell). Running a cell is a closure, so all of this is tested with fake
//! results.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use norm_train::NormChoice;
use serde_json::Value;

use crate::outputs;
use crate::store::{self, CellKey, CellResult, RECIPE_FILE, RESULTS_FILE, ResultsFile};

/// One cell of the sweep.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cell {
    /// The norm.
    pub norm: NormChoice,
    /// Batch size.
    pub batch: usize,
    /// Images per worker (`batch / per_worker` workers); `None` in a batch sweep (one worker).
    pub per_worker: Option<usize>,
    /// Seed.
    pub seed: u64,
}

impl Cell {
    /// Data-parallel workers of the cell.
    pub fn workers(&self) -> usize {
        self.per_worker.map_or(1, |k| self.batch / k.max(1))
    }

    fn key(&self) -> CellKey {
        (self.norm, self.batch, self.per_worker, self.seed)
    }
}

impl Cell {
    /// The cell as a file name stem: `batch-b32-k2-s0` (`-kK` only in a per-worker sweep).
    pub fn file_stem(&self) -> String {
        let k = self
            .per_worker
            .map(|k| format!("-k{k}"))
            .unwrap_or_default();
        format!("{}-b{}{k}-s{}", self.norm.name(), self.batch, self.seed)
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} norm, batch {}", self.norm, self.batch)?;
        if let Some(k) = self.per_worker {
            write!(f, " ({k} per worker)")?;
        }
        write!(f, ", seed {}", self.seed)
    }
}

/// Every cell, in the order norms × batches × seeds (seed fastest).
pub fn all_cells(norms: &[NormChoice], batches: &[usize], seeds: &[u64]) -> Vec<Cell> {
    let mut cells = Vec::with_capacity(norms.len() * batches.len() * seeds.len());
    for norm in norms {
        for &batch in batches {
            for &seed in seeds {
                cells.push(Cell {
                    norm: *norm,
                    batch,
                    per_worker: None,
                    seed,
                });
            }
        }
    }
    cells
}

/// The cells of a `--per-worker` sweep at total batch `batch`, in the order norms × images per
/// worker × seeds. A norm for which `split_matters` is false gives the same result for every
/// split (tested bit for bit), so it runs once per seed, with one worker (`per_worker = batch`).
pub fn per_worker_cells(
    norms: &[NormChoice],
    batch: usize,
    per_worker: &[usize],
    seeds: &[u64],
    split_matters: impl Fn(NormChoice) -> bool,
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &norm in norms {
        let ks: &[usize] = if split_matters(norm) {
            per_worker
        } else {
            &[batch]
        };
        for &k in ks {
            for &seed in seeds {
                cells.push(Cell {
                    norm,
                    batch,
                    per_worker: Some(k),
                    seed,
                });
            }
        }
    }
    cells
}

/// `--cells I/K`: the I-th (1-based) of K shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// Which share, 1..=k.
    pub i: usize,
    /// How many shares.
    pub k: usize,
}

impl FromStr for Share {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not I/K with 1 <= I <= K (e.g. 2/4)");
        let (i, k) = s.split_once('/').ok_or_else(bad)?;
        let i: usize = i.trim().parse().map_err(|_| bad())?;
        let k: usize = k.trim().parse().map_err(|_| bad())?;
        if i == 0 || k == 0 || i > k {
            return Err(bad());
        }
        Ok(Self { i, k })
    }
}

impl Share {
    /// The cells of this share: positions `j` of the full list with `j mod K = I − 1`.
    /// Round-robin spreads every norm and batch size over all shares, so shares take about
    /// the same time; the K shares partition the list.
    pub fn select(&self, cells: &[Cell]) -> Vec<Cell> {
        cells
            .iter()
            .enumerate()
            .filter(|(j, _)| j % self.k == self.i - 1)
            .map(|(_, c)| c.clone())
            .collect()
    }
}

/// The share of a Slurm array task, for a sweep run without `--cells`: from
/// `SLURM_ARRAY_TASK_ID` and `SLURM_ARRAY_TASK_COUNT` (with `SLURM_ARRAY_TASK_MIN`, default 0,
/// and `SLURM_ARRAY_TASK_STEP`, default 1, so `--array=1-8` and `--array=0-15:2` both work):
/// task `min + j·step` runs share `j + 1` of `count`. `None` outside an array job. `var` reads
/// the environment (a parameter, so tests need not set it). Returns the share and the sentence
/// that says where it came from.
pub fn share_from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<(Share, String)>> {
    let Some(id) = var("SLURM_ARRAY_TASK_ID") else {
        return Ok(None);
    };
    let num = |name: &str, text: &str| -> Result<usize> {
        text.trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={text} is not a whole number"))
    };
    let id_n = num("SLURM_ARRAY_TASK_ID", &id)?;
    let Some(count) = var("SLURM_ARRAY_TASK_COUNT") else {
        bail!(
            "SLURM_ARRAY_TASK_ID={id} is set but SLURM_ARRAY_TASK_COUNT is not; pass --cells I/K"
        );
    };
    let k = num("SLURM_ARRAY_TASK_COUNT", &count)?;
    let min = var("SLURM_ARRAY_TASK_MIN")
        .map(|m| num("SLURM_ARRAY_TASK_MIN", &m))
        .transpose()?
        .unwrap_or(0);
    let step = var("SLURM_ARRAY_TASK_STEP")
        .map(|m| num("SLURM_ARRAY_TASK_STEP", &m))
        .transpose()?
        .unwrap_or(1)
        .max(1);
    let offset = id_n.checked_sub(min).filter(|o| o % step == 0);
    let j = offset.map(|o| o / step).filter(|&j| j < k);
    let Some(j) = j else {
        bail!(
            "SLURM_ARRAY_TASK_ID={id_n} is not one of the {k} tasks from SLURM_ARRAY_TASK_MIN={min} \
             in steps of {step}; pass --cells I/K"
        );
    };
    let share = Share { i: j + 1, k };
    let why = format!(
        "share {}/{} from SLURM_ARRAY_TASK_ID={id_n} (SLURM_ARRAY_TASK_COUNT={k}, MIN={min}, \
         STEP={step})",
        share.i, share.k
    );
    Ok(Some((share, why)))
}

/// `--seeds`: `N` means seeds `0..N`; `A..B` the range `A..B` (B excluded); `a,b,c` a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeds(pub Vec<u64>);

impl FromStr for Seeds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{t}` is not a seed"))
        };
        let seeds: Vec<u64> = if let Some((a, b)) = s.split_once("..") {
            (num(a)?..num(b)?).collect()
        } else if s.contains(',') {
            s.split(',')
                .filter(|t| !t.trim().is_empty())
                .map(num)
                .collect::<Result<_, _>>()?
        } else {
            (0..num(s)?).collect()
        };
        if seeds.is_empty() {
            return Err(format!("`{s}` selects no seed"));
        }
        let mut sorted = seeds.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(format!("`{s}` repeats a seed"));
        }
        Ok(Self(seeds))
    }
}

/// An open sweep folder: recipe checked, partial line dropped, finished cells known.
#[derive(Debug)]
pub struct SweepDir {
    dir: PathBuf,
    recipe: Value,
    file: ResultsFile,
    results: Vec<CellResult>,
    done: HashSet<CellKey>,
    /// Bytes of a partial last line that were cut on open (0 if none).
    pub dropped_partial: usize,
    /// The cell that partial line was recording, if its start names it.
    pub dropped_cell: Option<CellKey>,
    /// Complete lines repeating an earlier line's cell (the first is kept).
    pub duplicates: Vec<store::Duplicate>,
}

impl SweepDir {
    /// Creates or reopens `dir` for `recipe`. Refuses a folder whose `recipe.json` or
    /// results hold a different recipe.
    pub fn open(dir: &Path, recipe: &Value) -> Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        let recipe_path = dir.join(RECIPE_FILE);
        let refuse = |source: String| {
            move |diff: &str| {
                format!(
                    "{} holds a sweep with a different recipe ({source}: {diff}); \
                     use another --out or the same settings",
                    dir.display()
                )
            }
        };
        if let Some(old) = store::read_recipe(&recipe_path)? {
            store::check_same_recipe(recipe, &old, refuse("recipe.json vs now".into()))?;
        }
        let (file, results, report) = ResultsFile::open(&dir.join(RESULTS_FILE))?;
        for r in &results {
            store::check_same_recipe(recipe, &r.recipe, refuse(format!("{} vs now", r_key(r))))?;
        }
        if !recipe_path.exists() {
            let text = serde_json::to_string_pretty(recipe)? + "\n";
            store::write_atomic(&recipe_path, text.as_bytes())?;
        }
        let done = results.iter().map(CellResult::key).collect();
        Ok(Self {
            dir: dir.to_owned(),
            recipe: recipe.clone(),
            file,
            results,
            done,
            dropped_partial: report.partial_tail,
            dropped_cell: report.partial_cell,
            duplicates: report.duplicates,
        })
    }

    /// True when the cell is already in `results.jsonl`.
    pub fn is_done(&self, c: &Cell) -> bool {
        self.done.contains(&c.key())
    }

    /// All finished cells (from earlier runs too).
    pub fn results(&self) -> &[CellResult] {
        &self.results
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a finished cell (durably) and rewrites summary and plots.
    pub fn record(&mut self, r: CellResult) -> Result<()> {
        if r.recipe != self.recipe {
            bail!(
                "internal error: cell {} was run with another recipe",
                r_key(&r)
            );
        }
        self.file.append(&r)?;
        self.done.insert(r.key());
        self.results.push(r);
        self.write_outputs()
    }

    /// Rewrites `summary.md`, `summary.csv` and the plots from all finished cells.
    pub fn write_outputs(&self) -> Result<()> {
        outputs::write_all(&self.dir, &self.results, &self.recipe)
    }
}

fn r_key(r: &CellResult) -> String {
    match r.per_worker {
        Some(k) => format!(
            "cell {} batch {} ({k} per worker) seed {}",
            r.norm, r.batch, r.seed
        ),
        None => format!("cell {} batch {} seed {}", r.norm, r.batch, r.seed),
    }
}

/// Runs every cell of `cells` not yet in `sd`, in order, recording each as it finishes.
/// `run` is given the cell and its position among the cells to run; `recorded` is called once
/// the result is safely on disk. Returns how many ran.
pub fn run_missing(
    sd: &mut SweepDir,
    cells: &[Cell],
    mut run: impl FnMut(&Cell, usize, usize) -> Result<CellResult>,
    mut recorded: impl FnMut(&CellResult, usize, usize),
) -> Result<usize> {
    let todo: Vec<&Cell> = cells.iter().filter(|c| !sd.is_done(c)).collect();
    for (i, c) in todo.iter().enumerate() {
        let r = run(c, i, todo.len()).with_context(|| format!("cell {c}"))?;
        // Ctrl-C waits for the line and the summaries to be written.
        crate::interrupt::critical(|| sd.record(r))?;
        recorded(sd.results().last().expect("just recorded"), i, todo.len());
    }
    Ok(todo.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strs(v: &[&str]) -> Vec<NormChoice> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn fake(c: &Cell, recipe: &Value) -> CellResult {
        let acc = 0.1 + 0.01 * c.batch as f64 + 0.001 * c.seed as f64;
        CellResult {
            norm: c.norm,
            batch: c.batch,
            per_worker: c.per_worker,
            seed: c.seed,
            status: store::CellStatus::Ok,
            diverged: None,
            recipe: recipe.clone(),
            test_acc_per_epoch: vec![acc],
            train_loss_per_epoch: vec![2.0],
            final_test_acc: Some(acc),
            recalibrated: None,
            images_per_sec: 10.0,
            seconds: 0.1,
            simd: "scalar".into(),
            threads: 1,
        }
    }

    #[test]
    fn seeds_syntax() {
        assert_eq!("3".parse::<Seeds>().unwrap().0, vec![0, 1, 2]);
        assert_eq!("4..6".parse::<Seeds>().unwrap().0, vec![4, 5]);
        assert_eq!("7,2".parse::<Seeds>().unwrap().0, vec![7, 2]);
        assert!("0".parse::<Seeds>().is_err());
        assert!("1,1".parse::<Seeds>().is_err());
        assert!("x".parse::<Seeds>().is_err());
    }

    #[test]
    fn shares_partition_the_cells() {
        let cells = all_cells(&strs(&["batch", "group"]), &[2, 4, 8], &[0, 1, 2]);
        assert_eq!(cells.len(), 18);
        assert_eq!(
            cells[1],
            Cell {
                norm: "batch".parse().unwrap(),
                batch: 2,
                per_worker: None,
                seed: 1
            }
        );
        for k in 1..=5 {
            let mut union: Vec<Cell> = (1..=k)
                .flat_map(|i| Share { i, k }.select(&cells))
                .collect();
            assert_eq!(union.len(), cells.len());
            union.sort_by_key(|c| cells.iter().position(|d| d == c).unwrap());
            assert_eq!(union, cells);
        }
        assert_eq!("2/3".parse::<Share>().unwrap(), Share { i: 2, k: 3 });
        for bad in ["0/3", "4/3", "3", "a/b", "1/0"] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slurm_array_shares() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(share_from_env(env(&[])).unwrap().is_none());
        assert!(
            share_from_env(env(&[("SLURM_ARRAY_TASK_COUNT", "4")]))
                .unwrap()
                .is_none()
        );
        let (s, why) = share_from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s, Share { i: 2, k: 4 });
        assert!(
            why.starts_with("share 2/4 from SLURM_ARRAY_TASK_ID=1"),
            "{why}"
        );
        // --array=1-4 and --array=0-6:2: the first task is share 1.
        let first = |min: &'static str, step: &'static str, id: &'static str| {
            let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
                ("SLURM_ARRAY_TASK_MIN", min),
                ("SLURM_ARRAY_TASK_STEP", step),
            ]));
            share_from_env(env(pairs)).map(|o| o.unwrap().0)
        };
        assert_eq!(first("1", "1", "1").unwrap(), Share { i: 1, k: 4 });
        assert_eq!(first("1", "1", "4").unwrap(), Share { i: 4, k: 4 });
        assert_eq!(first("0", "2", "6").unwrap(), Share { i: 4, k: 4 });
        for (min, step, id) in [("1", "1", "5"), ("0", "2", "3"), ("2", "1", "1")] {
            let e = format!("{:#}", first(min, step, id).unwrap_err());
            assert!(
                e.contains("is not one of the 4 tasks") && e.contains("--cells"),
                "{e}"
            );
        }
        let e = share_from_env(env(&[("SLURM_ARRAY_TASK_ID", "2")])).unwrap_err();
        assert!(
            format!("{e}").contains("SLURM_ARRAY_TASK_COUNT is not"),
            "{e}"
        );
        let e = share_from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "x"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]))
        .unwrap_err();
        assert!(format!("{e}").contains("SLURM_ARRAY_TASK_ID=x is not a whole number"));
    }

    #[test]
    fn resume_runs_only_missing_cells() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = json!({"epochs": 1});
        let cells = all_cells(&strs(&["batch", "group"]), &[2, 4], &[0, 1]);
        let mut sd = SweepDir::open(dir.path(), &recipe).unwrap();
        // First run dies after 3 cells.
        let mut n = 0;
        let mut recorded = 0;
        let err = run_missing(
            &mut sd,
            &cells,
            |c, _, _| {
                n += 1;
                if n > 3 {
                    bail!("killed")
                } else {
                    Ok(fake(c, &recipe))
                }
            },
            |_, _, _| recorded += 1,
        )
        .unwrap_err();
        assert_eq!(recorded, 3);
        assert!(format!("{err:#}").contains("killed"));
        drop(sd);
        let mut sd = SweepDir::open(dir.path(), &recipe).unwrap();
        assert_eq!(sd.results().len(), 3);
        let mut ran = Vec::new();
        let k = run_missing(
            &mut sd,
            &cells,
            |c, _, _| {
                ran.push(c.clone());
                Ok(fake(c, &recipe))
            },
            |_, _, _| {},
        )
        .unwrap();
        assert_eq!(k, 5);
        assert_eq!(ran, cells[3..].to_vec());
        let (all, _) = store::read_results(&dir.path().join(RESULTS_FILE)).unwrap();
        assert_eq!(all.len(), 8);
        for f in crate::outputs::FILES {
            assert!(dir.path().join(f).exists(), "{f}");
        }
    }

    #[test]
    fn changed_recipe_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        SweepDir::open(dir.path(), &json!({"epochs": 1, "lr": 0.1})).unwrap();
        let err = SweepDir::open(dir.path(), &json!({"epochs": 2, "lr": 0.1})).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("different recipe") && msg.contains("epochs: 1 vs 2"),
            "{msg}"
        );
    }
}
