use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tmp() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "sidekey-cfg-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const MINIMAL: &str = r#"
[upstream]
url = "https://api.example.com"

[credential]
file = "key"

[service]
name = "svc"
allow = ["a:read"]

[permissions]
"a:read" = ["GET /v1/things/{id}"]
"a:write" = ["POST /v1/things"]
"#;

#[test]
fn minimal_config_gets_defaults() {
    let d = tmp();
    let c = Config::load(&write(&d, "s.toml", MINIMAL)).unwrap();
    assert_eq!(c.listener.address.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.address.to_string(), "127.0.0.1:9901");
    assert_eq!(c.apis[0].upstream.authority.as_str(), "api.example.com");
    assert_eq!(c.apis[0].upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(
        c.credentials[0].config,
        crate::credential::Spec::header(
            CredentialSource::File(d.join("key")),
            http::header::AUTHORIZATION,
            "Bearer "
        )
    );
    assert_eq!(c.apis[0].catalogue.len(), 2);
    assert_eq!(c.runtime.workers, 1);
}

fn load_err(text: &str) -> ConfigError {
    let d = tmp();
    Config::load(&write(&d, "s.toml", text)).unwrap_err()
}

#[test]
fn errors_name_key_and_line() {
    let e = load_err(&MINIMAL.replace("[service]", "[service]\nbogus = 1"));
    assert_eq!(e.line, Some(9), "{e}");
    assert!(e.to_string().contains("unknown field"), "{e}");
    assert!(e.to_string().contains("s.toml:9"), "{e}");

    let e = load_err(&MINIMAL.replace("allow = [\"a:read\"]", "allow = [\"a:read\", \"a:nope\"]"));
    assert_eq!((e.key.as_str(), e.line), ("service.allow", Some(10)), "{e}");
    assert!(e.message.contains("a:nope"));

    let e = load_err(&MINIMAL.replace("allow = [\"a:read\"]", "allow = []"));
    assert_eq!(e.key, "service.allow");

    let e = load_err(&MINIMAL.replace("\"a:write\" = [\"POST /v1/things\"]", "\"a:write\" = []"));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("permissions.a:write", Some(14)),
        "{e}"
    );

    let e = load_err(&MINIMAL.replace("POST /v1/things", "POST v1/things"));
    assert_eq!(e.key, "permissions.a:write");
    assert!(e.message.contains("start with '/'"), "{e}");

    let e = load_err(&MINIMAL.replace("https://", "http://"));
    assert_eq!((e.key.as_str(), e.line), ("upstream.url", Some(3)), "{e}");

    let e = load_err(&MINIMAL.replace("https://api.example.com", "https://api.example.com/base"));
    assert_eq!(e.key, "upstream.url");

    let e = load_err(&MINIMAL.replace("file = \"key\"", "file = \"key\"\nenv = \"K\""));
    assert_eq!(e.key, "credential");

    let e = load_err(&format!(
        "[listener]\naddress = \"0.0.0.0:8080\"\n{MINIMAL}"
    ));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("listener.address", Some(2)),
        "{e}"
    );

    let e = load_err(&MINIMAL.replace("[credential]", "[credential]\nheader = \"connection\""));
    assert_eq!(e.key, "credential.header");
}

#[test]
fn plaintext_needs_the_escape_hatch() {
    let text = MINIMAL.replace("https://", "http://").replace(
        "url = \"http://api.example.com\"",
        "url = \"http://api.example.com\"\nallow_plaintext_upstream = true",
    );
    let d = tmp();
    let c = Config::load(&write(&d, "s.toml", &text)).unwrap();
    assert!(c.apis[0].upstream.allow_plaintext);
}

#[test]
fn permissions_file_is_relative_and_hashed() {
    let d = tmp();
    write(&d, "cat.toml", "[permissions]\n\"a:read\" = [\"GET /x\"]\n");
    let text = MINIMAL
        .replace("[permissions]\n\"a:read\" = [\"GET /v1/things/{id}\"]\n\"a:write\" = [\"POST /v1/things\"]\n", "")
        .replace("[service]", "[service]\npermissions_file = \"cat.toml\"");
    let path = write(&d, "s.toml", &text);
    let c1 = Config::load(&path).unwrap();
    assert_eq!(c1.apis[0].permissions_path, Some(d.join("cat.toml")));
    assert_eq!(&*c1.apis[0].catalogue[0].text, "GET /x");
    write(&d, "cat.toml", "[permissions]\n\"a:read\" = [\"GET /y\"]\n");
    let c2 = Config::load(&path).unwrap();
    assert_ne!(c1.digest, c2.digest);
    write(&d, "cat.toml", "[permissions]\n\"a:read\" = [\"GET y\"]\n");
    let e = Config::load(&path).unwrap_err();
    assert_eq!(
        (e.file.clone(), e.line),
        (d.join("cat.toml"), Some(2)),
        "{e}"
    );
}

#[test]
fn limits_and_sizes() {
    let d = tmp();
    let c = Config::load(&write(&d, "s.toml", MINIMAL)).unwrap();
    assert_eq!(
        (c.limits.max_in_flight, c.limits.max_request_body),
        (1024, None)
    );
    let text = format!(
        "{MINIMAL}\n[limits]\nmax_in_flight = 3\nmax_request_body = \"2MiB\"\nbody_idle_timeout = \"5s\"\n"
    );
    let c = Config::load(&write(&d, "s.toml", &text)).unwrap();
    assert_eq!(
        (c.limits.max_in_flight, c.limits.max_request_body),
        (3, Some(2 << 20))
    );
    assert_eq!(c.limits.body_idle_timeout, Duration::from_secs(5));
    let e = load_err(&format!(
        "{MINIMAL}\n[limits]\nmax_request_body = \"2 parsecs\"\n"
    ));
    assert_eq!(e.key, "limits.max_request_body");
    let e = load_err(&format!("{MINIMAL}\n[limits]\nmax_in_flight = 0\n"));
    assert_eq!(e.key, "limits.max_in_flight");
}

#[test]
fn websocket_routes_and_limits() {
    let d = tmp();
    let c = Config::load(&write(&d, "s.toml", MINIMAL)).unwrap();
    assert_eq!(c.limits.websocket_idle_timeout, Duration::from_secs(600));
    assert_eq!(c.limits.websocket_max_duration, None);
    assert_eq!(c.limits.max_websockets, 256);
    assert!(c.apis[0].catalogue.iter().all(|r| !r.websocket));
    let text = MINIMAL.replace(
        "\"a:read\" = [\"GET /v1/things/{id}\"]",
        "\"a:read\" = [\"GET /v1/things/{id}\", { route = \"GET /v1/things/{id}/live\", websocket = true }, { route = \"GET /v1/x\" }]",
    ) + "\n[limits]\nwebsocket_idle_timeout = \"30s\"\nwebsocket_max_duration = \"1h\"\nmax_websockets = 8\n";
    let c = Config::load(&write(&d, "s.toml", &text)).unwrap();
    let ws: Vec<(&str, bool)> = c.apis[0]
        .catalogue
        .iter()
        .map(|r| (&*r.text, r.websocket))
        .collect();
    assert_eq!(
        ws,
        [
            ("GET /v1/things/{id}", false),
            ("GET /v1/things/{id}/live", true),
            ("GET /v1/x", false),
            ("POST /v1/things", false)
        ]
    );
    assert_eq!(c.limits.websocket_idle_timeout, Duration::from_secs(30));
    assert_eq!(
        c.limits.websocket_max_duration,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(c.limits.max_websockets, 8);
    // A handshake is a GET; a route table has no other keys.
    let e = load_err(&MINIMAL.replace(
        "\"POST /v1/things\"",
        "{ route = \"POST /v1/things\", websocket = true }",
    ));
    assert_eq!(e.key, "permissions.a:write");
    assert!(e.message.contains("a WebSocket handshake is a GET"), "{e}");
    let e = load_err(&MINIMAL.replace(
        "\"POST /v1/things\"",
        "{ route = \"POST /v1/things\", websockets = true }",
    ));
    assert!(e.to_string().contains("unknown field `websockets`"), "{e}");
    assert_eq!(e.key, "permissions.a:write[0].websockets");
    let e = load_err(&format!(
        "{MINIMAL}\n[limits]\nwebsocket_idle_timeout = \"0s\"\n"
    ));
    assert_eq!(e.key, "limits.websocket_idle_timeout");
    let e = load_err(&format!("{MINIMAL}\n[limits]\nmax_websockets = -1\n"));
    assert_eq!(e.key, "limits.max_websockets");
}

const TWO_APIS: &str = r#"
[listener.tls]
cert_file = "c.pem"
key_file = "k.pem"

[api.banata]
url = "https://api.boxes.banata.dev"
path_prefix = "/"
credential = { file = "banata-key" }
[api.banata.permissions]
"read" = ["GET /v1/sandboxes"]

[api.openai]
url = "https://api.openai.com"
path_prefix = "/openai"
[api.openai.permissions]
"models:read" = ["GET /v1/models"]

[[caller]]
name = "ci"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
allow = ["banata/read", "openai/models:read"]
credentials = { openai = { file = "ci-openai-key", header = "x-openai-key" } }
"#;

#[test]
fn gateway_callers_bring_keys_per_api() {
    let d = tmp();
    let c = Config::load(&write(&d, "s.toml", TWO_APIS)).unwrap();
    assert!(c.named_apis);
    let names: Vec<&str> = c.apis.iter().map(|a| &*a.name).collect();
    assert_eq!(names, ["banata", "openai"]);
    let ci = &c.principals[0];
    assert_eq!(ci.grants.len(), 2);
    // banata: the API's own key; openai: the caller's own, named caller/api.
    let slots: Vec<&str> = ci
        .credentials
        .iter()
        .map(|s| s.map_or("none", |s| &*c.credentials[s].name))
        .collect();
    assert_eq!(slots, ["banata", "ci/openai"]);
    let own = &c.credentials[ci.credentials[1].unwrap()];
    assert_eq!(own.api, 1);
    assert_eq!(
        own.config.scheme,
        crate::credential::Scheme::Header {
            header: http::HeaderName::from_static("x-openai-key"),
            prefix: "Bearer ".into()
        }
    );
    // A granted API with no key for the caller is refused, naming the API.
    let text = TWO_APIS.replace(
        "credentials = { openai = { file = \"ci-openai-key\", header = \"x-openai-key\" } }",
        "",
    );
    let e = Config::load(&write(&d, "s2.toml", &text)).unwrap_err();
    assert!(
        e.message.contains("no key for this caller on api.openai"),
        "{e}"
    );
    // The single-API `credential` is refused with named APIs.
    let text = TWO_APIS
        .replace("credentials = { openai = ", "credential = ")
        .replace(" } }\n", " }\n");
    let e = Config::load(&write(&d, "s3.toml", &text)).unwrap_err();
    assert!(e.message.contains("per API"), "{e}");
}

#[test]
fn shared_limits_defaults_and_refusals() {
    let d = tmp();
    let text = format!(
        "{MINIMAL}\n[limits.shared]\nredis_url = \"redis://redis.sidekey.svc:6379/0\"\npassword_file = \"pw\"\n"
    );
    let c = Config::load(&write(&d, "s.toml", &text)).unwrap();
    let s = c.limits.shared.as_ref().unwrap();
    assert_eq!(s.server, "redis.sidekey.svc:6379");
    assert!(!s.tls);
    assert_eq!(s.timeout, Duration::from_millis(20));
    assert_eq!(s.on_error, OnError::Local);
    assert_eq!(s.key_prefix, "sidekey:");
    assert_eq!(s.password_file.as_deref(), Some(d.join("pw").as_path()));
    assert!(c.watched_files().contains(&d.join("pw")));

    let shared = |body: &str| load_err(&format!("{MINIMAL}\n[limits.shared]\n{body}\n"));
    let e = shared("timeout = \"5ms\"");
    assert_eq!(e.key, "limits.shared.redis_url");
    let e = shared("redis_url = \"redis://:hunter2@r:6379\"");
    assert!(e.message.contains("password_file"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let e = shared("redis_url = \"rediss://r:6379/#insecure\"");
    assert!(e.message.contains("ca_file"), "{e}");
    let e = shared("redis_url = \"http://r:6379\"");
    assert!(e.message.contains("redis://"), "{e}");
    let e = shared("redis_url = \"redis://r\"\nca_file = \"ca.pem\"");
    assert_eq!(e.key, "limits.shared.ca_file");
    let e = shared("redis_url = \"rediss://r\"\nca_file = \"missing.pem\"");
    assert!(e.message.contains("cannot read"), "{e}");
    let e = shared("redis_url = \"redis://r\"\ntimeout = \"0s\"");
    assert_eq!(e.key, "limits.shared.timeout");
    let e = shared("redis_url = \"redis://r\"\non_error = \"allow\"");
    assert!(e.message.contains("local, deny"), "{e}");
    let e = shared("redis_url = \"redis://r\"\nkey_prefix = \"a b\"");
    assert_eq!(e.key, "limits.shared.key_prefix");
    let e = shared("redis_url = \"redis://r\"\nredis_urls = 1");
    assert!(e.to_string().contains("unknown field"), "{e}");
}

/// `[credential]` tables of every scheme: the good shapes load, and each mistake is refused
/// naming the key (and, where the key was written, its line).
#[test]
fn credential_schemes_load_and_refuse_by_key() {
    let with = |table: &str| MINIMAL.replace("[credential]\nfile = \"key\"", table);
    let good = [
        (
            "[credential]\nscheme = \"basic\"\nusername = \"AC0123\"\npassword_file = \"pw\"",
            "basic",
        ),
        (
            "[credential]\nscheme = \"basic\"\nusername_env = \"U\"\npassword_env = \"P\"",
            "basic",
        ),
        (
            "[credential]\nscheme = \"query\"\nparam = \"key\"\nfile = \"k\"",
            "query",
        ),
        (
            "[credential]\nscheme = \"path\"\ntemplate = [\"/bot{key}\", \"/file/bot{key}\"]\nfile = \"k\"",
            "path",
        ),
        (
            "[credential]\nscheme = \"headers\"\nheaders = { \"dd-api-key\" = { file = \"a\" }, \"dd-application-key\" = { env = \"B\" } }",
            "headers",
        ),
        (
            "[credential]\nscheme = \"header\"\nfile = \"k\"\nheader = \"x-api-key\"\nprefix = \"\"",
            "header",
        ),
        (
            "[credential]\nscheme = \"aws_sigv4\"\nregion = \"eu-west-1\"\nservice = \"s3\"\naccess_key_id_file = \"a\"\nsecret_access_key_env = \"S\"\nsession_token_file = \"t\"\nmax_signed_body = \"1MiB\"",
            "aws_sigv4",
        ),
    ];
    for (table, scheme) in good {
        let d = tmp();
        let c = Config::load(&write(&d, "s.toml", &with(table))).unwrap();
        assert_eq!(c.credentials[0].config.scheme.name(), scheme, "{table}");
    }
    let bad = [
        (
            "scheme = \"digest\"\nfile = \"k\"",
            "credential.scheme",
            "unknown scheme",
        ),
        (
            "scheme = \"basic\"\nusername = \"a:b\"\npassword_file = \"p\"",
            "credential.username",
            "`:`",
        ),
        (
            "scheme = \"basic\"\npassword_file = \"p\"",
            "credential",
            "username",
        ),
        (
            "scheme = \"basic\"\nusername = \"u\"\npassword_file = \"p\"\npassword_env = \"P\"",
            "credential",
            "exactly one",
        ),
        (
            "scheme = \"basic\"\nusername = \"u\"\nusername_file = \"f\"\npassword_file = \"p\"",
            "credential",
            "exactly one",
        ),
        (
            "scheme = \"basic\"\nusername = \"u\"\nfile = \"p\"",
            "credential.file",
            "not a part",
        ),
        (
            "scheme = \"query\"\nparam = \"\"\nfile = \"k\"",
            "credential.param",
            "non-empty",
        ),
        (
            "scheme = \"query\"\nfile = \"k\"",
            "credential.param",
            "non-empty",
        ),
        (
            "scheme = \"path\"\ntemplate = \"/bot\"\nfile = \"k\"",
            "credential.template",
            "exactly one",
        ),
        (
            "scheme = \"path\"\ntemplate = \"/{key}/{key}\"\nfile = \"k\"",
            "credential.template",
            "exactly one",
        ),
        (
            "scheme = \"path\"\ntemplate = \"bot{key}\"\nfile = \"k\"",
            "credential.template",
            "start with `/`",
        ),
        (
            "scheme = \"path\"\nfile = \"k\"",
            "credential.template",
            "template",
        ),
        (
            "scheme = \"headers\"\nheaders = { \"connection\" = { file = \"a\" } }",
            "credential.headers.connection",
            "hop-by-hop",
        ),
        (
            "scheme = \"headers\"\nheaders = { \"host\" = { file = \"a\" } }",
            "credential.headers.host",
            "reserved",
        ),
        (
            "scheme = \"headers\"\nheaders = {}",
            "credential.headers",
            "list the headers",
        ),
        (
            "scheme = \"headers\"\nheaders = { \"a\" = { file = \"a\", env = \"A\" } }",
            "credential.headers.a",
            "exactly one",
        ),
        (
            "scheme = \"header\"\nfile = \"k\"\nparam = \"key\"",
            "credential.param",
            "not a part",
        ),
        (
            "scheme = \"aws_sigv4\"\nservice = \"s3\"\naccess_key_id_file = \"a\"\nsecret_access_key_file = \"s\"",
            "credential.region",
            "required",
        ),
        (
            "scheme = \"aws_sigv4\"\nregion = \"us-east-1\"\naccess_key_id_file = \"a\"\nsecret_access_key_file = \"s\"",
            "credential.service",
            "required",
        ),
        (
            "scheme = \"aws_sigv4\"\nregion = \"us-east-1\"\nservice = \"dynamodb\"\npayload = \"unsigned\"\naccess_key_id_file = \"a\"\nsecret_access_key_file = \"s\"",
            "credential.payload",
            "S3's alone",
        ),
        (
            "scheme = \"aws_sigv4\"\nregion = \"us-east-1\"\nservice = \"s3\"\naccess_key_id_file = \"a\"\nsecret_access_key_file = \"s\"\nrole_arn = \"arn:aws:iam::1:role/r\"\nweb_identity_token_file = \"t\"",
            "credential",
            "exclude each other",
        ),
        (
            "scheme = \"aws_sigv4\"\nregion = \"us-east-1\"\nservice = \"s3\"\nrole_arn = \"arn:aws:iam::1:role/r\"\nweb_identity_token_file = \"no-such-token\"",
            "credential.web_identity_token_file",
            "cannot read",
        ),
        (
            "scheme = \"aws_sigv4\"\nregion = \"us-east-1\"\nservice = \"s3\"\naccess_key_id_file = \"a\"",
            "credential",
            "secret_access_key_",
        ),
        (
            "scheme = \"aws_sigv4\"\nregion = \"us-east-1\"\nservice = \"s3\"\naccess_key_id_file = \"a\"\nsecret_access_key_file = \"s\"\nmax_signed_body = \"lots\"",
            "credential.max_signed_body",
            "size",
        ),
    ];
    for (body, key, says) in bad {
        let e = load_err(&with(&format!("[credential]\n{body}")));
        assert_eq!(e.key, key, "{body}: {e}");
        assert!(e.message.contains(says), "{body}: {e}");
        assert!(e.to_string().contains("s.toml"), "{e}");
    }
    // Where the offending key was written, its line is named.
    let e = load_err(&with(
        "[credential]\nscheme = \"query\"\nparam = \"\"\nfile = \"k\"",
    ));
    assert_eq!(e.line, Some(7), "{e}");
}

/// `verify` is a bodiless GET or HEAD on a route of the API's own catalogue.
#[test]
fn verify_is_a_catalogue_get() {
    let with = |v: &str| {
        MINIMAL.replace(
            "url = \"https://api.example.com\"",
            &format!("url = \"https://api.example.com\"\nverify = \"{v}\""),
        )
    };
    let d = tmp();
    let c = Config::load(&write(&d, "s.toml", &with("GET /v1/things/t1"))).unwrap();
    let v = c.apis[0].verify.clone().unwrap();
    assert_eq!(
        (v.method, v.target.as_str()),
        (http::Method::GET, "/v1/things/t1")
    );
    for (bad, says) in [
        ("POST /v1/things", "GET or HEAD"),
        ("GET /v1/other", "not a route"),
        ("GET https://evil.example/v1/things/t1", "not a URL"),
        ("GET", "verify = "),
    ] {
        let e = load_err(&with(bad));
        assert_eq!(e.key, "upstream.verify", "{bad}: {e}");
        assert!(e.message.contains(says), "{bad}: {e}");
        assert_eq!(e.line, Some(4), "{e}");
    }
}

/// `hosts`: one leading wildcard label on a name of two labels or more.
#[test]
fn wildcard_hosts_take_one_leading_label() {
    let with = |hosts: &str| {
        format!(
            "[api.s3]\nurl = \"https://s3.eu-west-1.amazonaws.com\"\npath_prefix = \"/s3\"\nhosts = {hosts}\ncredential = {{ file = \"k\" }}\npermissions = {{ \"r\" = [\"GET /{{b}}\"] }}\n[service]\nname = \"s\"\nallow = [\"s3/r\"]\n"
        )
    };
    let d = tmp();
    let c = Config::load(&write(
        &d,
        "s.toml",
        &with("[\"*.S3.eu-west-1.amazonaws.com.\"]"),
    ))
    .unwrap();
    assert_eq!(c.apis[0].wildcard_hosts, ["s3.eu-west-1.amazonaws.com"]);
    for bad in [
        "[\"s3.amazonaws.com\"]",
        "[\"*.com\"]",
        "[\"*.*.amazonaws.com\"]",
        "[\"a.*.amazonaws.com\"]",
        "[\"*.\"]",
    ] {
        let e = load_err(&with(bad));
        assert_eq!(e.key, "api.s3.hosts", "{bad}: {e}");
        assert!(
            e.message.contains("one leading wildcard label"),
            "{bad}: {e}"
        );
    }
}
