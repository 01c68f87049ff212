//! An upstream 401 may mean the key was rotated under us and revoked before the file watch
//! saw the new one. The key sources are re-read at once (shared by concurrent 401s, at most
//! once a second), and a request without a body is replayed once if this principal's key for
//! this API changed. Never twice, never a streamed body, never an upgrade.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{Either, Empty};

use crate::control::secret::Credential;
use crate::control::state::Shared;
use crate::upstream::RequestBody;

/// Longest wait for the re-read's snapshot.
const WAIT: Duration = Duration::from_millis(500);

/// The head of a bodiless request, kept for one replay.
pub(super) struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    pub(super) fn of(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        }
    }

    /// The same request with `new` instead of `old`.
    pub(super) fn with_key(mut self, old: &Credential, new: &Credential) -> Request<RequestBody> {
        self.headers.remove(old.header());
        self.headers
            .insert(new.header().clone(), new.value().clone());
        let mut req = Request::new(Either::Right(Empty::<Bytes>::new()));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Re-reads the keys and returns this principal's key for `api` if it is not `sent`.
pub(super) async fn newer_key(
    shared: &Shared,
    principal: usize,
    api: usize,
    sent: &Credential,
) -> Option<Arc<Credential>> {
    shared.reread_keys(WAIT).await;
    let snap = shared.load();
    let now = snap.credential_for(principal, api)?;
    (!now.same_as(sent)).then(|| now.clone())
}
