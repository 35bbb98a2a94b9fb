//! The real binaries as child processes, and a real SMTP server.
//!
//! Workers run `target/<profile>/clicknback-worker` (built by the test
//! command) against the test's own database and Redis namespace. The SMTP
//! sink is aiosmtpd writing a Maildir that the test reads back.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use crate::http::TestApp;

/// The directory holding the workspace's binaries (next to `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("target directory")
}

pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An HTTP client for the api processes. The api closes a keep-alive
/// connection idle for `HTTP_IDLE_TIMEOUT_SECS` (75 s by default); a client
/// that keeps idle connections longer races that close and can send a
/// request on a socket the server is closing (`IncompleteMessage`). This
/// client lets idle connections go after 30 s, as any client of the api
/// should keep its idle timeout below the api's.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// A running `clicknback-worker`.
pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn pid(&self) -> i32 {
        self.child.id().map(|p| p as i32).unwrap_or(-1)
    }

    pub fn kill9(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(self.pid().to_string())
            .status();
    }

    pub fn term(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for exit; returns the exit code (None when killed by a signal).
    pub async fn wait(&mut self, timeout: Duration) -> Option<i32> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => panic!(
                "worker did not exit within {timeout:?}; log: {}",
                self.log_text()
            ),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A running `clicknback-api` on a free port.
pub struct ApiProcess {
    pub base: String,
    /// Where its `/metrics` listens (`METRICS_ADDR`, a port of its own).
    pub metrics: String,
    pub process: WorkerProcess,
}

impl TestApp {
    fn command(&self, bin: &str, log: &std::path::Path) -> Command {
        let file = std::fs::File::create(log).expect("log file");
        let mut cmd = Command::new(binary(bin));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("APP_ENV", "development")
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", &self.redis.url)
            .env("REDIS_NAMESPACE", &self.redis.namespace)
            .env("JWT_SECRET", "test-secret-test-secret-test-secret-0123")
            .env(
                "DATA_ENCRYPTION_KEY",
                "dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdDE=",
            )
            .env("RUN_MIGRATIONS_ON_START", "false")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file.try_clone().expect("log handle")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        cmd
    }

    /// Starts the api binary for this test's database and Redis namespace.
    pub async fn api_process(&self, extra: &[(&str, &str)]) -> ApiProcess {
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "clicknback-api-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let mut cmd = self.command("clicknback-api", &log);
        let metrics_port = free_port();
        cmd.arg("serve")
            .env("API_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start clicknback-api");
        let base = format!("http://127.0.0.1:{port}");
        let process = WorkerProcess { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the api did not start: {}",
                process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ApiProcess {
            base,
            metrics: format!("http://127.0.0.1:{metrics_port}"),
            process,
        }
    }

    /// Starts a worker process for this test's database and Redis namespace.
    pub fn worker(&self, extra: &[(&str, &str)]) -> WorkerProcess {
        let log = std::env::temp_dir().join(format!(
            "clicknback-worker-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let mut cmd = self.command("clicknback-worker", &log);
        cmd.arg("run")
            .env("WORKER_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("OUTBOX_POLL_INTERVAL_MS", "50")
            .env("JOB_POLL_INTERVAL_MS", "100")
            .env("JOB_HEARTBEAT_SECS", "1")
            .env("JOB_MISSED_HEARTBEATS", "3")
            .env("SMTP_URL", "smtp://127.0.0.1:9");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start clicknback-worker");
        WorkerProcess { child, log }
    }

    /// Runs `clicknback-worker <args>` (an operator command) to its end with
    /// `extra` in its environment: its exit code and everything it printed.
    pub async fn worker_command(&self, args: &[&str], extra: &[(&str, &str)]) -> (i32, String) {
        let log = std::env::temp_dir().join(format!(
            "clicknback-worker-cli-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let mut cmd = self.command("clicknback-worker", &log);
        cmd.args(args);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let status = tokio::time::timeout(Duration::from_secs(30), cmd.status())
            .await
            .expect("the command finished within 30 s")
            .expect("run clicknback-worker");
        let printed = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        (status.code().unwrap_or(-1), printed)
    }
}

/// A real SMTP server (aiosmtpd) that stores what it receives in a Maildir.
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl SmtpSink {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Self {
        let dir =
            std::env::temp_dir().join(format!("clicknback-mail-{}", uuid::Uuid::new_v4().simple()));
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start aiosmtpd (python3 -m pip install aiosmtpd)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the SMTP sink did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { port, dir, child }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, raw.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.join(sub)) {
                for e in rd.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Stops accepting mail (the server goes away).
    pub fn stop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
