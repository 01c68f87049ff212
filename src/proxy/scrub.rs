//! `scrub = "bodies"`: a textual response body (`application/json`, `text/*`, `*+json`,
//! `*+xml`, form-encoded, `text/event-stream`) is scanned while it streams, and every form of
//! the credential is replaced by `*` of the same length. Nothing is held back but the shortest
//! tail of a chunk that could still be the start of a secret ([`Needles::held_tail`]); a chunk
//! (an SSE event) that does not end in such a prefix passes at once, uncopied when it holds
//! no secret. The upstream is asked for `Accept-Encoding: identity`; a textual answer that is
//! compressed anyway cannot be scanned and is refused (502 `response_not_scrubbable`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::credential::Needles;
use crate::telemetry;

/// Whether a response with these headers is text sidekey scans.
pub(super) fn textual(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // Compared in place (no lower-cased copy per response).
    let essence = ct.split(';').next().unwrap_or_default().trim().as_bytes();
    let starts = |p: &str| {
        essence
            .get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes()))
    };
    let ends = |p: &str| {
        essence
            .len()
            .checked_sub(p.len())
            .and_then(|i| essence.get(i..))
            .is_some_and(|t| t.eq_ignore_ascii_case(p.as_bytes()))
    };
    starts("text/")
        || essence.eq_ignore_ascii_case(b"application/json")
        || essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
        || ends("+json")
        || ends("+xml")
}

/// Whether the body is compressed (any `Content-Encoding` but `identity`).
pub(super) fn encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// Labels and identity of an echo, for the metric and the warning.
pub(super) struct Report {
    pub api: String,
    pub credential: String,
    pub fingerprint: String,
    pub path: String,
}

struct State {
    needles: Arc<Needles>,
    held: BytesMut,
    /// Trailers that arrived while bytes were held: sent after them.
    trailers: Option<HeaderMap>,
    ended: bool,
    report: Report,
}

/// A response body, scanned when `state` is set, passed through as it is otherwise.
pub struct Scrubbed<B> {
    inner: B,
    state: Option<Box<State>>,
}

impl<B> Scrubbed<B> {
    pub(super) fn plain(inner: B) -> Self {
        Self { inner, state: None }
    }

    pub(super) fn scanning(inner: B, needles: Arc<Needles>, report: Report) -> Self {
        if needles.is_empty() {
            return Self::plain(inner);
        }
        let state = State {
            needles,
            held: BytesMut::new(),
            trailers: None,
            ended: false,
            report,
        };
        Self {
            inner,
            state: Some(Box::new(state)),
        }
    }
}

impl State {
    /// The part of `data` (after what was held) that can go now; the rest is held.
    fn process(&mut self, data: Bytes) -> Bytes {
        if self.held.is_empty() && !self.needles.found_in(&data) {
            let keep = self.needles.held_tail(&data);
            if keep == 0 {
                return data;
            }
            let cut = data.len() - keep;
            self.held
                .extend_from_slice(data.get(cut..).unwrap_or_default());
            return data.slice(..cut);
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(&data);
        let found = self.needles.scrub(&mut buf);
        if found > 0 {
            self.echoed(found);
        }
        let keep = self.needles.held_tail(&buf);
        let cut = buf.len() - keep;
        self.held = buf.split_off(cut);
        buf.freeze()
    }

    fn echoed(&self, found: usize) {
        let r = &self.report;
        metrics::counter!(telemetry::KEY_ECHOES_TOTAL, "api" => r.api.clone(), "credential" => r.credential.clone(), "where" => "body").increment(found as u64);
        let Some(unlogged) = self.needles.may_warn() else {
            return;
        };
        tracing::warn!(
            api = r.api,
            credential = r.credential,
            fingerprint = r.fingerprint,
            path = r.path,
            echoes = found,
            unlogged,
            "the upstream echoed the credential in a response body; taken out before the app saw it (treat the key as published)"
        );
    }
}

impl<B> Body for Scrubbed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(state) = this.state.as_mut() else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        loop {
            if state.ended {
                if !state.held.is_empty() {
                    let rest = std::mem::take(&mut state.held).freeze();
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                return Poll::Ready(state.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = state.process(data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        state.trailers = frame.into_trailers().ok();
                        state.ended = true;
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => state.ended = true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            None => self.inner.is_end_stream(),
            Some(s) => s.ended && s.held.is_empty() && s.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Scrubbing keeps lengths; held bytes are still to come.
        let inner = self.inner.size_hint();
        let Some(s) = &self.state else {
            return inner;
        };
        let held = s.held.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use base64::Engine;

    use super::*;

    const KEY: &[u8] = b"sk_live/0123456789&abc";

    /// A body of the given chunks, one frame each.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn report() -> Report {
        Report {
            api: "a".into(),
            credential: "c".into(),
            fingerprint: "f".into(),
            path: "/p".into(),
        }
    }

    /// Runs `chunks` through the scrubber; returns the frames as they came out.
    fn run(needles: &Arc<Needles>, chunks: Vec<Bytes>) -> Vec<Bytes> {
        let mut body = Scrubbed::scanning(Chunks(chunks.into()), needles.clone(), report());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            out.push(frame.into_data().unwrap_or_default());
        }
        assert!(body.is_end_stream());
        out
    }

    fn needles() -> Arc<Needles> {
        let c = crate::credential::Credential::from_values(
            &crate::credential::Spec::header(
                crate::credential::Source::Env("UNUSED".into()),
                http::header::AUTHORIZATION,
                "Bearer ",
            ),
            &[KEY],
        )
        .unwrap();
        c.needles().clone()
    }

    #[test]
    fn every_form_at_every_split_point_is_starred_and_lengths_kept() {
        let n = needles();
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(KEY);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(KEY);
        let pct =
            percent_encoding::percent_encode(KEY, percent_encoding::NON_ALPHANUMERIC).to_string();
        let raw = std::str::from_utf8(KEY).unwrap();
        let json_php = raw.replace('/', "\\/");
        let json_go = raw.replace('&', "\\u0026");
        for form in [raw.to_owned(), b64, url, pct, json_php, json_go] {
            let text = format!(
                "data: {{\"error\":\"invalid key {form}\"}}\n\nevent: x\ndata: {form}{form}\n\n"
            );
            for split in 0..=text.len() {
                let chunks = vec![
                    Bytes::copy_from_slice(&text.as_bytes()[..split]),
                    Bytes::copy_from_slice(&text.as_bytes()[split..]),
                ];
                let joined: Vec<u8> = run(&n, chunks).concat();
                assert_eq!(joined.len(), text.len(), "{form} at {split}");
                let out = String::from_utf8(joined).unwrap();
                assert!(
                    !out.contains(&form) && !out.contains("0123456789"),
                    "{form} at {split}: {out}"
                );
                assert!(out.starts_with("data: {\"error\":\"invalid key *"), "{out}");
            }
        }
    }

    #[test]
    fn a_chunk_that_cannot_start_a_secret_passes_at_once_uncopied() {
        let n = needles();
        let event = Bytes::from_static(b"data: {\"delta\":\"hello\"}\n\n");
        let ptr = event.as_ptr();
        let out = run(&n, vec![event.clone(), event.clone()]);
        assert_eq!(out, vec![event.clone(), event.clone()]);
        assert_eq!(out[0].as_ptr(), ptr, "passed through without a copy");
        // A chunk ending in a possible start of the key: only that tail waits.
        let out = run(
            &n,
            vec![
                Bytes::from_static(b"data: sk_li"),
                Bytes::from_static(b"ve!\n\n"),
            ],
        );
        assert_eq!(out[0], Bytes::from_static(b"data: "));
        assert_eq!(out.concat(), b"data: sk_live!\n\n".to_vec());
    }

    #[test]
    fn textual_types_and_encodings() {
        let h = |ct: &str| {
            let mut m = HeaderMap::new();
            m.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            m
        };
        for ct in [
            "application/json",
            "text/event-stream; charset=utf-8",
            "application/problem+json",
            "application/atom+xml",
            "text/plain",
            "application/x-www-form-urlencoded",
            "Application/JSON",
            "TEXT/HTML",
            "application/Problem+JSON",
        ] {
            assert!(textual(&h(ct)), "{ct}");
        }
        for ct in [
            "application/octet-stream",
            "image/png",
            "application/grpc",
            "json",
            "+xm",
        ] {
            assert!(!textual(&h(ct)), "{ct}");
        }
        let mut m = h("application/json");
        assert!(!encoded(&m));
        m.insert(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(encoded(&m));
    }
}
