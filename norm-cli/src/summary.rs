//! Aggregation of finished cells into a norm × batch table (mean ± std over seeds) and its
//! rendering as Markdown and CSV — pure functions of the results, so they are snapshot-tested.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use norm_train::NormChoice;

use crate::store::{CellResult, CellStatus};

/// Mean and spread of one cell's final test accuracy over its seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct CellStat {
    /// Seeds that finished, ascending.
    pub seeds: Vec<u64>,
    /// Mean final test accuracy, 0..1.
    pub mean: f64,
    /// Sample standard deviation (n − 1); `None` for a single seed.
    pub std: Option<f64>,
}

impl CellStat {
    /// Mean and sample std of per-seed accuracies (at least one).
    fn of(by_seed: &BTreeMap<u64, f64>) -> Self {
        let v: Vec<f64> = by_seed.values().copied().collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.len() > 1)
            .then(|| (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
        Self {
            seeds: by_seed.keys().copied().collect(),
            mean,
            std,
        }
    }
}

/// One cell's accuracies with re-estimated running statistics (`sweep --recalibrate-bn`), over
/// the seeds that have them.
#[derive(Clone, Debug, PartialEq)]
pub struct RecalStat {
    /// Training images the statistics were averaged over (of the first such seed).
    pub images: usize,
    /// With the running statistics of training, the same seeds.
    pub trained: CellStat,
    /// Statistics over batches of the images per worker.
    pub per_worker: CellStat,
    /// Statistics over batches of the whole batch.
    pub whole_batch: CellStat,
}

/// Which re-estimates a row of the section holds: a norm, and whether the images had the
/// training augmentation.
pub type RecalGroup = (NormChoice, bool);

/// `(group, column)` → [`RecalStat`] of the finished cells that were re-estimated.
fn recalibrated(results: &[CellResult]) -> BTreeMap<(RecalGroup, usize), RecalStat> {
    type BySeed = BTreeMap<u64, f64>;
    let mut acc: BTreeMap<(RecalGroup, usize), (usize, [BySeed; 3])> = BTreeMap::new();
    for r in results {
        let (Some(rc), Some(final_acc)) = (r.recalibrated, r.final_test_acc) else {
            continue;
        };
        let e = acc
            .entry(((r.norm, rc.augmented), r.per_worker.unwrap_or(r.batch)))
            .or_insert_with(|| (rc.images, Default::default()));
        if e.1[0].contains_key(&r.seed) {
            continue;
        }
        for (m, v) in
            e.1.iter_mut()
                .zip([final_acc, rc.per_worker, rc.whole_batch])
        {
            m.insert(r.seed, v);
        }
    }
    acc.into_iter()
        .map(|(k, (images, [t, p, w]))| {
            let stat = RecalStat {
                images,
                trained: CellStat::of(&t),
                per_worker: CellStat::of(&p),
                whole_batch: CellStat::of(&w),
            };
            (k, stat)
        })
        .collect()
}

/// What the columns are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Batch sizes, one worker each.
    Batch,
    /// Images per worker at one total batch (a `--per-worker` sweep).
    PerWorker {
        /// The total batch.
        batch: usize,
    },
}

impl Axis {
    /// A column's header: `batch 8` or `8 per worker`.
    pub fn column(&self, x: usize) -> String {
        match self {
            Axis::Batch => format!("batch {x}"),
            Axis::PerWorker { .. } => format!("{x} per worker"),
        }
    }
}

/// The norm × batch (or images per worker) table.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// What the columns are.
    pub axis: Axis,
    /// Rows, in paper order.
    pub norms: Vec<NormChoice>,
    /// Columns, ascending: batch sizes, or images per worker (see `axis`).
    pub batches: Vec<usize>,
    /// `(norm, batch)` → statistics; absent when no seed of the cell finished with an accuracy.
    pub cells: BTreeMap<(NormChoice, usize), CellStat>,
    /// `(norm, batch)` → the seeds that diverged (no accuracy; not in `cells`).
    pub diverged: BTreeMap<(NormChoice, usize), Vec<u64>>,
    /// `((norm, augmented), batch)` → accuracies with re-estimated running statistics, where
    /// recorded.
    pub recalibrated: BTreeMap<(RecalGroup, usize), RecalStat>,
    /// Number of results aggregated (diverged ones included).
    pub results: usize,
}

impl Summary {
    /// Aggregates results; a `(norm, batch, seed)` seen twice counts once (the first). Results
    /// of a `--per-worker` sweep are tabulated by images per worker. Diverged cells are listed
    /// apart and never averaged in.
    pub fn from_results(results: &[CellResult]) -> Self {
        let axis = match results.iter().find(|r| r.per_worker.is_some()) {
            Some(r) => Axis::PerWorker { batch: r.batch },
            None => Axis::Batch,
        };
        let mut accs: BTreeMap<(NormChoice, usize), BTreeMap<u64, Option<f64>>> = BTreeMap::new();
        for r in results {
            let acc = match r.status {
                CellStatus::Ok => r.final_test_acc,
                CellStatus::Diverged => None,
            };
            accs.entry((r.norm, r.per_worker.unwrap_or(r.batch)))
                .or_default()
                .entry(r.seed)
                .or_insert(acc);
        }
        let mut norms: Vec<NormChoice> = accs.keys().map(|(n, _)| *n).collect();
        norms.sort();
        norms.dedup();
        let mut batches: Vec<usize> = accs.keys().map(|(_, b)| *b).collect();
        batches.sort_unstable();
        batches.dedup();
        let n_results = accs.values().map(BTreeMap::len).sum();
        let mut cells = BTreeMap::new();
        let mut diverged = BTreeMap::new();
        for (k, by_seed) in accs {
            let bad: Vec<u64> = by_seed
                .iter()
                .filter(|(_, a)| a.is_none())
                .map(|(s, _)| *s)
                .collect();
            let ok: BTreeMap<u64, f64> = by_seed
                .into_iter()
                .filter_map(|(s, a)| a.map(|a| (s, a)))
                .collect();
            if !bad.is_empty() {
                diverged.insert(k, bad);
            }
            if ok.is_empty() {
                continue;
            }
            cells.insert(k, CellStat::of(&ok));
        }
        let recalibrated = recalibrated(results);
        Self {
            axis,
            norms,
            batches,
            cells,
            diverged,
            recalibrated,
            results: n_results,
        }
    }

    /// In a per-worker table, the norms that ran only with one worker (images per worker =
    /// the total batch): their result does not depend on the split, so it holds for every
    /// column.
    pub fn split_free_norms(&self) -> Vec<NormChoice> {
        let Axis::PerWorker { batch } = self.axis else {
            return Vec::new();
        };
        self.norms
            .iter()
            .filter(|n| {
                self.cells
                    .keys()
                    .filter(|(m, _)| m == *n)
                    .all(|(_, k)| *k == batch)
                    && !n.kind().is_some_and(norm_train::split_matters)
            })
            .copied()
            .collect()
    }

    /// Seeds of one cell that diverged (empty if none).
    pub fn diverged_seeds(&self, norm: NormChoice, batch: usize) -> &[u64] {
        self.diverged.get(&(norm, batch)).map_or(&[], Vec::as_slice)
    }

    /// The statistics of one cell.
    pub fn get(&self, norm: NormChoice, batch: usize) -> Option<&CellStat> {
        self.cells.get(&(norm, batch))
    }

    /// `Some(seeds)` when every present cell has the same seeds.
    fn common_seeds(&self) -> Option<&[u64]> {
        let mut it = self.cells.values().map(|c| c.seeds.as_slice());
        let first = it.next()?;
        it.all(|s| s == first).then_some(first)
    }
}

fn pct(x: f64, decimals: usize) -> String {
    format!("{:.*}", decimals, 100.0 * x)
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Flattens a recipe into `key=value` pairs with dotted keys, sorted.
pub fn recipe_line(recipe: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            Value::String(s) => out.push(format!("{prefix}={s}")),
            other => out.push(format!("{prefix}={other}")),
        }
    }
    let mut out = Vec::new();
    walk("", recipe, &mut out);
    out.sort();
    out.join(", ")
}

/// `summary.md`: accuracy mean ± std per norm × batch (the Group Normalization paper's Table 2
/// layout), then test error with the difference of every norm to BatchNorm.
pub fn render_markdown(s: &Summary, recipe: &Value) -> String {
    let mut out = String::new();
    let epochs = recipe
        .get("epochs")
        .map(|e| format!(" after {e} epoch(s)"))
        .unwrap_or_default();
    let common = s.common_seeds();
    match s.axis {
        Axis::Batch => out.push_str("# Test accuracy by normalisation and batch size\n\n"),
        Axis::PerWorker { batch } => {
            let _ = writeln!(
                out,
                "# Test accuracy by normalisation and images per worker (total batch {batch})\n"
            );
        }
    }
    if s.cells.is_empty() && s.diverged.is_empty() {
        out.push_str("No finished cells yet.\n");
        return out;
    }
    match common {
        Some(seeds) => {
            let _ = writeln!(
                out,
                "Final test accuracy (%){epochs}: mean ± sample std over {} seed(s) per cell \
                 (seeds {}).\n",
                seeds.len(),
                list(seeds)
            );
        }
        None if s.cells.is_empty() => {
            let _ = writeln!(
                out,
                "Every cell diverged: there is no accuracy to average.\n"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "Final test accuracy (%){epochs}: mean ± sample std over the seeds of each cell; \
                 cells have different numbers of finished seeds, given as (n = …).\n"
            );
        }
    }
    let header = |out: &mut String, first: &str| {
        let _ = write!(out, "| {first} |");
        for &b in &s.batches {
            let _ = write!(out, " {} |", s.axis.column(b));
        }
        out.push_str("\n| --- |");
        for _ in &s.batches {
            out.push_str(" ---: |");
        }
        out.push('\n');
    };
    let free = s.split_free_norms();
    // A norm that does not depend on the split holds its one-worker value in every column.
    let column = |norm: NormChoice, b: usize| match s.axis {
        Axis::PerWorker { batch } if free.contains(&norm) => batch,
        _ => b,
    };
    header(&mut out, "norm");
    for &norm in &s.norms {
        let _ = write!(out, "| {} |", norm.label());
        for &b in &s.batches {
            let bad = s.diverged_seeds(norm, column(norm, b)).len();
            match s.get(norm, column(norm, b)) {
                None if bad > 0 => {
                    let _ = write!(out, " diverged ({bad}) |");
                }
                None => out.push_str(" — |"),
                Some(c) => {
                    let _ = write!(out, " {}", pct(c.mean, 1));
                    if let Some(sd) = c.std {
                        let _ = write!(out, " ± {}", pct(sd, 1));
                    }
                    if common.is_none() {
                        let _ = write!(out, " (n = {})", c.seeds.len());
                    }
                    if bad > 0 {
                        let _ = write!(out, " (+{bad} diverged)");
                    }
                    out.push_str(" |");
                }
            }
        }
        out.push('\n');
    }

    if !free.is_empty() {
        let names: Vec<&str> = free.iter().map(|n| n.label()).collect();
        let _ = writeln!(
            out,
            "\n{} {} not depend on the worker split (per-sample statistics): run once, with one \
             worker; that value is shown in every column.",
            names.join(", "),
            if names.len() == 1 { "does" } else { "do" }
        );
    }
    out.push_str("\n## Test error (%)\n\n");
    out.push_str(match s.axis {
        Axis::Batch => {
            "Mean test error; Δ rows are the difference to BatchNorm at the same batch size"
        }
        Axis::PerWorker { .. } => {
            "Mean test error; Δ rows are the difference to BatchNorm at the same images per worker"
        }
    });
    out.push_str(" (negative: lower error than BatchNorm).\n\n");
    header(&mut out, "norm");
    let err = |norm: NormChoice, b: usize| s.get(norm, column(norm, b)).map(|c| 1.0 - c.mean);
    for &norm in &s.norms {
        let _ = write!(out, "| {} |", norm.label());
        for &b in &s.batches {
            match err(norm, b) {
                Some(e) => {
                    let _ = write!(out, " {} |", pct(e, 1));
                }
                None if !s.diverged_seeds(norm, b).is_empty() => out.push_str(" diverged |"),
                None => out.push_str(" — |"),
            }
        }
        out.push('\n');
    }
    let bn = NormChoice::Norm(norm_train::NormKind::Batch);
    if s.norms.contains(&bn) {
        for &norm in s.norms.iter().filter(|&&n| n != bn) {
            let _ = write!(out, "| Δ {} − {} |", norm.label(), bn.label());
            for &b in &s.batches {
                match (err(norm, b), err(bn, b)) {
                    (Some(e), Some(bn)) => {
                        let _ = write!(out, " {:+.1} |", 100.0 * (e - bn));
                    }
                    _ => out.push_str(" — |"),
                }
            }
            out.push('\n');
        }
    }
    render_recalibrated(&mut out, s);
    if !s.diverged.is_empty() {
        let entries: Vec<String> = s
            .diverged
            .iter()
            .map(|((n, b), seeds)| format!("{} batch {b} seed(s) {}", n.label(), list(seeds)))
            .collect();
        let _ = writeln!(
            out,
            "\nDiverged (the loss became NaN or infinite; no accuracy, not averaged in): {}.",
            entries.join("; ")
        );
    }
    let _ = writeln!(
        out,
        "\n{} finished cell(s). Recipe: {}.",
        s.results,
        recipe_line(recipe)
    );
    out
}

/// The section on re-estimated running statistics, if any cell has them.
fn render_recalibrated(out: &mut String, s: &Summary) {
    let Some(images) = s.recalibrated.values().next().map(|r| r.images) else {
        return;
    };
    let whole = match s.axis {
        Axis::Batch => "of the batch size".to_owned(),
        Axis::PerWorker { batch } => format!("of {batch}"),
    };
    let _ = writeln!(
        out,
        "\n## Re-estimated running statistics\n\nFinal test accuracy (%) with the running \
         statistics of training, and with them re-estimated after training from the first \
         {images} training images (the plain average of train-mode batch statistics, weights \
         fixed, one worker; the images plain or with the training augmentation), over batches \
         of the images per worker and over batches {whole}; mean ± std over the same seeds.\n"
    );
    let _ = write!(out, "| norm, statistics |");
    for &b in &s.batches {
        let _ = write!(out, " {} |", s.axis.column(b));
    }
    out.push_str("\n| --- |");
    for _ in &s.batches {
        out.push_str(" ---: |");
    }
    out.push('\n');
    let mut groups: Vec<RecalGroup> = s.recalibrated.keys().map(|(g, _)| *g).collect();
    groups.dedup();
    type Pick = fn(&RecalStat) -> &CellStat;
    let rows: [(&str, Pick); 3] = [
        ("of training", |r| &r.trained),
        ("re-estimated, images per worker", |r| &r.per_worker),
        ("re-estimated, whole batch", |r| &r.whole_batch),
    ];
    for (norm, augmented) in groups {
        let images = if augmented { "augmented" } else { "plain" };
        for (what, pick) in rows {
            let _ = write!(out, "| {} ({images} images), {what} |", norm.label());
            for &b in &s.batches {
                match s.recalibrated.get(&((norm, augmented), b)) {
                    Some(r) => {
                        let c = pick(r);
                        let _ = write!(out, " {}", pct(c.mean, 1));
                        if let Some(sd) = c.std {
                            let _ = write!(out, " ± {}", pct(sd, 1));
                        }
                        out.push_str(" |");
                    }
                    None => out.push_str(" — |"),
                }
            }
            out.push('\n');
        }
    }
}

/// `summary.csv`: one row per norm, and per batch size the columns `batch{B}_mean`,
/// `batch{B}_std` (test accuracy in %, two decimals; empty when undefined), `batch{B}_seeds` (seeds
/// averaged) and `batch{B}_diverged` (seeds that diverged).
pub fn render_csv(s: &Summary) -> String {
    let mut out = String::from("norm");
    let col = match s.axis {
        Axis::Batch => "batch",
        Axis::PerWorker { .. } => "per_worker",
    };
    for b in &s.batches {
        let _ = write!(
            out,
            ",{col}{b}_mean,{col}{b}_std,{col}{b}_seeds,{col}{b}_diverged"
        );
    }
    out.push('\n');
    for &norm in &s.norms {
        out.push_str(norm.name());
        for &b in &s.batches {
            match s.get(norm, b) {
                Some(c) => {
                    let sd = c.std.map(|v| pct(v, 2)).unwrap_or_default();
                    let _ = write!(out, ",{},{sd},{}", pct(c.mean, 2), c.seeds.len());
                }
                None => out.push_str(",,,0"),
            }
            let _ = write!(out, ",{}", s.diverged_seeds(norm, b).len());
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn n(name: &str) -> NormChoice {
        name.parse().unwrap()
    }

    fn r(norm: &str, batch: usize, seed: u64, acc: f64) -> CellResult {
        CellResult {
            norm: norm.parse().unwrap(),
            batch,
            per_worker: None,
            seed,
            status: CellStatus::Ok,
            diverged: None,
            recipe: json!({}),
            test_acc_per_epoch: vec![acc],
            train_loss_per_epoch: vec![1.0],
            final_test_acc: Some(acc),
            recalibrated: None,
            images_per_sec: 1.0,
            seconds: 1.0,
            simd: String::new(),
            threads: 1,
        }
    }

    #[test]
    fn mean_and_sample_std() {
        let s = Summary::from_results(&[
            r("group", 2, 0, 0.5),
            r("group", 2, 1, 0.7),
            r("group", 2, 1, 0.9), // duplicate seed: first wins
            r("batch", 2, 0, 0.4),
        ]);
        let g = s.get(n("group"), 2).unwrap();
        assert!((g.mean - 0.6).abs() < 1e-12);
        assert!((g.std.unwrap() - 0.02f64.sqrt()).abs() < 1e-12);
        assert_eq!(g.seeds, vec![0, 1]);
        assert_eq!(s.get(n("batch"), 2).unwrap().std, None);
        assert_eq!(s.norms, vec![n("batch"), n("group")]);
        assert_eq!(s.results, 3);
    }

    #[test]
    fn csv_has_a_column_triple_per_batch() {
        let s = Summary::from_results(&[r("group", 2, 0, 0.5), r("batch", 4, 0, 0.25)]);
        assert_eq!(
            render_csv(&s),
            "norm,batch2_mean,batch2_std,batch2_seeds,batch2_diverged,batch4_mean,batch4_std,\
             batch4_seeds,batch4_diverged\n\
             batch,,,0,0,25.00,,1,0\n\
             group,50.00,,1,0,,,0,0\n"
        );
    }

    #[test]
    fn diverged_cells_are_listed_not_averaged() {
        let mut bad = r("batch", 2, 1, 0.0);
        bad.status = CellStatus::Diverged;
        bad.final_test_acc = None;
        let mut bad2 = r("group", 4, 0, 0.0);
        bad2.status = CellStatus::Diverged;
        bad2.final_test_acc = None;
        let s = Summary::from_results(&[r("batch", 2, 0, 0.5), bad, bad2, r("group", 2, 0, 0.6)]);
        assert_eq!(s.get(n("batch"), 2).unwrap().seeds, vec![0]);
        assert_eq!(s.diverged_seeds(n("batch"), 2), &[1]);
        assert!(s.get(n("group"), 4).is_none());
        assert_eq!(s.results, 4);
        let md = render_markdown(&s, &json!({}));
        assert!(md.contains("| 50.0 (+1 diverged) |"), "{md}");
        assert!(md.contains("| diverged (1) |"), "{md}");
        assert!(
            md.contains("Diverged (the loss became NaN or infinite; no accuracy, not averaged in): BatchNorm batch 2 seed(s) 1; GroupNorm batch 4 seed(s) 0."),
            "{md}"
        );
        let csv = render_csv(&s);
        assert!(csv.contains("batch,50.00,,1,1,,,0,0"), "{csv}");
    }
}
