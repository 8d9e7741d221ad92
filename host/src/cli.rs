//! The `weir` command line: `weir run` and `weir validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config;
use crate::metrics::Metrics;
use crate::pipeline;

/// Logs at info, without the Delta libraries' per-commit chatter (override with `WEIR_LOG`).
const DEFAULT_LOG_FILTER: &str = "info,deltalake=warn,deltalake_core=warn,buoyant_kernel=warn";

/// Weir: a stream host whose business logic runs as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipelines of a configuration until their sources end or the process is stopped.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration and compile its plugins, without running anything.
    Validate {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Parses the command line and runs the command; the exit code says whether it succeeded.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The build holds two rustls crypto providers (ring for Kafka and webhooks, aws-lc-rs through
    // deltalake), so rustls cannot pick one by itself: choose before any connection is made.
    #[cfg(any(
        feature = "kafka",
        feature = "webhook",
        feature = "azure",
        feature = "eventhubs"
    ))]
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::Validate { config } => validate(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let loaded = config::load(&config_path)?;
    let running = pipeline::start(&loaded, Metrics::new()).await?;
    let shutdown = running.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop requested: draining, checkpointing and exiting");
        shutdown.shutdown();
    });
    let sinks: Vec<(String, String)> = running
        .sinks()
        .iter()
        .map(|(name, sink)| (name.clone(), sink.describe()))
        .collect();
    let metrics = running.metrics().clone();
    let report = running.wait().await.context("pipeline failed")?;
    println!();
    for (pipeline, workers) in &report.pipelines {
        let events: u64 = workers.iter().map(|w| w.events_in).sum();
        let dead: u64 = workers.iter().map(|w| w.dead_letters).sum();
        let adjusted: u64 = workers.iter().map(|w| w.late_adjusted).sum();
        let dropped: u64 = workers.iter().map(|w| w.late_dropped).sum();
        let mut late = if adjusted + dropped > 0 {
            format!(" ({adjusted} late events adjusted, {dropped} dropped)")
        } else {
            String::new()
        };
        // What the pipeline's host-owned stages counted.
        let count = |name: &str, label: Option<(&str, &str)>| -> f64 {
            metrics
                .snapshot()
                .iter()
                .filter(|((n, labels), _)| {
                    *n == name
                        && labels
                            .iter()
                            .any(|(k, v)| *k == "pipeline" && v == pipeline)
                        && label.is_none_or(|(key, value)| {
                            labels.iter().any(|(k, v)| *k == key && v == value)
                        })
                })
                .map(|(_, v)| v)
                .sum()
        };
        let duplicates = count(crate::metrics::names::DUPLICATES, None);
        if duplicates > 0.0 {
            late.push_str(&format!(", {duplicates} duplicates dropped"));
        }
        let pairs = count(crate::metrics::names::JOIN_PAIRS, None);
        let emitted = count(
            crate::metrics::names::JOIN_UNMATCHED,
            Some(("policy", "emit")),
        );
        let unmatched_dropped = count(
            crate::metrics::names::JOIN_UNMATCHED,
            Some(("policy", "drop")),
        );
        if pairs + emitted + unmatched_dropped > 0.0 {
            late.push_str(&format!(
                ", {pairs} joined pairs, {emitted} unmatched emitted alone, {unmatched_dropped} unmatched dropped"
            ));
        }
        println!(
            "pipeline `{pipeline}`: {events} events in, {dead} dead letters{late}, {} partitions",
            workers.len()
        );
    }
    for (name, place) in &sinks {
        let written: u64 = report
            .pipelines
            .values()
            .flatten()
            .map(|w| w.records_out.get(name).copied().unwrap_or(0))
            .sum();
        println!("sink `{name}`: {written} records -> {place}");
    }
    Ok(())
}

async fn validate(config_path: PathBuf) -> anyhow::Result<()> {
    let loaded = config::load(&config_path)?;
    let engine = crate::plugin::PluginEngine::new()?;
    for (pipeline, pipeline_config) in &loaded.config.pipelines {
        for stage in &pipeline_config.stages {
            let (Some(plugin), Some(kind)) = (&stage.plugin, pipeline::plugin_kind(stage)) else {
                println!(
                    "pipeline `{pipeline}`, stage `{}`: runs in the host",
                    stage.name
                );
                continue;
            };
            let path = loaded.resolve(plugin);
            let plugin = engine
                .load(&path, kind)
                .with_context(|| format!("pipeline `{pipeline}`, stage `{}`", stage.name))?;
            println!(
                "pipeline `{pipeline}`, stage `{}`: plugin {} version {} implements {}",
                stage.name,
                plugin.name(),
                plugin.version(),
                kind.world()
            );
        }
    }
    println!("{}: configuration is valid", config_path.display());
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops gracefully");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
