//! Ctrl-C: the handler clears the progress bar, says what was interrupted and what was kept, and
//! exits with 130 (128 + SIGINT, the shell's convention).
//!
//! The commands describe what they are doing with [`set_task`] and [`set_kept`], and register
//! their progress bar with [`set_bar`]. A write that must not be cut (a results line, a
//! checkpoint, a rewritten summary) runs inside [`critical`]: the handler waits for it to end
//! before exiting, so an interruption never leaves half of what it was writing.

use std::sync::Mutex;

use indicatif::ProgressBar;

#[derive(Default)]
struct State {
    task: String,
    kept: String,
    bar: Option<ProgressBar>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static WRITING: Mutex<()> = Mutex::new(());

fn with_state(f: impl FnOnce(&mut State)) {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(State::default));
}

/// Installs the Ctrl-C handler (once, from `main`). Failing to install it is not fatal: Ctrl-C
/// then ends the program the default way.
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        let _writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
        let st = g.take().unwrap_or_default();
        if let Some(bar) = st.bar {
            bar.finish_and_clear();
        }
        let task = if st.task.is_empty() {
            "norm-cli".to_owned()
        } else {
            st.task
        };
        let kept = if st.kept.is_empty() {
            "nothing was written".to_owned()
        } else {
            st.kept
        };
        eprintln!("interrupted: {task}; {kept}");
        std::process::exit(130);
    });
}

/// What is running, for the interruption message ("training GroupNorm, batch 2: epoch 3/20").
pub fn set_task(task: impl Into<String>) {
    let task = task.into();
    with_state(|s| s.task = task);
}

/// What an interruption keeps ("the 4 finished cells are in runs/a/results.jsonl").
pub fn set_kept(kept: impl Into<String>) {
    let kept = kept.into();
    with_state(|s| s.kept = kept);
}

/// The progress bar to clear on an interruption (`None` once it is gone).
pub fn set_bar(bar: Option<ProgressBar>) {
    with_state(|s| s.bar = bar);
}

/// Runs `f` with interruptions held back until it returns.
pub fn critical<T>(f: impl FnOnce() -> T) -> T {
    let _writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    f()
}
