//! How work is handed to rayon. The split into tasks changes only who computes what, never a
//! result: every reduction is shaped by the data (see [`crate::tuning`]).

use rayon::prelude::*;

use crate::Parallelism;
use crate::tuning::tuning;

/// Items per rayon task at most for items of `item_len` elements: [`Tuning::task`] worth, or
/// one item.
///
/// [`Tuning::task`]: crate::tuning::Tuning::task
#[inline]
pub(crate) fn items_per_task(item_len: usize) -> usize {
    (tuning().task / item_len.max(1)).max(1)
}

/// Whether an op with `items` top-level tasks also spreads the tiles inside each task.
#[inline]
pub(crate) fn nests(par: Parallelism, items: usize) -> bool {
    par == Parallelism::Rayon && items < tuning().nest_below
}

/// Maps `f` over `items` of `item_len` elements each, on the rayon pool (in tasks of at most
/// [`items_per_task`] items) or on the calling thread, keeping the order.
pub(crate) fn run<T: Send, R: Send>(
    par: Parallelism,
    items: Vec<T>,
    item_len: usize,
    f: impl Fn(T) -> R + Sync + Send,
) -> Vec<R> {
    match par {
        Parallelism::None => items.into_iter().map(f).collect(),
        Parallelism::Rayon => items
            .into_par_iter()
            .with_max_len(items_per_task(item_len))
            .map(f)
            .collect(),
    }
}
