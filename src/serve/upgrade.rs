//! Handing a client connection over after a `101 Switching Protocols`.
//!
//! A handler that accepts a protocol switch answers 101 with an [`Upgrade`] in the
//! response's extensions. Once hyper has written that 101, the connection driver takes the
//! raw socket back (hyper's `without_shutdown`: no upgrade machinery, no extra task) and
//! runs the upgrade's future on it in the connection's own task, so the tunnel counts as a
//! live connection for the drain. The listener knows nothing of WebSocket.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// The client side of a switched connection.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

/// What an upgrade's future gets once the 101 is on the wire.
pub struct Switched {
    pub io: Box<dyn ClientIo>,
    /// Bytes the client sent after its handshake that hyper had already read: they come
    /// before anything read from `io`.
    pub early: Bytes,
    /// Turns true when the listener's drain grace is over: close now.
    pub closing: watch::Receiver<bool>,
}

impl Switched {
    /// The connection with the early bytes put back in front.
    pub fn into_io(self) -> (Prefixed, watch::Receiver<bool>) {
        let io = Prefixed {
            early: self.early,
            io: self.io,
        };
        (io, self.closing)
    }
}

/// A client connection that first yields bytes already read from it.
pub struct Prefixed {
    early: Bytes,
    io: Box<dyn ClientIo>,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            let head = self.early.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    // Vectored, like the socket under it: TLS writes a handshake flight's records in one
    // writev instead of a send per record.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Run = Box<dyn FnOnce(Switched) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A response extension: run this on the connection after the 101. (Extensions must be
/// `Clone`; the future runs at most once. The lock is taken once per upgrade, never on a
/// plain request.)
#[derive(Clone)]
pub struct Upgrade(Arc<Mutex<Option<Run>>>);

impl Upgrade {
    pub fn new<F, Fut>(run: F) -> Self
    where
        F: FnOnce(Switched) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let run: Run = Box::new(move |switched| Box::pin(run(switched)));
        Self(Arc::new(Mutex::new(Some(run))))
    }

    pub(super) fn take(&self) -> Option<Run> {
        self.0.lock().ok()?.take()
    }

    /// Runs the upgrade on a switched connection (a connection this driver does not own:
    /// one inside a forward-proxy tunnel).
    pub async fn run(self, switched: Switched) {
        if let Some(run) = self.take() {
            run(switched).await;
        }
    }
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upgrade")
    }
}
