//! The `sidekey` binary: parse arguments, set up logging, run one command. Everything else
//! lives in the library so the tests exercise exactly what runs in production.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc over glibc malloc: the request path allocates and frees small buffers at a high
/// rate; glibc spent ~9% of proxy CPU there (consolidation, brk), see BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sidekey::cli::EXIT_BAD_CONFIG;
use sidekey::config::Config;
use sidekey::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "sidekey",
    version,
    about = "Egress credential sidecar: allow-list, key injection, verified TLS"
)]
#[command(
    after_help = "Example:\n  sidekey demo\n  sidekey run --config /etc/sidekey/sidekey.toml"
)]
struct Cli {
    /// Log format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM or SIGINT.
    #[command(
        after_help = "Example:\n  sidekey run --config /etc/sidekey/sidekey.toml --workers 1"
    )]
    Run {
        #[arg(long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
        /// Worker threads (overrides runtime.workers).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate the config, print the effective allow-list, run lints and [[test]] expectations.
    #[command(
        after_help = "Example:\n  sidekey check --config config/sidekey.example.toml --strict"
    )]
    Check {
        #[arg(long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
        /// Treat lints as errors (exit 1).
        #[arg(long)]
        strict: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
        /// Report drift against this OpenAPI description: catalogue routes that match no
        /// operation, operations no permission covers.
        #[arg(long)]
        openapi: Option<PathBuf>,
        /// With several APIs: the one the OpenAPI description is for.
        #[arg(long)]
        api: Option<String>,
        /// Also mint one token for every credential with a token scheme (contacts the token
        /// endpoints) and report the result, never the token.
        #[arg(long)]
        online: bool,
    },
    /// Print the minimal `allow = [...]` that covers the requests in an access log.
    #[command(
        after_help = "Example:\n  sidekey suggest --config sidekey.toml --access-log access.jsonl --since 24h"
    )]
    Suggest {
        #[arg(long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
        /// sidekey's JSON access log (`-` for stdin).
        #[arg(long)]
        access_log: PathBuf,
        /// Only requests newer than this (e.g. 24h, 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Gateway configs: the caller whose traffic and grants to compare.
        #[arg(long)]
        caller: Option<String>,
    },
    /// Print the decision `run` would make for one request.
    #[command(
        after_help = "Example:\n  sidekey explain --config config/dev.toml DELETE /v1/sandboxes/sb_123"
    )]
    Explain {
        #[arg(long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
        /// Gateway configs: the caller whose grants decide.
        #[arg(long)]
        caller: Option<String>,
        method: String,
        target: String,
    },
    /// Gateway caller tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write a ready config (with the bundled Banata catalogue) for a developer machine.
    #[command(
        after_help = "Example:\n  sidekey init --service my-laptop --allow sandbox_sessions:create,sandbox_sessions:read"
    )]
    Init {
        #[arg(long)]
        service: String,
        /// Permissions to grant, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        allow: Vec<String>,
        #[arg(long, default_value = "https://api.boxes.banata.dev")]
        upstream: String,
        /// Key file (default: <dir>/api-key).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Directory to write into (default: ~/.config/sidekey).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Another API, NAME=URL (repeatable; shipped catalogues: openai): served under /NAME
        /// with its own key file <dir>/NAME-api-key; grants are then `api/permission`.
        #[arg(long = "api")]
        apis: Vec<String>,
    },
    /// Add sidekey as a native sidecar to Kubernetes workloads (YAML in, YAML out).
    #[command(
        after_help = "Example:\n  sidekey inject -f app.yaml --secret banata-api-key --config-map sidekey-config | kubectl apply -f -"
    )]
    Inject {
        /// Input YAML (`-` for stdin).
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: PathBuf,
        /// Secret holding the key (mounted as a whole volume at /var/run/secrets/banata).
        #[arg(long)]
        secret: String,
        /// ConfigMap holding sidekey.toml and the catalogue (mounted at /etc/sidekey).
        #[arg(long)]
        config_map: String,
        #[arg(long, default_value = concat!("ghcr.io/sidekey/sidekey:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// Env var pointing the app at sidekey.
        #[arg(long, default_value = "BANATA_BASE_URL")]
        env_name: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        listen_url: String,
    },
    /// Run a mock Banata API and sidekey in front of it, on loopback, with curl examples.
    #[command(after_help = "Example:\n  cargo run --release -- demo")]
    Demo,
    /// The forward proxy's interception CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Key rotation checks.
    #[command(subcommand)]
    Rotation(RotationCommand),
    /// Print a key's fingerprint as `/credential` and the metrics show it.
    #[command(
        after_help = "Example:\n  sidekey fingerprint /var/run/secrets/banata/api-key\n  printf %s \"$KEY\" | sidekey fingerprint -"
    )]
    Fingerprint {
        /// The key file (`-` for stdin).
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Permission catalogues from OpenAPI descriptions.
    #[command(subcommand)]
    Catalogue(CatalogueCommand),
    /// Print the variables a program needs to use the forward proxy.
    #[command(after_help = "Example:\n  eval \"$(sidekey env --config sidekey.toml)\"")]
    Env {
        #[arg(long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "sh")]
        shell: sidekey::cli::forward::Shell,
    },
    /// Run one command behind a forward proxy with an ephemeral CA; exits with its status.
    #[command(after_help = "Example:\n  sidekey exec --config sidekey.toml -- python3 script.py")]
    Exec {
        #[arg(long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
        /// The command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RotationCommand {
    /// Which key fingerprint every instance serves; exit 0 only when all serve --expect.
    #[command(
        after_help = "Example:\n  sidekey rotation status --expect 3f2a9c1b7d4e --admin http://10.0.0.7:9901 --admin http://10.0.0.8:9901\n  sidekey rotation status --expect 3f2a9c1b7d4e --prometheus http://prometheus:9090 --selector '{namespace=\"prod\"}'"
    )]
    Status {
        /// The fingerprint every instance must serve (`sidekey fingerprint NEW_KEY_FILE`).
        #[arg(long)]
        expect: String,
        /// An admin endpoint to ask (repeatable).
        #[arg(long = "admin", conflicts_with = "prometheus")]
        admins: Vec<String>,
        /// A Prometheus server whose `sidekey_credential_info` to ask instead.
        #[arg(long)]
        prometheus: Option<String>,
        /// A label selector for the Prometheus query.
        #[arg(long, default_value = "", requires = "prometheus")]
        selector: String,
        /// Only this key source (`default`, an API's name, or `api/name`).
        #[arg(long)]
        credential: Option<String>,
    },
}

#[derive(Subcommand)]
enum CatalogueCommand {
    /// Print a catalogue draft (TOML) with one route per operation of an OpenAPI 3.0/3.1 or
    /// Swagger 2.0 description (JSON or YAML; `-` for stdin).
    #[command(
        after_help = "Example:\n  sidekey catalogue import openapi.yaml --by tags > permissions.toml"
    )]
    Import {
        spec: PathBuf,
        /// Where permission names come from (default: scopes when the spec has security
        /// data, else tags).
        #[arg(long, value_enum)]
        by: Option<sidekey::cli::catalogue::By>,
        /// The vendor extension `--by extension` reads.
        #[arg(long, default_value = "x-sidekey-permission")]
        extension: String,
        /// Print an inline `[api.NAME.permissions]` table instead of `[permissions]`.
        #[arg(long)]
        api: Option<String>,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Write a new CA (`ca.crt` 0644, `ca.key` 0600, `bundle.pem`) into DIR; never overwrites.
    #[command(
        after_help = "Example:\n  sidekey ca init --dir /etc/sidekey/ca --config /etc/sidekey/sidekey.toml"
    )]
    Init {
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// Name-constrain the CA to this config's API hosts.
        #[arg(long, env = "SIDEKEY_CONFIG")]
        config: Option<PathBuf>,
        /// Another host the CA may sign for (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a fresh caller token (once) and the `token_sha256` line for its [[caller]].
    #[command(after_help = "Example:\n  sidekey token new --caller ci-e2e")]
    New {
        #[arg(long)]
        caller: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check {
            config,
            strict,
            format,
            openapi,
            api,
            online,
        } => {
            let opts = sidekey::cli::CheckOptions {
                strict,
                json: format == OutputFormat::Json,
                openapi: openapi.as_deref(),
                api: api.as_deref(),
            };
            let code = sidekey::cli::check(
                &config,
                opts,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            );
            match (code, online) {
                (0, true) => sidekey::cli::check_online(
                    &config,
                    &mut std::io::stdout(),
                    &mut std::io::stderr(),
                ),
                (code, _) => code,
            }
        }
        Command::Suggest {
            config,
            access_log,
            since,
            caller,
        } => sidekey::cli::suggest::run(
            &config,
            &access_log,
            since,
            caller.as_deref(),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::Token(TokenCommand::New { caller }) => {
            sidekey::cli::token_new(&caller, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Explain {
            config,
            caller,
            method,
            target,
        } => sidekey::cli::explain(
            &config,
            caller.as_deref(),
            &method,
            &target,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::Run { config, workers } => run(&config, workers, cli.log_format),
        Command::Init {
            service,
            allow,
            upstream,
            key_file,
            dir,
            apis,
        } => {
            let opts = sidekey::cli::init::InitOptions {
                service,
                allow,
                upstream,
                key_file,
                dir: dir.unwrap_or_else(sidekey::cli::init::default_dir),
                apis,
            };
            sidekey::cli::init::run(&opts, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Inject {
            file,
            secret,
            config_map,
            image,
            env_name,
            listen_url,
        } => {
            let opts = sidekey::cli::kube::InjectOptions {
                secret,
                config_map,
                image,
                env_name,
                listen_url,
            };
            inject(&file, &opts)
        }
        Command::Demo => demo(),
        Command::Ca(CaCommand::Init {
            dir,
            config,
            hosts,
            days,
        }) => sidekey::cli::forward::ca_init(
            &dir,
            config.as_deref(),
            &hosts,
            days,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::Catalogue(CatalogueCommand::Import {
            spec,
            by,
            extension,
            api,
        }) => sidekey::cli::catalogue::import(
            &spec,
            by,
            &extension,
            api.as_deref(),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::Rotation(RotationCommand::Status {
            expect,
            admins,
            prometheus,
            selector,
            credential,
        }) => {
            let source = match &prometheus {
                Some(url) => Some(sidekey::cli::rotation::Source::Prometheus {
                    url,
                    selector: &selector,
                }),
                None if admins.is_empty() => None,
                None => Some(sidekey::cli::rotation::Source::Admin(&admins)),
            };
            match (source, runtime(1)) {
                (None, _) => {
                    eprintln!("error: name --admin URL (repeatable) or --prometheus URL");
                    EXIT_BAD_CONFIG
                }
                (Some(source), Ok(rt)) => rt.block_on(sidekey::cli::rotation::status(
                    source,
                    &expect,
                    credential.as_deref(),
                    &mut std::io::stdout(),
                )),
                (Some(_), Err(e)) => {
                    eprintln!("error: {e}");
                    2
                }
            }
        }
        Command::Fingerprint { file } => {
            sidekey::cli::fingerprint(&file, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Env { config, shell } => sidekey::cli::forward::env(
            &config,
            shell,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::Exec { config, command } => match runtime(1) {
            Ok(rt) => rt.block_on(sidekey::cli::forward::exec(
                &config,
                &command,
                &mut std::io::stderr(),
            )),
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// One worker: a current-thread runtime (no cross-thread wake-ups, measured faster and
/// lighter for a sidecar); more: the work-stealing runtime.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    // The blocking pool only runs name lookups for new upstream connections: a few threads
    // serve a burst of connects (each lookup is short), where the default (up to 512) grew a
    // thread, its stack and its allocator heap per concurrent connect.
    builder
        .max_blocking_threads(4)
        .thread_keep_alive(std::time::Duration::from_secs(5))
        .enable_all()
        .build()
}

fn run(path: &std::path::Path, workers: Option<usize>, format: LogFormat) -> i32 {
    telemetry::init_logging(format);
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_BAD_CONFIG;
        }
    };
    let workers = workers.unwrap_or(config.runtime.workers).max(1);
    let result = runtime(workers).map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            let app = sidekey::App::bind(config).await?;
            tracing::info!(listener = %app.proxy_addr(), admin = %app.admin_addr(), workers, "sidekey bound");
            app.run(shutdown_signal()).await;
            Ok::<_, anyhow::Error>(())
        })
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "sidekey failed");
            eprintln!("error: {e}");
            1
        }
    }
}

fn inject(file: &std::path::Path, opts: &sidekey::cli::kube::InjectOptions) -> i32 {
    use std::io::Read;
    let mut input = String::new();
    let read = if file == std::path::Path::new("-") {
        std::io::stdin().read_to_string(&mut input).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|s| input = s)
    };
    if let Err(e) = read {
        eprintln!("error: cannot read {}: {e}", file.display());
        return EXIT_BAD_CONFIG;
    }
    match sidekey::cli::kube::inject(&input, opts) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn demo() -> i32 {
    telemetry::init_logging(LogFormat::Text);
    let result = runtime(2).map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            let mut out = std::io::stdout();
            sidekey::cli::demo::run(&mut out, shutdown_signal()).await?;
            Ok::<_, anyhow::Error>(())
        })
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
