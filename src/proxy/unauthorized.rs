//! An upstream 401 may mean the key was rotated under us and revoked before the file watch
//! saw the new one. The key sources are re-read at once (shared by concurrent 401s, at most
//! once a second), and a request without a body is replayed once if this principal's key for
//! this API changed. Never twice, never a streamed body, never an upgrade.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{Either, Full};

use crate::control::state::Shared;
use crate::credential::{ApplyError, Credential};
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

    /// The same request with `new` applied (the head was kept before any credential went
    /// in, so nothing of the old one is left to remove).
    pub(super) fn with_key(
        self,
        new: &Credential,
        template: usize,
    ) -> Result<Request<RequestBody>, ApplyError> {
        let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        let (mut parts, body) = req.into_parts();
        new.apply(&mut parts, template)?;
        Ok(Request::from_parts(parts, body))
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
