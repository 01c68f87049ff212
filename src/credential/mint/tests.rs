use super::*;

fn oauth(auth: ClientAuth) -> Mint {
    Mint {
        kind: Kind::OAuth2 {
            token_url: "https://idp.example/oauth2/token".parse().unwrap(),
            client_auth: auth,
            scope: Some("api.read".into()),
            params: vec![("audience".into(), "https://api.example".into())],
        },
        endpoint: Endpoint::default(),
        refresh_before: None,
    }
}

fn parts(v: &[&str]) -> Vec<Zeroizing<Vec<u8>>> {
    v.iter()
        .map(|s| Zeroizing::new(s.as_bytes().to_vec()))
        .collect()
}

#[test]
fn client_credentials_basic_form_encodes_id_and_secret() {
    let req = oauth(ClientAuth::Basic)
        .request(&parts(&["my id", "s3c:r+t"]), SystemTime::now())
        .unwrap();
    let auth = req.headers()["authorization"].to_str().unwrap();
    let decoded = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        auth.strip_prefix("Basic ").unwrap(),
    )
    .unwrap();
    // RFC 6749 section 2.3.1: form-encoded before Basic (space as `+`, `:` and `+` escaped).
    assert_eq!(decoded, b"my+id:s3c%3Ar%2Bt");
    let body = std::str::from_utf8(req.body()).unwrap();
    assert_eq!(
        body,
        "grant_type=client_credentials&scope=api.read&audience=https%3A%2F%2Fapi.example"
    );
    let post = oauth(ClientAuth::Post)
        .request(&parts(&["id", "sec"]), SystemTime::now())
        .unwrap();
    assert!(post.headers().get("authorization").is_none());
    assert!(
        std::str::from_utf8(post.body())
            .unwrap()
            .ends_with("&client_id=id&client_secret=sec")
    );
}

#[test]
fn token_responses_and_errors() {
    let m = oauth(ClientAuth::Basic);
    let now = SystemTime::now();
    let t = m
        .parse(
            http::StatusCode::OK,
            br#"{"access_token":"at-1","expires_in":"86399","token_type":"Bearer"}"#,
            now,
        )
        .unwrap();
    assert_eq!((t.value.as_str(), t.lifetime.as_secs()), ("at-1", 86399));
    let t = m
        .parse(http::StatusCode::OK, br#"{"access_token":"at-2"}"#, now)
        .unwrap();
    assert_eq!(t.lifetime, DEFAULT_LIFETIME, "no expires_in: one hour");
    let e = m
        .parse(
            http::StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"bad secret"}"#,
            now,
        )
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "the token endpoint answered 401: invalid_client (bad secret)"
    );
    assert_eq!(e.result_label(), "refused");
    assert!(m.parse(http::StatusCode::OK, b"{}", now).is_err());
    assert!(
        m.parse(http::StatusCode::OK, br#"{"access_token":"a b"}"#, now)
            .is_err()
    );
}

#[test]
fn refresh_margin() {
    let m = oauth(ClientAuth::Basic);
    assert_eq!(
        m.margin(Duration::from_secs(3600)),
        Duration::from_secs(300)
    );
    assert_eq!(m.margin(Duration::from_secs(5)), Duration::from_secs(1));
    let fixed = Mint {
        refresh_before: Some(Duration::from_secs(120)),
        ..m
    };
    assert_eq!(
        fixed.margin(Duration::from_secs(3600)),
        Duration::from_secs(120)
    );
    assert_eq!(
        fixed.margin(Duration::from_secs(60)),
        Duration::from_secs(60)
    );
}
