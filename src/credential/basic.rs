//! The `basic` scheme: `Authorization: Basic base64(user ":" password)` (RFC 7617). The user
//! name and password are encoded as they are (no form-encoding: that is OAuth's client
//! Basic, RFC 6749 section 2.3.1, a different encoder), so a user name holding `:` would be
//! ambiguous and is refused.

use base64::Engine;
use http::HeaderValue;
use zeroize::Zeroizing;

use super::KeyError;

pub(super) fn value(user: &[u8], password: &[u8]) -> Result<HeaderValue, KeyError> {
    if user.contains(&b':') {
        return Err(KeyError::ColonInUser);
    }
    let mut joined = Zeroizing::new(Vec::with_capacity(user.len() + 1 + password.len()));
    joined.extend_from_slice(user);
    joined.push(b':');
    joined.extend_from_slice(password);
    let mut text = Zeroizing::new(String::from("Basic "));
    base64::engine::general_purpose::STANDARD.encode_string(&*joined, &mut text);
    let mut value = HeaderValue::from_str(&text).map_err(|_| KeyError::InvalidChar)?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_rfc7617() {
        // RFC 7617 section 2's example.
        let v = value(b"Aladdin", b"open sesame").unwrap();
        assert_eq!(v.as_bytes(), b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(v.is_sensitive());
        assert_eq!(value(b"a:b", b"p"), Err(KeyError::ColonInUser));
    }
}
