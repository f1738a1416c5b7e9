//! Starting and driving the real `switchyard` binary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `switchyard run` process with its config file in a temp dir.
pub struct GatewayProcess {
    child: Child,
    _dir: tempfile::TempDir,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<Value>>>,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
}

impl GatewayProcess {
    /// Starts a gateway with `config` (TOML) and waits until every listener
    /// (and the admin API, if configured) is up.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("switchyard.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--log-format", "json", "--log-level", "info", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchyard");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("SWITCHYARD_TEST_LOGS").is_some() {
                    eprintln!("[gateway] {line}");
                }
                let value = serde_json::from_str(&line).unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                sink.lock().unwrap().push(value);
            }
        });

        let expected_listeners = config.matches("[[listeners]]").count();
        let wants_admin = config.contains("[admin]");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut gateway = GatewayProcess {
            child,
            _dir: dir,
            config_path,
            logs,
            listeners: HashMap::new(),
            admin: None,
        };
        loop {
            gateway.collect_addresses();
            if gateway.listeners.len() >= expected_listeners && (!wants_admin || gateway.admin.is_some()) {
                return gateway;
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!(
                    "switchyard exited during startup ({status}); logs:\n{}",
                    gateway.dump_logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "switchyard did not start; logs:\n{}",
                gateway.dump_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn collect_addresses(&mut self) {
        for entry in self.logs.lock().unwrap().iter() {
            let address = entry["address"].as_str().and_then(|a| a.parse().ok());
            match (entry["message"].as_str(), address) {
                (Some("listening"), Some(addr)) => {
                    let name = entry["listener"].as_str().unwrap_or_default().to_owned();
                    self.listeners.insert(name, addr);
                }
                (Some("admin listening"), Some(addr)) => self.admin = Some(addr),
                _ => {}
            }
        }
    }

    /// The address of the listener named `public` (or the only one).
    pub fn addr(&self) -> SocketAddr {
        self.listeners
            .get("public")
            .copied()
            .unwrap_or_else(|| *self.listeners.values().next().expect("a listener"))
    }

    /// `http://ADDR{path}` on the main listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// `http://ADMIN{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin is configured"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, ...) to this process only.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Replaces the config file atomically (write, then rename), as editors do.
    pub fn rewrite_config(&self, config: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, config).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("replace config");
    }

    /// Every log line so far (JSON objects; unparsable lines as `{"raw": ...}`).
    pub fn logs(&self) -> Vec<Value> {
        self.logs.lock().unwrap().clone()
    }

    /// The logs as text, for failure messages.
    pub fn dump_logs(&self) -> String {
        self.logs().iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
    }

    /// Waits until a log line satisfies `pred`.
    pub async fn wait_log(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs.lock().unwrap().iter().any(&pred) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// How many log lines satisfy `pred`.
    pub fn count_logs(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.logs.lock().unwrap().iter().filter(|v| pred(v)).count()
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// A memory figure from /proc (e.g. `VmRSS`, `VmHWM`) in KiB.
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{field} not in /proc status"))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a log line is an access log entry.
pub fn is_access(v: &Value) -> bool {
    v["target"] == "access"
}

/// Whether a log line carries `message`.
pub fn has_message(v: &Value, message: &str) -> bool {
    v["message"].as_str() == Some(message)
}
