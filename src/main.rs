//! reemo-bundle command line: parses and dispatches only; prints the error chain once.

use clap::Parser;
use reemo_bundle::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => reemo_bundle::commands::build(a),
        Command::Inspect(a) => reemo_bundle::commands::inspect(a),
        Command::Verify(a) => reemo_bundle::commands::verify(a),
        Command::Keygen(a) => reemo_bundle::commands::keygen(a),
        Command::Sign(a) => reemo_bundle::commands::sign(a),
        Command::Loader(c) => reemo_bundle::loader::cli::run(c),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
