//! Load tool for `bench/tcp.sh`: bulk TCP throughput.
//!
//!     tcp_load source              # a server on 127.0.0.1:0 that sends zeros to
//!                                  # every connection until it closes; prints its address
//!     tcp_load sink ADDR CONNS MIB # CONNS connections to ADDR, each reading MIB MiB;
//!                                  # prints the total MB/s
//!
//! Loopback only; each connection reads a fixed amount, so a run is bounded.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("source") => source().await,
        Some("sink") if args.len() == 4 => {
            let conns: usize = args[2].parse().expect("CONNS is a number");
            let mib: u64 = args[3].parse().expect("MIB is a number");
            sink(&args[1], conns, mib).await;
        }
        _ => {
            eprintln!("usage: tcp_load source | tcp_load sink ADDR CONNS MIB");
            std::process::exit(2);
        }
    }
}

async fn source() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("{}", listener.local_addr().unwrap());
    let zeros = vec![0u8; 256 * 1024];
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let zeros = zeros.clone();
        tokio::spawn(async move { while stream.write_all(&zeros).await.is_ok() {} });
    }
}

async fn sink(addr: &str, conns: usize, mib: u64) {
    let want = mib << 20;
    let started = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let addr = addr.to_owned();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(&addr).await.expect("connect");
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0u64;
                let deadline = Instant::now() + Duration::from_secs(120);
                while got < want && Instant::now() < deadline {
                    let n = stream.read(&mut buf).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                }
                got
            })
        })
        .collect();
    let mut total = 0u64;
    for task in tasks {
        total += task.await.expect("sink task");
    }
    let secs = started.elapsed().as_secs_f64();
    if total < want * conns as u64 {
        eprintln!("short read: {total} of {} bytes", want * conns as u64);
        std::process::exit(1);
    }
    println!("{:.0}", total as f64 / secs / 1e6);
}
