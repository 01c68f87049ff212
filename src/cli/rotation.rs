//! `sidekey rotation status`: the "verify" step of a rotation, before the old key is revoked.
//! Asks each admin endpoint (`/credential`), or a Prometheus server (`sidekey_credential_info`),
//! which fingerprint every instance serves, prints a table, and exits 0 only when every
//! instance serves the expected key (1 otherwise, 2 when an instance cannot be asked).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One row: instance, api/credential, fingerprint, loaded_at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub instance: String,
    pub credential: String,
    pub fingerprint: String,
    pub loaded_at: String,
}

/// Where to ask.
pub enum Source<'a> {
    Admin(&'a [String]),
    Prometheus { url: &'a str, selector: &'a str },
}

async fn fetch(url: &str) -> Result<serde_json::Value, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let ask = async {
        let resp = client.get(uri).await.map_err(|e| format!("{url}: {e}"))?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON ({e})"))
    };
    tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .map_err(|_| format!("{url}: no answer within 10 s"))?
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

/// The rows from every source; `Err` names the instances that could not be asked.
pub async fn collect(source: Source<'_>) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    match source {
        Source::Admin(urls) => {
            for base in urls {
                let url = format!("{}/credential", base.trim_end_matches('/'));
                match fetch(&url).await {
                    Ok(body) => {
                        let list = body["credentials"].as_array().cloned().unwrap_or_default();
                        for c in list {
                            let name = format!("{}/{}", text(&c["api"]), text(&c["name"]));
                            // A credential of several parts: a row per secret part too
                            // (`--credential datadog/dd-application-key`).
                            let parts = c["parts"].as_array().cloned().unwrap_or_default();
                            for p in parts.iter().filter(|_| parts.len() > 1) {
                                if p["fingerprint"].is_string() {
                                    rows.push(Row {
                                        instance: base.clone(),
                                        credential: format!("{name}/{}", text(&p["name"])),
                                        fingerprint: text(&p["fingerprint"]),
                                        loaded_at: text(&c["loaded_at"]),
                                    });
                                }
                            }
                            rows.push(Row {
                                instance: base.clone(),
                                credential: name,
                                fingerprint: text(&c["fingerprint"]),
                                loaded_at: text(&c["loaded_at"]),
                            });
                        }
                    }
                    Err(e) => failed.push(e),
                }
            }
        }
        Source::Prometheus { url, selector } => {
            let query = |q: &str| {
                let encoded: String = q
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!("{}/api/v1/query?query={encoded}", url.trim_end_matches('/'))
            };
            let info = fetch(&query(&format!("sidekey_credential_info{selector}"))).await;
            let loaded = fetch(&query(&format!(
                "sidekey_credential_last_reload_timestamp_seconds{selector}"
            )))
            .await
            .ok();
            match info {
                Ok(body) if body["status"] == "success" => {
                    for r in body["data"]["result"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                    {
                        let m = &r["metric"];
                        let instance = text(&m["instance"]);
                        let at = loaded
                            .as_ref()
                            .and_then(|l| l["data"]["result"].as_array())
                            .and_then(|a| {
                                a.iter().find(|x| x["metric"]["instance"] == m["instance"])
                            })
                            .and_then(|x| x["value"][1].as_str())
                            .and_then(|s| s.parse::<f64>().ok())
                            .map(|t| {
                                humantime::format_rfc3339_seconds(
                                    std::time::UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0)),
                                )
                                .to_string()
                            })
                            .unwrap_or_else(|| "-".into());
                        rows.push(Row {
                            instance,
                            credential: format!("{}/{}", text(&m["api"]), text(&m["credential"])),
                            fingerprint: text(&m["fingerprint"]),
                            loaded_at: at,
                        });
                    }
                }
                Ok(body) => failed.push(format!("{url}: {}", text(&body["error"]))),
                Err(e) => failed.push(e),
            }
        }
    }
    rows.sort_by(|a, b| (&a.instance, &a.credential).cmp(&(&b.instance, &b.credential)));
    (rows, failed)
}

/// 0 when every instance serves `expect` (for `credential`, or in any row), 1 when one does
/// not, 2 when an instance could not be asked (or none answered).
pub fn verdict(rows: &[Row], failed: &[String], expect: &str, credential: Option<&str>) -> i32 {
    if !failed.is_empty() || rows.is_empty() {
        return 2;
    }
    let mut instances: Vec<&str> = rows.iter().map(|r| r.instance.as_str()).collect();
    instances.dedup();
    let serves = |instance: &str| {
        let mine = rows.iter().filter(|r| r.instance == instance);
        match credential {
            Some(c) => {
                let mut of_c = mine
                    .filter(|r| r.credential == c || r.credential.ends_with(&format!("/{c}")))
                    .peekable();
                of_c.peek().is_some() && of_c.all(|r| r.fingerprint == expect)
            }
            None => mine.into_iter().any(|r| r.fingerprint == expect),
        }
    };
    if instances.iter().all(|i| serves(i)) {
        0
    } else {
        1
    }
}

pub async fn status(
    source: Source<'_>,
    expect: &str,
    credential: Option<&str>,
    out: &mut dyn Write,
) -> i32 {
    let (rows, failed) = collect(source).await;
    let _ = writeln!(
        out,
        "{:<40} {:<28} {:<14} loaded_at",
        "instance", "api/credential", "fingerprint"
    );
    for r in &rows {
        let mark = if r.fingerprint == expect {
            ""
        } else {
            "  <- not the expected key"
        };
        let _ = writeln!(
            out,
            "{:<40} {:<28} {:<14} {}{mark}",
            r.instance, r.credential, r.fingerprint, r.loaded_at
        );
    }
    for f in &failed {
        let _ = writeln!(out, "cannot ask: {f}");
    }
    let code = verdict(&rows, &failed, expect, credential);
    let _ = writeln!(
        out,
        "{}",
        match code {
            0 => format!("every instance serves {expect}: the old key can be revoked"),
            1 => format!("not every instance serves {expect}: do not revoke the old key yet"),
            _ => "some instances could not be asked: do not revoke the old key yet".to_owned(),
        }
    );
    code
}
