//! What a configured stand-in does: serve the health JSON (over mutual TLS when
//! configured), check its database and peers on each request, play the database (`mysql`),
//! run the migration job (`db`), and the in-container health check.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Config, ConfigError, Endpoint, Peer, Role};
use crate::health::{self, Check};
use crate::http;
use crate::tls::TlsMaterial;

/// Time allowed to connect to the database or a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the `db` job waits for its database.
pub const MIGRATE_WAIT: Duration = Duration::from_secs(30);
/// Time allowed for a whole peer call or a client's request.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A configuration whose files were read: what `serve` and `healthcheck` run with.
pub struct Ready {
    /// The configuration.
    pub config: Config,
    /// Its TLS material, when it serves mutual TLS.
    pub tls: Option<TlsMaterial>,
}

/// Read the secrets and certificates the configuration names (every failure is a
/// configuration error naming the variable and file).
pub fn prepare(config: Config) -> Result<Ready, ConfigError> {
    // the values are not used further: a stand-in only proves it could read them
    config.read_secrets()?;
    let tls = config.tls.as_ref().map(TlsMaterial::load).transpose()?;
    Ok(Ready { config, tls })
}

/// Whether a TCP connection to `e` opens.
async fn reachable(e: &Endpoint) -> Check {
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((e.host.as_str(), e.port)),
    )
    .await
    {
        Ok(Ok(_)) => Check::Healthy(None),
        Ok(Err(err)) => Check::Unhealthy {
            error: format!("{e}: {err}"),
            answer: None,
        },
        Err(_) => Check::Unhealthy {
            error: format!("{e}: no answer within {CONNECT_TIMEOUT:?}"),
            answer: None,
        },
    }
}

/// GET the health of `endpoint` over TLS as `server_name` (or plain HTTP without `tls`):
/// the HTTP status and body.
pub async fn fetch_health(
    endpoint: &Endpoint,
    server_name: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(u16, Vec<u8>)> {
    let call = async {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))??;
        let _ = tcp.set_nodelay(true);
        let req = http::health_request(server_name);
        match tls {
            None => exchange(tcp, &req).await,
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
                    .with_context(|| format!("{server_name:?} is not a server name"))?;
                let s = tokio_rustls::TlsConnector::from(c)
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake")?;
                exchange(s, &req).await
            }
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CALL_TIMEOUT:?}"))?
        .with_context(|| format!("{endpoint}"))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> Result<(u16, Vec<u8>)> {
    s.write_all(req).await.context("sending the request")?;
    s.flush().await?;
    let mut data = Vec::new();
    let mut limited = (&mut s).take((http::MAX_BODY + http::MAX_HEAD) as u64);
    // a peer that closes without close_notify still sent a whole response
    match limited.read_to_end(&mut data).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !data.is_empty() => {}
        Err(e) => return Err(e).context("reading the response"),
    }
    http::parse_response(&data)
}

async fn peer_check(p: &Peer, client: Option<Arc<rustls::ClientConfig>>) -> Check {
    match fetch_health(&p.endpoint, &p.name, client).await {
        Ok((status, body)) => health::peer_check(status, &body),
        Err(e) => Check::Unhealthy {
            error: format!("{e:#}"),
            answer: None,
        },
    }
}

/// The health answer now: the database and every peer checked concurrently.
pub async fn current_health(
    config: &Config,
    client: Option<Arc<rustls::ClientConfig>>,
) -> (u16, serde_json::Value) {
    let db = async {
        match &config.db {
            Some(e) => Some(reachable(e).await),
            None => None,
        }
    };
    // started together: each check is bounded by its own timeout, so the answer waits for
    // the slowest one, not for their sum
    let handles: Vec<_> = config
        .peers
        .iter()
        .map(|p| {
            let (p, c) = (p.clone(), client.clone());
            tokio::spawn(async move {
                let check = peer_check(&p, c).await;
                (p.name, check)
            })
        })
        .collect();
    let db = db.await;
    let mut peers = Vec::with_capacity(handles.len());
    for (h, p) in handles.into_iter().zip(&config.peers) {
        peers.push(h.await.unwrap_or_else(|e| {
            (
                p.name.clone(),
                Check::Unhealthy {
                    error: format!("check failed: {e}"),
                    answer: None,
                },
            )
        }));
    }
    health::report(&config.version, db.as_ref(), &peers)
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    config: &Config,
    client: Option<Arc<rustls::ClientConfig>>,
) -> Result<()> {
    let head = tokio::time::timeout(CALL_TIMEOUT, http::read_head(&mut s))
        .await
        .map_err(|_| anyhow::anyhow!("no request within {CALL_TIMEOUT:?}"))??;
    let (status, body) = match http::parse_request(&head) {
        Err(e) => (400, serde_json::json!({"error": format!("{e:#}")})),
        Ok((m, _)) if m != "GET" => (405, serde_json::json!({"error": "only GET"})),
        Ok((_, path)) if path == http::HEALTH_PATH => current_health(config, client).await,
        Ok((_, path)) => (
            404,
            serde_json::json!({"error": format!("no {path}; health is at {}", http::HEALTH_PATH)}),
        ),
    };
    s.write_all(&http::response(status, body.to_string().as_bytes()))
        .await?;
    s.shutdown().await?;
    Ok(())
}

async fn bind(port: u16) -> Result<TcpListener> {
    TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("STANDIN_PORT: listening on port {port}"))
}

/// Serve until SIGTERM (then exit 0); an error when it cannot start.
pub async fn serve(ready: Ready) -> Result<()> {
    let Ready { config, tls } = ready;
    let config = Arc::new(config);
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        term.recv().await;
        eprintln!("reemo-standin {}: SIGTERM, stopping", config.name);
        anyhow::Ok(())
    };
    match config.role {
        Role::Db => {
            migrate(
                &Ready {
                    config: (*config).clone(),
                    tls,
                },
                MIGRATE_WAIT,
            )
            .await
        }
        Role::Mysql => {
            let rows = crate::db::Rows::open(&config.data_dir)?;
            eprintln!(
                "reemo-standin {} (mysql) {}: {} row(s) in {}, listening on :{}",
                config.name,
                config.version,
                rows.count(),
                config.data_dir.display(),
                config.port
            );
            let rows = Arc::new(Mutex::new(rows));
            let listener = bind(config.port).await?;
            let accept = async {
                loop {
                    let (s, _) = listener.accept().await.context("accepting")?;
                    let rows = rows.clone();
                    tokio::spawn(async move {
                        if let Err(e) = crate::db::serve_client(s, rows).await {
                            eprintln!("db client: {e:#}");
                        }
                    });
                }
            };
            tokio::select! { r = accept => r, r = stop => r }
        }
        _ => {
            let (server, client) = match &tls {
                Some(m) => (
                    Some(tokio_rustls::TlsAcceptor::from(m.server()?)),
                    Some(m.client()?),
                ),
                None => (None, None),
            };
            let listener = bind(config.port).await?;
            eprintln!(
                "reemo-standin {} ({}) {}: listening on :{}{}, database {}, peers [{}]",
                config.name,
                config.role.name(),
                config.version,
                config.port,
                if server.is_some() {
                    " (mutual TLS)"
                } else {
                    " (plain HTTP)"
                },
                config.db.as_ref().map_or("none".into(), |d| d.to_string()),
                config
                    .peers
                    .iter()
                    .map(|p| format!("{}={}", p.name, p.endpoint))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let accept = async {
                loop {
                    let (s, from) = listener.accept().await.context("accepting")?;
                    let _ = s.set_nodelay(true);
                    let (config, server, client) = (config.clone(), server.clone(), client.clone());
                    tokio::spawn(async move {
                        let r = match server {
                            None => answer(s, &config, client).await,
                            Some(acc) => {
                                match tokio::time::timeout(CALL_TIMEOUT, acc.accept(s)).await {
                                    Ok(Ok(tls)) => answer(tls, &config, client).await,
                                    Ok(Err(e)) => Err(anyhow::anyhow!("TLS handshake: {e}")),
                                    Err(_) => Err(anyhow::anyhow!("TLS handshake timed out")),
                                }
                            }
                        };
                        if let Err(e) = r {
                            eprintln!("client {from}: {e:#}");
                        }
                    });
                }
            };
            tokio::select! { r = accept => r, r = stop => r }
        }
    }
}

/// The `db` role's job: succeed once the database answers (waiting up to `wait`).
pub async fn migrate(ready: &Ready, wait: Duration) -> Result<()> {
    let db = ready.config.db.as_ref().context("STANDIN_DB is not set")?;
    let until = tokio::time::Instant::now() + wait;
    loop {
        match reachable(db).await {
            Check::Healthy(_) => {
                eprintln!(
                    "reemo-standin {} (db) {}: database {db} reached, schema up to date",
                    ready.config.name, ready.config.version
                );
                return Ok(());
            }
            Check::Unhealthy { error, .. } if tokio::time::Instant::now() >= until => {
                bail!("database unreachable: {error}")
            }
            Check::Unhealthy { .. } => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The in-container health check: ask this stand-in itself over 127.0.0.1 (as its name,
/// with its own client certificate); Ok when it answers OK.
pub async fn healthcheck(ready: &Ready) -> Result<()> {
    let c = &ready.config;
    let local = Endpoint {
        host: "127.0.0.1".into(),
        port: c.port,
    };
    match c.role {
        // the job is healthy while it can reach what it migrates
        Role::Db => match &c.db {
            Some(db) => match reachable(db).await {
                Check::Healthy(_) => Ok(()),
                Check::Unhealthy { error, .. } => bail!("database unreachable: {error}"),
            },
            None => bail!("STANDIN_DB is not set"),
        },
        Role::Mysql => {
            let mut s =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", c.port)))
                    .await
                    .map_err(|_| anyhow::anyhow!("{local}: no answer"))?
                    .with_context(|| format!("{local}"))?;
            s.write_all(b"PING\n").await?;
            let mut buf = [0u8; 5];
            tokio::time::timeout(CALL_TIMEOUT, s.read_exact(&mut buf))
                .await
                .map_err(|_| anyhow::anyhow!("{local}: no answer to PING"))??;
            if &buf != b"PONG\n" {
                bail!(
                    "{local}: answered {:?} to PING",
                    String::from_utf8_lossy(&buf)
                );
            }
            Ok(())
        }
        _ => {
            let client = ready.tls.as_ref().map(|m| m.client()).transpose()?;
            let (status, body) = fetch_health(&local, &c.name, client).await?;
            println!("{}", String::from_utf8_lossy(&body));
            if status != 200 {
                bail!("{local}: HTTP {status}");
            }
            Ok(())
        }
    }
}
