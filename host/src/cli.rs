//! The `weir` command line: `weir run`, `weir validate` and `weir plugin` (see
//! [`crate::plugin_cli`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config;
use crate::metrics::Metrics;
use crate::pipeline;
use crate::plugin_cli::{self, PluginCommand};

/// Logs at info, without the client libraries' chatter (override with `WEIR_LOG`): the Delta
/// libraries' per-commit lines and the error they log for a concurrent commit (which the Delta
/// sink redoes, saying so itself); the Event Hubs client's per-link lines, and the AMQP engine's
/// errors when a connection is closed under it (a partition moving to another process). Weir
/// logs the failures that matter itself, with their context.
const DEFAULT_LOG_FILTER: &str = "info,deltalake=warn,deltalake_core=warn,\
    deltalake_core::kernel::transaction=off,buoyant_kernel=warn,azure_messaging_eventhubs=warn,\
    azure_core_amqp=warn,fe2o3_amqp=off";

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
    /// Write, build and check plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

/// Parses the command line and runs the command; the exit code says whether it succeeded.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The build holds two rustls crypto providers (ring for Kafka and webhooks, aws-lc-rs through
    // deltalake), so rustls cannot pick one by itself: choose before any connection is made.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            // Blocking (cargo, one compilation) on the main thread, which nothing else needs.
            Command::Plugin { command } => plugin_command(command),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once. Many of our errors already end with their cause's text
/// (`cannot read configuration x.toml: No such file or directory`); anyhow's `{:#}` would add the
/// cause again.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !previous.ends_with(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
        previous = message;
    }
    text
}

/// Runs a `weir plugin` command.
fn plugin_command(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New {
            name,
            kind,
            lang,
            dir,
            sdk,
            sdk_git,
        } => {
            let sdk = match (sdk, sdk_git) {
                (Some(path), _) => plugin_cli::SdkSource::Path(path),
                (None, Some(url)) => plugin_cli::SdkSource::Git(url),
                (None, None) => plugin_cli::SdkSource::embedded()?,
            };
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let plugin = plugin_cli::NewPlugin {
                name,
                kind,
                lang,
                dir,
                sdk,
            };
            let files = plugin_cli::new(&plugin)?;
            println!(
                "created {} plugin `{}` in {}:",
                kind.name(),
                plugin.name,
                plugin.dir.display()
            );
            for file in files {
                println!("  {}", file.display());
            }
            let next = match lang {
                plugin_cli::Lang::Rust => "cargo test && weir plugin build",
                plugin_cli::Lang::Python => "python -m pytest && weir plugin test",
                plugin_cli::Lang::Javascript => "node --test && weir plugin test",
            };
            println!("next: cd {} && {next}", plugin.dir.display());
            Ok(())
        }
        PluginCommand::Build { dir, sign } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            let built = plugin_cli::build_signed(&dir, sign.as_deref())?;
            println!("{built}");
            Ok(())
        }
        PluginCommand::Keygen { out } => {
            println!("{}", plugin_cli::keygen(&out)?);
            Ok(())
        }
        PluginCommand::Sign {
            file,
            key,
            detached,
        } => {
            println!("{}", plugin_cli::sign_file(&file, &key, detached)?);
            Ok(())
        }
        PluginCommand::Test { path, bless } => plugin_test(path, bless),
        PluginCommand::Deploy {
            file,
            to,
            token,
            ca_file,
            stage,
            wait,
            shadow,
            shadow_for,
            activate_if_equal,
        } => {
            let remote = plugin_cli::remote_of(to, token, ca_file)?;
            let within = Duration::from_secs(shadow_for.unwrap_or(wait));
            let wait = Duration::from_secs(wait);
            if let Some(events) = shadow {
                let report = plugin_cli::shadow(&remote, &file, &stage, events, within)?;
                if !activate_if_equal {
                    println!(
                        "nothing was activated (add --activate-if-equal to activate an equal version)"
                    );
                    return Ok(());
                }
                if report["equal"] != true {
                    return Err(plugin_cli::PluginCliError::NotEqual {
                        reason: "the shadow run found differences or did not end (see its report)"
                            .into(),
                    }
                    .into());
                }
                println!("the versions agree: activating");
            }
            plugin_cli::deploy(&remote, &file, &stage, wait)?;
            Ok(())
        }
        PluginCommand::List { admin } => {
            print!("{}", plugin_cli::list(&admin.remote()?)?);
            Ok(())
        }
        PluginCommand::Status { admin, stage } => {
            print!("{}", plugin_cli::status(&admin.remote()?, &stage)?);
            Ok(())
        }
        PluginCommand::Rollback {
            admin,
            stage,
            version,
        } => {
            let remote = admin.remote()?;
            println!(
                "{}",
                plugin_cli::rollback(&remote, &stage, version.as_deref())?
            );
            Ok(())
        }
    }
}

/// `weir plugin test`: runs the cases and prints each one's verdict and diff.
fn plugin_test(path: Option<PathBuf>, bless: bool) -> anyhow::Result<()> {
    let path = path.unwrap_or_else(|| PathBuf::from("."));
    let (target, built) = plugin_cli::target(&path)?;
    if let Some(built) = built {
        println!("{built}");
    }
    let results = plugin_cli::test(&target, bless)?;
    let failed = results.iter().filter(|r| !r.passed()).count();
    for result in &results {
        if result.passed() {
            let verb = if bless { "blessed" } else { "ok" };
            println!("case {}: {verb}", result.name);
        } else {
            println!("case {}: FAILED ({})", result.name, result.dir.display());
            print!("{}", result.diff());
        }
    }
    if failed > 0 {
        println!("to accept these outputs as expected: weir plugin test --bless");
        return Err(plugin_cli::PluginCliError::TestsFailed {
            failed,
            total: results.len(),
        }
        .into());
    }
    println!("{} case(s) passed", results.len());
    Ok(())
}

/// How often the watcher looks at the plugin files.
const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(50);

async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    // Listen for SIGTERM/SIGINT before anything starts, so that a stop requested during start-up
    // is a graceful one too.
    let stop_signal = StopSignal::listen();
    let loaded = config::load(&config_path)?;
    let config = &loaded.config;
    let services = pipeline::Services {
        metrics: Metrics::new(),
        ..pipeline::Services::default()
    };
    // The admin API first: it answers /healthz (and 503 on /readyz) while the pipelines start,
    // and a port already in use is refused before anything runs.
    let admin = match &config.admin {
        Some(admin) => Some(
            crate::admin::serve(
                &crate::admin::AdminSettings::from_config(admin, &loaded),
                services.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let running = pipeline::start_with(&loaded, services.clone()).await?;
    // The service around the pipelines: plugin file watcher, health alerts.
    let watcher = config.plugins.watch.then(|| {
        tokio::spawn(crate::plugin::watch::watch(
            services.plugins.clone(),
            WATCH_POLL,
            config.plugins.watch_settle.get(),
        ))
    });
    let health = match &config.health {
        Some(health) => {
            let sink = match running.sinks().get(&health.sink) {
                Some(sink) => sink.clone(),
                None => {
                    let sink_config = config
                        .sinks
                        .get(&health.sink)
                        .context("the health sink is not defined")?;
                    crate::sink::build(&health.sink, sink_config, &loaded).await?
                }
            };
            let monitor = crate::health::run(
                health.clone(),
                sink,
                running.checkpoints().clone(),
                services.status.clone(),
                services.metrics.clone(),
            );
            Some(tokio::spawn(async move {
                if let Err(e) = monitor.await {
                    tracing::error!(error = %e, "health alerts stopped");
                }
            }))
        }
        None => None,
    };

    let shutdown = running.shutdown_handle();
    let status = services.status.clone();
    let stop_timeout = config.service.stop_timeout.get();
    let (deadline_passed, deadline) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        stop_signal.wait().await;
        tracing::info!(
            timeout = ?stop_timeout,
            "stop requested: draining, checkpointing and exiting"
        );
        status.set_stopping();
        shutdown.shutdown();
        tokio::time::sleep(stop_timeout).await;
        let _ = deadline_passed.send(());
    });
    let sinks: Vec<(String, String)> = running
        .sinks()
        .iter()
        .map(|(name, sink)| (name.clone(), sink.describe()))
        .collect();
    let metrics = running.metrics().clone();
    let outcome = tokio::select! {
        report = running.wait() => Some(report),
        passed = deadline => match passed {
            Ok(()) => None,
            Err(_) => std::future::pending().await,
        },
    };
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    if let Some(health) = health {
        health.abort();
    }
    if let Some(admin) = admin {
        admin.stop();
    }
    let Some(report) = outcome else {
        anyhow::bail!(
            "the pipelines did not stop within {stop_timeout:?} (service.stop_timeout): exiting without their final checkpoints; the next start replays from the last ones"
        );
    };
    let report = report.context("pipeline failed")?;
    println!();
    let snapshot = metrics.snapshot();
    for (pipeline, workers) in &report.pipelines {
        let allowed = crate::time::DisorderWatch::max_share_of(
            config
                .pipelines
                .get(pipeline)
                .and_then(|p| p.event_time.as_ref()),
        );
        for line in pipeline_summary(pipeline, workers, &snapshot, allowed) {
            println!("{line}");
        }
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

/// The end-of-run summary of `pipeline`: one line of counts, then one line per partition whose
/// share of events behind the watermark went over `allowed` (from the metrics in `snapshot`).
fn pipeline_summary(
    pipeline: &str,
    workers: &[pipeline::WorkerReport],
    snapshot: &[(crate::metrics::MetricKey, f64)],
    allowed: f64,
) -> Vec<String> {
    use crate::metrics::names;
    let events: u64 = workers.iter().map(|w| w.events_in).sum();
    let dead: u64 = workers.iter().map(|w| w.dead_letters).sum();
    let adjusted: u64 = workers.iter().map(|w| w.late_adjusted).sum();
    let dropped: u64 = workers.iter().map(|w| w.late_dropped).sum();
    let mut late = if adjusted + dropped > 0 {
        format!(" ({adjusted} late events adjusted, {dropped} dropped)")
    } else {
        String::new()
    };
    // What the pipeline's samples of `name` add up to (only those with `label`, if given).
    let samples = |name: &'static str| {
        snapshot.iter().filter(move |((n, labels), _)| {
            *n == name
                && labels
                    .iter()
                    .any(|(k, v)| *k == "pipeline" && v == pipeline)
        })
    };
    let count = |name: &'static str, label: Option<(&str, &str)>| -> u64 {
        // Counters hold whole numbers; summed from 0 up (an empty f64 sum is -0, printed `-0`).
        let total = samples(name)
            .filter(|((_, labels), _)| {
                label.is_none_or(|(key, value)| labels.iter().any(|(k, v)| *k == key && v == value))
            })
            .fold(0.0, |sum, (_, value)| sum + value);
        whole(total)
    };
    let duplicates = count(names::DUPLICATES, None);
    if duplicates > 0 {
        late.push_str(&format!(", {duplicates} duplicates dropped"));
    }
    let pairs = count(names::JOIN_PAIRS, None);
    let emitted = count(names::JOIN_UNMATCHED, Some(("policy", "emit")));
    let unmatched_dropped = count(names::JOIN_UNMATCHED, Some(("policy", "drop")));
    if pairs + emitted + unmatched_dropped > 0 {
        late.push_str(&format!(
            ", {pairs} joined pairs, {emitted} unmatched emitted alone, {unmatched_dropped} unmatched dropped"
        ));
    }
    let mut lines = vec![format!(
        "pipeline `{pipeline}`: {events} events in, {dead} dead letters{late}, {} partitions",
        workers.len()
    )];
    let label = |labels: &[(&'static str, String)], key: &str| {
        labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for ((_, labels), warnings) in samples(names::OUT_OF_ORDER_WARNINGS) {
        if *warnings <= 0.0 {
            continue;
        }
        let (source, partition) = (label(labels, "source"), label(labels, "partition"));
        let share = samples(names::OUT_OF_ORDER_SHARE)
            .find(|((_, l), _)| label(l, "source") == source && label(l, "partition") == partition)
            .map_or(0.0, |(_, share)| *share);
        let (said, allowed_said) = (
            crate::time::format_share(share),
            crate::time::format_share(allowed),
        );
        let setting = format!("`pipelines.{pipeline}.event_time.max_out_of_order_share`");
        // The share may have gone over the allowed one during the run and come back under it.
        let what = if share > allowed {
            format!(
                "{said} of the events arrived behind the watermark and were adjusted or dropped (windows and joins miss them), more than the {allowed_said} allowed by {setting}"
            )
        } else {
            format!(
                "for a while, more of the events than the {allowed_said} allowed by {setting} arrived behind the watermark and were adjusted or dropped (windows and joins miss them); {said} over the whole run"
            )
        };
        lines.push(format!(
            "warning: pipeline `{pipeline}`, source `{source}`, partition {partition}: {what}"
        ));
    }
    lines
}

/// A counter's value as a whole number (negative and fractional noise dropped).
fn whole(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}

async fn validate(config_path: PathBuf) -> anyhow::Result<()> {
    let loaded = config::load(&config_path)?;
    let engine = crate::plugin::PluginEngine::new()?;
    for (pipeline, pipeline_config) in &loaded.config.pipelines {
        for (index, stage) in pipeline_config.stages.iter().enumerate() {
            let (Some(plugin_stage), Some(kind)) = (stage.plugin(), pipeline::plugin_kind(stage))
            else {
                println!(
                    "pipeline `{pipeline}`, stage `{}`: runs in the host",
                    stage.name
                );
                continue;
            };
            let path = loaded.resolve(&plugin_stage.path);
            let plugin = engine.load(&path, kind).with_context(|| {
                format!(
                    "{}: pipeline `{pipeline}`, stage `{}`",
                    pipeline::stage_plugin_location(&loaded, pipeline, index),
                    stage.name
                )
            })?;
            // The crate it was built from, when `weir plugin build` recorded it.
            let package = plugin
                .package()
                .map(|p| format!(", built from crate {} {}", p.name, p.version))
                .unwrap_or_default();
            println!(
                "pipeline `{pipeline}`, stage `{}`: plugin {} version {} implements {} (memory limit {} bytes, call deadline {:?}){package}",
                stage.name,
                plugin.name(),
                plugin.version(),
                kind.world(),
                plugin_stage
                    .max_memory_bytes
                    .unwrap_or(loaded.config.plugins.max_memory_bytes),
                plugin_stage
                    .call_timeout
                    .unwrap_or(loaded.config.plugins.call_timeout)
                    .get()
            );
        }
    }
    if let Some(admin) = &loaded.config.admin {
        let token = crate::admin::resolve_token(admin.token.as_deref());
        println!(
            "admin API on {}: uploads and rollbacks {}",
            admin.address,
            if token.is_some() {
                "require the bearer token"
            } else {
                "are disabled (no admin.token nor WEIR_ADMIN_TOKEN)"
            }
        );
    }
    println!("{}: configuration is valid", config_path.display());
    Ok(())
}

/// SIGINT and SIGTERM, listened for from the moment it is created.
struct StopSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignal {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(terminate), Ok(interrupt)) => Some((terminate, interrupt)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT; only Ctrl-C stops gracefully");
                    None
                }
            };
            StopSignal { signals }
        }
        #[cfg(not(unix))]
        StopSignal {}
    }

    /// Resolves on SIGINT or SIGTERM.
    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut terminate, mut interrupt)) = self.signals {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{DEFAULT_LOG_FILTER, error_text, pipeline_summary};
    use crate::metrics::{Metrics, names};
    use crate::pipeline::WorkerReport;

    #[test]
    fn the_summary_counts_joins_without_a_negative_zero() {
        let metrics = Metrics::new();
        let labels = [("pipeline", "p"), ("stage", "join"), ("partition", "0")];
        metrics.add(names::JOIN_PAIRS, &labels, 7);
        // Unmatched events dropped, none emitted alone: no sample with `policy = emit`.
        metrics.add(
            names::JOIN_UNMATCHED,
            &[
                ("pipeline", "p"),
                ("stage", "join"),
                ("partition", "0"),
                ("side", "left"),
                ("policy", "drop"),
            ],
            2,
        );
        // Another pipeline's pairs are not this one's.
        metrics.add(names::JOIN_PAIRS, &[("pipeline", "q")], 100);
        let workers = [WorkerReport {
            events_in: 12,
            ..WorkerReport::default()
        }];
        let lines = pipeline_summary("p", &workers, &metrics.snapshot(), 0.01);
        assert_eq!(
            lines,
            [
                "pipeline `p`: 12 events in, 0 dead letters, 7 joined pairs, 0 unmatched emitted alone, 2 unmatched dropped, 1 partitions"
            ]
        );
    }

    #[test]
    fn the_summary_names_partitions_with_too_many_events_behind_the_watermark() {
        let metrics = Metrics::new();
        let labels = |partition| {
            [
                ("pipeline", "p"),
                ("source", "readings"),
                ("partition", partition),
            ]
        };
        metrics.declare(names::OUT_OF_ORDER_WARNINGS, &labels("0"));
        metrics.set(names::OUT_OF_ORDER_SHARE, &labels("0"), 0.004);
        metrics.add(names::OUT_OF_ORDER_WARNINGS, &labels("1"), 1);
        metrics.set(names::OUT_OF_ORDER_SHARE, &labels("1"), 0.1);
        let workers = [WorkerReport::default(), WorkerReport::default()];
        let lines = pipeline_summary("p", &workers, &metrics.snapshot(), 0.01);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[1],
            "warning: pipeline `p`, source `readings`, partition 1: 10% of the events arrived behind the watermark and were adjusted or dropped (windows and joins miss them), more than the 1% allowed by `pipelines.p.event_time.max_out_of_order_share`"
        );
        // Over the allowed share for a while, under it by the end.
        metrics.set(names::OUT_OF_ORDER_SHARE, &labels("1"), 0.008);
        let lines = pipeline_summary("p", &workers, &metrics.snapshot(), 0.01);
        assert_eq!(
            lines[1],
            "warning: pipeline `p`, source `readings`, partition 1: for a while, more of the events than the 1% allowed by `pipelines.p.event_time.max_out_of_order_share` arrived behind the watermark and were adjusted or dropped (windows and joins miss them); 0.80% over the whole run"
        );
    }

    #[test]
    fn the_default_log_filter_parses_and_keeps_weirs_own_lines() {
        // `EnvFilter::new` drops a directive it cannot parse without a word.
        let filter = tracing_subscriber::EnvFilter::try_new(DEFAULT_LOG_FILTER)
            .unwrap_or_else(|e| panic!("{DEFAULT_LOG_FILTER}: {e}"));
        let text = filter.to_string();
        for directive in [
            "deltalake_core::kernel::transaction=off",
            "fe2o3_amqp=off",
            "azure_messaging_eventhubs=warn",
        ] {
            assert!(text.contains(directive), "{directive} in {text}");
        }
        assert_eq!(
            filter.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::INFO)
        );
    }

    #[test]
    fn an_error_that_ends_with_its_cause_names_it_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(crate::config::ConfigError::Read {
            path: "weir.toml".into(),
            source: io,
        });
        assert_eq!(
            error_text(&error),
            "cannot read configuration weir.toml: no such file"
        );
        let wrapped = anyhow::Error::msg("no such file").context("starting");
        assert_eq!(error_text(&wrapped), "starting: no such file");
    }
}
