//! The global budget for bytes in flight: bytes read from a sender's socket and not yet
//! written to the peer's socket (to within one read buffer per connection). Every upgraded
//! connection reads through [`Metered`]; when the budget is spent, reading pauses (the
//! sender's TCP window closes: backpressure) until forwarded messages release their bytes.
//!
//! A message is forwarded only once it has been read whole, so partly read messages could
//! hold the whole budget and wait for each other forever. To rule that out, one connection
//! at a time — one that is paused inside a message — may go over the budget (the overdraft)
//! until that message is complete; bytes in flight therefore never exceed the budget plus
//! one message (`max_bytes_in_flight + max_message_bytes`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The process-wide budget.
pub struct Budget {
    /// Normal reads keep bytes in flight at or below this.
    limit: u64,
    /// The overdraft holder keeps them at or below this (`limit` + one message).
    hard_limit: u64,
    in_flight: AtomicU64,
    paused_total: AtomicU64,
    /// Some connection holds the overdraft.
    overdraft: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
    /// `waiters.len()`, readable without the lock.
    n_waiters: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes for messages of at most `max_message` bytes.
    pub fn new(limit: u64, max_message: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            hard_limit: limit + max_message,
            in_flight: AtomicU64::new(0),
            paused_total: AtomicU64::new(0),
            overdraft: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
            n_waiters: AtomicUsize::new(0),
        })
    }

    /// Bytes in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(SeqCst)
    }

    /// Times a connection's reading was paused because the budget was spent.
    pub fn paused_total(&self) -> u64 {
        self.paused_total.load(SeqCst)
    }

    /// True while normal reads of a full read buffer are refused.
    pub fn exhausted(&self, read_size: u64) -> bool {
        self.in_flight() + read_size > self.limit
    }

    /// Adds `n` bytes if that keeps bytes in flight at or below `limit`.
    fn reserve(&self, n: u64, limit: u64) -> bool {
        self.in_flight
            .fetch_update(SeqCst, SeqCst, |cur| (cur + n <= limit).then_some(cur + n))
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        if n > 0 {
            self.in_flight.fetch_sub(n, SeqCst);
            self.wake_all();
        }
    }

    fn wake_all(&self) {
        if self.n_waiters.load(SeqCst) == 0 {
            return;
        }
        let waiters = {
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            self.n_waiters.store(0, SeqCst);
            std::mem::take(&mut *w)
        };
        for w in waiters {
            w.wake();
        }
    }
}

/// What one connection holds of the budget; shared by its reader ([`Metered`]) and the
/// session task, which releases it once a message has been forwarded.
pub struct Charge {
    budget: Arc<Budget>,
    /// Bytes read and not yet released.
    pending: AtomicU64,
    /// All bytes ever read (progress, for the stuck-sender check).
    read_total: AtomicU64,
    /// This connection holds the budget's overdraft.
    overdraft: AtomicBool,
    /// Reading is paused by the budget.
    paused: AtomicBool,
    /// The session task is writing this connection's last message to the peer.
    forwarding: AtomicBool,
}

impl Charge {
    /// A new, empty charge against `budget`.
    pub fn new(budget: Arc<Budget>) -> Arc<Charge> {
        Arc::new(Charge {
            budget,
            pending: AtomicU64::new(0),
            read_total: AtomicU64::new(0),
            overdraft: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            forwarding: AtomicBool::new(false),
        })
    }

    /// A whole message (data or control) has been read: give the overdraft back.
    pub fn message_read(&self) {
        if self.overdraft.swap(false, SeqCst) {
            self.budget.overdraft.store(false, SeqCst);
            self.budget.wake_all();
        }
    }

    /// The bytes read so far have been forwarded (or dropped): give them back.
    pub fn release(&self) {
        let n = self.pending.swap(0, SeqCst);
        self.budget.give_back(n);
    }

    /// Marks the time the session task spends writing this connection's message.
    pub fn set_forwarding(&self, on: bool) {
        self.forwarding.store(on, SeqCst);
    }

    /// Bytes read so far (monotonic).
    pub fn read_total(&self) -> u64 {
        self.read_total.load(SeqCst)
    }

    /// True if this connection holds bytes of a message that it neither completes nor is
    /// kept from completing: read part of it, not paused by the budget, not being
    /// forwarded. Checked, with no progress over a while, only when the budget is spent.
    pub fn holds_partial_message(&self) -> bool {
        self.pending.load(SeqCst) > 0 && !self.paused.load(SeqCst) && !self.forwarding.load(SeqCst)
    }

    /// The budget this charge counts against.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Reserves room for a read of `want` bytes: within the budget, or on the overdraft
    /// when this connection is inside a message; `Err` if its own bytes alone exceed what
    /// the overdraft allows (a message whose framing does not fit the budget).
    fn try_reserve(&self, want: u64) -> io::Result<bool> {
        let b = &self.budget;
        if b.reserve(want, b.limit) {
            return Ok(true);
        }
        let inside_message = self.pending.load(SeqCst) > 0;
        if !self.overdraft.load(SeqCst)
            && inside_message
            && b.overdraft
                .compare_exchange(false, true, SeqCst, SeqCst)
                .is_ok()
        {
            self.overdraft.store(true, SeqCst);
        }
        if !self.overdraft.load(SeqCst) {
            return Ok(false);
        }
        if b.reserve(want, b.hard_limit) {
            return Ok(true);
        }
        if self.pending.load(SeqCst) + want > b.hard_limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message framing exceeds the in-flight budget",
            ));
        }
        Ok(false)
    }
}

/// A stream whose reads are charged to a [`Charge`] (and paused while the budget is spent).
pub struct Metered<S> {
    inner: S,
    charge: Arc<Charge>,
}

impl<S> Metered<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, charge: Arc<Charge>) -> Metered<S> {
        Metered { inner, charge }
    }
}

impl<S> Drop for Metered<S> {
    fn drop(&mut self) {
        self.charge.message_read();
        self.charge.release();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining() as u64;
        if want == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let c = &this.charge;
        if !c.try_reserve(want)? {
            let b = &c.budget;
            let mut waiters = b.waiters.lock().unwrap_or_else(|p| p.into_inner());
            // checked again under the lock: a release in between wakes us or is seen here
            waiters.push(cx.waker().clone());
            b.n_waiters.store(waiters.len(), SeqCst);
            drop(waiters);
            if !c.try_reserve(want)? {
                if !c.paused.swap(true, SeqCst) {
                    b.paused_total.fetch_add(1, SeqCst);
                }
                return Poll::Pending;
            }
        }
        c.paused.store(false, SeqCst);
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        c.pending.fetch_add(n, SeqCst);
        c.read_total.fetch_add(n, SeqCst);
        c.budget.give_back(want - n);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
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
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads once with a small deadline: `None` if the read is paused.
    async fn try_read<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; n];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(k)) => Some(buf[..k].to_vec()),
            Ok(Err(e)) => panic!("read failed: {e}"),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn reading_pauses_when_spent_and_resumes_on_release() {
        let budget = Budget::new(100, 50);
        let (mut w1, r1) = tokio::io::duplex(1024);
        let (mut w2, r2) = tokio::io::duplex(1024);
        let (c1, c2) = (Charge::new(budget.clone()), Charge::new(budget.clone()));
        let (mut m1, mut m2) = (Metered::new(r1, c1.clone()), Metered::new(r2, c2.clone()));
        w1.write_all(&[1u8; 300]).await.unwrap();
        w2.write_all(&[2u8; 300]).await.unwrap();
        // 60 + 40 fill the budget exactly
        assert_eq!(try_read(&mut m1, 60).await.unwrap().len(), 60);
        assert_eq!(try_read(&mut m2, 40).await.unwrap().len(), 40);
        assert_eq!(budget.in_flight(), 100);
        // m2 is inside a message: it takes the overdraft, up to 100 + 50
        assert_eq!(try_read(&mut m2, 30).await.unwrap().len(), 30);
        assert_eq!(try_read(&mut m2, 20).await.unwrap().len(), 20);
        assert_eq!(budget.in_flight(), 150);
        // m1 cannot take the overdraft while m2 holds it, nor m2 read past the hard limit
        assert!(try_read(&mut m1, 10).await.is_none());
        assert!(try_read(&mut m2, 10).await.is_none());
        assert_eq!(budget.paused_total(), 2);
        // m2's message is complete and forwarded: everyone may read again
        c2.message_read();
        c2.release();
        assert_eq!(budget.in_flight(), 60);
        assert_eq!(try_read(&mut m1, 10).await.unwrap().len(), 10);
        assert_eq!(budget.in_flight(), 70);
        // a dropped connection gives its bytes back
        drop(m1);
        assert_eq!(budget.in_flight(), 0);
        assert_eq!(try_read(&mut m2, 100).await.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn paused_reader_wakes_on_release() {
        let budget = Budget::new(10, 10);
        let (mut w1, r1) = tokio::io::duplex(1024);
        let (c1, c2) = (Charge::new(budget.clone()), Charge::new(budget.clone()));
        // c2 holds the whole budget (a message waiting to be forwarded)
        c2.pending.store(10, SeqCst);
        budget.in_flight.store(10, SeqCst);
        w1.write_all(b"hello").await.unwrap();
        let mut m1 = Metered::new(r1, c1.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 5];
            m1.read_exact(&mut buf).await.map(|_| buf)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished());
        c2.release();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("paused reader was not woken")
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"hello");
        // the reader task ended, dropping its stream and with it the 5 bytes it charged
        assert_eq!(budget.in_flight(), 0);
        assert_eq!(budget.paused_total(), 1);
    }
}
