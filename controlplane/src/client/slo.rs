//! `stewardctl slos apply -f FILE | list | show NAME`. `apply` reads one or
//! more YAML documents (OpenSLO-like: `apiVersion`, `kind: SLO`, `metadata.name`,
//! `spec`), validates each locally (the error names the file, document and
//! field) and PUTs its `spec` to `/api/v1/slos/{name}`.
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::Deserialize;
use serde_json::Value as Json;

use super::table::table;
use super::{Cli, Client, ClientError, Output, items, meaning, write_json};
use crate::slo::spec::SloDocument;

#[derive(Debug, Subcommand)]
pub enum SlosCommand {
    /// Create or replace the SLOs defined in a YAML file (several documents allowed).
    Apply {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Every SLO with its SLI, budget and firing tiers.
    List,
    /// One SLO's status: SLI, budget, burn rates, tiers, groups, budget over time.
    Show { name: String },
}

/// Reads and validates every SLO document of a YAML file.
pub fn read_documents(path: &Path) -> Result<Vec<SloDocument>, ClientError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ClientError::Invalid {
        field: "file".into(),
        detail: format!("cannot read {shown}: {e}"),
    })?;
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let invalid = |detail: String| ClientError::Invalid {
            field: format!("{shown}: document {}", i + 1),
            detail,
        };
        let doc = SloDocument::deserialize(de).map_err(|e| invalid(e.to_string()))?;
        doc.validate().map_err(|e| invalid(e.to_string()))?;
        docs.push(doc);
    }
    if docs.is_empty() {
        return Err(ClientError::Invalid {
            field: "file".into(),
            detail: format!("{shown} holds no SLO document"),
        });
    }
    Ok(docs)
}

impl Client {
    /// `PUT /api/v1/slos/{name}`; returns (created, status).
    pub async fn put_slo(&self, name: &str, spec: &Json) -> Result<(bool, Json), ClientError> {
        let url = self.url(&["slos", name], &[]);
        let before = self.get(self.url(&["slos", name], &[])).await?.is_ok();
        let status = self
            .send(http::Method::PUT, url, Some(spec))
            .await?
            .map_err(|f| meaning(f, None))?;
        Ok((!before, status))
    }

    /// `GET /api/v1/slos/{name}`.
    pub async fn get_slo(&self, name: &str) -> Result<Json, ClientError> {
        self.get(self.url(&["slos", name], &[]))
            .await?
            .map_err(|f| meaning(f, None))
    }
}

/// Runs one `slos` command.
pub(super) async fn run(command: &SlosCommand, cli: &Cli, out: &mut impl Write) -> Result<(), ClientError> {
    if let SlosCommand::Apply { file } = command {
        // Validate the whole file before sending anything.
        let docs = read_documents(file)?;
        let client = Client::from_cli(cli)?;
        let mut applied = Vec::new();
        for doc in docs {
            let spec = serde_json::to_value(&doc.spec).map_err(|e| ClientError::Protocol(e.to_string()))?;
            let (created, status) = client.put_slo(&doc.metadata.name, &spec).await?;
            match cli.output {
                Output::Json => applied.push(status),
                Output::Table => writeln!(
                    out,
                    "slo {} {}",
                    doc.metadata.name,
                    if created { "created" } else { "configured" }
                )?,
            }
        }
        if cli.output == Output::Json {
            write_json(out, &Json::Array(applied))?;
        }
        return Ok(());
    }
    let client = Client::from_cli(cli)?;
    match command {
        SlosCommand::Apply { .. } => {}
        SlosCommand::List => {
            let list = client.list_all(&["slos"], &[], None).await?;
            match cli.output {
                Output::Json => write_json(out, &list)?,
                Output::Table => out.write_all(list_table(&items::<Json>(&list)?).as_bytes())?,
            }
        }
        SlosCommand::Show { name } => {
            let status = client.get_slo(name).await?;
            match cli.output {
                Output::Json => write_json(out, &status)?,
                Output::Table => out.write_all(show(&status).as_bytes())?,
            }
        }
    }
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{:.3}%", v * 100.0),
        None => "-".into(),
    }
}

fn list_table(items: &[Json]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let firing: Vec<&str> = s["firing"]
                .as_array()
                .map(|a| a.iter().filter_map(Json::as_str).collect())
                .unwrap_or_default();
            vec![
                s["name"].as_str().unwrap_or("").to_string(),
                pct(s["target"].as_f64()),
                s["window"].as_str().unwrap_or("").to_string(),
                pct(s["sli"].as_f64()),
                pct(s["budget_remaining"].as_f64()),
                if firing.is_empty() {
                    "-".into()
                } else {
                    firing.join(",")
                },
            ]
        })
        .collect();
    table(&["NAME", "TARGET", "WINDOW", "SLI", "BUDGET LEFT", "FIRING"], &rows)
}

/// A terminal sparkline of values in [min, max].
pub fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() || !lo.is_finite() {
                ' '
            } else if hi - lo < 1e-12 {
                BARS[BARS.len() - 1]
            } else {
                BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize]
            }
        })
        .collect()
}

fn duration_text(secs: f64) -> String {
    let neg = secs < 0.0;
    let s = secs.abs().round() as i64;
    let text = match s {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    };
    if neg { format!("-{text}") } else { text }
}

fn show(s: &Json) -> String {
    let mut out = String::new();
    let spec = &s["spec"];
    let window = &spec["timeWindow"][0];
    out.push_str(&format!(
        "SLO {}: target {}, window {}{}, {}\n",
        s["name"].as_str().unwrap_or(""),
        pct(spec["objectives"][0]["target"].as_f64()),
        window["duration"].as_str().unwrap_or(""),
        if window["isRolling"].as_bool() == Some(false) {
            " (calendar)"
        } else {
            " rolling"
        },
        spec["budgetingMethod"].as_str().unwrap_or("Occurrences"),
    ));
    out.push_str(&format!(
        "SLI {} over {} events; budget left {} ({})\n",
        pct(s["sli"].as_f64()),
        s["events"].as_u64().unwrap_or(0),
        pct(s["budget_remaining"].as_f64()),
        duration_text(s["budget_remaining_seconds"].as_f64().unwrap_or(0.0)),
    ));
    let burns: Vec<String> = s["burn_rates"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    format!(
                        "{} {:.2}",
                        b["window"].as_str().unwrap_or(""),
                        b["burn_rate"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!("burn rates: {}\n\n", burns.join("  ")));
    let tiers: Vec<Vec<String>> = s["tiers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    vec![
                        t["name"].as_str().unwrap_or("").to_string(),
                        t["severity"].as_str().unwrap_or("").to_string(),
                        format!("{}", t["factor"].as_f64().unwrap_or(0.0)),
                        format!(
                            "{}m/{}m",
                            t["long_window_minutes"].as_i64().unwrap_or(0),
                            t["short_window_minutes"].as_i64().unwrap_or(0)
                        ),
                        format!(
                            "{:.2}/{:.2}",
                            t["long_burn"].as_f64().unwrap_or(0.0),
                            t["short_burn"].as_f64().unwrap_or(0.0)
                        ),
                        match (t["enabled"].as_bool(), t["firing"].as_bool()) {
                            (Some(false), _) => "disabled",
                            (_, Some(true)) => "FIRING",
                            _ => "ok",
                        }
                        .to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&table(
        &["TIER", "SEVERITY", "FACTOR", "WINDOWS", "BURN", "STATE"],
        &tiers,
    ));
    if let Some(groups) = s["groups"].as_array().filter(|g| !g.is_empty()) {
        out.push('\n');
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                let firing: Vec<&str> = g["tiers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|t| t["firing"].as_bool() == Some(true))
                            .filter_map(|t| t["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                vec![
                    g["group"].as_str().unwrap_or("").to_string(),
                    pct(g["sli"].as_f64()),
                    g["events"].as_u64().unwrap_or(0).to_string(),
                    pct(g["budget_remaining"].as_f64()),
                    if firing.is_empty() {
                        "-".into()
                    } else {
                        firing.join(",")
                    },
                ]
            })
            .collect();
        out.push_str(&table(&["GROUP", "SLI", "EVENTS", "BUDGET LEFT", "FIRING"], &rows));
    }
    let history: Vec<f64> = s["budget_history"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p[1].as_f64()).collect())
        .unwrap_or_default();
    if !history.is_empty() {
        out.push_str(&format!("\nbudget over the window: {}\n", sparkline(&history)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_files_are_validated_per_document_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = "apiVersion: steward/v1\nkind: SLO\nmetadata: {name: web}\nspec:\n  indicator: {type: checkAvailability, check: http}\n  objectives: [{target: 0.99}]\n  timeWindow: [{duration: 30d}]\n";
        let path = dir.path().join("slo.yaml");
        std::fs::write(&path, format!("{good}---\n{}", good.replace("web", "api"))).unwrap();
        let docs = read_documents(&path).unwrap();
        assert_eq!(docs.len(), 2);
        std::fs::write(&path, good.replace("0.99", "1.5")).unwrap();
        let e = read_documents(&path).unwrap_err().to_string();
        assert!(
            e.contains("document 1") && e.contains("spec.objectives[0].target"),
            "{e}"
        );
        std::fs::write(&path, good.replace("check: http", "check: http, colour: red")).unwrap();
        let e = read_documents(&path).unwrap_err().to_string();
        assert!(e.contains("colour") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn sparklines_span_the_range() {
        assert_eq!(sparkline(&[0.0, 0.5, 1.0]), "▁▅█");
        assert_eq!(sparkline(&[1.0, 1.0]), "██");
    }
}
