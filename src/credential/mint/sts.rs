//! AWS STS `AssumeRoleWithWebIdentity` (EKS IRSA): the service account's token file is traded
//! for temporary credentials (key id, secret key, session token, expiry). The call needs no
//! AWS credentials; the token file is re-read for every call (the kubelet rotates it).

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use zeroize::Zeroizing;

use super::{AwsKeys, MintError, Token};

pub(super) fn request(
    sts_url: &Uri,
    role_arn: &str,
    session_name: &str,
    parts: &[Zeroizing<Vec<u8>>],
) -> Result<Request<Bytes>, MintError> {
    let token = parts
        .first()
        .and_then(|t| std::str::from_utf8(t).ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| MintError::Secret("the web identity token is empty or not UTF-8".into()))?;
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", role_arn)
        .append_pair("RoleSessionName", session_name)
        .append_pair("WebIdentityToken", token);
    let body = Zeroizing::new(form.finish());
    Request::post(sts_url.clone())
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(Bytes::from(body.as_bytes().to_vec()))
        .map_err(|e| MintError::Secret(format!("STS request: {e}")))
}

/// The text of the first `<tag>` element, entities decoded.
fn element(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml.get(start..)?.find(&format!("</{tag}>"))?;
    let raw = xml.get(start..start + len)?.trim();
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` as a time.
fn timestamp(text: &str) -> Option<std::time::SystemTime> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> { text.get(r)?.parse().ok() };
    if b.len() < 20 || b.get(10) != Some(&b'T') || !text.ends_with('Z') {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        month,
        u8::try_from(num(8..10)?).ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(14..16)?).ok()?,
        u8::try_from(num(17..19)?).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().into())
}

/// The `AssumeRoleWithWebIdentityResponse`, or STS's `<Error>` (code and message only).
pub(super) fn parse(
    status: StatusCode,
    body: &[u8],
    now: std::time::SystemTime,
) -> Result<Token, MintError> {
    let xml = std::str::from_utf8(body).map_err(|_| MintError::Malformed("not UTF-8".into()))?;
    if !status.is_success() {
        let clean =
            |s: String| -> String { s.chars().filter(|c| !c.is_control()).take(200).collect() };
        return Err(MintError::Refused {
            status: status.as_u16(),
            error: element(xml, "Code").map_or_else(|| "no error code".into(), clean),
            description: element(xml, "Message").map(clean),
        });
    }
    let field = |tag: &str| {
        element(xml, tag)
            .filter(|v| !v.is_empty() && crate::credential::validate_key(v.as_bytes()).is_ok())
            .ok_or_else(|| MintError::Malformed(format!("no valid {tag}")))
    };
    let key_id = field("AccessKeyId")?;
    let secret = Zeroizing::new(field("SecretAccessKey")?);
    let session = Zeroizing::new(field("SessionToken")?);
    let expires = element(xml, "Expiration")
        .as_deref()
        .and_then(timestamp)
        .ok_or_else(|| MintError::Malformed("no valid Expiration".into()))?;
    let lifetime = expires
        .duration_since(now)
        .map_err(|_| MintError::Malformed("the credentials have already expired".into()))?;
    Ok(Token {
        value: session,
        lifetime,
        aws: Some(AwsKeys { key_id, secret }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_credentials_and_errors() {
        let now = timestamp("2026-12-07T10:00:00Z").unwrap();
        let ok = b"<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
            <AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>se/cr+et</SecretAccessKey>\
            <SessionToken>tok&amp;en</SessionToken><Expiration>2026-12-07T11:00:00.000Z</Expiration>\
            </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let t = parse(StatusCode::OK, ok, now).unwrap();
        assert_eq!(t.lifetime, std::time::Duration::from_secs(3600));
        assert_eq!(&*t.value, "tok&en");
        let keys = t.aws.unwrap();
        assert_eq!(
            (keys.key_id.as_str(), keys.secret.as_str()),
            ("ASIAEXAMPLE", "se/cr+et")
        );
        let err = b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>Not authorized</Message></Error></ErrorResponse>";
        let e = parse(StatusCode::FORBIDDEN, err, now).err().unwrap();
        assert_eq!(
            e.to_string(),
            "the token endpoint answered 403: AccessDenied (Not authorized)"
        );
    }
}
