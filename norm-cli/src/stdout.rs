//! Everything the commands print on stdout goes through [`print`], so that a closed pipe
//! (`norm-cli ... | head -1`) ends the program quietly, as ripgrep does, instead of Rust's
//! `println!` panicking with "failed printing to stdout: Broken pipe".

use std::io::{ErrorKind, Write};

use anyhow::{Context, Result};

/// Writes `text` to stdout and flushes it, so a line shows as soon as it is printed even when
/// stdout is a pipe. A reader that has gone away exits the process with code 0 and no word
/// (after any file write in progress, see [`crate::interrupt::critical`]).
pub fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {
            crate::interrupt::critical(|| std::process::exit(0))
        }
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// [`print`] with a newline.
pub fn println(text: &str) -> Result<()> {
    print(&format!("{text}\n"))
}
