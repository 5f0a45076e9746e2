//! Minimal HTTP/1.1 for the one listener: read a bounded request head (and small body),
//! write short `Connection: close` responses. WebSocket upgrades continue in `relay`.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted.
pub const MAX_HEAD: usize = 8192;
/// Largest request body accepted (control API JSON).
pub const MAX_BODY: usize = 16384;

/// A parsed request head.
#[derive(Debug)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (may hold a token: never log it).
    pub query: String,
    /// Headers with lowercase names.
    pub headers: Vec<(String, String)>,
    /// Bytes read after the head (body start or early WebSocket frames).
    pub rest: Vec<u8>,
}

impl Request {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True if header `name` has `token` in its comma-separated list (case-insensitive).
    pub fn header_has(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// Value of query parameter `name` (no percent-decoding: our values are URL-safe).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Reads a request head; `Ok(None)` if the peer closed before sending anything.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await.context("reading request head")?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            bail!("connection closed inside the request head");
        }
        let start = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf[start..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = start + pos + 4;
            if end > MAX_HEAD {
                bail!("request head larger than {MAX_HEAD} bytes");
            }
            return parse_head(&buf[..end], buf[end..].to_vec()).map(Some);
        }
        if buf.len() > MAX_HEAD {
            bail!("request head larger than {MAX_HEAD} bytes");
        }
    }
}

fn parse_head(head: &[u8], rest: Vec<u8>) -> Result<Request> {
    let mut hs = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(head).context("parsing request head")? {
        httparse::Status::Complete(_) => {}
        httparse::Status::Partial => bail!("incomplete request head"),
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        rest,
    })
}

/// Reads the body announced by `Content-Length` (at most [`MAX_BODY`]).
pub async fn read_body<S: AsyncRead + Unpin>(s: &mut S, req: &mut Request) -> Result<Vec<u8>> {
    let len: usize = match req.header("content-length") {
        Some(v) => v.trim().parse().context("invalid content-length")?,
        None => 0,
    };
    if len > MAX_BODY {
        bail!("request body larger than {MAX_BODY} bytes");
    }
    let mut body = std::mem::take(&mut req.rest);
    body.truncate(len);
    let have = body.len();
    body.resize(len, 0);
    s.read_exact(&mut body[have..])
        .await
        .context("reading request body")?;
    Ok(body)
}

/// Reason phrase for the statuses we use.
fn phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes a complete response and flushes; the connection is then closed by the caller.
pub async fn respond<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n{extra_headers}\r\n",
        phrase(status),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out).await?;
    s.flush().await?;
    let _ = s.shutdown().await;
    Ok(())
}

/// Writes a JSON response.
pub async fn respond_json<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    v: &serde_json::Value,
) -> std::io::Result<()> {
    respond(s, status, "application/json", "", v.to_string().as_bytes()).await
}

/// Writes `{"error": reason}` with `status`.
pub async fn respond_error<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    reason: &str,
) -> std::io::Result<()> {
    respond_json(s, status, &serde_json::json!({ "error": reason })).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_head_and_keeps_rest() {
        let raw = b"GET /v1/relay/abc?role=user&token=v1.x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n\r\nXYZ";
        let mut r: &[u8] = raw;
        let req = read_head(&mut r).await.unwrap().unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/v1/relay/abc");
        assert_eq!(req.query_param("role"), Some("user"));
        assert_eq!(req.query_param("token"), Some("v1.x"));
        assert!(req.header_has("connection", "upgrade"));
        assert_eq!(req.rest, b"XYZ");
    }

    #[tokio::test]
    async fn refuses_huge_and_truncated_heads() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let mut r: &[u8] = big.as_bytes();
        assert!(read_head(&mut r).await.is_err());
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nHost";
        assert!(read_head(&mut r).await.is_err());
        let mut r: &[u8] = b"";
        assert!(read_head(&mut r).await.unwrap().is_none());
    }
}
