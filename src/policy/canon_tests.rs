use super::*;

struct Case {
    input: &'static str,
    want: Result<&'static str, PathError>,
}

const fn ok(input: &'static str, want: &'static str) -> Case {
    Case {
        input,
        want: Ok(want),
    }
}

const fn err(input: &'static str, e: PathError) -> Case {
    Case {
        input,
        want: Err(e),
    }
}

#[test]
fn canonicalize_table() {
    use PathError::*;
    let cases = [
        ok("/", "/"),
        ok("/v1/sandboxes", "/v1/sandboxes"),
        ok("/v1/sandboxes/", "/v1/sandboxes/"),
        ok("/v1/%73andboxes", "/v1/sandboxes"),
        ok("/v1/%7e%2D%5f", "/v1/~-_"),
        ok("/a%20b", "/a%20b"),
        ok("/a%3fb", "/a%3Fb"),
        ok("/caf%c3%a9", "/caf%C3%A9"),
        ok("/%F0%9F%98%80", "/%F0%9F%98%80"),
        ok("/a.b/..c/...", "/a.b/..c/..."),
        ok("/http:/x", "/http:/x"),
        err("", NotOriginForm),
        err("*", NotOriginForm),
        err("v1/x", NotOriginForm),
        err("/a/../b", DotSegment),
        err("/a/./b", DotSegment),
        err("/a/..", DotSegment),
        err("/a/%2e%2e/b", DotSegment),
        err("/a/.%2E/b", DotSegment),
        err("/a/%2e", DotSegment),
        err("/a%2Fb", EncodedDelimiter),
        err("/a%2fb", EncodedDelimiter),
        err("/a%5Cb", EncodedDelimiter),
        err("/a%25b", EncodedDelimiter),
        err("/a%252Fb", EncodedDelimiter),
        err("/a%3Bb", EncodedDelimiter),
        err("/a\\b", Backslash),
        err("/a;b", Semicolon),
        err("//host/x", EmptySegment),
        err("/a//b", EmptySegment),
        err("/a%00b", EncodedControl),
        err("/a%0Ab", EncodedControl),
        err("/a%7Fb", EncodedControl),
        err("/a\u{7f}", InvalidByte),
        err("/a b", InvalidByte),
        err("/caf\u{e9}", InvalidByte),
        err("/a%C0%AF", InvalidUtf8),
        err("/a%ED%A0%80", InvalidUtf8),
        err("/a%C3", InvalidUtf8),
        err("/a%C3x", InvalidUtf8),
        err("/a%80", InvalidUtf8),
        err("/a%", MalformedEscape),
        err("/a%4", MalformedEscape),
        err("/a%zz", MalformedEscape),
        err("/a%C3%G0", MalformedEscape),
    ];
    for c in cases {
        let got = canonicalize(c.input);
        let got = got.as_deref().map_err(|e| *e);
        assert_eq!(got, c.want, "input {:?}", c.input);
    }
}

#[test]
fn canonical_is_borrowed_when_unchanged() {
    assert!(matches!(
        canonicalize("/v1/sandboxes/sb_1"),
        Ok(Cow::Borrowed(_))
    ));
    assert!(matches!(canonicalize("/v1/%41"), Ok(Cow::Owned(_))));
}

#[test]
fn canonical_is_a_fixed_point() {
    for input in ["/v1/%73b/%c3%a9", "/x%2d%3f", "/a/b/"] {
        let once = canonicalize(input).unwrap().into_owned();
        let twice = canonicalize(&once).unwrap();
        assert_eq!(once, twice);
    }
}

#[test]
fn length_limits() {
    let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
    assert_eq!(canonicalize(&long), Err(PathError::TooLong));
    let max = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
    assert!(canonicalize(&max).is_ok());
    assert_eq!(
        check_query(&"q".repeat(MAX_QUERY_LEN + 1)),
        Err(PathError::TooLong)
    );
    assert_eq!(check_query("a=1&b=%20"), Ok(()));
    assert_eq!(check_query("a=\u{e9}"), Err(PathError::InvalidByte));
}
