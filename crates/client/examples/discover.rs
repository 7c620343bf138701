//! Follows a service through a discovery cache and prints each change and the
//! instance a round-robin pick would choose.
//!
//! ```sh
//! cargo run -p roster-client --example discover -- 127.0.0.1:2379 web
//! ```

use roster_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoints, service] = args.as_slice() else {
        return Err("usage: discover ENDPOINTS SERVICE".into());
    };
    let client = Client::connect(endpoints.split(',')).await?;
    let cache = client.discover(service, "").await?;
    let mut changes = cache.changes();
    loop {
        let ids: Vec<String> = cache.instances().into_iter().map(|i| i.id).collect();
        let next = cache.pick().map(|i| i.id);
        println!("revision {}: {ids:?}; next pick {next:?}", cache.revision());
        changes.changed().await?;
    }
}
