//! `norm-cli`: thin entry point. Parsing is clap's, the work is the library's; every error is
//! printed as one line with its whole cause chain (`{:#}`) and a non-zero exit code.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use norm_cli::cli::Cli;

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error (please report): {}{at}",
            msg.replace('\n', " ")
        );
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        ExitCode::from(2)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                _ => {
                    eprintln!("{}", norm_cli::one_line_clap_error(&e));
                    ExitCode::from(2)
                }
            };
        }
    };
    norm_cli::interrupt::install();
    match norm_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line even if a foreign error's message has several.
            let text = format!("{e:#}");
            let one: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("error: {}", one.join(" "));
            ExitCode::FAILURE
        }
    }
}
