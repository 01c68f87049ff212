//! `x-request-id`: propagate a sane caller value, otherwise mint one.

use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderValue};

const MAX_LEN: usize = 128;

/// The caller's id if it is short visible ASCII, else a fresh one.
pub fn from_headers(headers: &HeaderMap) -> HeaderValue {
    match headers.get("x-request-id") {
        Some(v) if is_acceptable(v.as_bytes()) => v.clone(),
        _ => mint(),
    }
}

fn is_acceptable(v: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&v.len()) && v.iter().all(|b| (0x21..=0x7E).contains(b))
}

/// 16 hex characters: a keyed hash of a counter, unique per process and unguessable
/// across restarts (the key is random per process).
fn mint() -> HeaderValue {
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = STATE.get_or_init(Default::default).hash_one(n);
    // Hex by hand into a stack buffer: no `format!` allocation per request.
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        let nibble = (h >> (60 - 4 * i)) & 0xF;
        *b = b"0123456789abcdef"[nibble as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The id as sent upstream: marked never-indexed, so an HTTP/2 upstream connection's HPACK
/// encoder does not insert a value that is new on every request into its dynamic table. Indexed,
/// each id pushed out the entries that do repeat (authority, user agent, ...), which were then
/// re-sent and re-inserted, and every request walked the chain of earlier ids comparing values.
/// No effect on HTTP/1.1.
pub fn for_upstream(id: &HeaderValue) -> HeaderValue {
    let mut id = id.clone();
    id.set_sensitive(true);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagates_or_mints() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(from_headers(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        let minted = from_headers(&h);
        assert_eq!(minted.len(), 16);
        assert_ne!(minted, from_headers(&h));
    }

    #[test]
    fn the_upstream_copy_is_never_indexed() {
        let id = mint();
        let up = for_upstream(&id);
        assert!(up.is_sensitive());
        assert_eq!(up, id);
        assert!(!id.is_sensitive());
    }
}
