//! L4 listeners: `tcp` balanced across echo servers with one killed mid-test,
//! PROXY headers accepted and sent (v1 and v2), TLS passthrough routed by
//! SNI to two TLS servers, and `udp` sessions (echo and a real DNS query)
//! with affinity, idle expiry and a bounded session table.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use support::client::{client, get, Proto};
use support::{metric, GatewayProcess};

const PATIENCE: Duration = Duration::from_secs(10);

/// A TCP server that greets each connection with its name and a newline,
/// then echoes; it can be killed with its open connections.
struct TcpEcho {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpEcho {
    async fn start(name: &'static str) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let open = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                open.lock().unwrap().push(tokio::spawn(async move {
                    let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                }));
            }
        });
        tasks.lock().unwrap().push(accept);
        TcpEcho { addr, tasks }
    }

    /// Stops listening and drops every open connection.
    fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.kill();
    }
}

fn endpoints(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
    list.join(", ")
}

/// Connects through the gateway; returns the greeting and the stream.
async fn greet(addr: SocketAddr) -> (String, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).await.expect("connect to the gateway");
    let mut stream = BufReader::new(stream);
    let mut name = String::new();
    tokio::time::timeout(PATIENCE, stream.read_line(&mut name))
        .await
        .expect("a greeting in time")
        .expect("a greeting");
    (name.trim().to_owned(), stream)
}

async fn echo_line(stream: &mut BufReader<TcpStream>, line: &str) -> String {
    stream
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut back = String::new();
    tokio::time::timeout(PATIENCE, stream.read_line(&mut back))
        .await
        .expect("an echo in time")
        .unwrap();
    back.trim().to_owned()
}

#[tokio::test]
async fn tcp_is_balanced_and_survives_a_killed_endpoint() {
    let a = TcpEcho::start("a").await;
    let b = TcpEcho::start("b").await;
    let c = TcpEcho::start("c").await;
    let gw = GatewayProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "db"
listen = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"

[[clusters]]
name = "echo"
endpoints = [{}]
outlier_detection = {{ consecutive_failures = 1, base_ejection = "30s" }}
"#,
        endpoints(&[a.addr, b.addr, c.addr])
    ));
    let addr = gw.listeners["db"];

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut held = Vec::new();
    for i in 0..30 {
        let (name, mut stream) = greet(addr).await;
        assert_eq!(echo_line(&mut stream, &format!("line {i}")).await, format!("line {i}"));
        *seen.entry(name.clone()).or_default() += 1;
        if name == "c" && held.is_empty() {
            held.push(stream);
        }
    }
    assert_eq!(seen.len(), 3, "round robin reaches every endpoint: {seen:?}");
    assert!(seen.values().all(|&n| n == 10), "{seen:?}");

    // c dies: its open connection ends at the client...
    c.kill();
    let mut open = held.pop().unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(PATIENCE, open.read_to_end(&mut rest))
        .await
        .expect("the connection to the killed endpoint ends")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing after the endpoint died");
    // ...and every new connection still gets through (a failed connect is
    // retried on another endpoint, then c is ejected).
    let mut after: HashMap<String, usize> = HashMap::new();
    for i in 0..30 {
        let (name, mut stream) = greet(addr).await;
        assert_eq!(
            echo_line(&mut stream, &format!("after {i}")).await,
            format!("after {i}")
        );
        *after.entry(name).or_default() += 1;
    }
    assert!(!after.contains_key("c"), "{after:?}");
    assert_eq!(after.values().sum::<usize>(), 30);

    let scrape = get(&client(Proto::H1), &gw.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(
            &scrape,
            r#"switchyard_l4_connections_total{listener="db",result="proxied"}"#
        ),
        60.0
    );
    assert!(
        metric(
            &scrape,
            r#"switchyard_l4_connections_total{listener="db",result="connect_failed"}"#
        ) >= 1.0
    );
    assert!(
        metric(
            &scrape,
            r#"switchyard_l4_bytes_total{direction="from_client",listener="db"}"#
        ) > 0.0
    );
    assert!(
        metric(
            &scrape,
            r#"switchyard_l4_bytes_total{direction="to_client",listener="db"}"#
        ) > 0.0
    );
    drop((a, b));
}

/// A server that answers each connection with the PROXY header it received,
/// as text (v1) or hex (v2), then closes.
async fn proxy_header_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 512];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = &buf[..n];
                let answer = if head.starts_with(b"PROXY ") {
                    let end = head.windows(2).position(|w| w == b"\r\n").unwrap_or(n);
                    String::from_utf8_lossy(&head[..end]).into_owned()
                } else {
                    head.iter().map(|b| format!("{b:02x}")).collect()
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn proxy_headers_are_accepted_from_trusted_peers_and_sent_upstream() {
    let upstream = proxy_header_echo().await;
    let gw = GatewayProcess::start(&format!(
        r#"
[[listeners]]
name = "v1"
listen = "127.0.0.1:0"
protocol = "tcp"
cluster = "v1"
proxy_protocol = true
trusted_proxies = ["127.0.0.1/32"]

[[listeners]]
name = "v2"
listen = "127.0.0.1:0"
protocol = "tcp"
cluster = "v2"

[[clusters]]
name = "v1"
endpoints = [{{ address = "{upstream}" }}]
proxy_protocol = "v1"

[[clusters]]
name = "v2"
endpoints = [{{ address = "{upstream}" }}]
proxy_protocol = "v2"
"#
    ));

    // A trusted load balancer names the client; the endpoint hears of that client.
    let v1 = gw.listeners["v1"];
    let mut stream = TcpStream::connect(v1).await.unwrap();
    stream
        .write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 443\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 {}", v1.port()));

    // Version 2: the binary signature, PROXY command over TCP/IPv4, then the
    // client's and the listener's addresses and ports.
    let v2 = gw.listeners["v2"];
    let mut stream = TcpStream::connect(v2).await.unwrap();
    let client_port = stream.local_addr().unwrap().port();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let expected = format!(
        "0d0a0d0a000d0a515549540a{}{}{}{}{:04x}{:04x}",
        "21",
        "11",
        "000c",
        "7f0000017f000001",
        client_port,
        v2.port()
    );
    assert_eq!(answer, expected);
}

/// A TLS server for `name` that writes its name after the handshake.
async fn tls_server(name: &'static str) -> (SocketAddr, CertificateDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(name.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, der)
}

async fn tls_hello(gateway: SocketAddr, name: &str, trusted: &CertificateDer<'static>) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(gateway).await?;
    let mut tls = connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    Ok(answer)
}

#[tokio::test]
async fn tls_passthrough_routes_by_server_name() {
    let (a, a_cert) = tls_server("a.example").await;
    let (b, b_cert) = tls_server("b.example").await;
    let gw = GatewayProcess::start(&format!(
        r#"
[[listeners]]
name = "tls"
listen = "127.0.0.1:0"
protocol = "tcp"
sni_routes = [
  {{ server_names = ["a.example"], cluster = "a" }},
  {{ server_names = ["*.b.example", "b.example"], cluster = "b" }},
]

[[clusters]]
name = "a"
endpoints = [{{ address = "{a}" }}]

[[clusters]]
name = "b"
endpoints = [{{ address = "{b}" }}]
"#
    ));
    let addr = gw.listeners["tls"];
    // The gateway holds no key: each client's handshake is with its own
    // backend, verified against that backend's certificate.
    assert_eq!(tls_hello(addr, "a.example", &a_cert).await.unwrap(), "a.example");
    assert_eq!(tls_hello(addr, "b.example", &b_cert).await.unwrap(), "b.example");
    assert_eq!(tls_hello(addr, "A.Example", &a_cert).await.unwrap(), "a.example");
    // No rule and no default cluster: the connection is closed.
    assert!(tls_hello(addr, "c.example", &a_cert).await.is_err());
    // Plain text is not a ClientHello: closed too.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

/// A UDP server that answers each datagram with its name, a space and the datagram.
async fn udp_echo(name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let mut reply = format!("{name} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    addr
}

async fn ask(socket: &UdpSocket, to: SocketAddr, message: &[u8], wait: Duration) -> Option<Vec<u8>> {
    socket.send_to(message, to).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => {
            assert_eq!(from, to, "the reply comes from the gateway's address");
            Some(buf[..n].to_vec())
        }
        _ => None,
    }
}

#[tokio::test]
async fn udp_sessions_keep_their_endpoint_expire_and_are_bounded() {
    let a = udp_echo("a").await;
    let b = udp_echo("b").await;
    let gw = GatewayProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "udp"
listen = "127.0.0.1:0"
protocol = "udp"
cluster = "echo"
idle_timeout = "2s"
max_sessions = 2

[[clusters]]
name = "echo"
endpoints = [{}]
"#,
        endpoints(&[a, b])
    ));
    let addr = gw.listeners["udp"];
    let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let second = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let name_of = |reply: Vec<u8>| String::from_utf8(reply).unwrap().split(' ').next().unwrap().to_owned();

    // Each client keeps its endpoint for the whole session; the two are spread.
    let one = name_of(ask(&first, addr, b"hello", PATIENCE).await.expect("a reply"));
    let two = name_of(ask(&second, addr, b"hello", PATIENCE).await.expect("a reply"));
    assert_ne!(one, two, "round robin spreads sessions");
    for i in 0..10 {
        let reply = ask(&first, addr, format!("again {i}").as_bytes(), PATIENCE)
            .await
            .unwrap();
        assert_eq!(String::from_utf8(reply).unwrap(), format!("{one} again {i}"));
    }
    // A large datagram passes whole.
    let big = vec![b'x'; 60_000];
    let reply = ask(&second, addr, &big, PATIENCE).await.unwrap();
    assert_eq!(reply.len(), two.len() + 1 + big.len());

    // The table holds two sessions: a third client is dropped...
    let third = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert!(ask(&third, addr, b"let me in", Duration::from_millis(300))
        .await
        .is_none());
    // ...until the others go quiet past the idle timeout (asked again
    // every 300 ms, for at most 10 s).
    let mut admitted = false;
    for _ in 0..33 {
        if ask(&third, addr, b"now?", Duration::from_millis(300)).await.is_some() {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "the third client was never admitted");

    let scrape = get(&client(Proto::H1), &gw.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(
            &scrape,
            r#"switchyard_udp_sessions_total{listener="udp",result="opened"}"#
        ),
        3.0
    );
    assert!(
        metric(
            &scrape,
            r#"switchyard_udp_sessions_total{listener="udp",result="dropped_datagram"}"#
        ) >= 1.0
    );
    assert_eq!(
        metric(&scrape, r#"switchyard_udp_sessions_active{listener="udp"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_dns_query_through_a_udp_listener() {
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::{Name, RData, RecordType};

    let ns = support::dns::start().await;
    ns.zone
        .lock()
        .unwrap()
        .a
        .insert("db.internal".into(), vec!["192.0.2.7".parse().unwrap()]);
    let gw = GatewayProcess::start(&format!(
        r#"
[[listeners]]
name = "dns"
listen = "127.0.0.1:0"
protocol = "udp"
cluster = "dns"

[[clusters]]
name = "dns"
endpoints = [{{ address = "{}" }}]
"#,
        ns.addr
    ));
    let mut query = Message::new();
    query
        .set_id(4242)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii("db.internal.").unwrap(), RecordType::A));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let reply = ask(&socket, gw.listeners["dns"], &query.to_vec().unwrap(), PATIENCE)
        .await
        .expect("a DNS answer through the gateway");
    let answer = Message::from_vec(&reply).unwrap();
    assert_eq!(answer.id(), 4242);
    assert_eq!(answer.message_type(), MessageType::Response);
    let addresses: Vec<String> = answer
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(addresses, ["192.0.2.7"]);
}

#[tokio::test]
async fn a_udp_session_whose_endpoint_refuses_moves_to_another() {
    let alive = udp_echo("alive").await;
    // A port nobody listens on: datagrams to it draw ICMP "port unreachable".
    let dead = {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.local_addr().unwrap()
    };
    let gw = GatewayProcess::start(&format!(
        r#"
[[listeners]]
name = "udp"
listen = "127.0.0.1:0"
protocol = "udp"
cluster = "echo"

[[clusters]]
name = "echo"
endpoints = [{}]
"#,
        endpoints(&[dead, alive])
    ));
    let addr = gw.listeners["udp"];
    // Two clients: round robin puts one of them on the dead endpoint. Each
    // keeps asking (as a resolver would); both get answers from the live one.
    for _ in 0..2 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut answer = None;
        for _ in 0..10 {
            if let Some(reply) = ask(&socket, addr, b"anyone?", Duration::from_millis(300)).await {
                answer = Some(String::from_utf8(reply).unwrap());
                break;
            }
        }
        assert_eq!(answer.as_deref(), Some("alive anyone?"));
    }
}

/// A reload that takes a UDP session's endpoint out of the listener's
/// cluster lets the session go on for `removed_route_grace`; then it ends,
/// counted, and the client's next datagram opens a session on the new
/// configuration.
#[tokio::test]
async fn a_udp_session_keeps_its_endpoint_through_a_reload_for_the_grace_period() {
    let a = udp_echo("a").await;
    let b = udp_echo("b").await;
    let config = |endpoint: SocketAddr| {
        format!(
            "[runtime]\nremoved_route_grace = \"4s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"udp\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"udp\"\ncluster = \"echo\"\nidle_timeout = \"60s\"\n\n\
             [[clusters]]\nname = \"echo\"\nendpoints = [{}]\n",
            endpoints(&[endpoint])
        )
    };
    let gw = GatewayProcess::start(&config(a));
    let addr = gw.listeners["udp"];
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let reply = ask(&socket, addr, b"before", PATIENCE).await.expect("a reply");
    assert_eq!(reply, b"a before");

    gw.rewrite_config(&config(b));
    gw.signal("HUP");
    assert!(
        gw.wait_log(PATIENCE, |v| support::gateway::has_message(v, "configuration reloaded"))
            .await
    );
    // A second after the reload (several sweeps of the session table, well
    // inside the grace period) the session still goes to `a`...
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reply = ask(&socket, addr, b"during", PATIENCE).await.expect("a reply");
    assert_eq!(reply, b"a during", "the session kept its endpoint");
    // ... and once the grace period is over, to `b` (asked every 200 ms,
    // for at most 15 s).
    let mut moved = false;
    for _ in 0..75 {
        if let Some(reply) = ask(&socket, addr, b"after", Duration::from_millis(200)).await {
            if reply == b"b after" {
                moved = true;
                break;
            }
            assert_eq!(reply, b"a after");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(moved, "the session never moved to the new endpoint");
    let scrape = get(&client(Proto::H1), &gw.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(
            &scrape,
            r#"switchyard_l4_connections_total{listener="udp",result="drained"}"#
        ),
        1.0
    );
}
