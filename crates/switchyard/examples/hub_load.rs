//! Load tool for `bench/hub.sh`: fan-out from one publisher to many
//! subscribers of one topic, with the delay from publish to receipt.
//!
//!     hub_load sse ADDR PATH N MESSAGES RATE SIZE    # SSE subscribers of a Switchyard hub
//!     hub_load redis ADDR N MESSAGES RATE SIZE       # Redis SUBSCRIBE / PUBLISH
//!
//! N subscribers connect (plain TCP, parsing SSE or RESP by hand so the
//! client stays light), then MESSAGES messages of SIZE bytes are published
//! at RATE per second over one keep-alive connection. Each message carries
//! its send time; each subscriber records the delay at receipt. Prints one
//! line of key=value figures: deliveries expected and received, publish
//! rate achieved, delay p50/p99/max in milliseconds.
//!
//! `HOLD_SECS=N` keeps the subscribers idle for N seconds before publishing
//! (to read the server's memory with them connected).
//!
//! Loopback only; every wait is bounded (the run gives up 30 s after the
//! last publish).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> u64 { args[i].parse().expect("a number") };
    let run = match (args.first().map(String::as_str), args.len()) {
        (Some("sse"), 7) => Run {
            kind: Kind::Sse { path: args[2].clone() },
            addr: args[1].clone(),
            subscribers: number(3) as usize,
            messages: number(4),
            rate: number(5),
            size: number(6) as usize,
        },
        (Some("redis"), 6) => Run {
            kind: Kind::Redis,
            addr: args[1].clone(),
            subscribers: number(2) as usize,
            messages: number(3),
            rate: number(4),
            size: number(5) as usize,
        },
        _ => {
            eprintln!("usage: hub_load sse ADDR PATH N MESSAGES RATE SIZE | hub_load redis ADDR N MESSAGES RATE SIZE");
            std::process::exit(2);
        }
    };
    assert!(run.addr.starts_with("127.0.0.1:"), "only loopback addresses are used");
    run.go().await;
}

enum Kind {
    Sse { path: String },
    Redis,
}

struct Run {
    kind: Kind,
    addr: String,
    subscribers: usize,
    messages: u64,
    rate: u64,
    size: usize,
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// The send time in a message: `t=MICROS;` then padding.
fn sent_at(data: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(data).ok()?;
    let start = text.find("t=")? + 2;
    let end = text[start..].find(';')? + start;
    text[start..end].parse().ok()
}

impl Run {
    async fn go(self) {
        let delays = Arc::new(Mutex::new(Vec::with_capacity(
            self.subscribers * self.messages as usize,
        )));
        let received = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(self.subscribers);
        for _ in 0..self.subscribers {
            let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&self.addr))
                .await
                .expect("connect within 10s")
                .expect("connect");
            let tally = Tally {
                messages: self.messages,
                delays: delays.clone(),
                received: received.clone(),
                ready: ready.clone(),
            };
            tasks.push(match &self.kind {
                Kind::Sse { path } => tokio::spawn(sse_subscriber(stream, path.clone(), tally)),
                Kind::Redis => tokio::spawn(redis_subscriber(stream, tally)),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while ready.load(Ordering::Acquire) < self.subscribers as u64 {
            assert!(Instant::now() < deadline, "subscribers not ready within 60s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let connect_time = started.elapsed();
        // HOLD_SECS: keep the subscribers idle a while first (to measure memory).
        if let Some(hold) = std::env::var("HOLD_SECS").ok().and_then(|s| s.parse().ok()) {
            eprintln!("{} subscribers ready; holding {hold}s", self.subscribers);
            tokio::time::sleep(Duration::from_secs(hold)).await;
        }

        let publisher = TcpStream::connect(&self.addr).await.expect("publisher connects");
        publisher.set_nodelay(true).unwrap();
        let mut publisher = BufReader::new(publisher);
        let interval = Duration::from_secs_f64(1.0 / self.rate as f64);
        let publish_start = Instant::now();
        for i in 0..self.messages {
            let due = publish_start + interval * i as u32;
            tokio::time::sleep_until(due.into()).await;
            let mut data = format!("t={};", now_micros());
            while data.len() < self.size {
                data.push('x');
            }
            match &self.kind {
                Kind::Sse { path } => {
                    let request = format!(
                        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n{data}",
                        data.len()
                    );
                    publisher.get_mut().write_all(request.as_bytes()).await.unwrap();
                    read_http_response(&mut publisher).await;
                }
                Kind::Redis => {
                    let command = format!("*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n${}\r\n{data}\r\n", data.len());
                    publisher.get_mut().write_all(command.as_bytes()).await.unwrap();
                    let mut line = String::new();
                    publisher.read_line(&mut line).await.unwrap();
                    assert!(line.starts_with(':'), "PUBLISH answered {line:?}");
                }
            }
        }
        let publish_time = publish_start.elapsed();
        let expected = self.messages * self.subscribers as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.load(Ordering::Acquire) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in tasks {
            task.abort();
        }
        let mut delays = delays.lock().unwrap().clone();
        delays.sort_unstable();
        let pct = |p: f64| -> f64 {
            if delays.is_empty() {
                return f64::NAN;
            }
            let i = ((delays.len() as f64 * p).ceil() as usize).clamp(1, delays.len()) - 1;
            delays[i] as f64 / 1000.0
        };
        println!(
            "subscribers={} messages={} size={} expected={} received={} connect_s={:.2} publish_rate={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            self.subscribers,
            self.messages,
            self.size,
            expected,
            received.load(Ordering::Acquire),
            connect_time.as_secs_f64(),
            self.messages as f64 / publish_time.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            pct(1.0),
        );
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_http_response(reader: &mut BufReader<TcpStream>) {
    let mut length = 0usize;
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "publish answered {line:?}");
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
}

/// What every subscriber adds to.
struct Tally {
    messages: u64,
    delays: Arc<Mutex<Vec<u64>>>,
    received: Arc<AtomicU64>,
    ready: Arc<AtomicU64>,
}

impl Tally {
    /// Reads lines until `messages` stamped ones came (those starting with
    /// `prefix`; other lines are framing), recording each one's delay.
    async fn receive(&self, reader: &mut BufReader<TcpStream>, prefix: &str) {
        self.ready.fetch_add(1, Ordering::AcqRel);
        let mut mine = Vec::with_capacity(self.messages as usize);
        let mut line = String::new();
        while (mine.len() as u64) < self.messages {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                break;
            }
            let Some(data) = line.strip_prefix(prefix) else {
                continue;
            };
            if let Some(at) = sent_at(data.as_bytes()) {
                mine.push(now_micros().saturating_sub(at));
                self.received.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.delays.lock().unwrap().extend(mine);
    }
}

async fn sse_subscriber(mut stream: TcpStream, path: String, tally: Tally) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut line = String::new();
    // Head, then the retry hint: subscribed.
    loop {
        line.clear();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        if line.starts_with("retry:") {
            break;
        }
    }
    // Chunked framing lines and SSE fields: only `data:` matters.
    tally.receive(&mut reader, "data: ").await;
}

async fn redis_subscriber(mut stream: TcpStream, tally: Tally) {
    stream
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nbench\r\n")
        .await
        .unwrap();
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut line = String::new();
    // The subscribe confirmation: *3, $9 subscribe, $5 bench, :1.
    for _ in 0..6 {
        line.clear();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
    }
    tally.receive(&mut reader, "").await;
}
