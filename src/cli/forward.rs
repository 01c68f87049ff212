//! The forward proxy's commands: `sidekey ca init` (the interception CA), `sidekey env` (the
//! variables a program needs to use the proxy), and `sidekey exec` (run one program behind an
//! ephemeral forward proxy whose CA lives in memory only).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::EXIT_BAD_CONFIG;
use crate::config::{Config, ForwardProxy, UnknownHosts, api_key};
use crate::control::ca::{self, InterceptCa};

/// `sh` (also bash, zsh) or `fish` syntax for `sidekey env`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Sh,
    Fish,
}

/// The hosts of every configured API (the CA's name constraints), with each `hosts`
/// wildcard's suffix (a name constraint covers every name under it).
fn hosts(config: &Config) -> Vec<String> {
    let mut hosts: Vec<String> = config
        .apis
        .iter()
        .filter_map(api_key)
        .map(|(h, _)| h)
        .chain(
            config
                .apis
                .iter()
                .flat_map(|a| a.wildcard_hosts.iter().cloned()),
        )
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// What an AWS SDK in `exec`'s child finds as its keys: placeholders (the secret one is the
/// session token, so it is no secret of the API).
const AWS_PLACEHOLDER_KEY_ID: &str = "AKIASIDEKEYPLACEHOLDER";
/// Credentials an AWS SDK would otherwise prefer or combine with the placeholders.
const AWS_REMOVED: [&str; 6] = [
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
];

/// The variables that point a program at the forward proxy on `proxy` and make it trust
/// the CA (`ca`: the CA alone; `bundle`: system roots + the CA).
pub fn variables(proxy: &str, ca: &Path, bundle: &Path) -> Vec<(&'static str, String)> {
    let url = format!("http://{proxy}");
    let bundle = bundle.display().to_string();
    vec![
        ("HTTPS_PROXY", url.clone()),
        ("HTTP_PROXY", url.clone()),
        ("https_proxy", url.clone()),
        ("http_proxy", url),
        ("NO_PROXY", "localhost,127.0.0.1,::1".into()),
        ("no_proxy", "localhost,127.0.0.1,::1".into()),
        ("SSL_CERT_FILE", bundle.clone()),
        ("REQUESTS_CA_BUNDLE", bundle.clone()),
        ("CURL_CA_BUNDLE", bundle.clone()),
        ("AWS_CA_BUNDLE", bundle.clone()),
        ("GIT_SSL_CAINFO", bundle),
        ("NODE_EXTRA_CA_CERTS", ca.display().to_string()),
        ("NODE_USE_ENV_PROXY", "1".into()),
    ]
}

/// `sidekey ca init`: a new CA in `dir`, name-constrained to the config's API hosts (or to
/// `extra` hosts), plus `bundle.pem`.
pub fn ca_init(
    dir: &Path,
    config: Option<&Path>,
    extra: &[String],
    days: u64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let mut names = extra.to_vec();
    if let Some(path) = config {
        match Config::load(path) {
            Ok(c) => names.extend(hosts(&c)),
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return EXIT_BAD_CONFIG;
            }
        }
    }
    if names.is_empty() {
        let _ = writeln!(
            err,
            "error: name the hosts the CA may sign for: --config FILE (its APIs) or --host NAME"
        );
        return EXIT_BAD_CONFIG;
    }
    match ca::init(dir, &names, Duration::from_secs(days * 24 * 3600)) {
        Ok(made) => {
            let bundle = dir.join("bundle.pem");
            if let Err(e) = std::fs::write(&bundle, ca::bundle(made.cert_pem())) {
                let _ = writeln!(err, "error: cannot write {}: {e}", bundle.display());
                return 1;
            }
            let _ = writeln!(
                out,
                "wrote {}/ca.crt (fingerprint {}), {}/ca.key (0600) and {}\nname constraints: {}\n\n[forward_proxy]\nca_cert_file = \"{}\"\nca_key_file = \"{}\"",
                dir.display(),
                made.fingerprint,
                dir.display(),
                bundle.display(),
                names.join(", "),
                dir.join("ca.crt").display(),
                dir.join("ca.key").display(),
            );
            0
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            1
        }
    }
}

/// `sidekey env`: the variables for the config's forward proxy.
pub fn env(config: &Path, shell: Shell, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let c = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_BAD_CONFIG;
        }
    };
    let Some(fp) = &c.forward_proxy else {
        let _ = writeln!(err, "error: the config has no [forward_proxy]");
        return EXIT_BAD_CONFIG;
    };
    let Some(files) = &fp.ca else {
        let _ = writeln!(
            err,
            "error: forward_proxy needs ca_cert_file and ca_key_file (`sidekey ca init`)"
        );
        return EXIT_BAD_CONFIG;
    };
    let dir = files
        .cert
        .parent()
        .map_or_else(PathBuf::new, Path::to_path_buf);
    let bundle = dir.join("bundle.pem");
    if !bundle.exists() {
        let written = std::fs::read_to_string(&files.cert)
            .and_then(|pem| std::fs::write(&bundle, ca::bundle(&pem)));
        if let Err(e) = written {
            let _ = writeln!(err, "error: cannot write {}: {e}", bundle.display());
            return 1;
        }
    }
    for (name, value) in variables(&fp.address.to_string(), &files.cert, &bundle) {
        let _ = match shell {
            Shell::Sh => writeln!(out, "export {name}='{value}'"),
            Shell::Fish => writeln!(out, "set -gx {name} '{value}'"),
        };
    }
    0
}

/// `sidekey exec`: serves the config with a forward proxy on a free loopback port and an
/// ephemeral CA, runs `cmd` with the variables (and each API's placeholder key variable),
/// and returns its exit status. The real keys are never in the child's environment.
pub async fn exec(config: &Path, cmd: &[String], err: &mut dyn Write) -> i32 {
    let Some((program, args)) = cmd.split_first() else {
        let _ = writeln!(err, "error: name the command to run after `--`");
        return EXIT_BAD_CONFIG;
    };
    let mut c = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_BAD_CONFIG;
        }
    };
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    c.listener.address = loopback;
    c.admin.address = loopback;
    // The command is done when it exits: no waiting for more requests.
    c.runtime.shutdown_idle = Duration::ZERO;
    c.runtime.shutdown_grace = Duration::from_secs(1);
    let fp = c.forward_proxy.take().unwrap_or(ForwardProxy {
        address: loopback,
        ca: None,
        unknown_hosts: UnknownHosts::Deny,
        tunnel: Vec::new(),
        trust_dir: None,
        session_token_sha256: None,
    });
    // The child's access is a capability: a 256-bit token for this run, in its proxy URL
    // (sent as Proxy-Authorization) and as its placeholder keys. Another local process that
    // finds the port has no token and gets 407.
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw[..]).is_err() {
        let _ = writeln!(err, "error: no randomness for the session token");
        return 1;
    }
    let token: zeroize::Zeroizing<String> =
        zeroize::Zeroizing::new(raw.iter().map(|b| format!("{b:02x}")).collect());
    use sha2::Digest as _;
    c.forward_proxy = Some(ForwardProxy {
        address: loopback,
        session_token_sha256: Some(sha2::Sha256::digest(token.as_bytes()).into()),
        ..fp
    });
    let ca = match InterceptCa::ephemeral(&hosts(&c)) {
        Ok(ca) => ca,
        Err(e) => {
            let _ = writeln!(err, "error: cannot make the ephemeral CA: {e}");
            return 1;
        }
    };
    let secrets_in_env: Vec<String> = c
        .credentials
        .iter()
        .flat_map(|n| n.config.parts.iter())
        .filter_map(|p| p.source.env().map(str::to_owned))
        .collect();
    let placeholders: Vec<String> = c
        .apis
        .iter()
        .filter_map(|a| a.upstream.placeholder_env.clone())
        .collect();
    // An API signed with SigV4: the child's AWS SDK signs with placeholder keys (sidekey
    // re-signs), and finds no other credentials to prefer.
    let aws = c
        .credentials
        .iter()
        .any(|n| n.config.scheme.sigv4().is_some());
    let app = match crate::App::bind_with_ca(c, Some(ca)).await {
        Ok(app) => app,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 1;
        }
    };
    let (Some(addr), Some(ca_pem)) = (app.forward_addr(), app.forward_ca_pem()) else {
        let _ = writeln!(err, "error: the forward proxy did not start");
        return 1;
    };
    // The CA certificate (public) goes into a private temporary directory; its key stays in
    // this process's memory.
    let dir = std::env::temp_dir().join(format!("sidekey-exec-{}", std::process::id()));
    let (ca_file, bundle) = (dir.join("ca.pem"), dir.join("bundle.pem"));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&ca_file, &ca_pem))
        .and_then(|()| std::fs::write(&bundle, ca::bundle(&ca_pem)));
    if let Err(e) = written {
        let _ = writeln!(err, "error: cannot write {}: {e}", dir.display());
        return 1;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let mut command = std::process::Command::new(program);
    command.args(args);
    for var in &secrets_in_env {
        command.env_remove(var);
    }
    for var in &placeholders {
        command.env(var, token.as_str());
    }
    if aws {
        for var in AWS_REMOVED {
            command.env_remove(var);
        }
        command.env("AWS_ACCESS_KEY_ID", AWS_PLACEHOLDER_KEY_ID);
        command.env("AWS_SECRET_ACCESS_KEY", token.as_str());
    }
    let proxy = format!("sidekey:{}@{addr}", token.as_str());
    for (name, value) in variables(&proxy, &ca_file, &bundle) {
        command.env(name, value);
    }
    let status = match command.spawn() {
        Ok(mut child) => tokio::task::spawn_blocking(move || child.wait()).await,
        Err(e) => {
            let _ = writeln!(err, "error: cannot run {program}: {e}");
            let _ = stop.send(());
            let _ = serving.await;
            let _ = std::fs::remove_dir_all(&dir);
            return 127;
        }
    };
    let _ = stop.send(());
    let _ = serving.await;
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Ok(Ok(s)) => s.code().unwrap_or(1),
        _ => 1,
    }
}
