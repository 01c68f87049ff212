//! `sidekey init`: a ready config for a developer machine in one command, with the bundled
//! Banata catalogue beside it. Refuses to overwrite an existing config.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::demo::BANATA_CATALOGUE;

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
    let allow: Vec<String> = opts.allow.iter().map(|a| toml_str(a)).collect();
    let text = format!(
        "# Written by `sidekey init`. Reference: config/sidekey.example.toml in the sidekey repo.\n\
         [upstream]\nurl = {}\n\n[credential]\nfile = {}   # chmod 600; edit to rotate, no restart\n\n\
         [service]\nname = {}\nallow = [{}]\npermissions_file = \"banata-permissions.toml\"\n",
        toml_str(&opts.upstream),
        toml_str(&key_file.to_string_lossy()),
        toml_str(&opts.service),
        allow.join(", "),
    );
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

fn write_files(dir: &Path, config_path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let catalogue = dir.join("banata-permissions.toml");
    if !catalogue.exists() {
        std::fs::write(&catalogue, BANATA_CATALOGUE)?;
    }
    std::fs::write(config_path, text)
}
