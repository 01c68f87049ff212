//! A rotated key is tried before it is used (the provider's create -> deploy -> verify ->
//! revoke, done inside every replica). When a source yields a new value for an API with
//! `verify = "GET /path"`, that request goes to the API's origin with the new credential, off
//! the request path, while the current key keeps serving:
//! - 2xx or 3xx: switch (`result="ok"`);
//! - 401 or 403: keep the current key, warn with both fingerprints, show the pending key in
//!   `/credential` and the status page, and try again each `reload.interval` while the source
//!   still holds that value (providers activate keys with a delay) (`result="rejected"`);
//! - anything else (timeout, 5xx, 429, connect error): switch anyway (`result="unverified"`):
//!   an API outage must never block a rotation.
//!
//! At start, and for a value read because the upstream refused the current key (a 401
//! re-read), there is no working key to keep: the new one is used at once and only reported.
//! One verify request per new value per interval, never a storm.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{Either, Full};
use tokio::sync::mpsc;

use crate::config::{NamedCredential, Verify};
use crate::control::state::{Pending, Shared};
use crate::credential::Credential;
use crate::telemetry;
use crate::upstream::Upstream;

/// Longest wait for a verify response.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What one verify request found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Ok,
    Rejected,
    Unverified,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
            Self::Unverified => "unverified",
        }
    }

    fn of(status: Option<StatusCode>) -> Self {
        match status {
            Some(s) if s.is_success() || s.is_redirection() => Self::Ok,
            Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Self::Rejected,
            _ => Self::Unverified,
        }
    }
}

/// A finished verify request, sent back to the reload task.
pub(super) struct Outcome {
    name: Arc<str>,
    api: Arc<str>,
    fingerprint: String,
    verdict: Verdict,
    status: Option<u16>,
    /// The key is in use already (start, 401 re-read): the result is only reported.
    report_only: bool,
}

impl Outcome {
    pub(super) fn name(&self) -> &Arc<str> {
        &self.name
    }
}

enum State {
    Probing,
    Rejected,
    Accepted,
}

struct Candidate {
    fingerprint: String,
    state: State,
    /// When the last verify request was sent.
    tried: Instant,
}

/// The reload task's side: candidates by credential name, and the channel results come back on.
pub(super) struct Verifier {
    candidates: BTreeMap<Arc<str>, Candidate>,
    tx: mpsc::UnboundedSender<Outcome>,
}

/// What to probe with: the API's name, its verify request and its upstream client.
pub(super) type Target<'a> = (&'a str, &'a Verify, Arc<Upstream>);

impl Verifier {
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<Outcome>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let v = Self {
            candidates: BTreeMap::new(),
            tx,
        };
        (v, rx)
    }

    /// Whether `new` (a value the source holds that differs from the key in use) may be used
    /// now. The first time it is seen a verify request goes out and the answer is no.
    pub(super) fn admit(
        &mut self,
        shared: &Shared,
        named: &NamedCredential,
        new: &Arc<Credential>,
        target: Target<'_>,
        interval: Duration,
    ) -> bool {
        let fp = new.fingerprint();
        let retry = match self.candidates.get_mut(&named.name) {
            Some(c) if c.fingerprint == fp => match c.state {
                State::Accepted => {
                    self.candidates.remove(&named.name);
                    shared.set_credential_pending(&named.name, None);
                    return true;
                }
                State::Probing => return false,
                // Providers activate keys late: one more try per interval.
                State::Rejected if c.tried.elapsed() >= interval => {
                    c.state = State::Probing;
                    c.tried = Instant::now();
                    true
                }
                State::Rejected => return false,
            },
            _ => false,
        };
        if !retry {
            self.candidates.insert(
                named.name.clone(),
                Candidate {
                    fingerprint: fp.to_owned(),
                    state: State::Probing,
                    tried: Instant::now(),
                },
            );
            shared.set_credential_pending(
                &named.name,
                Some(Pending {
                    fingerprint: fp.to_owned(),
                    state: "verifying",
                    status: None,
                    since: SystemTime::now(),
                }),
            );
            tracing::info!(
                credential = &*named.name,
                new_fingerprint = fp,
                "new key read: trying it with the verify request before it is used"
            );
        }
        self.spawn(named, new, target, false);
        false
    }

    /// The source went back to the key in use (or the credential is gone): nothing pending.
    pub(super) fn forget(&mut self, shared: &Shared, name: &Arc<str>) {
        if self.candidates.remove(name).is_some() {
            shared.set_credential_pending(name, None);
        }
    }

    /// A key already in use: verified for the report only.
    pub(super) fn report(
        &self,
        named: &NamedCredential,
        key: &Arc<Credential>,
        target: Target<'_>,
    ) {
        self.spawn(named, key, target, true);
    }

    fn spawn(
        &self,
        named: &NamedCredential,
        key: &Arc<Credential>,
        target: Target<'_>,
        report_only: bool,
    ) {
        let (api, verify, upstream) = target;
        let (name, api, key, verify) = (
            named.name.clone(),
            Arc::<str>::from(api),
            key.clone(),
            verify.clone(),
        );
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let status = probe(&upstream, &verify, &key).await;
            let _ = tx.send(Outcome {
                name,
                api,
                fingerprint: key.fingerprint().to_owned(),
                verdict: Verdict::of(status),
                status: status.map(|s| s.as_u16()),
                report_only,
            });
        });
    }

    /// Records a result: metric, log line, pending state. `current`: the fingerprint in use.
    pub(super) fn settle(&mut self, shared: &Shared, o: &Outcome, current: Option<&str>) {
        metrics::counter!(telemetry::CREDENTIAL_VERIFICATIONS_TOTAL, "api" => o.api.to_string(), "credential" => o.name.to_string(), "result" => o.verdict.as_str()).increment(1);
        let (name, fp, status) = (&*o.name, &*o.fingerprint, o.status);
        if o.report_only {
            match o.verdict {
                Verdict::Ok => tracing::info!(
                    credential = name,
                    fingerprint = fp,
                    status,
                    "the key in use passed its verify request"
                ),
                _ => tracing::warn!(
                    credential = name,
                    fingerprint = fp,
                    status,
                    result = o.verdict.as_str(),
                    "the key in use did not pass its verify request"
                ),
            }
            return;
        }
        let Some(c) = self
            .candidates
            .get_mut(&o.name)
            .filter(|c| c.fingerprint == o.fingerprint)
        else {
            return; // superseded by a newer value
        };
        match o.verdict {
            Verdict::Rejected => {
                tracing::warn!(
                    credential = name,
                    old_fingerprint = current,
                    new_fingerprint = fp,
                    status,
                    "the new key was refused by its verify request; the current key stays in use (tried again every reload interval)"
                );
                c.state = State::Rejected;
                shared.set_credential_pending(
                    &o.name,
                    Some(Pending {
                        fingerprint: o.fingerprint.clone(),
                        state: "rejected",
                        status,
                        since: SystemTime::now(),
                    }),
                );
            }
            Verdict::Ok => {
                tracing::info!(
                    credential = name,
                    new_fingerprint = fp,
                    status,
                    "the new key passed its verify request"
                );
                c.state = State::Accepted;
            }
            Verdict::Unverified => {
                tracing::warn!(
                    credential = name,
                    new_fingerprint = fp,
                    status,
                    "the verify request gave no answer on the key (outage?); switching to the new key anyway"
                );
                c.state = State::Accepted;
            }
        }
    }
}

/// Sends the verify request with `key` and returns its status (`None`: no answer in time).
async fn probe(upstream: &Upstream, verify: &Verify, key: &Credential) -> Option<StatusCode> {
    let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
    *req.method_mut() = verify.method.clone();
    *req.uri_mut() = Uri::from(verify.target.clone());
    let (mut parts, body) = req.into_parts();
    // A signing scheme signs the Host the request carries.
    parts
        .headers
        .insert(http::header::HOST, upstream.host().clone());
    key.apply(&mut parts, 0).ok()?;
    let sent = upstream.send(Request::from_parts(parts, body), Instant::now());
    let resp = tokio::time::timeout(TIMEOUT, sent).await.ok()?.ok()?;
    Some(resp.status())
}
