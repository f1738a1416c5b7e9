//! Upstream for `bench/realtime.sh`'s gRPC scenario: the `test.Echo` service
//! of the integration tests on 127.0.0.1:0 (h2c); prints its address and
//! serves until killed.

#[path = "../tests/support/grpc.rs"]
mod grpc;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (addr, _server) = grpc::start_server().await;
    println!("{addr}");
    std::future::pending::<()>().await;
}
