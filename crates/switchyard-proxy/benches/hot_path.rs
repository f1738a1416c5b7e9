//! Pure hot-path logic, measured without I/O: route lookup in a realistic route
//! table, balancer picks, forwarding-header rewriting and request ids.
//!
//!     cargo bench -p switchyard-proxy --bench hot_path

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Version};
use switchyard_proxy::headers::{set_forwarding, strip_hop_by_hop, Forwarding};
use switchyard_proxy::request_id;
use switchyard_proxy::router::{RequestView, Router};

/// 50 routes: exact hosts, wildcards, prefixes, templates, regexes, headers.
fn route_table() -> String {
    let mut text = String::from(
        "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n[[clusters]]\nname = \"c\"\nendpoints = [{ address = \"127.0.0.1:2\" }]\n",
    );
    for i in 0..10 {
        text += &format!("[[routes]]\nname = \"host{i}\"\nmatch = {{ host = \"svc{i}.example.com\", path_prefix = \"/v{i}/\" }}\ncluster = \"c\"\n");
        text += &format!(
            "[[routes]]\nname = \"wild{i}\"\nmatch = {{ host = \"*.zone{i}.example.com\" }}\ncluster = \"c\"\n"
        );
        text += &format!(
            "[[routes]]\nname = \"prefix{i}\"\nmatch = {{ path_prefix = \"/api/service{i}/\" }}\ncluster = \"c\"\n"
        );
        text += &format!(
            "[[routes]]\nname = \"tmpl{i}\"\nmatch = {{ path = \"/users{i}/{{id}}/orders\" }}\ncluster = \"c\"\n"
        );
        text += &format!(
            "[[routes]]\nname = \"hdr{i}\"\nmatch = {{ path_prefix = \"/api/\", headers = [{{ name = \"x-tenant\", value = \"t{i}\" }}] }}\ncluster = \"c\"\n"
        );
    }
    text += "[[routes]]\nname = \"fallback\"\ncluster = \"c\"\n";
    text
}

fn bench_router(c: &mut Criterion) {
    let config = switchyard_config::parse_toml(&route_table(), "bench.toml").expect("valid bench config");
    let router: Router = Router::new(config.routes);
    let headers = HeaderMap::new();
    let mut tenant = HeaderMap::new();
    tenant.insert("x-tenant", HeaderValue::from_static("t7"));
    let get = Method::GET;
    let cases = [
        ("exact_host_prefix", Some("svc3.example.com"), "/v3/items", &headers),
        ("wildcard_host", Some("a.zone5.example.com"), "/", &headers),
        ("path_prefix", Some("other.org"), "/api/service9/x", &headers),
        ("template", None, "/users4/42/orders", &headers),
        ("header_match", None, "/api/things", &tenant),
        ("fallback", Some("unknown.org"), "/nothing/here", &headers),
    ];
    let mut group = c.benchmark_group("router_find_50_routes");
    for (name, host, path, headers) in cases {
        let view = RequestView {
            method: &get,
            host,
            path,
            query: None,
            headers,
        };
        assert!(router.find(&view).is_some());
        group.bench_function(name, |b| b.iter(|| black_box(router.find(black_box(&view)))));
    }
    group.finish();
}

fn bench_headers(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    let peer_value = HeaderValue::from_static("192.0.2.10");
    let host = HeaderValue::from_static("api.example.com");
    let fwd = Forwarding {
        peer: "192.0.2.10".parse().unwrap(),
        peer_value: &peer_value,
        trusted: false,
        proto: "http",
        host: Some(&host),
        version: Version::HTTP_11,
    };
    c.bench_function("strip_and_forwarding_headers", |b| {
        b.iter(|| {
            let mut h = base.clone();
            strip_hop_by_hop(&mut h);
            set_forwarding(&mut h, &fwd);
            black_box(h)
        })
    });
    let empty = HeaderMap::new();
    c.bench_function("request_id_generate", |b| {
        b.iter(|| black_box(request_id::from_request_or_new(&empty)))
    });
}

criterion_group!(benches, bench_router, bench_headers);
criterion_main!(benches);
