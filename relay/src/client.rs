//! Client-side commands: `healthcheck` (Docker HEALTHCHECK in a scratch image) and `probe`
//! (end-to-end self-test through the control API and two real WebSocket clients).

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A parsed `http://` or `https://` base URL.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseUrl {
    /// True for https.
    pub tls: bool,
    /// `host:port`.
    pub authority: String,
}

impl BaseUrl {
    /// Parses `http://HOST[:PORT]` or `https://HOST[:PORT]` (a path is ignored).
    pub fn parse(url: &str) -> Result<BaseUrl> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            bail!("url {url:?} must start with http:// or https://");
        };
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() {
            bail!("url {url:?} has no host");
        }
        let authority = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:{}", if tls { 443 } else { 80 })
        };
        Ok(BaseUrl { tls, authority })
    }

    /// The host without port (and without IPv6 brackets).
    pub fn host(&self) -> &str {
        self.authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&self.authority)
            .trim_matches(['[', ']'])
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One HTTP/1.1 request with `Connection: close`; returns status and body. For https,
/// `tls` verifies the server (see [`crate::tls::verifying_client`]); `None` does not verify
/// the certificate (the loopback health check).
pub async fn http_request(
    base: &BaseUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> Result<(u16, String)> {
    let tcp = TcpStream::connect(&base.authority)
        .await
        .with_context(|| format!("connecting to {}", base.authority))?;
    let _ = tcp.set_nodelay(true);
    let mut s: Box<dyn Io> = if base.tls {
        let cfg = match tls {
            Some(c) => c.clone(),
            None => crate::tls::loopback_client()?,
        };
        let name = rustls::pki_types::ServerName::try_from(base.host().to_string())
            .or_else(|e| {
                if tls.is_some() {
                    Err(e)
                } else {
                    rustls::pki_types::ServerName::try_from("localhost")
                }
            })
            .with_context(|| format!("{:?} is not a valid tls server name", base.host()))?;
        Box::new(
            tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .context("tls handshake")?,
        )
    } else {
        Box::new(tcp)
    };
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        base.authority,
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .context("sending request")?;
    let mut resp = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut resp)
        .await
        .context("reading response")?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed http response")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed http status line")?;
    Ok((status, body.to_string()))
}

/// GET /healthz; Ok(true) when the status is OK.
pub async fn healthcheck(base: &BaseUrl) -> Result<bool> {
    let (status, body) = timeout(
        Duration::from_secs(5),
        http_request(base, None, "GET", "/healthz", None, ""),
    )
    .await
    .context("health check timed out")??;
    let v: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("health answer is not json: {body}"))?;
    Ok(status == 200 && v["status"] == "OK")
}

/// Options of the probe.
pub struct ProbeOpts {
    /// Where the relay listens.
    pub base: BaseUrl,
    /// For https: how the relay's certificate is verified.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Where the control API is, and how it is reached (its own TLS config, e.g. with a
    /// client certificate), when not at `base`.
    pub control: Option<(BaseUrl, Option<Arc<rustls::ClientConfig>>)>,
    /// Control secret.
    pub secret: String,
    /// Messages per direction.
    pub messages: usize,
    /// Retry connecting for this long.
    pub wait: Duration,
}

/// Runs the end-to-end probe and returns the JSON summary line.
pub async fn probe(o: &ProbeOpts) -> Result<serde_json::Value> {
    let start = Instant::now();
    loop {
        match http_request(&o.base, o.tls.as_ref(), "GET", "/healthz", None, "").await {
            Ok((200, _)) => break,
            Ok((s, b)) if start.elapsed() >= o.wait => bail!("relay not healthy: {s} {b}"),
            Err(e) if start.elapsed() >= o.wait => return Err(e.context("relay did not answer")),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let (control, control_tls) = match &o.control {
        Some((b, t)) => (b, t.as_ref()),
        None => (&o.base, o.tls.as_ref()),
    };
    let (status, body) = http_request(
        control,
        control_tls,
        "POST",
        "/v1/sessions",
        Some(&o.secret),
        "{}",
    )
    .await
    .context("creating a session")?;
    if status != 201 {
        bail!("creating a session: http {status}: {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("parsing session json")?;
    let id = v["id"]
        .as_str()
        .context("session json has no id")?
        .to_string();
    let url = |role: &str| -> Result<(String, String)> {
        let u = v[role]["url"].as_str().context("session json has no url")?;
        let t = v[role]["token"]
            .as_str()
            .context("session json has no token")?;
        let path = u
            .split_once("://")
            .and_then(|(_, r)| r.find('/').map(|i| &r[i..]))
            .context("session url has no path")?;
        let scheme = if o.base.tls { "wss" } else { "ws" };
        Ok((
            format!("{scheme}://{}{path}", o.base.authority),
            t.to_string(),
        ))
    };
    let (agent_url, agent_tok) = url("agent")?;
    let (user_url, user_tok) = url("user")?;
    // The agent passes its token in the query, the user as a browser would: in a subprotocol.
    let connector = || o.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let (mut agent, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("{agent_url}&token={agent_tok}"),
        None,
        true,
        connector(),
    )
    .await
    .context("connecting the agent")?;
    let mut req = user_url
        .as_str()
        .into_client_request()
        .context("user url")?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("reemo-relay.v1, token.{user_tok}")
            .parse()
            .context("protocol header")?,
    );
    let (mut user, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector())
            .await
            .context("connecting the user")?;
    let limit = Duration::from_secs(10);
    let mut rtts = Vec::with_capacity(o.messages);
    for i in 0..o.messages {
        let t0 = Instant::now();
        let out = if i % 2 == 0 {
            Message::text(format!("probe {i} from agent"))
        } else {
            Message::binary((0..=(i % 251) as u8).collect::<Vec<u8>>())
        };
        agent.send(out.clone()).await.context("agent send")?;
        let got = next_data(&mut user, limit).await.context("user receive")?;
        if got != out {
            bail!("message {i} agent to user arrived changed or out of order");
        }
        let back = match got {
            Message::Text(t) => Message::text(format!("{} echoed", t.as_str())),
            Message::Binary(b) => Message::binary(b.iter().rev().copied().collect::<Vec<u8>>()),
            m => m,
        };
        user.send(back.clone()).await.context("user send")?;
        let got = next_data(&mut agent, limit)
            .await
            .context("agent receive")?;
        if got != back {
            bail!("message {i} user to agent arrived changed or out of order");
        }
        rtts.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    // the control API sees the session paired (behind a proxy: on the replica holding it)
    let (status, body) = http_request(
        control,
        control_tls,
        "GET",
        &format!("/v1/sessions/{id}"),
        Some(&o.secret),
        "",
    )
    .await
    .context("reading the session through the control API")?;
    let state: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if status != 200 || state["state"] != "paired" {
        bail!("the control API does not see session {id} paired: http {status}: {body}");
    }
    agent
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4000),
            reason: "probe done".into(),
        })))
        .await
        .context("agent close")?;
    let closed = timeout(limit, async {
        loop {
            match user.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .context("user did not see the close")?;
    match closed {
        Some(f) if u16::from(f.code) == 4000 && f.reason.as_str() == "probe done" => {}
        other => bail!("close did not propagate: user got {other:?}"),
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    let p50 = rtts.get(rtts.len() / 2).copied().unwrap_or(0.0);
    Ok(serde_json::json!({
        "ok": true,
        "session": id,
        "messages": o.messages * 2,
        "rtt_ms_p50": (p50 * 1000.0).round() / 1000.0,
    }))
}

async fn next_data<S>(ws: &mut S, limit: Duration) -> Result<Message>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    timeout(limit, async {
        loop {
            match ws.next().await {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
                Some(Ok(Message::Close(f))) => bail!("closed by the relay: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection ended"),
            }
        }
    })
    .await
    .context("timed out waiting for a message")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_table() {
        for (url, want) in [
            ("http://127.0.0.1:8080", Some((false, "127.0.0.1:8080"))),
            ("http://relay/", Some((false, "relay:80"))),
            ("https://relay.example", Some((true, "relay.example:443"))),
            ("https://[::1]:8443/x", Some((true, "[::1]:8443"))),
            ("ws://relay", None),
            ("http://", None),
        ] {
            let got = BaseUrl::parse(url).ok().map(|b| (b.tls, b.authority));
            assert_eq!(got, want.map(|(t, a)| (t, a.to_string())), "{url}");
        }
    }
}
