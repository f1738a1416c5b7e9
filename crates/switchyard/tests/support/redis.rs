//! A private `redis-server` on an ephemeral loopback port, started and
//! stopped by pid (scripts/test.sh installs redis-server when it is missing).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    /// Starts a server on `port` (a restart on a known port).
    pub fn start_on(port: u16) -> RedisServer {
        Self::start_with(port, &["--port", &port.to_string()])
    }

    /// Starts a server that listens on `port` as `args` say (`--port`, or
    /// `--port 0 --tls-port` with TLS files), with `args` added.
    #[allow(dead_code)]
    pub fn start_with(port: u16, args: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): run scripts/test.sh, which installs it, or `apt-get install redis-server`")
            });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer {
            addr,
            child: Some(child),
        }
    }

    /// A free loopback port.
    #[allow(dead_code)]
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Freezes this server (SIGSTOP): connections stay open, nothing is
    /// answered, its data stays.
    #[allow(dead_code)]
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused server (SIGCONT).
    #[allow(dead_code)]
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Stops this server (only the process this handle started).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Sentinel watching the primary on `primary_port` as `mymaster`,
/// started and stopped by pid.
#[allow(dead_code)]
pub struct Sentinel {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl Sentinel {
    pub fn start(primary_port: u16) -> Sentinel {
        let port = RedisServer::free_port();
        let dir = tempfile::tempdir().unwrap();
        // Sentinel rewrites its file, so it lives in a directory of its own.
        let file = dir.path().join("sentinel.conf");
        std::fs::write(
            &file,
            format!("port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {primary_port} 1\n"),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&file)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "Sentinel did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sentinel { addr, child, _dir: dir }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
