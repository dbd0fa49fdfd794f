//! `stewardctl jobs run | list | show | logs | cancel` and `stewardctl backups
//! list`. `jobs run --wait` follows the job(s) to the end, printing state
//! changes, progress and new output, and exits 0 only when every job
//! succeeded (1 otherwise, with one line naming the job and its reason).
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use serde_json::Value as Json;

use super::{Cli, Client, ClientError, Output, ago, meaning, write_json};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Create a job on one host, or one per host matching a selector.
    Run {
        /// The action: checks.run, backup.run, backup.verify, deploy.apply, deploy.rollback, service.restart, exec.
        action: String,
        /// One host, by ID (a change: never by hostname).
        #[arg(long, conflicts_with = "selector", required_unless_present = "selector")]
        host: Option<String>,
        /// A label selector: one job per matching host.
        #[arg(long, short = 'l')]
        selector: Option<String>,
        /// A parameter of the action, `k=v` (repeatable).
        #[arg(long = "param", short = 'p', value_name = "K=V")]
        params: Vec<String>,
        /// Longest an attempt may run, e.g. `10m` (default 1h).
        #[arg(long)]
        timeout: Option<String>,
        /// Attempts before the job is discarded (default 1).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// The same key returns the same job(s) instead of new ones.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the job(s) to the end; the exit code says whether all succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (queued, dispatched, running, succeeded, failed, timed_out, cancelled, discarded).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this host (ID or unique hostname).
        #[arg(long)]
        host: Option<String>,
        /// Only jobs of this action.
        #[arg(long)]
        action: Option<String>,
    },
    /// Show one job.
    Show { id: String },
    /// Print a job's output.
    Logs { id: String },
    /// Cancel a job (a queued one at once; a running one is stopped on its agent).
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// Per host and backup: the last good snapshot, its age against the RPO, the last verification.
    List {
        /// Only this host (ID or unique hostname).
        #[arg(long)]
        host: Option<String>,
    },
}

const TERMINAL: &[&str] = &["succeeded", "failed", "timed_out", "cancelled", "discarded"];

impl Client {
    pub(super) async fn post_json(&self, segments: &[&str], body: &Json) -> Result<Json, ClientError> {
        let url = self.url(segments, &[]);
        self.send(http::Method::POST, url, Some(body))
            .await?
            .map_err(|f| meaning(f, None))
    }

    pub(super) async fn get_json(&self, segments: &[&str]) -> Result<Json, ClientError> {
        self.get(self.url(segments, &[])).await?.map_err(|f| meaning(f, None))
    }
}

pub(super) fn parse_params(raw: &[String]) -> Result<BTreeMap<String, String>, ClientError> {
    let mut out = BTreeMap::new();
    for p in raw {
        let Some((k, v)) = p.split_once('=') else {
            return Err(ClientError::Invalid {
                field: "--param".into(),
                detail: format!("expected K=V, got {p:?}"),
            });
        };
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

fn s<'a>(v: &'a Json, key: &str) -> &'a str {
    v.get(key).and_then(Json::as_str).unwrap_or("")
}

fn jobs_table(items: &[Json], now_ms: i64, out: &mut impl Write) -> Result<(), ClientError> {
    writeln!(
        out,
        "{:<22} {:<16} {:<16} {:<10} {:>7} {:<10} REASON",
        "ID", "HOST", "ACTION", "STATE", "ATTEMPT", "CREATED"
    )?;
    for j in items {
        let created = j["created_ms"].as_i64().map(|t| ago(t, now_ms)).unwrap_or_default();
        writeln!(
            out,
            "{:<22} {:<16} {:<16} {:<10} {:>7} {:<10} {}",
            s(j, "id"),
            s(j, "host_id"),
            s(j, "action"),
            s(j, "state"),
            format!("{}/{}", j["attempt"], j["max_attempts"]),
            created,
            s(j, "reason")
        )?;
    }
    Ok(())
}

fn job_detail(j: &Json, out: &mut impl Write) -> Result<(), ClientError> {
    for key in [
        "id",
        "host_id",
        "action",
        "state",
        "outcome",
        "reason",
        "attempt_id",
        "source",
        "created_by",
        "created",
    ] {
        let v = &j[key];
        if !v.is_null() {
            writeln!(
                out,
                "{:<12} {}",
                format!("{key}:"),
                v.as_str().map(str::to_string).unwrap_or(v.to_string())
            )?;
        }
    }
    writeln!(out, "{:<12} {}/{}", "attempt:", j["attempt"], j["max_attempts"])?;
    if let Some(params) = j["params"].as_object().filter(|p| !p.is_empty()) {
        writeln!(out, "params:")?;
        for (k, v) in params {
            writeln!(out, "  {k} = {}", v.as_str().unwrap_or_default())?;
        }
    }
    if !j["progress"].is_null() {
        writeln!(out, "{:<12} {}", "progress:", j["progress"])?;
    }
    if !j["result"].is_null() {
        writeln!(
            out,
            "result:\n{}",
            serde_json::to_string_pretty(&j["result"]).unwrap_or_default()
        )?;
    }
    writeln!(
        out,
        "{:<12} {} bytes{}",
        "output:",
        j["output_bytes"],
        if j["output_truncated"] == true {
            " (truncated)"
        } else {
            ""
        }
    )?;
    Ok(())
}

/// Runs one `jobs` command.
pub(super) async fn run_jobs(command: &JobsCommand, cli: &Cli, out: &mut impl Write) -> Result<(), ClientError> {
    let client = Client::from_cli(cli)?;
    let now = steward_shared::now_ms();
    match command {
        JobsCommand::Run {
            action,
            host,
            selector,
            params,
            timeout,
            max_attempts,
            idempotency_key,
            wait,
        } => {
            let mut body = serde_json::json!({ "action": action, "params": parse_params(params)? });
            let extra = [
                ("host", host.clone().map(Json::from)),
                ("selector", selector.clone().map(Json::from)),
                ("timeout", timeout.clone().map(Json::from)),
                ("max_attempts", max_attempts.map(Json::from)),
                ("idempotency_key", idempotency_key.clone().map(Json::from)),
            ];
            for (k, v) in extra {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let created = client.post_json(&["jobs"], &body).await?;
            let items = created["items"].as_array().cloned().unwrap_or_default();
            if !wait {
                return match cli.output {
                    Output::Json => write_json(out, &created),
                    Output::Table => jobs_table(&items, now, out),
                };
            }
            let ids: Vec<String> = items.iter().map(|j| s(j, "id").to_string()).collect();
            let finals = follow(&client, &ids, cli.output == Output::Table, out).await?;
            if cli.output == Output::Json {
                write_json(out, &serde_json::json!({ "items": finals }))?;
            }
            match finals.iter().find(|j| s(j, "state") != "succeeded") {
                None => Ok(()),
                Some(j) => Err(ClientError::JobEnded {
                    id: s(j, "id").to_string(),
                    state: s(j, "state").to_string(),
                    reason: s(j, "reason").to_string(),
                }),
            }
        }
        JobsCommand::List { state, host, action } => {
            let mut query = Vec::new();
            query.extend(state.as_deref().map(|v| ("state", v)));
            query.extend(host.as_deref().map(|v| ("host", v)));
            query.extend(action.as_deref().map(|v| ("action", v)));
            let list = client.list_all(&["jobs"], &query, host.as_deref()).await?;
            match cli.output {
                Output::Json => write_json(out, &list),
                Output::Table => jobs_table(list["items"].as_array().map(Vec::as_slice).unwrap_or(&[]), now, out),
            }
        }
        JobsCommand::Show { id } => {
            let job = client.get_json(&["jobs", id]).await?;
            match cli.output {
                Output::Json => write_json(out, &job),
                Output::Table => job_detail(&job, out),
            }
        }
        JobsCommand::Logs { id } => {
            let o = client.get_json(&["jobs", id, "output"]).await?;
            match cli.output {
                Output::Json => write_json(out, &o),
                Output::Table => {
                    out.write_all(s(&o, "output").as_bytes())?;
                    if o["truncated"] == true {
                        writeln!(out, "\n[output truncated at {} bytes]", o["bytes"])?;
                    }
                    Ok(())
                }
            }
        }
        JobsCommand::Cancel { id } => {
            let job = client
                .post_json(&["jobs", id, "cancel"], &serde_json::json!({}))
                .await?;
            match cli.output {
                Output::Json => write_json(out, &job),
                Output::Table => {
                    let what = if s(&job, "state") == "cancelled" {
                        "cancelled"
                    } else {
                        "cancellation sent to the agent"
                    };
                    writeln!(out, "job {}: {what}", s(&job, "id"))?;
                    Ok(())
                }
            }
        }
    }
}

/// Polls the jobs until all ended, printing (in table mode) state changes,
/// progress and new output; returns their final views.
async fn follow(client: &Client, ids: &[String], show: bool, out: &mut impl Write) -> Result<Vec<Json>, ClientError> {
    let mut last: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut printed: BTreeMap<String, usize> = BTreeMap::new();
    let many = ids.len() > 1;
    loop {
        let mut finals = Vec::new();
        for id in ids {
            let job = client.get_json(&["jobs", id]).await?;
            let state = s(&job, "state").to_string();
            let progress = if job["progress"].is_null() {
                String::new()
            } else {
                job["progress"].to_string()
            };
            let prefix = if many {
                format!("[{} {}] ", s(&job, "host_id"), id)
            } else {
                String::new()
            };
            if show && last.get(id) != Some(&(state.clone(), progress.clone())) {
                let p = &job["progress"];
                let detail = if p.is_null() {
                    String::new()
                } else {
                    format!(
                        " {} {}% {}",
                        s(p, "stage"),
                        p["percent"].as_f64().unwrap_or(0.0),
                        s(p, "message")
                    )
                };
                writeln!(out, "{prefix}{state}{detail}")?;
                last.insert(id.clone(), (state.clone(), progress));
            }
            if show && job["output_bytes"].as_u64().unwrap_or(0) as usize > *printed.get(id).unwrap_or(&0) {
                let o = client.get_json(&["jobs", id, "output"]).await?;
                let text = s(&o, "output");
                let from = (*printed.get(id).unwrap_or(&0)).min(text.len());
                let new = text.get(from..).unwrap_or("");
                for line in new.lines() {
                    writeln!(out, "{prefix}| {line}")?;
                }
                printed.insert(id.clone(), text.len());
            }
            out.flush()?;
            if TERMINAL.contains(&state.as_str()) {
                finals.push(job);
            }
        }
        if finals.len() == ids.len() {
            if show {
                for j in &finals {
                    let reason = s(j, "reason");
                    let suffix = if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    };
                    writeln!(
                        out,
                        "job {} on {}: {}{suffix}",
                        s(j, "id"),
                        s(j, "host_id"),
                        s(j, "state")
                    )?;
                }
            }
            return Ok(finals);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs one `backups` command.
pub(super) async fn run_backups(command: &BackupsCommand, cli: &Cli, out: &mut impl Write) -> Result<(), ClientError> {
    let client = Client::from_cli(cli)?;
    let now = steward_shared::now_ms();
    let BackupsCommand::List { host } = command;
    let query: Vec<(&str, &str)> = host.as_deref().map(|h| ("host", h)).into_iter().collect();
    let list = client
        .get(client.url(&["backups"], &query))
        .await?
        .map_err(|f| meaning(f, host.as_deref()))?;
    if cli.output == Output::Json {
        return write_json(out, &list);
    }
    writeln!(
        out,
        "{:<16} {:<12} {:<34} {:<10} {:<8} {:<6} VERIFIED",
        "HOST", "BACKUP", "LAST GOOD SNAPSHOT", "AGE", "RPO", "STALE"
    )?;
    for b in list["items"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let age = b["last_snapshot_ms"]
            .as_i64()
            .map(|t| ago(t, now))
            .unwrap_or_else(|| "-".into());
        let rpo = b["rpo_secs"]
            .as_i64()
            .map(|r| format!("{r}s"))
            .unwrap_or_else(|| "-".into());
        let stale = match b["stale"].as_bool() {
            Some(true) => "STALE",
            Some(false) => "ok",
            None => "?",
        };
        let verified = match (b["last_verify_ok"].as_bool(), b["last_verify_ms"].as_i64()) {
            (Some(true), Some(t)) => format!("ok {}", ago(t, now)),
            (Some(false), Some(t)) => format!("FAILED {}: {}", ago(t, now), s(b, "last_verify_reason")),
            _ => "never".into(),
        };
        writeln!(
            out,
            "{:<16} {:<12} {:<34} {:<10} {:<8} {:<6} {}",
            s(b, "host_id"),
            s(b, "name"),
            b["last_snapshot"].as_str().unwrap_or("-"),
            age,
            rpo,
            stale,
            verified
        )?;
    }
    Ok(())
}
