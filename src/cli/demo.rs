//! `sidekey demo`: the whole job on loopback with nothing to set up. Three mock APIs over
//! HTTPS (CA minted now): Banata at `/` (key in `Authorization: Bearer`), an LLM-style API at
//! `/llm` (key in `x-api-key`) and a Twilio-like messaging API at `/sms` (HTTP Basic: account
//! SID + auth token), a key file each in a fresh temp directory, and sidekey in front with a
//! sample policy, plus copy-paste `curl` lines. Runs until the shutdown future resolves.

use std::future::Future;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::mock::MockUpstream;
use crate::pki::Ca;
use crate::{App, AppError};

/// The bundled Banata permission catalogue.
pub const BANATA_CATALOGUE: &str = include_str!("../../config/banata-permissions.toml");

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo setup failed: {0}")]
    Setup(String),
    #[error(transparent)]
    App(#[from] AppError),
}

fn setup<E: std::fmt::Display>(e: E) -> DemoError {
    DemoError::Setup(e.to_string())
}

/// `preferred` if it is free right now, else an ephemeral port.
fn pick(preferred: u16) -> SocketAddr {
    let addr = SocketAddr::from(([127, 0, 0, 1], preferred));
    match TcpListener::bind(addr) {
        Ok(_) => addr,
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    std::fs::write(path, text).map_err(|e| DemoError::Setup(format!("{}: {e}", path.display())))
}

/// Writes the demo's files into `dir` and returns the config path.
pub fn write_files(
    dir: &Path,
    upstreams: (&str, &str, &str),
    ca_pem: &str,
    keys: (&str, &str, &str),
) -> Result<PathBuf, DemoError> {
    let (upstream_url, llm_url, sms_url) = upstreams;
    std::fs::create_dir_all(dir).map_err(setup)?;
    write(&dir.join("ca.pem"), ca_pem)?;
    write(&dir.join("api-key"), keys.0)?;
    write(&dir.join("llm-api-key"), keys.1)?;
    write(&dir.join("sms-auth-token"), keys.2)?;
    write(&dir.join("banata-permissions.toml"), BANATA_CATALOGUE)?;
    let config = format!(
        r#"# Written by `sidekey demo`.
[listener]
address = "{listen}"

[admin]
address = "{admin}"

[api.banata]
url = "{upstream_url}"
ca_file = "ca.pem"
path_prefix = "/"
permissions_file = "banata-permissions.toml"
credential = {{ file = "api-key" }}

[api.llm]
url = "{llm_url}"
ca_file = "ca.pem"
path_prefix = "/llm"
credential = {{ file = "llm-api-key", header = "x-api-key", prefix = "" }}
[api.llm.permissions]
"messages" = ["POST /v1/messages"]
"models:read" = ["GET /v1/models"]

[api.sms]
url = "{sms_url}"
ca_file = "ca.pem"
path_prefix = "/sms"
credential = {{ scheme = "basic", username = "AC_demo", password_file = "sms-auth-token" }}
[api.sms.permissions]
"messages:send" = ["POST /2010-04-01/Accounts/{{sid}}/Messages.json"]

[service]
name = "demo-app"
allow = ["banata/sandbox_sessions:create", "banata/sandbox_sessions:read", "llm/messages", "sms/messages:send"]
"#,
        listen = pick(8080),
        admin = pick(9901),
    );
    let path = dir.join("sidekey.toml");
    write(&path, &config)?;
    Ok(path)
}

/// Runs the demo until `shutdown` resolves; `out` receives the instructions.
pub async fn run(
    out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let ca = Ca::new("sidekey demo CA").map_err(setup)?;
    let mock = MockUpstream::start_banata(&ca)
        .await
        .map_err(setup)?
        .without_recording();
    let llm = MockUpstream::start_llm(&ca)
        .await
        .map_err(setup)?
        .without_recording();
    let sms = MockUpstream::start_basic(&ca)
        .await
        .map_err(setup)?
        .without_recording();
    let dir = std::env::temp_dir().join(format!("sidekey-demo-{}", std::process::id()));
    let key = format!(
        "sk_demo_{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let llm_key = format!("{key}_llm");
    let sms_token = format!("{key}_sms");
    let config_path = write_files(
        &dir,
        (&mock.url(), &llm.url(), &sms.url()),
        mock.ca_pem(),
        (&key, &llm_key, &sms_token),
    )?;
    let config = Config::load(&config_path).map_err(AppError::from)?;
    let app = App::bind(config).await?;
    let (proxy, admin) = (app.proxy_addr(), app.admin_addr());
    let key_file = dir.join("api-key");
    let _ = writeln!(
        out,
        r#"
sidekey demo
  mock Banata API   {upstream} (HTTPS, CA minted just now; key in Authorization: Bearer)
  mock LLM API      {llm_url} (HTTPS; key in x-api-key)
  mock SMS API      {sms_url} (HTTPS; HTTP Basic: account SID + auth token)
  sidekey proxy     http://{proxy}   service "demo-app": banata/sandbox_sessions:create, banata/sandbox_sessions:read, llm/messages
  admin             http://{admin}   /healthz /readyz /metrics /credential
  files             {dir}

Try it (copy-paste into another terminal):

  # allowed: sandbox_sessions:create; the mock answers with the fingerprint of the key it received
  curl -s -X POST http://{proxy}/v1/sandboxes

  # allowed: sandbox_sessions:read; any caller Authorization is replaced by the real key
  curl -s -H 'Authorization: Bearer not-the-key' http://{proxy}/v1/sandboxes/sb_123

  # denied: sandbox_sessions:delete is not granted -> 403 permission_denied, nothing sent upstream
  curl -s -X DELETE http://{proxy}/v1/sandboxes/sb_123

  # the second API, under /llm: its own key, in its own header (x-api-key), to its own origin
  curl -s -X POST -H 'x-api-key: not-the-key' http://{proxy}/llm/v1/messages

  # denied: llm/models:read is not granted -> 403 permission_denied
  curl -s http://{proxy}/llm/v1/models

  # a third API under /sms that takes HTTP Basic: sidekey sends AC_demo:<auth token>
  curl -s -X POST -u AC_demo:not-the-token http://{proxy}/sms/2010-04-01/Accounts/AC_demo/Messages.json

  # rejected: an encoded slash is ambiguous -> 400 invalid_request
  curl -s --path-as-is 'http://{proxy}/v1/sandboxes/sb_1%2F..%2Fadmin'

  # rotate the key by rewriting the file: no restart, the fingerprint changes
  curl -s http://{admin}/credential
  printf 'sk_demo_rotated_%s' "$(date +%s)" > {key_file}
  sleep 1; curl -s http://{admin}/credential; curl -s -X POST http://{proxy}/v1/sandboxes

Ctrl-C stops the demo.
"#,
        upstream = mock.url(),
        llm_url = llm.url(),
        sms_url = sms.url(),
        dir = dir.display(),
        key_file = key_file.display(),
    );
    let _ = out.flush();
    app.run(shutdown).await;
    drop(mock);
    drop(llm);
    drop(sms);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
