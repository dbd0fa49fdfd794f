//! `stewardctl`: the command-line client of the control plane's REST API.
//! Parses arguments and runs [`steward_controlplane::client::run`]; errors are
//! one line on stderr and exit code 1 (usage errors and `audit verify`
//! without usable input: 2).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use steward_controlplane::client::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stewardctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stewardctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
