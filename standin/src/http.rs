//! Just enough HTTP/1.1 for one health request per connection: read a request head,
//! write a response with `Connection: close`, and parse a peer's response.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 << 10;
/// Largest response body read from a peer.
pub const MAX_BODY: usize = 1 << 20;

/// The path health is served on (seed 001: `/api/healthcheck`).
pub const HEALTH_PATH: &str = "/api/healthcheck";

/// Read bytes until the end of a request head (`\r\n\r\n`), at most [`MAX_HEAD`].
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = r.read(&mut chunk).await.context("reading the request")?;
        if n == 0 {
            bail!("connection closed before the end of the request head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            bail!("request head longer than {MAX_HEAD} bytes");
        }
    }
}

/// Method and path of a request head.
pub fn parse_request(head: &[u8]) -> Result<(String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => Ok((
            req.method.unwrap_or_default().to_string(),
            req.path.unwrap_or_default().to_string(),
        )),
        Ok(httparse::Status::Partial) => bail!("incomplete request head"),
        Err(e) => bail!("bad request: {e}"),
    }
}

/// A whole response with a JSON body.
pub fn response(status: u16, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        400 => "Bad Request",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The request a stand-in sends to a peer.
pub fn health_request(host: &str) -> Vec<u8> {
    format!("GET {HEALTH_PATH} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Status code and body of a whole response (read until the peer closed).
pub fn parse_response(data: &[u8]) -> Result<(u16, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let start = match resp.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => bail!("incomplete response head"),
        Err(e) => bail!("bad response: {e}"),
    };
    let code = resp.code.context("response without a status")?;
    let mut body = &data[start..];
    if let Some(len) = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let n: usize = std::str::from_utf8(len.value)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .context("bad Content-Length")?;
        if body.len() < n {
            bail!("response body cut short ({} of {n} bytes)", body.len());
        }
        body = &body[..n];
    }
    Ok((code, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses() {
        let (m, p) = parse_request(b"GET /api/healthcheck HTTP/1.1\r\nHost: api\r\n\r\n").unwrap();
        assert_eq!((m.as_str(), p.as_str()), ("GET", "/api/healthcheck"));
        assert!(parse_request(b"\x16\x03\x01garbage\r\n\r\n").is_err());
        let r = response(503, b"{}");
        assert_eq!(
            r,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
        assert_eq!(parse_response(&r).unwrap(), (503, b"{}".to_vec()));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}")
                .unwrap_err()
                .to_string()
                .contains("cut short")
        );
    }

    #[tokio::test]
    async fn a_head_is_read_up_to_its_end_and_bounded() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(read_head(&mut r).await.unwrap().len(), 18);
        let long = vec![b'a'; MAX_HEAD + 2048];
        let mut r: &[u8] = &long;
        assert!(read_head(&mut r)
            .await
            .unwrap_err()
            .to_string()
            .contains("longer than"));
    }
}
