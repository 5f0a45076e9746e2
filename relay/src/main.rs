//! ws-relay-server command line: parses arguments and dispatches to `serve`, `healthcheck`
//! or `probe`. Exit codes: 0 success, 1 failure (health not OK, probe failed, bad config).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use ws_relay_server::client::{self, BaseUrl, ProbeOpts};
use ws_relay_server::config::Config;

/// WebSocket relay between a Reemo agent and a user's browser: one static process for
/// thousands of sessions.
#[derive(Parser)]
#[command(name = "ws-relay-server", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Config file (TOML); default /etc/ws-relay-server/config.toml if it exists.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve relay, control API, /healthz and /metrics (the default).
    Serve,
    /// GET /healthz on the configured port via 127.0.0.1; exit 0 if status is OK, else 1.
    Healthcheck {
        /// Check this base URL instead (http://HOST:PORT or https://HOST:PORT).
        #[arg(long)]
        url: Option<String>,
    },
    /// End-to-end self-test: create a session, connect both sides, exchange, close; prints
    /// one JSON line.
    Probe {
        /// Relay base URL, http://HOST:PORT or https://HOST:PORT (then wss, certificate and
        /// name verified).
        #[arg(long)]
        url: String,
        /// For https: trust only the CA certificates in this PEM file (default: the Mozilla
        /// roots built into the binary).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Control API base URL when it is not at --url (behind the RELAYWS entry proxy:
        /// https://HOST:8443, with a client certificate).
        #[arg(long)]
        control_url: Option<String>,
        /// Client certificate (PEM) for the control API's mutual TLS.
        #[arg(long, requires = "client_key")]
        client_cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long, requires = "client_cert")]
        client_key: Option<PathBuf>,
        /// File holding the control API secret.
        #[arg(long)]
        control_secret_file: PathBuf,
        /// Round trips to make (each is one message each way).
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Keep retrying until the relay answers, up to this many seconds.
        #[arg(long, default_value_t = 0)]
        wait_secs: u64,
    },
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("RELAY_"))
        .collect()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd.unwrap_or(Cmd::Serve) {
        Cmd::Serve => {
            let cfg = Config::load(cli.config.as_deref(), &env_vars())?;
            runtime()?.block_on(ws_relay_server::server::serve(cfg))?;
            Ok(0)
        }
        Cmd::Healthcheck { url } => {
            let base = match url {
                Some(u) => BaseUrl::parse(&u)?,
                None => {
                    let cfg = Config::load(cli.config.as_deref(), &env_vars())?;
                    BaseUrl {
                        tls: cfg.tls.is_some(),
                        authority: format!("127.0.0.1:{}", cfg.listen.port()),
                    }
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            match rt.block_on(client::healthcheck(&base)) {
                Ok(true) => Ok(0),
                Ok(false) => {
                    eprintln!("ws-relay-server: health is not OK");
                    Ok(1)
                }
                Err(e) => {
                    eprintln!("ws-relay-server: health check failed: {e:#}");
                    Ok(1)
                }
            }
        }
        Cmd::Probe {
            url,
            ca_file,
            control_url,
            client_cert,
            client_key,
            control_secret_file,
            messages,
            wait_secs,
        } => {
            let secret = std::fs::read_to_string(&control_secret_file).with_context(|| {
                format!("reading control secret {}", control_secret_file.display())
            })?;
            let base = BaseUrl::parse(&url)?;
            let client = client_cert.as_deref().zip(client_key.as_deref());
            // https: verified against --ca-file, presenting the client certificate if given
            let tls_for = |b: &BaseUrl| -> Result<_> {
                Ok(if b.tls {
                    Some(ws_relay_server::tls::verifying_client_with(
                        ca_file.as_deref(),
                        client,
                    )?)
                } else {
                    None
                })
            };
            let tls = tls_for(&base)?;
            let control = match control_url {
                Some(u) => {
                    let b = BaseUrl::parse(&u)?;
                    let t = tls_for(&b)?;
                    Some((b, t))
                }
                None => None,
            };
            let opts = ProbeOpts {
                base,
                control,
                tls,
                secret: secret.trim().to_string(),
                messages: messages.max(1),
                wait: Duration::from_secs(wait_secs),
            };
            let out = runtime()?
                .block_on(client::probe(&opts))
                .context("probe failed")?;
            println!("{out}");
            Ok(0)
        }
    }
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ws-relay-server: {e:#}");
            std::process::exit(1);
        }
    }
}
