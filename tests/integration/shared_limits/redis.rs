//! A real `redis-server` on a free loopback port, started per test (installed by
//! `tests/redis/install.sh` from Debian's packages when missing), killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::eventually;

/// TLS files for a `rediss://` server.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    tls: Option<TlsFiles>,
    child: Option<Child>,
    dir: PathBuf,
}

fn binary() -> &'static str {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let found = Command::new("sh")
            .args(["-c", "command -v redis-server"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/redis/install.sh");
            let status = Command::new("bash").arg(script).status().unwrap();
            assert!(status.success(), "tests/redis/install.sh failed");
        }
    });
    "redis-server"
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub async fn start(dir: &Path, password: Option<&str>, tls: Option<TlsFiles>) -> Self {
        let mut server = Self {
            port: free_port(),
            password: password.map(str::to_owned),
            tls,
            child: None,
            dir: dir.to_owned(),
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new(binary());
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match &self.tls {
            Some(t) => {
                cmd.args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(&t.cert)
                .arg("--tls-key-file")
                .arg(&t.key)
                .arg("--tls-ca-cert-file")
                .arg(&t.ca);
            }
            None => {
                cmd.args(["--port", &port]);
            }
        }
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().unwrap());
        let addr = format!("127.0.0.1:{}", self.port);
        assert!(
            eventually(Duration::from_secs(10), || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
            })
            .await,
            "redis-server did not start on {addr}"
        );
    }

    /// SIGKILL: connections drop at once, as when a pod dies.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty: no state survives).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// One command over a fresh plain connection (test set-up and inspection).
    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        let mut info = redis::IntoConnectionInfo::into_connection_info(format!(
            "redis://127.0.0.1:{}/0",
            self.port
        ))
        .unwrap();
        if let Some(p) = &self.password {
            let r = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(r);
        }
        let client = redis::Client::open(info).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut c = redis::cmd(args.first().unwrap());
        for a in args.get(1..).unwrap_or_default() {
            c.arg(*a);
        }
        c.query_async(&mut conn).await.unwrap()
    }

    /// Changes `requirepass` (connections already authenticated stay so, as in Redis).
    pub async fn set_password(&mut self, password: &str) {
        self.cmd(&["CONFIG", "SET", "requirepass", password]).await;
        self.password = Some(password.to_owned());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
