//! The `header` scheme (one header, `<prefix><key>`, the default) and the `headers` scheme
//! (several headers, each from its own part, e.g. Datadog's `DD-API-KEY` +
//! `DD-APPLICATION-KEY`).

use http::HeaderValue;
use zeroize::Zeroizing;

use super::KeyError;

/// `<prefix><key>`, marked sensitive so HTTP/2 never indexes it and `Debug` prints nothing.
pub(super) fn value(prefix: &str, key: &[u8]) -> Result<HeaderValue, KeyError> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(prefix.len() + key.len()));
    bytes.extend_from_slice(prefix.as_bytes());
    bytes.extend_from_slice(key);
    let mut value = HeaderValue::from_bytes(&bytes).map_err(|_| KeyError::InvalidChar)?;
    value.set_sensitive(true);
    Ok(value)
}
