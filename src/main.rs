//! reemo-bundle command line: parses and dispatches only; prints the error chain once.

use clap::Parser;
use reemo_bundle::cli::{run, Cli};

fn main() {
    match run(Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
