//! `stewardctl kpis list | show NAME [--window 30d] [--selector SEL]
//! [--group-by LABEL]`: the fleet KPIs, with a unicode sparkline of the trend.
use std::io::Write;

use clap::Subcommand;
use serde_json::Value as Json;

use super::{Cli, Client, ClientError, Output, meaning, write_json};

#[derive(Debug, Subcommand)]
pub enum KpisCommand {
    /// Every KPI of the catalog with its value (over the hosts the token may see).
    List {
        /// Window of the windowed KPIs, e.g. `30d` (default 30d).
        #[arg(long)]
        window: Option<String>,
        /// Only hosts whose labels match this selector.
        #[arg(long, short = 'l')]
        selector: Option<String>,
    },
    /// One KPI: its definition, value, figures, groups and trend.
    Show {
        name: String,
        #[arg(long)]
        window: Option<String>,
        #[arg(long, short = 'l')]
        selector: Option<String>,
        /// One value per value of this label.
        #[arg(long)]
        group_by: Option<String>,
    },
}

/// A sparkline of `values` (gaps for missing values), at most `width` wide.
pub fn sparkline(values: &[Option<f64>], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() || width == 0 {
        return String::new();
    }
    // average into at most `width` buckets
    let n = values.len().min(width);
    let buckets: Vec<Option<f64>> = (0..n)
        .map(|i| {
            let (a, b) = (
                i * values.len() / n,
                ((i + 1) * values.len() / n).max(i * values.len() / n + 1),
            );
            let vs: Vec<f64> = values[a..b]
                .iter()
                .flatten()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            (!vs.is_empty()).then(|| vs.iter().sum::<f64>() / vs.len() as f64)
        })
        .collect();
    let present: Vec<f64> = buckets.iter().flatten().copied().collect();
    let (lo, hi) = present
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
    buckets
        .iter()
        .map(|b| match b {
            None => ' ',
            Some(v) if hi > lo => BARS[(((v - lo) / (hi - lo)) * 7.0).round().clamp(0.0, 7.0) as usize],
            Some(_) => BARS[3],
        })
        .collect()
}

/// A value in its unit, for people.
pub fn format_value(value: &Json, unit: &str) -> String {
    let Some(v) = value.as_f64() else {
        return "-".into();
    };
    match unit {
        "ratio" => format!("{:.1}%", v * 100.0),
        "hosts" => format!("{v:.0}"),
        "per_day" => format!("{v:.2}/day"),
        "seconds" if v >= 86_400.0 => format!("{:.1}d", v / 86_400.0),
        "seconds" if v >= 3600.0 => format!("{:.1}h", v / 3600.0),
        "seconds" if v >= 60.0 => format!("{:.1}m", v / 60.0),
        "seconds" => format!("{v:.0}s"),
        _ => format!("{v}"),
    }
}

pub(super) async fn run(command: &KpisCommand, cli: &Cli, out: &mut impl Write) -> Result<(), ClientError> {
    let client = Client::from_cli(cli)?;
    match command {
        KpisCommand::List { window, selector } => {
            let mut query = Vec::new();
            if let Some(w) = window {
                query.push(("window", w.as_str()));
            }
            if let Some(s) = selector {
                query.push(("selector", s.as_str()));
            }
            let list = client
                .get(client.url(&["kpis"], &query))
                .await?
                .map_err(|f| meaning(f, None))?;
            if cli.output == Output::Json {
                return write_json(out, &list);
            }
            writeln!(out, "{:<34} {:>12}  TITLE", "KPI", "VALUE")?;
            for k in list["items"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                writeln!(
                    out,
                    "{:<34} {:>12}  {}",
                    k["name"].as_str().unwrap_or(""),
                    format_value(&k["value"], k["unit"].as_str().unwrap_or("")),
                    k["title"].as_str().unwrap_or("")
                )?;
            }
            for m in list["missing"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                writeln!(
                    out,
                    "{:<34} {:>12}  not computed: {}",
                    m["name"].as_str().unwrap_or(""),
                    "n/a",
                    m["reason"].as_str().unwrap_or("")
                )?;
            }
            writeln!(out, "({} hosts)", list["hosts"].as_u64().unwrap_or(0))?;
        }
        KpisCommand::Show {
            name,
            window,
            selector,
            group_by,
        } => {
            let mut query = Vec::new();
            if let Some(w) = window {
                query.push(("window", w.as_str()));
            }
            if let Some(s) = selector {
                query.push(("selector", s.as_str()));
            }
            if let Some(g) = group_by {
                query.push(("group_by", g.as_str()));
            }
            let k = client
                .get(client.url(&["kpis", name], &query))
                .await?
                .map_err(|f| meaning(f, None))?;
            if cli.output == Output::Json {
                return write_json(out, &k);
            }
            let unit = k["unit"].as_str().unwrap_or("");
            writeln!(
                out,
                "{} ({})",
                k["title"].as_str().unwrap_or(""),
                k["name"].as_str().unwrap_or("")
            )?;
            writeln!(out, "value:      {}", format_value(&k["value"], unit))?;
            if let Some(d) = k["details"].as_object() {
                let parts: Vec<String> = d.iter().map(|(n, v)| format!("{n}={v}")).collect();
                writeln!(out, "figures:    {}", parts.join(" "))?;
            }
            writeln!(out, "hosts:      {}", k["hosts"].as_u64().unwrap_or(0))?;
            writeln!(out, "definition: {}", k["definition"].as_str().unwrap_or(""))?;
            if let Some(groups) = k["groups"].as_array().filter(|g| !g.is_empty()) {
                writeln!(
                    out,
                    "{:<24} {:>12}",
                    group_by.as_deref().unwrap_or("GROUP").to_uppercase(),
                    "VALUE"
                )?;
                for g in groups {
                    writeln!(
                        out,
                        "{:<24} {:>12}",
                        g["value_of_label"].as_str().unwrap_or("(none)"),
                        format_value(&g["value"], unit)
                    )?;
                }
            }
            let trend: Vec<Option<f64>> = k["trend"]
                .as_array()
                .map(|t| t.iter().map(|p| p["value"].as_f64()).collect())
                .unwrap_or_default();
            if let Some(note) = k["trend_note"].as_str() {
                writeln!(out, "trend:      ({note})")?;
            } else if trend.is_empty() {
                writeln!(out, "trend:      (no samples yet)")?;
            } else {
                writeln!(out, "trend:      {} ({} samples)", sparkline(&trend, 60), trend.len())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_between_min_and_max() {
        assert_eq!(sparkline(&[Some(0.0), Some(0.5), Some(1.0)], 10), "▁▅█");
        assert_eq!(sparkline(&[Some(2.0), None, Some(2.0)], 10), "▄ ▄");
        assert_eq!(sparkline(&[], 10), "");
        // 4 values into 2 buckets: means 1 and 3
        assert_eq!(sparkline(&[Some(0.0), Some(2.0), Some(2.0), Some(4.0)], 2), "▁█");
    }

    #[test]
    fn values_print_in_their_unit() {
        assert_eq!(format_value(&Json::from(0.75), "ratio"), "75.0%");
        assert_eq!(format_value(&Json::from(5400.0), "seconds"), "1.5h");
        assert_eq!(format_value(&Json::Null, "ratio"), "-");
        assert_eq!(format_value(&Json::from(2.0), "hosts"), "2");
    }
}
