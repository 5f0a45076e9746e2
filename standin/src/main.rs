//! reemo-standin command line: `serve` (the default), `healthcheck` (the image's
//! HEALTHCHECK) or `migrate` (the `db` role's one-shot job, also what `serve` does for that role). Configuration comes from the
//! environment (see the crate's README).
//!
//! Exit codes: 0 success; 1 unhealthy, or a failure while running; 2 bad configuration or
//! usage (missing secret, unreadable certificate, bad port, unknown role …), printed once.

use std::process::ExitCode;

use reemo_standin::config::{Config, ConfigError, Role};
use reemo_standin::serve;

const USAGE: &str = "usage: reemo-standin [serve | healthcheck | migrate]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match args.as_slice() {
        [] => "serve",
        [c] if ["serve", "healthcheck", "migrate"].contains(&c.as_str()) => c.as_str(),
        [c] if c == "--help" || c == "-h" => {
            println!("{USAGE}\nconfiguration: STANDIN_ROLE, STANDIN_PORT, STANDIN_DB, STANDIN_PEERS, STANDIN_TLS_CERT/KEY/CA, <SECRET>_FILE (see README)");
            return ExitCode::SUCCESS;
        }
        [c] if c == "--version" => {
            println!("reemo-standin {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("reemo-standin: error: unexpected arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let ready = match Config::from_lookup(|k| std::env::var(k).ok()).and_then(serve::prepare) {
        Ok(r) => r,
        Err(ConfigError(msg)) => {
            eprintln!("reemo-standin: error: bad configuration: {msg}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reemo-standin: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match cmd {
            "healthcheck" => serve::healthcheck(&ready).await,
            // the db role is a job: its default command is the migration
            "migrate" | "serve" if ready.config.role == Role::Db => {
                serve::migrate(&ready, serve::MIGRATE_WAIT).await
            }
            "migrate" => Err(anyhow::anyhow!(
                "migrate is the db role's job, not the {} role's",
                ready.config.role.name()
            )),
            _ => serve::serve(ready).await,
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reemo-standin: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
