//! Minimal HTTP/1.1 for the one listener: read a bounded request head (and a small body, with
//! `Content-Length` or chunked), write short `Connection: close` responses. WebSocket
//! upgrades continue in `relay`.

use std::fmt;
use std::time::Duration;
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

/// Largest raw chunked body (sizes, extensions, trailers included) read before giving up.
pub const MAX_CHUNKED_RAW: usize = 4 * MAX_BODY;
/// Longest chunk-size or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
/// Time and bytes spent reading what a refused client still sends, so that closing the
/// socket with unread input does not reset the connection before the client reads the answer.
const LINGER: (Duration, usize) = (Duration::from_secs(1), 64 << 10);

/// Why a request head or body was not read; [`HttpError::status`] is the answer to send.
#[derive(Debug)]
pub enum HttpError {
    /// The connection failed or closed early: nothing to answer.
    Io(std::io::Error),
    /// The head is larger than [`MAX_HEAD`] or has too many header fields (431).
    HeadTooLarge,
    /// The head is not HTTP/1.1 (400).
    BadHead(String),
    /// The body is larger than [`MAX_BODY`] (413).
    BodyTooLarge,
    /// The body framing is invalid: bad `Content-Length`, malformed chunking (400).
    BadBody(String),
    /// A transfer coding other than `chunked` (501).
    UnsupportedEncoding(String),
}

impl HttpError {
    /// HTTP status to answer with; `None` when the connection is gone.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Io(_) => None,
            HttpError::HeadTooLarge => Some(431),
            HttpError::BadHead(_) | HttpError::BadBody(_) => Some(400),
            HttpError::BodyTooLarge => Some(413),
            HttpError::UnsupportedEncoding(_) => Some(501),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Io(e) => write!(f, "reading request: {e}"),
            HttpError::HeadTooLarge => write!(
                f,
                "request head larger than {MAX_HEAD} bytes or with more than {MAX_HEADERS} fields"
            ),
            HttpError::BadHead(e) => write!(f, "invalid request head: {e}"),
            HttpError::BodyTooLarge => write!(f, "request body larger than {MAX_BODY} bytes"),
            HttpError::BadBody(e) => write!(f, "invalid request body: {e}"),
            HttpError::UnsupportedEncoding(e) => write!(f, "unsupported transfer-encoding {e:?}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<std::io::Error> for HttpError {
    fn from(e: std::io::Error) -> Self {
        HttpError::Io(e)
    }
}

/// Most header fields accepted in a request head.
pub const MAX_HEADERS: usize = 48;

/// Reads a request head; `Ok(None)` if the peer closed before sending anything.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<Request>, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(HttpError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside the request head",
            )));
        }
        let start = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf[start..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = start + pos + 4;
            if end > MAX_HEAD {
                return Err(HttpError::HeadTooLarge);
            }
            return parse_head(&buf[..end], buf[end..].to_vec()).map(Some);
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
    }
}

fn parse_head(head: &[u8], rest: Vec<u8>) -> Result<Request, HttpError> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::BadHead("incomplete request head".into()))
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::BadHead(e.to_string())),
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

/// Reads the body announced by `Content-Length` or sent with `Transfer-Encoding: chunked`
/// (at most [`MAX_BODY`] bytes either way). Both at once are refused (request smuggling).
pub async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    req: &mut Request,
) -> Result<Vec<u8>, HttpError> {
    let values = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .collect()
    };
    let codings = values("transfer-encoding");
    let lengths = values("content-length");
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err(HttpError::BadBody(
                "both transfer-encoding and content-length".into(),
            ));
        }
        if codings != ["chunked"] {
            return Err(HttpError::UnsupportedEncoding(codings.join(", ")));
        }
        let rest = std::mem::take(&mut req.rest);
        return read_chunked(s, rest).await;
    }
    let len = match lengths.split_first() {
        None => 0,
        Some((first, others)) => {
            if others.iter().any(|o| o != first) || !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::BadBody("invalid content-length".into()));
            }
            first
                .parse::<usize>()
                .map_err(|_| HttpError::BodyTooLarge)?
        }
    };
    if len > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    let mut body = std::mem::take(&mut req.rest);
    body.truncate(len);
    let have = body.len();
    body.resize(len, 0);
    s.read_exact(&mut body[have..]).await?;
    Ok(body)
}

/// Input of a chunked body: what was read after the head, then the stream; at most
/// [`MAX_CHUNKED_RAW`] bytes in all.
struct ChunkedInput<'a, S> {
    s: &'a mut S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: AsyncRead + Unpin> ChunkedInput<'_, S> {
    /// Reads more input; the body is too large once [`MAX_CHUNKED_RAW`] bytes were read.
    async fn fill(&mut self) -> Result<(), HttpError> {
        if self.buf.len() >= MAX_CHUNKED_RAW {
            return Err(HttpError::BodyTooLarge);
        }
        let mut chunk = [0u8; 2048];
        let room = (MAX_CHUNKED_RAW - self.buf.len()).min(chunk.len());
        let n = self.s.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(HttpError::BadBody(
                "connection closed inside the chunked body".into(),
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next line without its CRLF (at most [`MAX_CHUNK_LINE`] bytes).
    async fn line(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut scanned = self.pos;
        loop {
            if let Some(i) = self.buf[scanned..].windows(2).position(|w| w == b"\r\n") {
                let end = scanned + i;
                if end - self.pos > MAX_CHUNK_LINE {
                    return Err(HttpError::BadBody("chunk line too long".into()));
                }
                let line = self.buf[self.pos..end].to_vec();
                self.pos = end + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos > MAX_CHUNK_LINE {
                return Err(HttpError::BadBody("chunk line too long".into()));
            }
            scanned = self.buf.len().saturating_sub(1).max(self.pos);
            self.fill().await?;
        }
    }

    /// The next `n` bytes.
    async fn take(&mut self, n: usize) -> Result<&[u8], HttpError> {
        while self.buf.len() - self.pos < n {
            self.fill().await?;
        }
        self.pos += n;
        Ok(&self.buf[self.pos - n..self.pos])
    }
}

/// Decodes a chunked body (RFC 9112 section 7.1): chunk extensions are ignored, trailer
/// fields are read and dropped.
async fn read_chunked<S: AsyncRead + Unpin>(
    s: &mut S,
    rest: Vec<u8>,
) -> Result<Vec<u8>, HttpError> {
    let bad = |m: &str| HttpError::BadBody(m.to_string());
    let mut input = ChunkedInput {
        s,
        buf: rest,
        pos: 0,
    };
    let mut body = Vec::new();
    loop {
        let line = input.line().await?;
        let size = chunk_size(&line).ok_or_else(|| bad("invalid chunk size line"))?;
        if size == 0 {
            break;
        }
        if size > MAX_BODY - body.len() {
            return Err(HttpError::BodyTooLarge);
        }
        body.extend_from_slice(input.take(size).await?);
        if input.take(2).await? != b"\r\n" {
            return Err(bad("chunk data not followed by CRLF"));
        }
    }
    // trailer section: fields up to an empty line
    loop {
        let line = input.line().await?;
        if line.is_empty() {
            return Ok(body);
        }
        if !line.contains(&b':') {
            return Err(bad("invalid trailer field"));
        }
    }
}

/// The size of a `chunk-size [ ; chunk-ext ]` line: 1 to 8 hex digits.
fn chunk_size(line: &[u8]) -> Option<usize> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = line[..end].trim_ascii_end();
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    usize::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Reads and drops what a refused client still sends (bounded in bytes and time) so that the
/// close that follows is seen as an end of stream rather than a reset.
pub async fn linger<S: AsyncRead + Unpin>(s: &mut S) {
    let (limit, max) = LINGER;
    let _ = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 2048];
        let mut seen = 0;
        while seen < max {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen += n,
            }
        }
    })
    .await;
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
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
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
        let e = read_head(&mut r).await.unwrap_err();
        assert_eq!(e.status(), Some(431), "{e}");
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let mut r: &[u8] = many.as_bytes();
        assert_eq!(read_head(&mut r).await.unwrap_err().status(), Some(431));
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nBad Header\r\n\r\n";
        assert_eq!(read_head(&mut r).await.unwrap_err().status(), Some(400));
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nHost";
        assert!(read_head(&mut r).await.is_err());
        let mut r: &[u8] = b"";
        assert!(read_head(&mut r).await.unwrap().is_none());
    }

    /// Parses `raw` as a request and reads its body.
    async fn body_of(raw: &[u8]) -> Result<Vec<u8>, HttpError> {
        let mut r: &[u8] = raw;
        let mut req = read_head(&mut r).await?.expect("a request");
        read_body(&mut r, &mut req).await
    }

    #[tokio::test]
    async fn reads_content_length_and_chunked_bodies() {
        let head = "POST /v1/sessions HTTP/1.1\r\nHost: h\r\n";
        let big_chunk = format!(
            "{:x}\r\n{}\r\n0\r\n\r\n",
            MAX_BODY + 1,
            "a".repeat(MAX_BODY + 1)
        );
        let many_small: String = "1;ext=xxxxxx\r\na\r\n".repeat(MAX_BODY / 2) + "0\r\n\r\n";
        let noisy: String = "0;".to_string() + &"x".repeat(MAX_CHUNK_LINE + 1) + "\r\n\r\n";
        type Case<'a> = (&'a str, String, Result<&'a str, u16>);
        let cases: Vec<Case> = vec![
            ("no body", String::new(), Ok("")),
            (
                "content-length",
                "Content-Length: 4\r\n\r\nabcdXYZ".into(),
                Ok("abcd"),
            ),
            (
                "chunked",
                "Transfer-Encoding: chunked\r\n\r\n4\r\n{\"tt\r\nC\r\nl_secs\":120}\r\n0\r\n\r\n"
                    .into(),
                Ok("{\"ttl_secs\":120}"),
            ),
            (
                "chunked, case and extensions and trailers",
                "transfer-encoding: Chunked\r\n\r\n3;name=v \r\nabc\r\n0\r\nX-T: 1\r\n\r\n".into(),
                Ok("abc"),
            ),
            (
                "chunked, empty",
                "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
                Ok(""),
            ),
            (
                "size not hex",
                "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".into(),
                Err(400),
            ),
            (
                "size missing",
                "Transfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n".into(),
                Err(400),
            ),
            (
                "data longer than size",
                "Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n".into(),
                Err(400),
            ),
            (
                "no last chunk",
                "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n".into(),
                Err(400),
            ),
            (
                "truncated data",
                "Transfer-Encoding: chunked\r\n\r\n9\r\nabc".into(),
                Err(400),
            ),
            (
                "huge size",
                "Transfer-Encoding: chunked\r\n\r\nfffffffff\r\n".into(),
                Err(400),
            ),
            (
                "bad trailer",
                "Transfer-Encoding: chunked\r\n\r\n0\r\nnot a field\r\n\r\n".into(),
                Err(400),
            ),
            (
                "line too long",
                format!("Transfer-Encoding: chunked\r\n\r\n{noisy}"),
                Err(400),
            ),
            (
                "chunk over the limit",
                format!("Transfer-Encoding: chunked\r\n\r\n{big_chunk}"),
                Err(413),
            ),
            (
                "raw input over the limit",
                format!("Transfer-Encoding: chunked\r\n\r\n{many_small}"),
                Err(413),
            ),
            (
                "gzip",
                "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".into(),
                Err(501),
            ),
            (
                "both framings",
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".into(),
                Err(400),
            ),
            (
                "content-length not a number",
                "Content-Length: 4x\r\n\r\nabcd".into(),
                Err(400),
            ),
            (
                "conflicting content-lengths",
                "Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".into(),
                Err(400),
            ),
            (
                "content-length over the limit",
                format!("Content-Length: {}\r\n\r\n", MAX_BODY + 1),
                Err(413),
            ),
        ];
        for (name, tail, want) in cases {
            let raw = if tail.contains("\r\n\r\n") {
                format!("{head}{tail}")
            } else {
                format!("{head}\r\n{tail}")
            };
            let got = body_of(raw.as_bytes()).await;
            match (got, want) {
                (Ok(b), Ok(w)) => assert_eq!(b, w.as_bytes(), "{name}"),
                (Err(e), Err(w)) => assert_eq!(e.status(), Some(w), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
