//! The command line: `check` reports every problem with file, line, column and
//! key; the shipped examples are valid; `demo` serves at once with no files.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::client::{client, get, Proto};

fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// Runs `switchyard check` on `text`; returns (exit code, stderr).
fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = switchyard().args(["check", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "bad.toml");
    (out.status.code().unwrap_or(-1), stderr)
}

const BASE: &str = r#"[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[clusters]]
name = "api"
endpoints = [{ address = "127.0.0.1:9001" }]

[[routes]]
name = "api"
cluster = "api"
"#;

#[test]
fn check_accepts_a_good_file() {
    let (code, stderr) = check(BASE);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn check_reports_each_kind_of_mistake_with_its_location() {
    // (what is wrong, text appended to or replacing part of BASE, expected line prefix)
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown key",
            "[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:1\"\nlisen = \"1\"\n",
            "bad.toml:16:1: `listeners[1].lisen`: unknown key",
        ),
        (
            "bad duration",
            "[runtime]\ndrain_timeout = \"10 parsecs\"\n",
            "bad.toml:14:1: `runtime.drain_timeout`: invalid duration \"10 parsecs\"",
        ),
        (
            "duration without unit",
            "[[routes]]\nname = \"t\"\ncluster = \"api\"\ntimeout = \"30\"\n",
            "bad.toml:16:1: `routes[1].timeout`: duration \"30\" has no unit",
        ),
        (
            "missing cluster",
            "[[routes]]\nname = \"r\"\ncluster = \"apii\"\n",
            "bad.toml:15:1: `routes[1].cluster`: no cluster named \"apii\" (did you mean \"api\"?)",
        ),
        (
            "duplicate name",
            "[[clusters]]\nname = \"api\"\nendpoints = [{ address = \"127.0.0.1:9002\" }]\n",
            "bad.toml:14:1: `clusters[1].name`: duplicate cluster name \"api\"",
        ),
        (
            "bad listen address",
            "[[listeners]]\nname = \"x\"\nlisten = \"localhost\"\n",
            "bad.toml:15:1: `listeners[1].listen`: invalid address \"localhost\"",
        ),
        (
            "endpoint without port",
            "[[clusters]]\nname = \"b\"\nendpoints = [{ address = \"10.0.0.1\" }]\n",
            "bad.toml:15:16: `clusters[1].endpoints[0].address`: invalid address \"10.0.0.1\": missing port",
        ),
        (
            "unknown balancer",
            "[[clusters]]\nname = \"b\"\nbalancer = \"round-robin\"\nendpoints = [{ address = \"127.0.0.1:1\" }]\n",
            "bad.toml:15:1: `clusters[1].balancer`: unknown balancer \"round-robin\" (did you mean \"round_robin\"?)",
        ),
        (
            "bad regex",
            "[[routes]]\nname = \"r\"\nmatch = { path_regex = \"/(a\" }\ncluster = \"api\"\n",
            "bad.toml:15:11: `routes[1].match.path_regex`: invalid regex \"/(a\"",
        ),
        (
            "bad CIDR",
            "[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:1\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "bad.toml:16:20: `listeners[1].trusted_proxies[0]`: invalid CIDR \"10.0.0.0/33\"",
        ),
        (
            "bad size",
            "[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:1\"\nmax_header_size = \"lots\"\n",
            "bad.toml:16:1: `listeners[1].max_header_size`: invalid size \"lots\"",
        ),
        (
            "bad header name",
            "[[routes]]\nname = \"r\"\ncluster = \"api\"\nrequest_headers = { set = { \"bad header\" = \"x\" } }\n",
            "bad.toml:16:29: `routes[1].request_headers.set.bad header`: invalid header name \"bad header\"",
        ),
        (
            "conflicting path matchers",
            "[[routes]]\nname = \"r\"\nmatch = { path = \"/a\", path_prefix = \"/b\" }\ncluster = \"api\"\n",
            "bad.toml:15:24: `routes[1].match.path_prefix`: use only one of `path`, `path_prefix` and `path_regex`",
        ),
        (
            "route without action",
            "[[routes]]\nname = \"r\"\n",
            "bad.toml:13:1: `routes[1]`: a route needs one of `cluster`, `redirect`, `direct`, `static`, `hub` or `aggregate`",
        ),
        (
            "bad redirect status",
            "[[routes]]\nname = \"r\"\nredirect = { location = \"/x\", status = 200 }\n",
            "bad.toml:15:31: `routes[1].redirect.status`: redirect status 200 is not a redirect",
        ),
        (
            "unknown listener",
            "[[routes]]\nname = \"r\"\nlistener = \"publik\"\ncluster = \"api\"\n",
            "bad.toml:15:1: `routes[1].listener`: no listener named \"publik\" (did you mean \"public\"?)",
        ),
        (
            "udp listener without a cluster",
            "[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"udp\"\n",
            "bad.toml:13:1: `listeners[1].cluster`: a udp listener forwards to a cluster",
        ),
        (
            "L4 key on an http listener",
            "[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:1\"\ncluster = \"api\"\n",
            "bad.toml:16:1: `listeners[1].cluster`: `cluster` is for `protocol = \"tcp\" or \"udp\"` listeners, not \"http\"",
        ),
        (
            "gRPC-Web to an HTTP/1.1 cluster",
            "[[routes]]\nname = \"r\"\ncluster = \"api\"\ngrpc_web = true\n",
            "bad.toml:16:1: `routes[1].grpc_web`: gRPC goes over HTTP/2: cluster \"api\" needs `protocol = \"http2\"`",
        ),
        (
            "connect_attempts out of range",
            "[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"tcp\"\ncluster = \"api\"\nconnect_attempts = 1000000\n",
            "bad.toml:18:1: `listeners[1].connect_attempts`: use 1 to 10",
        ),
        (
            "SNI rule naming no cluster",
            "[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nsni_routes = [{ server_names = [\"a.example\"], cluster = \"db\" }]\n",
            "bad.toml:17:47: `listeners[1].sni_routes[0].cluster`: no cluster named \"db\"",
        ),
        (
            "wrong type",
            "[runtime]\nworkers = \"four\"\n",
            "bad.toml:14:11: invalid type: string \"four\", expected usize",
        ),
        (
            "cache on a route that does not forward",
            "[[routes]]\nname = \"r\"\ndirect = { status = 200 }\ncache = { ttl = \"1m\" }\n",
            "bad.toml:16:1: `routes[1].cache`: only routes with a `cluster` take `cache`",
        ),
        (
            "cache key with both query lists",
            "[[routes]]\nname = \"r\"\ncluster = \"api\"\ncache = { key = { query_include = [\"a\"], query_exclude = [\"b\"] } }\n",
            "bad.toml:16:42: `routes[1].cache.key.query_exclude`: use `query_include` or `query_exclude`, not both",
        ),
        (
            "cache tag header that is no header name",
            "[[routes]]\nname = \"r\"\ncluster = \"api\"\ncache = { tag_header = \"bad header\" }\n",
            "bad.toml:16:11: `routes[1].cache.tag_header`: invalid header name \"bad header\"",
        ),
        (
            "bad store size",
            "[cache]\nmax_size = \"lots\"\n",
            "bad.toml:14:1: `cache.max_size`: invalid size \"lots\"",
        ),
        (
            "idempotency failure policy without cluster mode",
            "[[routes]]\nname = \"r\"\ncluster = \"api\"\nidempotency = { on_redis_error = \"allow\" }\n",
            "bad.toml:16:17: `routes[1].idempotency.on_redis_error`: only applies in cluster mode",
        ),
        (
            "aggregate calls that use each other",
            "[[routes]]\nname = \"r\"\naggregate = { calls = [{ name = \"a\", cluster = \"api\", path = \"/a/{call.b/id}\" }, { name = \"b\", cluster = \"api\", path = \"/b/{call.a/id}\" }] }\n",
            "bad.toml:15:55: `routes[1].aggregate.calls[0].path`: the calls use each other in a cycle: a -> b -> a",
        ),
        (
            "aggregate path variable without a path template",
            "[[routes]]\nname = \"r\"\naggregate = { calls = [{ name = \"a\", cluster = \"api\", path = \"/a/{path.id}\" }] }\n",
            "bad.toml:15:55: `routes[1].aggregate.calls[0].path`: {path.id} needs a path template with a {id} segment",
        ),
        (
            "transform rename across parents",
            "[[routes]]\nname = \"r\"\ncluster = \"api\"\ntransform = { response = { rename = { \"/a/b\" = \"/c\" } } }\n",
            "bad.toml:16:39: `routes[1].transform.response.rename./a/b`: a rename keeps the parent",
        ),
        (
            "aggregate forwarding a header of the client's own body",
            "[[routes]]\nname = \"r\"\naggregate = { forward_headers = [\"content-length\"], calls = [{ name = \"a\", cluster = \"api\", path = \"/a\" }] }\n",
            "bad.toml:15:34: `routes[1].aggregate.forward_headers[0]`: \"content-length\" describes the client's own connection or body",
        ),
        ("TOML syntax", "[[routes]\n", "bad.toml:13:"),
        (
            "upgrade socket path too long",
            "[runtime]\nupgrade_socket = \"/tmp/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.sock\"\n",
            "bad.toml:14:1: `runtime.upgrade_socket`: a Unix socket path must be 1 to 107 bytes long, not 119",
        ),
        (
            "exposed admin without token",
            "[admin]\nlisten = \"0.0.0.0:9901\"\n",
            "bad.toml:13:2: `admin.token`: the admin API listens on non-loopback address",
        ),
    ];
    let mut failures = Vec::new();
    for (what, extra, want) in cases {
        let (code, stderr) = check(&format!("{BASE}\n{extra}"));
        if code != 1 || !stderr.lines().any(|l| l.starts_with(&format!("error: {want}"))) {
            failures.push(format!(
                "{what} (exit {code}): want a line starting with\n  error: {want}\ngot:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn check_reports_all_problems_at_once() {
    let text = "[[listeners]]\nname = \"p\"\nlisten = \"nowhere\"\ncolour = 1\n\n[[routes]]\ncluster = \"none\"\ntimeout = \"fast\"\n";
    let (code, stderr) = check(text);
    assert_eq!(code, 1);
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error: ")).count(),
        4,
        "{stderr}"
    );
    assert!(stderr.contains("4 error(s)"), "{stderr}");
}

#[test]
fn shipped_examples_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("examples/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = switchyard().args(["check", "--config"]).arg(&path).output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "found {checked} examples");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_at_once_and_exits_cleanly() {
    let (port, admin) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let c = client(Proto::H1);
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "demo gateway did not start");
    let mut backends = std::collections::HashSet::new();
    for _ in 0..3 {
        let reply = get(&c, &format!("{base}/api/users"), &[]).await;
        assert_eq!(reply.json()["path"], "/users");
        backends.insert(reply.json()["backend"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        backends.len(),
        3,
        "round robin over the three demo backends: {backends:?}"
    );
    assert_eq!(
        get(&c, &format!("{base}/hello"), &[]).await.text(),
        "hello from switchyard\n"
    );
    assert_eq!(
        get(&client(Proto::H2), &format!("{base}/api/h2"), &[]).await.status,
        200
    );
    assert_eq!(
        get(&c, &format!("http://127.0.0.1:{admin}/ready"), &[]).await.status,
        200
    );

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-s", "TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("demo exits")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout)
        .await
        .unwrap();
    assert!(
        stdout.contains(&format!("curl -s http://127.0.0.1:{port}/api/users")),
        "prints what to try:\n{stdout}"
    );
}

#[test]
fn upgrade_without_a_running_process_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, BASE).unwrap();
    let out = switchyard().args(["upgrade", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no running switchyard answers on")
            && stderr.contains("is it running with this configuration file?"),
        "{stderr}"
    );
}
