//! [`ValkeyServer`]: one `valkey-server` process per value, on a free loopback port.

use std::io::{ErrorKind, Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const NOT_FOUND: &str = "valkey-server not found: run scripts/install-valkey (or: apt-get install -t bookworm-backports valkey-server valkey-tools)";

/// How long a server gets to answer PING after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// A `valkey-server` on a free loopback port, without persistence, in its own temporary
/// directory. Killed (and its directory removed) when dropped, also when a test panics.
pub struct ValkeyServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra `valkey-server` arguments, after the defaults (so they override them); kept across
    /// [`restart`](Self::restart).
    extra_args: Vec<String>,
}

impl ValkeyServer {
    /// Starts a server on a free port and waits until it answers PING.
    ///
    /// # Panics
    ///
    /// If `valkey-server` is not installed, or does not come up within 5 s.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Like [`start`](Self::start), with extra server arguments that override the defaults, e.g.
    /// `&["--appendonly", "yes", "--appendfsync", "always"]` for a server whose data survives
    /// [`stop`](Self::stop) + [`restart`](Self::restart) (the directory is kept until drop).
    pub fn start_with_args(args: &[&str]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tvc-valkey-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // The port is free when probed but another process may take it before the server binds:
        // try a few ports before giving up.
        let mut last_err = String::new();
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                dir: dir.clone(),
                child: None,
                extra_args: args.iter().map(|a| a.to_string()).collect(),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => {
                    last_err = e;
                    server.kill();
                }
            }
        }
        panic!("valkey-server did not start: {last_err}");
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (while running).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("valkey-server is not running")
            .id()
    }

    /// Whether the server process is running (started, and not [stopped](Self::stop)).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's working directory (its log is `valkey.log` there); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Its data is lost.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop)) and waits for PING.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                // The old socket may linger for a moment: retry until the deadline.
                Err(_) if Instant::now() < deadline => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("valkey-server did not restart on port {}: {e}", self.port),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// Resumes a [paused](Self::pause) server (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Runs one raw command, e.g. `server.cli::<Vec<String>>(&["KEYS", "ns:*"])`.
    pub async fn cli<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        self.query(&cmd).await
    }

    /// Runs one raw command built with `redis::cmd` (for binary arguments).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = self
            .connection()
            .await
            .unwrap_or_else(|e| panic!("connect to valkey: {e}"));
        tokio::time::timeout(Duration::from_secs(5), cmd.query_async(&mut conn))
            .await
            .expect("valkey command timed out")
            .unwrap_or_else(|e| panic!("valkey command failed: {e}"))
    }

    /// A connection of the caller's own, straight to the server: 5 s to connect and per
    /// response (the client's default of 500 ms would cut big replies, `KEYS` over a large
    /// keyspace, short on a loaded machine).
    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Every key matching `pattern` (`KEYS`), sorted.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.cli(&["KEYS", pattern]).await;
        keys.sort();
        keys
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("valkey.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        // (Again on every attempt: a failed attempt's guard removes it when dropped.)
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("create {:?}: {e}", self.dir))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open log: {e}"))?;
        let child = Command::new("valkey-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{NOT_FOUND}"),
            Err(e) => panic!("cannot run valkey-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "exited with {status}; log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no PONG on port {} within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ValkeyServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port that was free when probed (the OS picks it). Another process may take it
/// before the caller binds it: callers that start a server on it retry on another port.
///
/// # Panics
///
/// If no loopback port can be bound at all.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Whether a server on `port` answers PING (raw RESP, so it needs no runtime).
pub(crate) fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}
