//! # norm-cli
//!
//! The library behind the `norm-cli` binary: one module per subcommand plus the sweep's
//! bookkeeping and rendering, kept as pure functions where possible so they can be tested
//! and snapshot-tested without running the CLI. `anyhow` is used here, at the top; the
//! kernels and the trainer have their own error types.

#![warn(missing_docs)]

pub mod apply;
pub mod cli;
pub mod curves;
pub mod data_cmd;
pub mod eval_cmd;
pub mod font;
pub mod interrupt;
pub mod npy;
pub mod outputs;
pub mod plot;
pub mod report_cmd;
pub mod stdout;
pub mod store;
pub mod summary;
pub mod sweep;
pub mod sweep_cmd;
pub mod train_cmd;

use anyhow::Result;

use cli::{Cli, Command, DataCommand};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train_cmd::run(&a),
        Command::Eval(a) => eval_cmd::run(&a),
        Command::Sweep(a) => sweep_cmd::run(&a),
        Command::Report(a) => report_cmd::run(&a),
        Command::Data(DataCommand::Export(a)) => {
            eprintln!("{}", data_cmd::run(&a)?);
            Ok(())
        }
        Command::Apply(a) => {
            let written = apply::run(&a)?;
            for p in written {
                stdout::println(&p.display().to_string())?;
            }
            Ok(())
        }
    }
}

/// A clap error as one line: its message and, for an invalid value, the possible values —
/// without the usage block and the "For more information" hint.
pub fn one_line_clap_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect();
    let line = parts.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    format!("error: {line} (see --help)")
}
