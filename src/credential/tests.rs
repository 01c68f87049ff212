use super::*;
use crate::policy::template::PathTemplate;

fn spec(scheme: Scheme, parts: &[&str]) -> Spec {
    Spec {
        scheme,
        parts: parts
            .iter()
            .map(|n| Part {
                name: Arc::from(*n),
                source: Source::Env(format!("UNUSED_{n}")),
            })
            .collect(),
    }
}

fn request(uri: &str) -> http::request::Parts {
    http::Request::get(uri).body(()).unwrap().into_parts().0
}

#[test]
fn validates_keys() {
    assert_eq!(validate_key(b"  sk_live_1\n"), Ok(&b"sk_live_1"[..]));
    assert_eq!(validate_key(b" \n\t"), Err(KeyError::Empty));
    assert_eq!(validate_key(b"a b"), Err(KeyError::InvalidChar));
    assert_eq!(validate_key(b"a\nb"), Err(KeyError::InvalidChar));
    assert_eq!(validate_key("ké".as_bytes()), Err(KeyError::InvalidChar));
    assert_eq!(
        validate_key(&[b'a'; MAX_KEY_LEN + 1]),
        Err(KeyError::TooLong)
    );
    assert!(validate_key(&[b'a'; MAX_KEY_LEN]).is_ok());
}

#[test]
fn fingerprint_is_sha256_prefix() {
    // sha256("abc") = ba7816bf8f01cfea...
    assert_eq!(fingerprint(b"abc"), "ba7816bf8f01");
}

#[test]
fn debug_never_shows_a_part() {
    let schemes = [
        (
            Scheme::Header {
                header: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            },
            vec!["key"],
        ),
        (Scheme::Basic, vec!["username", "password"]),
        (
            Scheme::Query {
                param: "key".into(),
            },
            vec!["key"],
        ),
        (
            Scheme::Path {
                templates: Arc::from(vec![PathTemplate::parse("/bot{key}").unwrap()]),
            },
            vec!["key"],
        ),
        (
            Scheme::Headers {
                names: vec![
                    HeaderName::from_static("dd-api-key"),
                    HeaderName::from_static("dd-application-key"),
                ],
            },
            vec!["dd-api-key", "dd-application-key"],
        ),
    ];
    for (scheme, parts) in schemes {
        let values: Vec<&[u8]> = vec![b"sk_secret_value", b"sk_second_secret"];
        let c = Credential::from_values(&spec(scheme, &parts), &values).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk_secret"), "{dbg}");
        assert!(dbg.contains(c.fingerprint()), "{dbg}");
        assert_eq!(c.fingerprint().len(), 12);
    }
}

#[test]
fn each_scheme_lands_in_its_place() {
    let header = spec(
        Scheme::Header {
            header: HeaderName::from_static("x-api-key"),
            prefix: String::new(),
        },
        &["key"],
    );
    let c = Credential::from_values(&header, &[b"k1"]).unwrap();
    let mut p = request("/v1/x?a=1");
    c.apply(&mut p, 0).unwrap();
    assert_eq!(p.headers.get("x-api-key").unwrap(), "k1");
    assert!(p.headers.get("x-api-key").unwrap().is_sensitive());
    assert_eq!(p.uri, "/v1/x?a=1");
    assert_eq!(c.stripped(), [HeaderName::from_static("x-api-key")]);
    assert_eq!(c.fingerprint(), fingerprint(b"k1"));

    let basic = spec(Scheme::Basic, &["username", "password"]);
    let c = Credential::from_values(&basic, &[&b"AC01"[..], b"tok"]).unwrap();
    let mut p = request("/x");
    c.apply(&mut p, 0).unwrap();
    assert_eq!(
        p.headers.get("authorization").unwrap(),
        "Basic QUMwMTp0b2s="
    );
    let colon = Credential::from_values(&basic, &[&b"a:b"[..], b"tok"]);
    assert_eq!(colon.err(), Some(KeyError::ColonInUser));

    let query = spec(
        Scheme::Query {
            param: "key".into(),
        },
        &["key"],
    );
    let c = Credential::from_values(&query, &[b"m+k"]).unwrap();
    let mut p = request("/maps/api?key=mine&q=1");
    c.apply(&mut p, 0).unwrap();
    assert_eq!(p.uri, "/maps/api?q=1&key=m%2Bk");
    assert!(p.headers.is_empty());

    let path = spec(
        Scheme::Path {
            templates: Arc::from(vec![
                PathTemplate::parse("/bot{key}").unwrap(),
                PathTemplate::parse("/file/bot{key}").unwrap(),
            ]),
        },
        &["key"],
    );
    let c = Credential::from_values(&path, &[b"1:A"]).unwrap();
    let mut p = request("/getMe");
    c.apply(&mut p, 1).unwrap();
    assert_eq!(p.uri, "/file/bot1:A/getMe");
    assert_eq!(c.key_paths(), ["/bot1:A", "/file/bot1:A"]);

    let headers = spec(
        Scheme::Headers {
            names: vec![
                HeaderName::from_static("dd-api-key"),
                HeaderName::from_static("dd-application-key"),
            ],
        },
        &["dd-api-key", "dd-application-key"],
    );
    let c = Credential::from_values(&headers, &[&b"api"[..], b"app"]).unwrap();
    let mut p = request("/api/v1/validate");
    p.headers.insert("dd-api-key", "caller".parse().unwrap());
    c.apply(&mut p, 0).unwrap();
    assert_eq!(p.headers.get_all("dd-api-key").iter().count(), 1);
    assert_eq!(p.headers.get("dd-api-key").unwrap(), "api");
    assert_eq!(p.headers.get("dd-application-key").unwrap(), "app");
    // Two secret parts: a fingerprint over both, and each part's own.
    let fps: Vec<_> = c
        .parts()
        .iter()
        .map(|p| p.fingerprint.clone().unwrap())
        .collect();
    assert_eq!(fps, [fingerprint(b"api"), fingerprint(b"app")]);
    assert_ne!(c.fingerprint(), fps[0]);
}

#[test]
fn a_changed_part_is_a_change() {
    let basic = spec(Scheme::Basic, &["username", "password"]);
    let a = Credential::from_values(&basic, &[&b"u"[..], b"p1"]).unwrap();
    let b = Credential::from_values(&basic, &[&b"u"[..], b"p1"]).unwrap();
    let c = Credential::from_values(&basic, &[&b"u"[..], b"p2"]).unwrap();
    assert!(a.same_as(&b));
    assert!(!a.same_as(&c));
    // A literal user name is not a secret: the fingerprint is the password's.
    let mut lit = basic.clone();
    if let Some(p) = lit.parts.first_mut() {
        p.source = Source::Value("u".into());
    }
    let d = Credential::from_values(&lit, &[&b"u"[..], b"p1"]).unwrap();
    assert_eq!(d.fingerprint(), fingerprint(b"p1"));
    assert_eq!(d.source(), "env");
}
