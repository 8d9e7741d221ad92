//! `weir plugin deploy`, `list`, `status` and `rollback`: a running host's plugins through its
//! admin API. `deploy` uploads a component to one stage and waits for the outcome: activated
//! (once it passed its probation), refused (with the host's reason) or rolled back after its
//! probation (with the reason the host recorded).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::PluginCliError;
use super::remote::Remote;
use crate::plugin::package;

/// How often `deploy` asks how the probation goes.
const POLL: Duration = Duration::from_millis(200);

/// A stage as `PIPELINE/STAGE`.
#[derive(Debug, Clone)]
pub struct StageRef {
    /// Pipeline name.
    pub pipeline: String,
    /// Stage name.
    pub stage: String,
}

impl std::str::FromStr for StageRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((pipeline, stage))
                if !pipeline.is_empty() && !stage.is_empty() && !stage.contains('/') =>
            {
                Ok(StageRef {
                    pipeline: pipeline.to_owned(),
                    stage: stage.to_owned(),
                })
            }
            _ => Err(format!("expected PIPELINE/STAGE, found `{text}`")),
        }
    }
}

impl std::fmt::Display for StageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pipeline, self.stage)
    }
}

impl StageRef {
    /// The stage's path in the admin API.
    pub fn path(&self) -> String {
        format!("/plugins/{}/{}", self.pipeline, self.stage)
    }
}

/// How a deploy ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployed {
    /// Active, and through its probation.
    Activated,
    /// Active, still on probation when the wait ended.
    OnProbation,
    /// The stage already ran this version.
    AlreadyActive,
}

/// A version's label: `name crate-version (hash)`, or the hash alone.
fn label(version: &Value) -> String {
    let hash = version["version"].as_str().unwrap_or("?");
    match (version["name"].as_str(), version["crate_version"].as_str()) {
        (Some(name), Some(crate_version)) => format!("{name} {crate_version} ({hash})"),
        _ => hash.to_owned(),
    }
}

/// The version `hash` in a slot's report.
fn listed<'a>(report: &'a Value, hash: &str) -> Option<&'a Value> {
    report["versions"]
        .as_array()?
        .iter()
        .find(|v| v["version"] == hash)
}

/// The stage's report, or why there is none.
pub fn stage_report(remote: &Remote, stage: &StageRef) -> Result<Value, PluginCliError> {
    let answer = remote.get(&stage.path())?;
    if answer.status != 200 {
        return Err(PluginCliError::Refused {
            status: answer.status,
            reason: answer.error(),
        });
    }
    Ok(answer.body)
}

/// Uploads `file` to `stage` and waits up to `wait` for its probation's outcome (see the module
/// doc); prints what happens.
pub fn deploy(
    remote: &Remote,
    file: &Path,
    stage: &StageRef,
    wait: Duration,
) -> Result<Deployed, PluginCliError> {
    let bytes = std::fs::read(file).map_err(|source| PluginCliError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let hash = crate::plugin::content_version(&bytes);
    let local = match package::read(&bytes) {
        Some(p) => format!("{} {} ({hash})", p.name, p.version),
        None => hash.clone(),
    };
    let before = stage_report(remote, stage)?;
    let previous = before["active"].as_str().unwrap_or("?").to_owned();
    println!(
        "deploying {local} to stage {stage} at {} (active: {})",
        remote.url(),
        listed(&before, &previous).map_or(previous.clone(), label)
    );
    let answer = remote.post_bytes(&stage.path(), &bytes)?;
    if answer.status != 200 {
        return Err(PluginCliError::Refused {
            status: answer.status,
            reason: answer.error(),
        });
    }
    if answer.body["outcome"] == "already_active" {
        println!("already active: stage {stage} runs {local}; nothing changed");
        return Ok(Deployed::AlreadyActive);
    }
    println!("uploaded: {local} is active on stage {stage}, on probation");
    wait_for_probation(remote, stage, &hash, &previous, wait)
}

/// Follows the probation of `hash` on `stage` until it ends or `wait` passes.
fn wait_for_probation(
    remote: &Remote,
    stage: &StageRef,
    hash: &str,
    previous: &str,
    wait: Duration,
) -> Result<Deployed, PluginCliError> {
    let started = Instant::now();
    loop {
        let report = stage_report(remote, stage)?;
        let name = listed(&report, hash).map_or(hash.to_owned(), label);
        if report["active"] != hash {
            return Err(not_active(&report, hash, &name));
        }
        match report["probation"].as_object() {
            Some(probation) if probation.get("version").is_some_and(|v| v == hash) => {
                if started.elapsed() >= wait {
                    println!(
                        "activated: {name} on stage {stage}, still on probation after {:?}: {} of {} events, {} rejected, {} trapped (follow it with `weir plugin status`)",
                        wait,
                        probation["events"],
                        probation["of"],
                        probation["rejected"],
                        probation["trapped"]
                    );
                    return Ok(Deployed::OnProbation);
                }
            }
            _ => {
                println!(
                    "activated: {name} on stage {stage} passed its probation (replacing {previous})"
                );
                return Ok(Deployed::Activated);
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Why `hash` is no longer active: the host's automatic rollback (with its reason), or another
/// activation.
fn not_active(report: &Value, hash: &str, name: &str) -> PluginCliError {
    let activations = report["activations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rollback = activations
        .iter()
        .rev()
        .find(|a| a["cause"] == "automatic_rollback" && a["previous"] == hash);
    let active = report["active"].as_str().unwrap_or("?");
    let active_name = listed(report, active).map_or(active.to_owned(), label);
    match rollback {
        Some(rollback) => PluginCliError::RolledBack {
            version: name.to_owned(),
            back_to: active_name,
            reason: rollback["reason"]
                .as_str()
                .unwrap_or("it failed its probation")
                .to_owned(),
        },
        None => PluginCliError::Replaced {
            version: name.to_owned(),
            by: active_name,
        },
    }
}

/// How long after a shadow run's time bound `deploy` still waits for its final report.
const SHADOW_GRACE: Duration = Duration::from_secs(10);

/// Runs `file` in the shadow of `stage`'s active version on the next `events` events of each
/// partition (nothing is activated nor delivered), for `within` at most (the host ends the run
/// then, with what it compared), waits for the run to end and prints its report; returns it.
pub fn shadow(
    remote: &Remote,
    file: &Path,
    stage: &StageRef,
    events: u64,
    within: Duration,
) -> Result<Value, PluginCliError> {
    let bytes = std::fs::read(file).map_err(|source| PluginCliError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let before = stage_report(remote, stage)?;
    let active = before["active"].as_str().unwrap_or("?").to_owned();
    let path = format!("{}/shadow", stage.path());
    let seconds = within.as_secs().max(1);
    let answer = remote.post_bytes(&format!("{path}?events={events}&within={seconds}"), &bytes)?;
    if answer.status != 200 {
        return Err(PluginCliError::Refused {
            status: answer.status,
            reason: answer.error(),
        });
    }
    let id = answer.body["id"].clone();
    println!(
        "shadow run of {} beside {} on stage {stage}: the next {events} events of each partition (for {seconds} s at most), outputs compared, not delivered",
        label(&answer.body),
        listed(&before, &active).map_or(active.clone(), label),
    );
    let started = Instant::now();
    let report = loop {
        let answer = remote.get(&path)?;
        if answer.status != 200 {
            return Err(PluginCliError::Refused {
                status: answer.status,
                reason: answer.error(),
            });
        }
        if answer.body["id"] != id {
            return Err(PluginCliError::Remote {
                url: format!("{}{path}", remote.url()),
                reason: "another shadow run started meanwhile".into(),
            });
        }
        if answer.body["done"] == true
            || started.elapsed() >= Duration::from_secs(seconds) + SHADOW_GRACE
        {
            break answer.body;
        }
        std::thread::sleep(POLL);
    };
    print!("{}", shadow_text(&report));
    Ok(report)
}

/// A shadow run's report for people: progress, a table of outputs, the first differing pairs
/// and the verdict.
pub fn shadow_text(report: &Value) -> String {
    let mut text = String::new();
    let empty = serde_json::Map::new();
    let partitions = report["partitions"].as_object().unwrap_or(&empty);
    let (ended, timed_out) = (report["done"] == true, report["timed_out"] == true);
    for (partition, progress) in partitions {
        let (seen, wanted) = (
            progress["events"].as_u64().unwrap_or(0),
            report["events_per_partition"].as_u64().unwrap_or(0),
        );
        let mut state = match (&progress["failed"], progress["done"].as_bool()) {
            (Value::String(reason), _) => format!("stopped: {reason}"),
            (_, Some(true)) if progress["handed_off"] == true => {
                format!("handed to another process: covered for {seen} events")
            }
            (_, Some(true)) => "done".to_owned(),
            _ if ended && seen == 0 => "no events before the time bound: not covered".to_owned(),
            _ if ended && seen < wanted => {
                format!("ended at the time bound: covered for {seen} events")
            }
            _ if ended => "ended at the time bound before the watermark passed its events".into(),
            _ => "still running".to_owned(),
        };
        if progress["joined_late"] == true {
            state.push_str(" (acquired after the run started)");
        }
        text.push_str(&format!(
            "  partition {partition}: {seen} of {wanted} events, {state}\n"
        ));
    }
    if timed_out {
        text.push_str(&format!(
            "  the run ended at its time bound ({} s)\n",
            report["within_seconds"]
        ));
    }
    let outputs = report["outputs"].as_object().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = outputs
        .iter()
        .map(|(name, o)| {
            vec![
                name.clone(),
                cell(&o["active"]),
                cell(&o["shadow"]),
                cell(&o["differing"]),
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(&["OUTPUT", "ACTIVE", "SHADOW", "DIFFERING"], &rows));
    let mut pairs = String::new();
    for (name, output) in outputs {
        for pair in output["first_differences"].as_array().into_iter().flatten() {
            pairs.push_str(&format!(
                "  output `{name}`, partition {}, position {}:\n    active: {}\n    shadow: {}\n",
                pair["partition"],
                pair["position"],
                pair["active"].as_str().unwrap_or("(nothing)"),
                pair["shadow"].as_str().unwrap_or("(nothing)"),
            ));
        }
    }
    if !pairs.is_empty() {
        text.push_str("\nfirst differing pairs:\n");
        text.push_str(&pairs);
    }
    let differing: u64 = outputs
        .values()
        .filter_map(|o| o["differing"].as_u64())
        .sum();
    let compared: u64 = outputs
        .values()
        .filter_map(|o| Some(o["active"].as_u64()?.max(o["shadow"].as_u64()?)))
        .sum();
    let verdict = if report["equal"] == true && timed_out {
        "the two versions agree on every record compared (some partitions not fully covered, see above)".to_owned()
    } else if report["equal"] == true {
        "the two versions agree on every record".to_owned()
    } else if ended && compared == 0 && differing == 0 {
        "nothing was compared: no partition got events before the time bound".to_owned()
    } else if report["done"] != true {
        format!("the run did not end in time ({differing} record(s) differ so far)")
    } else if differing == 0 {
        "the candidate stopped on some partitions (see above)".to_owned()
    } else {
        format!("{differing} of {compared} record(s) differ")
    };
    text.push_str(&format!("\nverdict: {verdict}\n"));
    text
}

/// A table: a header and rows, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

/// A JSON value as a table cell (`-` for nothing).
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A probation as a cell: `E/N events, R rejected, T trapped`, or `-`.
fn probation_cell(probation: &Value) -> String {
    if probation.is_null() {
        return "-".to_owned();
    }
    format!(
        "{}/{} events, {} rejected, {} trapped",
        probation["events"], probation["of"], probation["rejected"], probation["trapped"]
    )
}

/// `weir plugin list`: every stage's plugin, one row each.
pub fn list(remote: &Remote) -> Result<String, PluginCliError> {
    let answer = remote.get("/plugins")?;
    if answer.status != 200 {
        return Err(PluginCliError::Refused {
            status: answer.status,
            reason: answer.error(),
        });
    }
    let slots = answer.body["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = slots
        .iter()
        .map(|slot| {
            vec![
                format!("{}/{}", cell(&slot["pipeline"]), cell(&slot["stage"])),
                cell(&slot["world"]),
                cell(&slot["active"]),
                cell(&slot["name"]),
                cell(&slot["crate_version"]),
                slot["versions"].as_array().map_or(0, Vec::len).to_string(),
                probation_cell(&slot["probation"]),
            ]
        })
        .collect();
    Ok(table(
        &[
            "STAGE",
            "WORLD",
            "ACTIVE",
            "NAME",
            "VERSION",
            "VERSIONS",
            "PROBATION",
        ],
        &rows,
    ))
}

/// `weir plugin status`: one stage's versions and latest activations.
pub fn status(remote: &Remote, stage: &StageRef) -> Result<String, PluginCliError> {
    let report = stage_report(remote, stage)?;
    let active = report["active"].as_str().unwrap_or("?");
    let mut text = format!(
        "stage {stage} ({})\nfile: {}\nactive: {}\nprobation: {}\n\nversions:\n",
        cell(&report["world"]),
        cell(&report["file"]),
        listed(&report, active).map_or(active.to_owned(), label),
        probation_cell(&report["probation"]),
    );
    let versions: Vec<Vec<String>> = report["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            vec![
                cell(&v["version"]),
                cell(&v["name"]),
                cell(&v["crate_version"]),
                cell(&v["status"]),
                cell(&v["origin"]),
                cell(&v["bytes"]),
                cell(&v["loaded_at"]),
            ]
        })
        .collect();
    text.push_str(&table(
        &[
            "VERSION", "NAME", "CRATE", "STATUS", "ORIGIN", "BYTES", "LOADED",
        ],
        &versions,
    ));
    text.push_str("\nactivations:\n");
    let activations: Vec<Vec<String>> = report["activations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                cell(&a["at"]),
                cell(&a["version"]),
                cell(&a["previous"]),
                cell(&a["cause"]),
                cell(&a["reason"]),
            ]
        })
        .collect();
    text.push_str(&table(
        &["AT", "VERSION", "PREVIOUS", "CAUSE", "REASON"],
        &activations,
    ));
    Ok(text)
}

/// `weir plugin rollback`: activates `version` (or the one before the active one).
pub fn rollback(
    remote: &Remote,
    stage: &StageRef,
    version: Option<&str>,
) -> Result<String, PluginCliError> {
    let body = match version {
        Some(version) => serde_json::json!({ "version": version }),
        None => serde_json::json!({}),
    };
    let answer = remote.post_json(&format!("{}/rollback", stage.path()), &body)?;
    if answer.status != 200 {
        return Err(PluginCliError::Refused {
            status: answer.status,
            reason: answer.error(),
        });
    }
    Ok(format!(
        "rolled back: stage {stage} runs {}",
        label(&answer.body["version"])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_pipeline_slash_stage() {
        let stage: StageRef = "telemetry/anomaly".parse().expect("a stage");
        assert_eq!(stage.path(), "/plugins/telemetry/anomaly");
        for bad in ["telemetry", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<StageRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_pad_their_columns() {
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["b".into(), "-".into()],
            ],
        );
        assert_eq!(text, "A          LONGER\nwide cell  x\nb          -\n");
    }

    #[test]
    fn a_version_rolled_back_by_the_host_reports_the_reason() {
        let report = serde_json::json!({
            "active": "aaa",
            "versions": [
                { "version": "aaa", "name": "rule", "crate_version": "0.1.0" },
                { "version": "bbb", "name": "rule", "crate_version": "0.2.0" },
            ],
            "activations": [
                { "version": "bbb", "previous": "aaa", "cause": "api" },
                { "version": "aaa", "previous": "bbb", "cause": "automatic_rollback",
                  "reason": "12 of 40 events trapped" },
            ],
        });
        let error = not_active(&report, "bbb", "rule 0.2.0 (bbb)").to_string();
        assert_eq!(
            error,
            "rolled back: rule 0.2.0 (bbb) failed its probation and the host went back to rule 0.1.0 (aaa): 12 of 40 events trapped"
        );
    }
}
