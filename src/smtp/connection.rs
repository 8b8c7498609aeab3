//! Framing for one SMTP connection: buffered reads of command lines and body bytes, buffered
//! replies, and the idle timeout.
//!
//! Replies are queued and written only when the session is about to wait for more input. With
//! PIPELINING that sends one packet per batch of commands instead of one per command, and it is
//! the order RFC 2920 asks for.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::reply::Reply;
use super::tls::{Io, Tls};

/// Bytes asked for per read while waiting for commands; small because most connections are idle.
const COMMAND_READ: usize = 4 * 1024;
/// Bytes asked for per read inside a message body.
pub const BODY_READ: usize = 64 * 1024;
/// Queued replies past this size are sent before the next command is read, even when more
/// pipelined commands are already buffered. Without a cap, a client pipelining thousands of short
/// commands (`HELP`, bare newlines) would make the server hold ~15 bytes of reply per byte it
/// sent, for everything one read brought in.
pub const MAX_QUEUED_REPLIES: usize = 16 * 1024;

/// Why no more input can be had.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client closed the connection.
    #[error("connection closed by client")]
    Closed,
    /// The client sent nothing for the idle timeout.
    #[error("idle timeout")]
    Timeout,
    /// The server is shutting down and the grace period is over.
    #[error("server shutting down")]
    Shutdown,
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A complete command line at the front of the buffer, or a line that was too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A line of this many bytes (including its LF) is at the front of [`Connection::buffered`].
    Complete(usize),
    /// A line over the limit arrived; it has been thrown away.
    TooLong,
}

/// A buffered, timed connection to one client.
pub struct Connection {
    stream: Box<dyn Io>,
    /// Received bytes; `buf[start..]` is not yet consumed.
    buf: Vec<u8>,
    start: usize,
    /// Replies not yet written.
    out: Vec<u8>,
    /// A write failed part-way: the stream is out of step with the replies, so nothing more
    /// may be written to it (a retry would send the cut-off reply's predecessors again).
    broken: bool,
    /// True while the rest of an overlong line is being thrown away.
    discarding: bool,
    idle_timeout: Duration,
    /// Fires when the shutdown grace period is over: reads give up at once.
    abort: CancellationToken,
}

impl Connection {
    /// Wraps a stream.
    pub fn new(stream: Box<dyn Io>, idle_timeout: Duration, abort: CancellationToken) -> Self {
        Connection {
            stream,
            buf: Vec::with_capacity(COMMAND_READ),
            start: 0,
            out: Vec::new(),
            broken: false,
            discarding: false,
            idle_timeout,
            abort,
        }
    }

    /// Queues a reply; it is sent before the next read that has to wait, or by [`flush`](Self::flush).
    pub fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    /// Whether queued replies must go out before the next command is read: when the session is
    /// about to wait for input (no complete line buffered), or when [`MAX_QUEUED_REPLIES`] have
    /// piled up behind pipelined commands.
    pub fn must_flush(&self) -> bool {
        self.out.len() >= MAX_QUEUED_REPLIES || !self.buffered().contains(&b'\n')
    }

    /// Sends queued replies. A client that does not read them for the idle timeout is as idle
    /// as one that does not write, and after the shutdown grace period a stuck write gives up:
    /// otherwise a client that pipelines and never reads would hold its connection slot, and
    /// the server's shutdown, for ever.
    ///
    /// After a failed write the connection is finished: later replies are dropped and later
    /// flushes fail at once, so the closing flush does not wait another `idle_timeout` nor repeat
    /// what was half sent.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.broken {
            self.out.clear();
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier write to this client failed",
            ));
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let (stream, out) = (&mut self.stream, &self.out);
        let write = tokio::time::timeout(self.idle_timeout, async move {
            stream.write_all(out).await?;
            stream.flush().await
        });
        let written = tokio::select! {
            // Biased to the write: after the grace period a client that still reads gets its 421.
            biased;
            written = write => written.unwrap_or_else(|_| {
                Err(io::Error::new(io::ErrorKind::TimedOut, "client not reading replies"))
            }),
            _ = self.abort.cancelled() => Err(io::Error::other("server shutting down")),
        };
        self.out.clear();
        self.broken = written.is_err();
        written
    }

    /// Received bytes not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.buf.len());
    }

    /// Throws away everything received but not consumed. Used where earlier input must not be
    /// trusted any more (after STARTTLS, plaintext pipelined behind it).
    pub fn discard_buffered(&mut self) {
        self.start = self.buf.len();
    }

    /// Sends queued replies, then reads at least one more byte (asking for about `want`).
    pub async fn fill(&mut self, want: usize) -> Result<(), ReadError> {
        if let Err(err) = self.flush().await {
            return Err(if self.abort.is_cancelled() {
                ReadError::Shutdown
            } else {
                ReadError::Io(err)
            });
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > 2 * BODY_READ {
                // A long line or a big body grew the buffer; idle connections should be small.
                self.buf.shrink_to(COMMAND_READ);
            }
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(want);
        let read = tokio::select! {
            read = tokio::time::timeout(self.idle_timeout, self.stream.read_buf(&mut self.buf)) => read,
            _ = self.abort.cancelled() => return Err(ReadError::Shutdown),
        };
        match read {
            Err(_) => Err(ReadError::Timeout),
            Ok(Err(err)) => Err(ReadError::Io(err)),
            Ok(Ok(0)) => Err(ReadError::Closed),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Waits until a whole command line (ending in LF) is buffered. A line longer than `max`
    /// bytes is read and thrown away as it arrives, so memory stays flat whatever the client sends.
    pub async fn read_line(&mut self, max: usize) -> Result<Line, ReadError> {
        loop {
            let pending = self.buffered();
            if let Some(at) = pending.iter().position(|&b| b == b'\n') {
                let len = at + 1;
                if self.discarding || len > max {
                    self.discarding = false;
                    self.consume(len);
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Complete(len));
            }
            if self.discarding || pending.len() > max {
                self.discarding = true;
                self.discard_buffered();
            }
            self.fill(COMMAND_READ).await?;
        }
    }

    /// Reads and throws away exactly `n` bytes (a BDAT chunk that cannot be accepted).
    pub async fn skip(&mut self, mut n: usize) -> Result<(), ReadError> {
        loop {
            let take = n.min(self.buffered().len());
            self.consume(take);
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill(BODY_READ).await?;
        }
    }

    /// STARTTLS: sends the queued replies (the 220), hands the socket to a TLS handshake and goes
    /// on over the encrypted stream. Whatever was received in plaintext and not yet consumed is
    /// thrown away: it was pipelined behind STARTTLS before encryption, so a man in the middle may
    /// have injected it (CVE-2011-0411 and its many relatives).
    pub async fn start_tls(&mut self, tls: &Tls) -> Result<(), ReadError> {
        self.flush().await?;
        self.discard_buffered();
        self.discarding = false;
        let plain = std::mem::replace(&mut self.stream, Box::new(tokio::io::empty()));
        self.stream = tokio::select! {
            encrypted = tls.accept(plain, self.idle_timeout) => encrypted?,
            _ = self.abort.cancelled() => return Err(ReadError::Shutdown),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::smtp::reply::Reply;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_failed_is_neither_repeated_nor_waited_for_again() {
        // Room for 64 bytes, and a client that never reads.
        let (server_end, mut client_end) = tokio::io::duplex(64);
        let idle = Duration::from_secs(300);
        let mut conn = Connection::new(Box::new(server_end), idle, CancellationToken::new());
        let mut expected = Vec::new();
        for n in 0..10 {
            let reply = Reply::plain(250, format!("reply number {n}"));
            reply.write_to(&mut expected);
            conn.reply(&reply);
        }
        let started = tokio::time::Instant::now();
        assert!(conn.flush().await.is_err(), "the client never read");
        assert!(started.elapsed() >= idle);
        let again = tokio::time::Instant::now();
        conn.reply(&Reply::plain(421, "closing"));
        assert!(conn.flush().await.is_err());
        assert!(again.elapsed() < Duration::from_secs(1), "waited again");
        drop(conn);
        let mut received = Vec::new();
        client_end.read_to_end(&mut received).await.unwrap();
        assert_eq!(received.len(), 64, "only what fitted before the failure");
        assert!(
            expected.starts_with(&received),
            "replies repeated or out of order"
        );
    }
}
