//! A small HTTP service that registers itself with an HTTP health check and
//! shuts down cleanly on SIGTERM or Ctrl-C: it drains (watchers and load
//! balancers stop sending new work), keeps serving for the drain period, then
//! deregisters and exits 0.
//!
//! ```sh
//! cargo run -p roster-client --example http_service -- 127.0.0.1:2379 127.0.0.1:8080
//! ```

use std::time::Duration;

use roster_client::{Client, InstanceBuilder, RegistrationOptions};
use roster_proto::registry::{Check, CheckKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoints, listen] = args.as_slice() else {
        return Err("usage: http_service ENDPOINTS HOST:PORT".into());
    };
    let listener = TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let reply =
                    "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n";
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    let client = Client::connect(endpoints.split(',')).await?;
    let check = Check {
        kind: CheckKind::Http as i32,
        target: format!("http://{address}/"),
        interval_ms: 5_000,
        ..Default::default()
    };
    let instance = InstanceBuilder::new("hello", format!("hello-{}", address.port()))
        .endpoint(address.ip().to_string(), address.port(), "http")
        .check(check);
    let options = RegistrationOptions {
        ttl: Duration::from_secs(10),
        drain: Duration::from_secs(3),
    };
    let registration = client.register(instance, options).await?;
    println!(
        "serving on {address}, registered on lease {:x}",
        registration.lease()
    );
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("draining, then deregistering");
    registration.shutdown().await?;
    Ok(())
}
