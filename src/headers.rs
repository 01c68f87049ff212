//! Header-name lists on the ground floor: the request path strips by them (`proxy::inject`)
//! and config validation refuses them as a credential header, without either importing the
//! other. The hop-by-hop set is RFC 9110 section 7.6.1 plus the de-facto `Keep-Alive` and
//! `Proxy-Connection`.

use http::header::{self, HeaderName};

/// Hop-by-hop headers: never forwarded in either direction.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            // RFC 9113 section 3.2.1: connection-specific even when `Connection` does not
            // name it (h2csmuggler's --upgrade-only sends it bare).
            | "http2-settings"
    )
}

/// Headers that can never be the credential header.
pub fn is_reserved(name: &HeaderName) -> bool {
    is_hop_by_hop(name.as_str())
        || matches!(
            name.as_str(),
            "host" | "content-length" | "content-type" | "x-request-id"
        )
}

/// The hop-by-hop set as header names (see [`is_hop_by_hop`]).
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];
