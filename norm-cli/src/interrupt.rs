//! Ctrl-C: the handler clears the progress bar, says what was interrupted and what was kept, and
//! exits with 130 (128 + SIGINT, the shell's convention).
//!
//! The commands describe what they are doing with [`set_task`] and [`set_kept`], and register
//! their progress bar with [`set_bar`]. A write that must not be cut (a results line, a
//! checkpoint, a rewritten summary) runs inside [`critical`]: the handler waits for it to end
//! before exiting, so an interruption never leaves half of what it was writing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

#[derive(Default)]
struct State {
    task: String,
    kept: String,
    bar: Option<ProgressBar>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static WRITING: Mutex<()> = Mutex::new(());
static REQUESTED: AtomicBool = AtomicBool::new(false);
static PARKED: AtomicBool = AtomicBool::new(false);
static BAR_CLEARED: AtomicBool = AtomicBool::new(false);

fn with_state(f: impl FnOnce(&mut State)) {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(State::default));
}

/// Installs the Ctrl-C handler (once, from `main`). Failing to install it is not fatal: Ctrl-C
/// then ends the program the default way.
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        // The bar is cleared by the thread that draws it (see `park_if_requested`): cleared
        // from here, the training thread's next draw brings it back. Wait for that thread a
        // little; a long step or a write in progress only delays the message.
        REQUESTED.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        while !PARKED.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_millis(500) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
        let st = g.take().unwrap_or_default();
        let had_bar = st.bar.is_some() || BAR_CLEARED.load(Ordering::SeqCst);
        if let Some(bar) = st.bar {
            // Not parked in time: clear it from here, and keep it from being drawn again.
            bar.finish_and_clear();
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        // indicatif leaves the cursor at the right edge of the bar's line, so the `^C` a
        // terminal echoes wraps onto the next line, and the clear above only erased that one:
        // erase the bar's line too. (A SIGINT from `kill` echoes nothing; with both stdin and
        // stderr on a terminal, Ctrl-C is taken to be the source.)
        let tty = |t: &dyn std::io::IsTerminal| t.is_terminal();
        if had_bar && tty(&std::io::stderr()) && tty(&std::io::stdin()) {
            eprint!("\x1b[1A\r\x1b[2K");
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

/// Called by the thread that draws a progress bar, between steps: after Ctrl-C it runs `clear`
/// (clearing the bar; `true` if one was on the terminal), tells the handler, and waits there
/// for the exit.
pub fn park_if_requested(clear: impl FnOnce() -> bool) {
    if REQUESTED.load(Ordering::SeqCst) {
        BAR_CLEARED.store(clear(), Ordering::SeqCst);
        PARKED.store(true, Ordering::SeqCst);
        loop {
            std::thread::park();
        }
    }
}

/// Runs `f` with interruptions held back until it returns.
pub fn critical<T>(f: impl FnOnce() -> T) -> T {
    let _writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    f()
}
