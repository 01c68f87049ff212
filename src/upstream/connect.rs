//! Opening upstream connections: TCP + TLS (hyper-rustls) within one deadline, one
//! immediate retry when the connect was refused (nothing was sent), and the error-chain
//! helpers that classify failures.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Finds the first `T` in an error's chain. `io::Error::source` skips the error it wraps,
/// so this descends through `get_ref` too (hyper-rustls wraps rustls errors in two).
pub(super) fn find<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

pub(super) fn is_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    find::<std::io::Error>(err).is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Marker error: the connect (TCP + TLS) deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out")]
pub(super) struct ConnectTimeout;

/// Bounds the whole connect, TLS handshake included (`HttpConnector`'s own timeout only
/// covers TCP).
#[derive(Clone)]
pub(super) struct TimeoutConnector<C> {
    pub(super) inner: C,
    pub(super) timeout: Duration,
}

impl<C> tower_service::Service<Uri> for TimeoutConnector<C>
where
    C: tower_service::Service<Uri> + Clone + Send + 'static,
    C::Response: Send,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let first = self.inner.call(uri.clone());
        let mut again = self.inner.clone();
        let timeout = self.timeout;
        let connect = async move {
            match first.await.map_err(Into::into) {
                // Refused means nothing was sent: one immediate retry rides out a restarting
                // upstream or a stale DNS answer, within the same deadline.
                Err(e) if is_refused(&*e) => {
                    std::future::poll_fn(|cx| again.poll_ready(cx))
                        .await
                        .map_err(Into::into)?;
                    again.call(uri).await.map_err(Into::into)
                }
                other => other,
            }
        };
        Box::pin(async move {
            match tokio::time::timeout(timeout, connect).await {
                Ok(r) => r,
                Err(_) => Err(Box::new(ConnectTimeout) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Refuses the first `refusals` connects, then succeeds; counts calls.
    #[derive(Clone)]
    struct Flaky {
        calls: Arc<AtomicUsize>,
        refusals: usize,
    }

    impl tower_service::Service<Uri> for Flaky {
        type Response = ();
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = Result<(), std::io::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Uri) -> Self::Future {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let refused = n < self.refusals;
            Box::pin(async move {
                if refused {
                    Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                } else {
                    Ok(())
                }
            })
        }
    }

    async fn connect(refusals: usize) -> (Result<(), BoxError>, usize) {
        use tower_service::Service as _;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = TimeoutConnector {
            inner: Flaky {
                calls: calls.clone(),
                refusals,
            },
            timeout: Duration::from_secs(1),
        };
        let r = c.call(Uri::from_static("https://localhost")).await;
        (r, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_refused_connect_is_retried_once() {
        let (r, calls) = connect(1).await;
        assert!(r.is_ok());
        assert_eq!(calls, 2);
        let (r, calls) = connect(2).await;
        assert!(r.is_err_and(|e| is_refused(&*e)));
        assert_eq!(calls, 2, "only one retry");
        let (r, calls) = connect(0).await;
        assert!(r.is_ok());
        assert_eq!(calls, 1);
    }
}
