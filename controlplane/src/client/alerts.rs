//! `stewardctl alerts list [--state firing] [--severity S] | show ID | ack ID`
//! and `stewardctl silences list | add --matcher k=v... --for 2h --comment C | expire ID`.
use std::io::Write;

use clap::{Subcommand, ValueEnum};
use serde_json::{Value as Json, json};

use super::table::{ago, table};
use super::{Cli, Client, ClientError, Output, meaning, write_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlertStateArg {
    Firing,
    Resolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeverityArg {
    Info,
    Warning,
    Error,
    Critical,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Alerts, newest first.
    List {
        #[arg(long, value_enum)]
        state: Option<AlertStateArg>,
        #[arg(long, value_enum)]
        severity: Option<SeverityArg>,
    },
    /// One alert with its labels.
    Show { id: String },
    /// Acknowledge an alert (recorded with your token; notifications continue until it resolves).
    Ack { id: String },
}

#[derive(Debug, Subcommand)]
pub enum SilencesCommand {
    /// Silences, newest first.
    List {
        /// Only silences in effect now.
        #[arg(long)]
        active: bool,
    },
    /// Silence alerts matching every matcher (`k=v` or `k!=v`) for a while.
    Add {
        #[arg(long = "matcher", value_name = "K=V", required = true)]
        matchers: Vec<String>,
        /// How long, e.g. 2h, 30m, 1d.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why (required).
        #[arg(long)]
        comment: String,
    },
    /// End a silence now.
    Expire { id: String },
}

/// `k=v` → `{"name": k, "value": v}`, `k!=v` → `{..., "negate": true}`.
pub fn parse_matcher(raw: &str) -> Result<Json, ClientError> {
    let invalid = || ClientError::Invalid {
        field: "--matcher".into(),
        detail: format!("{raw:?}: expected NAME=VALUE or NAME!=VALUE"),
    };
    let (name, value, negate) = match raw.split_once("!=") {
        Some((n, v)) => (n, v, true),
        None => {
            let (n, v) = raw.split_once('=').ok_or_else(invalid)?;
            (n, v, false)
        }
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid());
    }
    Ok(json!({ "name": name, "value": value, "negate": negate }))
}

/// Runs one `alerts` command.
pub(super) async fn run(command: &AlertsCommand, cli: &Cli, out: &mut impl Write) -> Result<(), ClientError> {
    let client = Client::from_cli(cli)?;
    let now = steward_shared::now_ms();
    match command {
        AlertsCommand::List { state, severity } => {
            let mut query = Vec::new();
            if let Some(s) = state {
                query.push((
                    "state",
                    match s {
                        AlertStateArg::Firing => "firing",
                        AlertStateArg::Resolved => "resolved",
                    },
                ));
            }
            if let Some(s) = severity {
                query.push((
                    "severity",
                    match s {
                        SeverityArg::Info => "info",
                        SeverityArg::Warning => "warning",
                        SeverityArg::Error => "error",
                        SeverityArg::Critical => "critical",
                    },
                ));
            }
            let list = client.list_all(&["alerts"], &query, None).await?;
            match cli.output {
                Output::Json => write_json(out, &list)?,
                Output::Table => {
                    out.write_all(alerts_table(list["items"].as_array().map_or(&[], |v| v), now).as_bytes())?
                }
            }
        }
        AlertsCommand::Show { id } => {
            let alert = client
                .get(client.url(&["alerts", id], &[]))
                .await?
                .map_err(|f| meaning(f, None))?;
            match cli.output {
                Output::Json => write_json(out, &alert)?,
                Output::Table => out.write_all(alert_detail(&alert, now).as_bytes())?,
            }
        }
        AlertsCommand::Ack { id } => {
            let alert = client
                .send(http::Method::POST, client.url(&["alerts", id, "ack"], &[]), None)
                .await?
                .map_err(|f| meaning(f, None))?;
            match cli.output {
                Output::Json => write_json(out, &alert)?,
                Output::Table => writeln!(
                    out,
                    "alert {} acknowledged by {}",
                    alert["id"].as_str().unwrap_or(id),
                    alert["acked_by"].as_str().unwrap_or("-")
                )?,
            }
        }
    }
    Ok(())
}

/// Runs one `silences` command.
pub(super) async fn run_silences(
    command: &SilencesCommand,
    cli: &Cli,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    // Matchers are checked before anything is sent.
    let body = match command {
        SilencesCommand::Add {
            matchers,
            duration,
            comment,
        } => Some(json!({
            "matchers": matchers.iter().map(|m| parse_matcher(m)).collect::<Result<Vec<_>, _>>()?,
            "duration": duration,
            "comment": comment,
        })),
        _ => None,
    };
    let client = Client::from_cli(cli)?;
    let now = steward_shared::now_ms();
    match command {
        SilencesCommand::List { active } => {
            let query: Vec<(&str, &str)> = if *active { vec![("state", "active")] } else { vec![] };
            let list = client
                .get(client.url(&["silences"], &query))
                .await?
                .map_err(|f| meaning(f, None))?;
            match cli.output {
                Output::Json => write_json(out, &list)?,
                Output::Table => {
                    out.write_all(silences_table(list["items"].as_array().map_or(&[], |v| v), now).as_bytes())?
                }
            }
        }
        SilencesCommand::Add { .. } => {
            let s = client
                .send(http::Method::POST, client.url(&["silences"], &[]), body.as_ref())
                .await?
                .map_err(|f| meaning(f, None))?;
            match cli.output {
                Output::Json => write_json(out, &s)?,
                Output::Table => writeln!(
                    out,
                    "silence {} until {}",
                    s["id"].as_str().unwrap_or("?"),
                    s["ends"].as_str().unwrap_or("?")
                )?,
            }
        }
        SilencesCommand::Expire { id } => {
            let s = client
                .send(http::Method::DELETE, client.url(&["silences", id], &[]), None)
                .await?
                .map_err(|f| meaning(f, None))?;
            match cli.output {
                Output::Json => write_json(out, &s)?,
                Output::Table => writeln!(out, "silence {} expired", s["id"].as_str().unwrap_or(id))?,
            }
        }
    }
    Ok(())
}

fn labels_text(labels: &Json) -> String {
    labels
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "alertname")
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn s(v: &Json) -> String {
    v.as_str().unwrap_or("-").to_string()
}

/// Alerts as a table; "No alerts." when empty.
pub fn alerts_table(items: &[Json], now_ms: i64) -> String {
    if items.is_empty() {
        return "No alerts.\n".into();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|a| {
            let mut state = s(&a["state"]);
            if a["acked_by"].is_string() {
                state.push_str(",acked");
            }
            if a["silenced"].as_bool() == Some(true) {
                state.push_str(",silenced");
            }
            vec![
                s(&a["id"]),
                s(&a["severity"]),
                state,
                s(&a["labels"]["alertname"]),
                a["started_ms"].as_i64().map_or("-".into(), |ms| ago(ms, now_ms)),
                labels_text(&a["labels"]),
                s(&a["summary"]),
            ]
        })
        .collect();
    table(
        &["ID", "SEVERITY", "STATE", "ALERT", "STARTED", "LABELS", "SUMMARY"],
        &rows,
    )
}

fn alert_detail(a: &Json, now_ms: i64) -> String {
    let mut out = format!(
        "Alert {} ({}, {}): {}\n",
        s(&a["id"]),
        s(&a["severity"]),
        s(&a["state"]),
        s(&a["summary"])
    );
    out.push_str(&format!(
        "  source: {}  started: {} ({})\n",
        s(&a["source"]),
        s(&a["started"]),
        a["started_ms"].as_i64().map_or("-".into(), |ms| ago(ms, now_ms))
    ));
    if let Some(ms) = a["resolved_ms"].as_i64() {
        out.push_str(&format!("  resolved: {}\n", ago(ms, now_ms)));
    }
    if let Some(by) = a["acked_by"].as_str() {
        out.push_str(&format!(
            "  acknowledged by {by} {}\n",
            a["acked_ms"].as_i64().map_or("-".into(), |ms| ago(ms, now_ms))
        ));
    }
    if a["silenced"].as_bool() == Some(true) {
        out.push_str("  silenced: no notification was sent\n");
    }
    if let Some(labels) = a["labels"].as_object() {
        for (k, v) in labels {
            out.push_str(&format!("  {k}={}\n", v.as_str().unwrap_or("")));
        }
    }
    out
}

/// Silences as a table; "No silences." when empty.
pub fn silences_table(items: &[Json], now_ms: i64) -> String {
    if items.is_empty() {
        return "No silences.\n".into();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|x| {
            let matchers: Vec<String> = x["matchers"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .map(|m| {
                            let op = if m["negate"].as_bool() == Some(true) { "!=" } else { "=" };
                            format!("{}{op}{}", s(&m["name"]), m["value"].as_str().unwrap_or(""))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let ends = x["ends_ms"].as_i64().unwrap_or(0);
            vec![
                s(&x["id"]),
                if x["active"].as_bool() == Some(true) {
                    format!("active, {} left", left(ends - now_ms))
                } else {
                    "expired".into()
                },
                matchers.join(","),
                s(&x["created_by"]),
                s(&x["comment"]),
            ]
        })
        .collect();
    table(&["ID", "STATE", "MATCHERS", "BY", "COMMENT"], &rows)
}

fn left(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h{}m", s / 3_600, s % 3_600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_parse_and_tables_render() {
        assert_eq!(
            parse_matcher("host=web-1").unwrap(),
            json!({"name": "host", "value": "web-1", "negate": false})
        );
        assert_eq!(
            parse_matcher("env!=prod").unwrap(),
            json!({"name": "env", "value": "prod", "negate": true})
        );
        assert!(parse_matcher("novalue").is_err());
        assert!(parse_matcher("=x").is_err());

        let alert = json!({
            "id": "a1", "severity": "critical", "state": "firing", "summary": "web-1 silent",
            "labels": {"alertname": "HostSilent", "host": "web-1"}, "started_ms": 0,
            "acked_by": "token:x", "silenced": false
        });
        let t = alerts_table(&[alert], 120_000);
        assert!(t.starts_with("ID"), "{t}");
        assert!(
            t.contains("firing,acked") && t.contains("HostSilent") && t.contains("2m ago") && t.contains("host=web-1"),
            "{t}"
        );
        assert_eq!(alerts_table(&[], 0), "No alerts.\n");
        let sil = json!({"id": "s1", "active": true, "ends_ms": 7_200_000, "created_by": "token:x", "comment": "swap",
            "matchers": [{"name": "host", "value": "web-1", "negate": false}]});
        let t = silences_table(&[sil], 0);
        assert!(t.contains("active, 2h0m left") && t.contains("host=web-1"), "{t}");
    }
}
