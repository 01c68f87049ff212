//! Micro-benchmarks of the per-request work: path canonicalisation, `decide` over 10, 100
//! and 1000 routes, header strip + inject, and the snapshot load. End-to-end throughput and
//! latency come from `benches/peers.sh` (the peer harness), not from here.

// Benchmark set-up is test code: a broken fixture should stop the run loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use sidekey::credential::{Credential, Source};
use sidekey::policy::canon::canonicalize;
use sidekey::policy::{Pattern, Policy, RouteSpec};

fn catalogue(n: usize) -> Policy {
    let specs = (0..n)
        .map(|i| {
            let text = match i % 4 {
                0 => format!("GET /v1/res{i}/{{id}}"),
                1 => format!("POST /v1/res{i}"),
                2 => format!("GET /v1/res{i}/{{id}}/items/{{*rest}}"),
                _ => format!("DELETE /v1/res{i}/{{id}}"),
            };
            RouteSpec {
                permission: format!("perm{}", i % 6).into(),
                pattern: Pattern::parse(&text).expect("pattern"),
                text: text.into(),
                websocket: false,
            }
        })
        .collect();
    Policy::new(specs, |p| p != "perm5")
}

fn bench_canonicalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("canonicalize");
    g.bench_function("clean", |b| {
        b.iter(|| canonicalize(black_box("/v1/sandboxes/sb_123/files/a.txt")))
    });
    g.bench_function("escaped", |b| {
        b.iter(|| canonicalize(black_box("/v1/%73andboxes/sb_123/caf%c3%a9%20x")))
    });
    g.bench_function("rejected", |b| {
        b.iter(|| canonicalize(black_box("/v1/sandboxes/sb_1/%2e%2e/x")))
    });
    g.finish();
}

fn bench_decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    for n in [10, 100, 1000] {
        let policy = catalogue(n);
        // The last routes of the catalogue: a linear matcher would scan everything.
        let last = n - 2;
        let uri: Uri = format!("/v1/res{last}/abc/items/x/y").parse().expect("uri");
        let miss: Uri = "/v1/nothing/here".parse().expect("uri");
        g.bench_function(format!("{n}_routes_hit"), |b| {
            b.iter(|| black_box(policy.evaluate(&Method::GET, black_box(&uri))).is_allowed())
        });
        g.bench_function(format!("{n}_routes_miss"), |b| {
            b.iter(|| black_box(policy.evaluate(&Method::GET, black_box(&miss))).is_allowed())
        });
    }
    g.finish();
}

/// A shipped catalogue file as a policy, everything granted.
fn shipped(file: &str) -> Policy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(path).expect("catalogue");
    let value: toml::Value = toml::from_str(&text).expect("toml");
    let mut specs = Vec::new();
    for (perm, routes) in value["permissions"].as_table().expect("table") {
        for r in routes.as_array().expect("routes") {
            let text = r
                .as_str()
                .or_else(|| r.get("route").and_then(|v| v.as_str()))
                .expect("route");
            specs.push(RouteSpec {
                permission: perm.as_str().into(),
                pattern: Pattern::parse(text).expect("pattern"),
                text: text.into(),
                websocket: false,
            });
        }
    }
    Policy::new(specs, |_| true)
}

/// The generated GitHub catalogue (~1,500 routes) against the hand-written Banata one
/// (~30): the trie makes route count nearly free.
fn bench_decide_shipped(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide_shipped");
    let banata = shipped("config/banata-permissions.toml");
    let github = shipped("config/catalogues/github.toml");
    let b_uri: Uri = "/v1/sandboxes/sb_123/files/a/b.txt".parse().expect("uri");
    let g_uri: Uri = "/repos/octo/hello/pulls/42/comments".parse().expect("uri");
    g.bench_function("banata_hit", |b| {
        b.iter(|| black_box(banata.evaluate(&Method::GET, black_box(&b_uri))).is_allowed())
    });
    g.bench_function("github_hit", |b| {
        b.iter(|| black_box(github.evaluate(&Method::GET, black_box(&g_uri))).is_allowed())
    });
    g.finish();
}

/// Several APIs: route by prefix, then match the rest (5 APIs x 200 routes).
fn bench_decide_apis(c: &mut Criterion) {
    use sidekey::policy::apis::{Router, decide};
    let prefixes = ["/", "/openai", "/anthropic", "/github", "/stripe/v1"];
    let router = Router::new(prefixes.iter().map(|p| Some(*p)));
    let policies: Vec<std::sync::Arc<Policy>> = (0..prefixes.len())
        .map(|_| std::sync::Arc::new(catalogue(200)))
        .collect();
    let mut g = c.benchmark_group("decide_apis");
    for (name, target) in [
        ("5x200_root_hit", "/v1/res198/abc/items/x/y"),
        ("5x200_prefixed_hit", "/github/v1/res198/abc/items/x/y"),
        ("5x200_miss", "/nowhere/v1/x"),
    ] {
        let uri: Uri = target.parse().expect("uri");
        g.bench_function(name, |b| {
            b.iter(|| {
                let d = decide(&router, &policies, None, &Method::GET, black_box(&uri));
                black_box(d.verdict.is_allowed())
            })
        });
    }
    g.finish();
}

/// Strip + `apply` per credential scheme, on the same request: the `header` row is today's
/// injection, the others must stay near it.
fn bench_inject(c: &mut Criterion) {
    use sidekey::credential::{Part, Scheme, Spec};
    use sidekey::policy::template::PathTemplate;
    let key: &[u8] = b"sk_live_0123456789abcdef";
    let spec = |scheme, parts: &[&str]| Spec {
        scheme,
        parts: parts
            .iter()
            .map(|n| Part {
                name: (*n).into(),
                source: Source::Env("UNUSED".into()),
            })
            .collect(),
    };
    let schemes = [
        (
            "header",
            spec(
                Scheme::Header {
                    header: http::header::AUTHORIZATION,
                    prefix: "Bearer ".into(),
                },
                &["key"],
            ),
        ),
        ("basic", spec(Scheme::Basic, &["username", "password"])),
        (
            "query",
            spec(
                Scheme::Query {
                    param: "key".into(),
                },
                &["key"],
            ),
        ),
        (
            "path",
            spec(
                Scheme::Path {
                    templates: vec![PathTemplate::parse("/bot{key}").expect("template")].into(),
                },
                &["key"],
            ),
        ),
        (
            "headers",
            spec(
                Scheme::Headers {
                    names: vec![
                        http::HeaderName::from_static("dd-api-key"),
                        http::HeaderName::from_static("dd-application-key"),
                    ],
                },
                &["dd-api-key", "dd-application-key"],
            ),
        ),
        (
            "aws_sigv4",
            spec(
                Scheme::AwsSigV4(std::sync::Arc::new(sidekey::credential::sigv4::Settings {
                    region: "eu-west-1".into(),
                    service: "s3".into(),
                    payload: sidekey::credential::sigv4::Payload::Unsigned,
                    max_signed_body: sidekey::credential::sigv4::DEFAULT_MAX_SIGNED_BODY,
                    role: None,
                })),
                &["access_key_id", "secret_access_key"],
            ),
        ),
    ];
    let mut base = HeaderMap::new();
    base.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    base.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    base.insert("accept", HeaderValue::from_static("*/*"));
    base.insert("authorization", HeaderValue::from_static("Bearer caller"));
    // A cached minted token: what the request path holds for the token schemes.
    let oauth = Spec {
        scheme: Scheme::Minted(std::sync::Arc::new(sidekey::credential::mint::Mint {
            kind: sidekey::credential::mint::Kind::OAuth2 {
                token_url: "https://idp.example/token".parse().expect("url"),
                client_auth: sidekey::credential::mint::ClientAuth::Basic,
                scope: None,
                params: Vec::new(),
            },
            endpoint: sidekey::credential::mint::Endpoint::default(),
            refresh_before: None,
        })),
        parts: spec(Scheme::Basic, &["client_id", "client_secret"]).parts,
    };
    let secrets = [
        zeroize::Zeroizing::new(b"cid".to_vec()),
        zeroize::Zeroizing::new(b"secret".to_vec()),
    ];
    let minted = Credential::minted(
        &oauth,
        &secrets,
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.minted-access-token",
        std::time::SystemTime::now(),
        std::time::Duration::from_secs(3600),
    )
    .expect("minted");
    let mut g = c.benchmark_group("inject");
    let all = schemes.into_iter().map(|(name, spec)| {
        let credential = Credential::from_values(&spec, &[key, key]).expect("credential");
        (name, credential)
    });
    for (name, credential) in all.chain(std::iter::once(("minted_token", minted))) {
        let label = if name == "header" {
            "strip_and_inject".to_owned()
        } else {
            format!("strip_and_apply_{name}")
        };
        let signs = credential.signer().is_some();
        let upstream_host = HeaderValue::from_static("s3.eu-west-1.amazonaws.com");
        g.bench_function(label, |b| {
            b.iter_batched_ref(
                || {
                    let mut parts = http::Request::get("/v1/sandboxes?limit=10")
                        .body(())
                        .expect("request")
                        .into_parts()
                        .0;
                    parts.headers = base.clone();
                    parts
                },
                |parts| {
                    sidekey::proxy::inject::strip(&mut parts.headers, credential.stripped());
                    if signs {
                        // The pipeline sets the upstream's Host before a signing scheme signs.
                        parts
                            .headers
                            .insert(http::header::HOST, upstream_host.clone());
                    }
                    credential.apply(parts, 0).expect("apply");
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// `scrub = "bodies"`: what a streamed JSON chunk costs (the search for every form of the
/// key, then the check of its tail), as bytes per second on one core; and the header scrub's
/// per-response check.
fn bench_scrub(c: &mut Criterion) {
    let spec = sidekey::credential::Spec::header(
        Source::Env("UNUSED".into()),
        http::header::AUTHORIZATION,
        "Bearer ",
    );
    let credential =
        Credential::from_values(&spec, &[b"sk_live_0123456789abcdef/+xyz"]).expect("credential");
    let needles = credential.needles().clone();
    // 16 KiB of a realistic JSON listing (no key in it: the common case).
    let mut json = String::from("[");
    while json.len() < 16 * 1024 {
        json.push_str(r#"{"id":"sb_01HZX3K9","status":"running","created_at":"2026-12-07T10:00:00Z","labels":{"team":"payments","env":"prod"},"usage":{"cpu_ms":123456,"mem_mb":512}},"#);
    }
    let chunk = json.into_bytes();
    let mut g = c.benchmark_group("scrub");
    g.throughput(criterion::Throughput::Bytes(chunk.len() as u64));
    g.bench_function("json_chunk_16k", |b| {
        b.iter(|| {
            let found = needles.found_in(black_box(&chunk));
            black_box(found || needles.held_tail(&chunk) > 0)
        })
    });
    g.finish();
    // One SSE event (a streamed completion's delta): the delay scanning adds to it.
    let event = br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" world"}}]}

"#;
    c.bench_function("scrub/sse_event", |b| {
        b.iter(|| {
            let e = black_box(&event[..]);
            black_box(needles.found_in(e) || needles.held_tail(e) > 0)
        })
    });
}

fn bench_snapshot(c: &mut Criterion) {
    // The real thing: a config from disk, composed and published as the proxy does.
    let dir = std::env::temp_dir().join(format!("sidekey-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("sidekey.toml");
    let text = "[upstream]\nurl = \"https://api.example.com\"\n[credential]\nenv = \"SIDEKEY_BENCH_KEY\"\n[service]\nname = \"b\"\nallow = [\"p\"]\n[permissions]\np = [\"GET /v1/x\"]\n";
    std::fs::write(&cfg, text).expect("write");
    let config = std::sync::Arc::new(sidekey::config::Config::load(&cfg).expect("config"));
    let snapshot =
        sidekey::control::reload::compose(config, std::sync::Arc::new([None]), None, 1, None)
            .expect("compose");
    let shared = sidekey::control::state::Shared::new(snapshot);
    c.bench_function("snapshot/load", |b| b.iter(|| black_box(shared.load())));
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(
    benches,
    bench_canonicalize,
    bench_decide,
    bench_decide_apis,
    bench_decide_shipped,
    bench_inject,
    bench_scrub,
    bench_snapshot
);
criterion_main!(benches);
