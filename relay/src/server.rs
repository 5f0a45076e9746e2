//! The `serve` command: load secrets, bind the listener, accept connections with caps and a
//! handshake deadline, route them, and drain on SIGTERM.

use crate::config::{read_control_secret, read_keys, Config};
use crate::conn::Conn;
use crate::http::{self, HttpError};
use crate::log;
use crate::state::{ConnGuard, Shared};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{timeout, Instant};

/// Runs the server until drained after SIGTERM/SIGINT.
pub async fn serve(cfg: Config) -> Result<()> {
    log::set_level(&cfg.log_level);
    let keys = read_keys(&cfg.token_keys_file)?;
    let control_secret = read_control_secret(&cfg.control_secret_file)?;
    let tls = match &cfg.tls {
        Some(t) => Some(crate::tls::acceptor(&t.cert_file, &t.key_file)?),
        None => None,
    };
    raise_fd_limit();
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let local = listener.local_addr().context("listener address")?;
    log!(
        Info,
        "listening",
        addr = local.to_string(),
        tls = tls.is_some(),
        control_api = control_secret.is_some(),
        signing_key = keys.signing_id(),
        version = crate::control::VERSION
    );
    if control_secret.is_none() {
        log!(
            Warn,
            "control api disabled: control secret file not found",
            file = cfg.control_secret_file.display().to_string()
        );
    }
    let shared = Arc::new(Shared::new(cfg, keys, control_secret, tls));
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    let mut drain_deadline: Option<Instant> = None;
    let mut drain_check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => accept(&shared, tcp, peer),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    log!(Warn, "accept failed", error = e.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => start_drain(&shared, &mut drain_deadline),
            _ = int.recv() => start_drain(&shared, &mut drain_deadline),
            _ = sweep.tick() => shared.sweep(),
            _ = drain_check.tick(), if drain_deadline.is_some() => {
                let active = shared.active_sessions();
                if active == 0 {
                    log!(Info, "drained, exiting");
                    return Ok(());
                }
                if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                    log!(Warn, "drain timeout, exiting with sessions open", sessions = active);
                    return Ok(());
                }
            }
        }
    }
}

fn start_drain(shared: &Shared, deadline: &mut Option<Instant>) {
    if deadline.is_none() {
        shared.draining.store(true, Relaxed);
        *deadline = Some(Instant::now() + Duration::from_secs(shared.cfg.drain_timeout_secs));
        log!(
            Info,
            "draining: refusing new sessions",
            sessions = shared.active_sessions(),
            timeout_secs = shared.cfg.drain_timeout_secs
        );
    }
}

fn accept(shared: &Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    match shared.admit(peer.ip()) {
        Ok(guard) => {
            tokio::spawn(handle_conn(guard, tcp, peer));
        }
        Err(reason) => {
            shared.metrics.reject(reason);
            log!(
                Debug,
                "connection refused",
                peer = peer.to_string(),
                reason = reason
            );
            let (status, limit) = if reason == "ip_cap" {
                (429, shared.cfg.max_connections_per_ip)
            } else {
                (503, shared.cfg.max_connections)
            };
            // Over the cap: answer with the status after the TLS handshake (if any) and the
            // request head, so that clients see why. At most MAX_REFUSALS of these run at once
            // (they are not counted by the caps); beyond that the connection is just closed.
            let Ok(permit) = shared.refusals.clone().try_acquire_owned() else {
                return;
            };
            let tls = shared.tls.clone();
            let limit_time = Duration::from_secs(shared.cfg.handshake_timeout_secs.min(3));
            tokio::spawn(async move {
                let _permit = permit;
                let _ = timeout(limit_time, async move {
                    let mut c = match tls {
                        Some(acc) => match acc.accept(tcp).await {
                            Ok(s) => Conn::Tls(Box::new(s)),
                            Err(_) => return,
                        },
                        None => Conn::Plain(tcp),
                    };
                    if let Ok(None) | Err(HttpError::Io(_)) = http::read_head(&mut c).await {
                        return;
                    }
                    let body = format!("{reason} ({limit})");
                    if http::respond_error(&mut c, status, &body).await.is_ok() {
                        http::linger(&mut c).await;
                    }
                })
                .await;
            });
        }
    }
}

async fn handle_conn(guard: ConnGuard, tcp: TcpStream, peer: SocketAddr) {
    let shared = guard.shared.clone();
    let hs = Duration::from_secs(shared.cfg.handshake_timeout_secs);
    let r = timeout(hs, async {
        let mut conn = match &shared.tls {
            Some(acc) => match acc.accept(tcp).await {
                Ok(s) => Conn::Tls(Box::new(s)),
                Err(e) => return Err((None, e.into())),
            },
            None => Conn::Plain(tcp),
        };
        match http::read_head(&mut conn).await {
            Ok(req) => Ok((conn, req)),
            Err(e) => Err((Some(conn), e)),
        }
    })
    .await;
    let (mut conn, req) = match r {
        Err(_) => {
            shared.metrics.reject("handshake_timeout");
            log!(Debug, "handshake timeout", peer = peer.to_string());
            return;
        }
        Ok(Err((conn, e))) => {
            log!(
                Debug,
                "bad handshake",
                peer = peer.to_string(),
                error = e.to_string()
            );
            if let (Some(mut conn), Some(status)) = (conn, e.status()) {
                shared.metrics.reject(if status == 431 {
                    "head_too_large"
                } else {
                    "bad_request"
                });
                let answer = async {
                    let _ = http::respond_error(&mut conn, status, &e.to_string()).await;
                    http::linger(&mut conn).await;
                };
                let _ = timeout(hs, answer).await;
            }
            return;
        }
        Ok(Ok((_, None))) => return,
        Ok(Ok((conn, Some(req)))) => (conn, req),
    };
    if let Some(session) = req.path.strip_prefix("/v1/relay/") {
        let session = session.to_string();
        crate::relay::handle(shared, conn, req, &session, peer, guard).await;
    } else if req.header_has("upgrade", "websocket") {
        shared.metrics.reject("not_found");
        let _ = http::respond_error(&mut conn, 404, "not_found").await;
    } else {
        let _ = timeout(hs, crate::control::handle(shared, conn, req)).await;
    }
}

/// Raises the soft open-files limit to the hard limit (thousands of sessions need it).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
