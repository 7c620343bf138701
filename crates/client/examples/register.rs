//! Registers one instance, keeps it alive until Ctrl-C, then drains it for two
//! seconds and deregisters it.
//!
//! ```sh
//! cargo run -p roster-client --example register -- 127.0.0.1:2379 web web-1 10.0.0.1:8080
//! ```

use std::time::Duration;

use roster_client::{Client, InstanceBuilder, RegistrationOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoints, service, id, address] = args.as_slice() else {
        return Err("usage: register ENDPOINTS SERVICE ID HOST:PORT".into());
    };
    let (host, port) = address.rsplit_once(':').ok_or("HOST:PORT")?;
    let client = Client::connect(endpoints.split(',')).await?;
    let instance = InstanceBuilder::new(service, id).endpoint(host, port.parse()?, "http");
    let options = RegistrationOptions {
        ttl: Duration::from_secs(10),
        drain: Duration::from_secs(2),
    };
    let registration = client.register(instance, options).await?;
    println!(
        "registered {service}/{id} on lease {:x}; Ctrl-C to leave",
        registration.lease()
    );
    tokio::signal::ctrl_c().await?;
    registration.shutdown().await?;
    println!("drained and deregistered");
    Ok(())
}
