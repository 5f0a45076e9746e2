//! Reading a WebSocket connection without a buffer of its own while it is idle: the socket
//! is read into one scratch buffer per thread, the WebSocket parser gets what it asks for,
//! and only the bytes it has not taken yet stay with the connection (allocated on demand,
//! freed as soon as they are taken). Sits between tungstenite and [`crate::budget::Metered`].
//!
//! Why: tungstenite keeps a read buffer per connection for the connection's whole life, and
//! reads at most that many bytes per call. With the socket read size as that buffer (4 KiB),
//! an idle paired session held 8 KiB of read buffers, half of what it cost the relay. With
//! this layer tungstenite's buffer is [`PARSE_BYTES`] small while socket reads stay
//! `read_buffer_bytes` large (as many system calls as before, one more copy per byte).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// tungstenite's own read buffer per connection (its `read_buffer_size`), bytes: what an
/// idle connection keeps, and the most the parser takes from this layer per call.
pub const PARSE_BYTES: usize = 512;

thread_local! {
    /// Where socket reads land before the parser takes its part (one per runtime thread).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A stream read `read_size` bytes at a time, keeping only untaken bytes between reads.
pub struct Spill<S> {
    inner: S,
    read_size: usize,
    /// Bytes read from `inner` and not taken yet (`rest[pos..]`); empty and unallocated
    /// when everything was taken.
    rest: Vec<u8>,
    pos: usize,
}

impl<S> Spill<S> {
    /// Wraps `inner`, reading it `read_size` bytes at a time.
    pub fn new(inner: S, read_size: usize) -> Spill<S> {
        Spill {
            inner,
            read_size: read_size.max(1),
            rest: Vec::new(),
            pos: 0,
        }
    }

    /// Bytes held for the parser now (0 when idle).
    pub fn held(&self) -> usize {
        self.rest.capacity()
    }

    /// Hands `buf` what it can take of `rest`; frees `rest` once it is all taken.
    fn take_rest(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.rest.len() - self.pos);
        buf.put_slice(&self.rest[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.rest.len() {
            self.rest = Vec::new();
            self.pos = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Spill<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.rest.len() {
            this.take_rest(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= this.read_size || buf.remaining() == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < this.read_size {
                scratch.resize(this.read_size, 0);
            }
            let mut tmp = ReadBuf::new(&mut scratch[..this.read_size]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut tmp) {
                Poll::Ready(Ok(())) => {
                    let got = tmp.filled();
                    let n = buf.remaining().min(got.len());
                    buf.put_slice(&got[..n]);
                    if n < got.len() {
                        this.rest = got[n..].to_vec();
                        this.pos = 0;
                    }
                    Poll::Ready(Ok(()))
                }
                other => other,
            }
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Spill<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_and_nothing_is_held_after() {
        let (mut w, r) = tokio::io::duplex(1 << 16);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).await.unwrap();
        drop(w);
        let mut s = Spill::new(r, 4096);
        let mut got = Vec::new();
        // the parser's reads: small, of varying sizes
        for size in [1usize, 14, 512, 100, 512].into_iter().cycle() {
            let mut b = vec![0u8; size];
            let n = s.read(&mut b).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(s.held() <= 4096, "held {}", s.held());
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(s.held(), 0, "an idle connection holds no buffer");
    }

    #[tokio::test]
    async fn a_read_at_least_read_size_goes_straight_through() {
        let (mut w, r) = tokio::io::duplex(1 << 16);
        w.write_all(&[7u8; 3000]).await.unwrap();
        let mut s = Spill::new(r, 1024);
        let mut b = vec![0u8; 2048];
        let n = s.read(&mut b).await.unwrap();
        assert_eq!(n, 2048);
        assert_eq!(s.held(), 0);
        // a small read then takes from the socket and keeps the rest of one read_size
        let mut small = [0u8; 10];
        assert_eq!(s.read(&mut small).await.unwrap(), 10);
        assert_eq!(s.held(), 942);
    }
}
