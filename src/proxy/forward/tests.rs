use super::*;

fn config(extra: &str) -> Config {
    let dir = std::env::temp_dir().join(format!(
        "sidekey-forward-{}-{}",
        std::process::id(),
        extra.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        r#"
[forward_proxy]
{extra}

[api.openai]
url = "https://api.openai.test"
path_prefix = "/openai"
credential = {{ file = "k" }}
permissions = {{ "models" = ["GET /v1/models"] }}

[api.banata]
url = "https://api.banata.test:8443"
hosts = ["*.buckets.banata.test"]
path_prefix = "/banata"
credential = {{ file = "k" }}
permissions = {{ "read" = ["GET /v1/sandboxes"] }}

[service]
name = "svc"
allow = ["openai/models", "banata/read"]
"#
    );
    let path = dir.join("s.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

#[test]
fn the_connect_authority_is_the_routing_key() {
    let c = config("unknown_hosts = \"tunnel\"\ntunnel = [\"pypi.test\", \"files.test:8443\"]");
    let at = |name: &str| c.apis.iter().position(|a| &*a.name == name).unwrap();
    let (openai, banata) = (at("openai"), at("banata"));
    let cases = [
        ("api.openai.test", 443, Target::Intercept(openai)),
        ("API.OpenAI.test.", 443, Target::Intercept(openai)),
        ("api.banata.test", 8443, Target::Intercept(banata)),
        // A configured host on another port is never tunnelled or intercepted.
        ("api.openai.test", 8443, Target::Deny("port_not_allowed")),
        ("api.banata.test", 443, Target::Deny("port_not_allowed")),
        ("pypi.test", 443, Target::Tunnel),
        ("pypi.test", 80, Target::Deny("host_not_configured")),
        ("files.test", 8443, Target::Tunnel),
        ("evil.test", 443, Target::Deny("host_not_configured")),
        ("127.0.0.1", 443, Target::Deny("ip_literal")),
        ("[::1]", 443, Target::Deny("ip_literal")),
        ("a_b.test", 443, Target::Deny("invalid_host")),
        // `hosts`: one label in front of the wildcard's suffix, on the API's port.
        (
            "bucket-1.buckets.banata.test",
            8443,
            Target::Intercept(banata),
        ),
        (
            "Bucket-1.Buckets.banata.test.",
            8443,
            Target::Intercept(banata),
        ),
        (
            "bucket-1.buckets.banata.test",
            443,
            Target::Deny("port_not_allowed"),
        ),
        (
            "a.b.buckets.banata.test",
            8443,
            Target::Deny("host_not_configured"),
        ),
        (
            "buckets.banata.test",
            8443,
            Target::Deny("host_not_configured"),
        ),
        (
            "xbuckets.banata.test",
            8443,
            Target::Deny("host_not_configured"),
        ),
    ];
    for (host, port, want) in cases {
        assert_eq!(route(&c, host, port), want, "{host}:{port}");
    }
    // `deny`: the tunnel list does not exist.
    let c = config("");
    assert_eq!(
        route(&c, "pypi.test", 443),
        Target::Deny("host_not_configured")
    );
}

#[test]
fn forward_proxy_config_rules() {
    let dir = std::env::temp_dir().join(format!("sidekey-forward-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = |fp: &str| {
        format!(
            "[forward_proxy]\n{fp}\n[upstream]\nurl = \"https://api.x.test\"\n[credential]\nfile = \"k\"\n[service]\nname = \"s\"\nallow = [\"r\"]\n[permissions]\nr = [\"GET /x\"]\n"
        )
    };
    let load = |text: String| {
        let p = dir.join("c.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(&p)
    };
    assert!(load(base("")).is_ok());
    let e = load(base("address = \"0.0.0.0:3128\"")).unwrap_err();
    assert_eq!(e.key, "forward_proxy.address");
    let e = load(base("tunnel = [\"pypi.org\"]")).unwrap_err();
    assert_eq!(e.key, "forward_proxy.tunnel");
    let e = load(base(
        "unknown_hosts = \"tunnel\"\ntunnel = [\"api.x.test\"]",
    ))
    .unwrap_err();
    assert_eq!(e.key, "forward_proxy.tunnel[0]");
    let e = load(base("unknown_hosts = \"tunnel\"\ntunnel = [\"10.0.0.1\"]")).unwrap_err();
    assert_eq!(e.key, "forward_proxy.tunnel[0]");
    let e = load(base("ca_cert_file = \"ca.crt\"")).unwrap_err();
    assert_eq!(e.key, "forward_proxy.ca_key_file");
    let e = load(base("unknown_hosts = \"open\"")).unwrap_err();
    assert_eq!(e.key, "forward_proxy.unknown_hosts");
}
