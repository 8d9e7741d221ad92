//! Runs the Event Hubs-compatible test endpoint for local development:
//! `cargo run -p weir-eventhubs-endpoint -- --port 5672 --hub telemetry=4 --hub alerts=2`.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use weir_eventhubs_endpoint::{Endpoint, EndpointConfig};

/// An Azure Event Hubs-compatible AMQP endpoint, in memory, for tests and local development.
#[derive(Debug, Parser)]
#[command(name = "weir-eventhubs-endpoint", version, about)]
struct Args {
    /// Address to listen on (keep it on loopback: there is no authentication).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (5672 is the AMQP port; 0 picks a free one).
    #[arg(long, default_value_t = 5672)]
    port: u16,
    /// An Event Hub to serve, as NAME=PARTITIONS; repeat for several.
    #[arg(long = "hub", value_parser = parse_hub, default_values = ["telemetry=4", "alerts=2"])]
    hubs: Vec<(String, u32)>,
}

fn parse_hub(text: &str) -> Result<(String, u32), String> {
    let (name, partitions) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PARTITIONS, found `{text}`"))?;
    let partitions: u32 = partitions
        .parse()
        .map_err(|_| format!("`{partitions}` is not a number of partitions"))?;
    if name.is_empty() || !(1..=1024).contains(&partitions) {
        return Err(format!(
            "expected a name and 1 to 1024 partitions, found `{text}`"
        ));
    }
    Ok((name.to_owned(), partitions))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = EndpointConfig {
        address: SocketAddr::new(args.host, args.port),
        hubs: args.hubs.clone(),
        ..EndpointConfig::default()
    };
    let endpoint = match Endpoint::start(config).await {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("Event Hubs test endpoint on {}", endpoint.custom_endpoint());
    for (hub, partitions) in &args.hubs {
        println!("  hub `{hub}` ({partitions} partitions)");
        println!(
            "    connection_string = \"{}\"",
            endpoint.connection_string(hub)
        );
    }
    println!("  custom_endpoint = \"{}\"", endpoint.custom_endpoint());
    println!("Events are kept in memory. Ctrl-C stops.");
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
