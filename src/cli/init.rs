//! `sidekey init`: a ready config for a developer machine in one command, with the bundled
//! Banata catalogue beside it. `--api openai=https://api.openai.com` adds more APIs (named-API
//! shape, each under `/NAME` with its own key file and shipped catalogue). Refuses to
//! overwrite an existing config.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::demo::BANATA_CATALOGUE;

/// Catalogues shipped for `--api NAME=URL` (name, file name, text, credential scheme). The
/// scheme decides the `credential` table and its key files (`<dir>/NAME-<part>`).
const SHIPPED: [(&str, &str, &str, Scheme); 5] = [
    (
        "openai",
        "openai-permissions.toml",
        include_str!("../../config/openai-permissions.toml"),
        Scheme::Bearer,
    ),
    (
        "twilio",
        "twilio-permissions.toml",
        include_str!("../../config/twilio-permissions.toml"),
        Scheme::Basic,
    ),
    (
        "telegram",
        "telegram-permissions.toml",
        include_str!("../../config/telegram-permissions.toml"),
        Scheme::Path("[\"/bot{key}\", \"/file/bot{key}\"]"),
    ),
    (
        "datadog",
        "datadog-permissions.toml",
        include_str!("../../config/datadog-permissions.toml"),
        Scheme::Headers(&[("dd-api-key", "api-key"), ("dd-application-key", "app-key")]),
    ),
    (
        "maps",
        "maps-permissions.toml",
        include_str!("../../config/maps-permissions.toml"),
        Scheme::Query("key"),
    ),
];

/// Where a shipped API takes its key.
#[derive(Clone, Copy)]
enum Scheme {
    Bearer,
    /// Account id and token, each from its own file.
    Basic,
    /// Path templates (a TOML list).
    Path(&'static str),
    /// (header, file suffix) per part.
    Headers(&'static [(&'static str, &'static str)]),
    /// The query parameter.
    Query(&'static str),
}

impl Scheme {
    /// The `credential` table and the key files it reads (`<dir>/NAME-<suffix>`).
    fn table(self, dir: &Path, name: &str) -> (String, Vec<PathBuf>) {
        let file = |suffix: &str| dir.join(format!("{name}-{suffix}"));
        let q = |p: &PathBuf| toml_str(&p.to_string_lossy());
        match self {
            Self::Bearer => {
                let k = file("api-key");
                (format!("{{ file = {} }}", q(&k)), vec![k])
            }
            Self::Basic => {
                let (u, p) = (file("account-id"), file("api-key"));
                let t = format!(
                    "{{ scheme = \"basic\", username_file = {}, password_file = {} }}",
                    q(&u),
                    q(&p)
                );
                (t, vec![u, p])
            }
            Self::Path(templates) => {
                let k = file("api-key");
                (
                    format!(
                        "{{ scheme = \"path\", template = {templates}, file = {} }}",
                        q(&k)
                    ),
                    vec![k],
                )
            }
            Self::Headers(parts) => {
                let files: Vec<PathBuf> = parts.iter().map(|(_, s)| file(s)).collect();
                let list: Vec<String> = parts
                    .iter()
                    .zip(&files)
                    .map(|((h, _), f)| format!("\"{h}\" = {{ file = {} }}", q(f)))
                    .collect();
                (
                    format!(
                        "{{ scheme = \"headers\", headers = {{ {} }} }}",
                        list.join(", ")
                    ),
                    files,
                )
            }
            Self::Query(param) => {
                let k = file("api-key");
                (
                    format!(
                        "{{ scheme = \"query\", param = \"{param}\", file = {} }}",
                        q(&k)
                    ),
                    vec![k],
                )
            }
        }
    }
}

/// What to write.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub service: String,
    pub allow: Vec<String>,
    pub upstream: String,
    /// Directory for `sidekey.toml` and the catalogue.
    pub dir: PathBuf,
    /// Key file; default `<dir>/api-key`.
    pub key_file: Option<PathBuf>,
    /// More APIs, `NAME=URL`: each at `/NAME`, key in `<dir>/NAME-api-key`.
    pub apis: Vec<String>,
}

/// The default directory: `$XDG_CONFIG_HOME/sidekey` or `~/.config/sidekey`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("sidekey"),
        _ => std::env::var_os("HOME").map_or_else(
            || PathBuf::from(".sidekey"),
            |h| PathBuf::from(h).join(".config/sidekey"),
        ),
    }
}

fn toml_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Writes the files; 0 ok, 1 refused (exists), 64 bad arguments or config.
pub fn run(opts: &InitOptions, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let config_path = opts.dir.join("sidekey.toml");
    if config_path.exists() {
        let _ = writeln!(
            err,
            "error: {} exists; not overwriting it",
            config_path.display()
        );
        return 1;
    }
    let key_file = opts
        .key_file
        .clone()
        .unwrap_or_else(|| opts.dir.join("api-key"));
    let text = if opts.apis.is_empty() {
        let allow: Vec<String> = opts.allow.iter().map(|a| toml_str(a)).collect();
        format!(
            "# Written by `sidekey init`. Reference: config/sidekey.example.toml in the sidekey repo.\n\
             [upstream]\nurl = {}\n\n[credential]\nfile = {}   # chmod 600; edit to rotate, no restart\n\n\
             [service]\nname = {}\nallow = [{}]\npermissions_file = \"banata-permissions.toml\"\n",
            toml_str(&opts.upstream),
            toml_str(&key_file.to_string_lossy()),
            toml_str(&opts.service),
            allow.join(", "),
        )
    } else {
        match named(opts, &key_file) {
            Ok(t) => t,
            Err(message) => {
                let _ = writeln!(err, "error: {message}");
                return 64;
            }
        }
    };
    if let Err(e) = write_files(&opts.dir, &config_path, &text) {
        let _ = writeln!(err, "error: {e}");
        return 64;
    }
    // Validate what we wrote with the same loader `run` uses; remove it if it is wrong.
    if let Err(e) = crate::config::Config::load(&config_path) {
        let _ = std::fs::remove_file(&config_path);
        let _ = writeln!(err, "error: {e}");
        return 64;
    }
    let _ = writeln!(
        out,
        "wrote {}\n\nnext:\n  (umask 077; printf %s \"$YOUR_KEY\" > {})\n  sidekey run --config {}\n  export BANATA_BASE_URL=http://127.0.0.1:8080",
        config_path.display(),
        key_file.display(),
        config_path.display()
    );
    0
}

/// The named-API config: Banata at `/`, each `--api NAME=URL` at `/NAME`. Unqualified
/// `--allow` entries are Banata's.
fn named(opts: &InitOptions, key_file: &Path) -> Result<String, String> {
    let mut text = format!(
        "# Written by `sidekey init`. Reference: config/multi-api.example.toml in the sidekey repo.\n\
         [api.banata]\nurl = {}\npath_prefix = \"/\"\npermissions_file = \"banata-permissions.toml\"\n\
         credential = {{ file = {} }}   # chmod 600; edit to rotate, no restart\n",
        toml_str(&opts.upstream),
        toml_str(&key_file.to_string_lossy()),
    );
    for spec in &opts.apis {
        let Some((name, url)) = spec.split_once('=') else {
            return Err(format!("--api {spec}: expected NAME=URL"));
        };
        let Some((_, file, _, scheme)) = SHIPPED.iter().find(|(n, _, _, _)| *n == name) else {
            return Err(format!(
                "--api {name}: no catalogue ships for `{name}` (shipped: {}); add its [api.{name}] table by hand",
                SHIPPED.map(|(n, _, _, _)| n).join(", ")
            ));
        };
        let (credential, files) = scheme.table(&opts.dir, name);
        let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        text.push_str(&format!(
            "\n[api.{name}]\nurl = {}\npath_prefix = \"/{name}\"\npermissions_file = {}\n# key files: {}\ncredential = {credential}\n",
            toml_str(url),
            toml_str(file),
            list.join(", "),
        ));
    }
    let allow: Vec<String> = opts
        .allow
        .iter()
        .map(|a| match a.contains('/') {
            true => toml_str(a),
            false => toml_str(&format!("banata/{a}")),
        })
        .collect();
    text.push_str(&format!(
        "\n[service]\nname = {}\nallow = [{}]\n",
        toml_str(&opts.service),
        allow.join(", ")
    ));
    Ok(text)
}

fn write_files(dir: &Path, config_path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let catalogues = std::iter::once(("banata-permissions.toml", BANATA_CATALOGUE))
        .chain(SHIPPED.iter().map(|(_, file, body, _)| (*file, *body)));
    for (file, body) in catalogues {
        let path = dir.join(file);
        if !path.exists() {
            std::fs::write(&path, body)?;
        }
    }
    std::fs::write(config_path, text)
}
