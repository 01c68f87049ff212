//! The request-smuggling mutations of an HTTP desync scanner (defparam/smuggler's
//! `exhaustive` list, the ones that reach sidekey as a request): each framing header mutation,
//! sent CL.TE and TE.CL style with a whole second request hidden in the body. The hidden
//! request is one the policy denies: if sidekey reads it as a request it answers 403; if it
//! forwards it as body bytes, it is body bytes in a request framed one way. A desync would be
//! the upstream seeing it as a request, or a request framed by both lengths.

use std::time::Duration;

use crate::support::*;

const HIDDEN: &str = "DELETE /v1/sandboxes/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Transfer-Encoding spellings the scanner tries (name, separator and value mutations).
const MUTATIONS: [&str; 18] = [
    "Transfer-Encoding: chunked",
    "Transfer-Encoding:chunked",
    "Transfer-Encoding:  chunked",
    "Transfer-Encoding:\tchunked",
    "Transfer-Encoding: chunked ",
    "Transfer-Encoding: \"chunked\"",
    "Transfer-Encoding: CHUNKED",
    "Transfer-Encoding: xchunked",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: identity, chunked",
    "Transfer-Encoding : chunked",
    "Transfer_Encoding: chunked",
    "Transfer-Encoding: \x0bchunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
    "Transfer-Encoding: x\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding:\r\n chunked",
    "X: y\nTransfer-Encoding: chunked",
    "Transfer-Encoding: chunk",
];

#[tokio::test]
async fn scanner_framing_mutations_never_desync() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let body = format!("0\r\n\r\n{HIDDEN}");
    for te in MUTATIONS {
        let cl_te = format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n{te}\r\n\r\n{body}",
            body.len()
        );
        let te_cl = format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\n{te}\r\nContent-Length: 3\r\n\r\n{body}"
        );
        for case in [cl_te, te_cl] {
            let out = raw(p.addr, case.as_bytes(), Duration::from_secs(3)).await;
            let responses = out.matches("HTTP/1.1 ").count();
            assert!(responses <= 2, "{case:?} got {responses} responses: {out}");
            if responses == 2 {
                // Read as two requests: the second is the hidden one, and it was refused.
                assert!(out.contains("HTTP/1.1 403"), "{case:?}: {out}");
            }
        }
    }
    let seen = up.mock.requests();
    assert!(
        seen.iter().all(|r| r.method != http::Method::DELETE),
        "{seen:?}"
    );
    for r in &seen {
        let lengths = r.headers.get_all("content-length").iter().count();
        let chunked = r.headers.contains_key("transfer-encoding");
        assert!(lengths <= 1 && !(lengths == 1 && chunked), "{r:?}");
        assert!(r.headers.keys().all(|k| !k.as_str().contains('_')), "{r:?}");
    }
    p.stop().await;
}
