//! `stewardctl rollouts start | list | show | watch | pause | resume | abort`.
//!
//! `watch` (and `start --watch`) polls the rollout until it ends. On a terminal
//! it draws one progress bar per wave (indicatif, on stderr) and a status line
//! with the gate being waited on and for how long; without a terminal it
//! prints one line per change instead. It then prints the final state (the
//! API's JSON with `-o json`) and exits with a code that says how the rollout
//! ended: 0 succeeded, 3 rolled back, 4 aborted, 5 failed (1 for any other
//! error, as every command).
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value as Json;

use super::jobs::parse_params;
use super::{Cli, Client, ClientError, Output, ago, write_json};

// `Start` carries every strategy flag; the command is parsed once per process.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum RolloutsCommand {
    /// Start a rollout of ACTION over the hosts SEL matches (resolved once, now) and print its ID.
    Start {
        /// The action each host runs: deploy.apply, checks.run, service.restart, exec, ...
        action: String,
        /// A label selector: the target set.
        #[arg(long, short = 'l')]
        selector: String,
        /// A parameter of the action, `k=v` (repeatable).
        #[arg(long = "param", short = 'p', value_name = "K=V")]
        params: Vec<String>,
        /// Hosts in the first wave (default 1).
        #[arg(long)]
        canary: Option<u64>,
        /// Hosts per later wave: N or P% of the target set (default 25%).
        #[arg(long, value_name = "N|P%")]
        batch: Option<String>,
        /// The error budget over the whole rollout: N or P% of the hosts (default 0).
        #[arg(long, value_name = "N|P%")]
        max_failures: Option<String>,
        /// Wait between waves, e.g. `30s` (default 0s).
        #[arg(long)]
        pause: Option<String>,
        /// How long a wave's hosts must stay healthy before the next wave (default 10s).
        #[arg(long)]
        min_healthy: Option<String>,
        /// Longest a wave may take, also each step's timeout (default 15m).
        #[arg(long)]
        wave_deadline: Option<String>,
        /// Longest without any host finishing its step (default 10m).
        #[arg(long)]
        progress_deadline: Option<String>,
        /// A check that must be ok on a host after its step (repeatable; default: no critical check).
        #[arg(long = "health", value_name = "CHECK")]
        health: Vec<String>,
        /// An SLO whose fast burn must stay below its page threshold (repeatable).
        #[arg(long = "slo", value_name = "NAME")]
        slo: Vec<String>,
        /// The action that undoes a step, e.g. deploy.rollback.
        #[arg(long)]
        rollback_action: Option<String>,
        /// A parameter of the rollback action, `k=v` (repeatable).
        #[arg(long = "rollback-param", value_name = "K=V", requires = "rollback_action")]
        rollback_params: Vec<String>,
        /// Do not roll back automatically when the rollout fails.
        #[arg(long)]
        no_auto_rollback: bool,
        /// Watch the rollout until it ends (exit code as `rollouts watch`).
        #[arg(long)]
        watch: bool,
    },
    /// Rollouts, newest first.
    List {
        /// Only rollouts in this state (running, paused, stopping, rolling_back, succeeded, rolled_back, failed, aborted).
        #[arg(long)]
        state: Option<String>,
    },
    /// One rollout with its waves and hosts.
    Show { id: String },
    /// Follow a rollout until it ends: exit 0 succeeded, 3 rolled back, 4 aborted, 5 failed.
    Watch { id: String },
    /// Pause: running steps finish, nothing new starts.
    Pause { id: String },
    /// Resume a paused rollout.
    Resume { id: String },
    /// Abort: nothing new starts; changed hosts are rolled back unless --no-rollback.
    Abort {
        id: String,
        #[arg(long)]
        no_rollback: bool,
    },
}

fn s<'a>(v: &'a Json, key: &str) -> &'a str {
    v.get(key).and_then(Json::as_str).unwrap_or("")
}

fn n(v: &Json, key: &str) -> u64 {
    v.get(key).and_then(Json::as_u64).unwrap_or(0)
}

/// Whether a rollout state is final.
pub fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "rolled_back" | "failed" | "aborted")
}

/// `succeeded / failed / running / pending` of a counts object.
fn counts_line(c: &Json) -> String {
    let failed = n(c, "failed") + n(c, "rollback_failed");
    let running = n(c, "dispatched") + n(c, "rolling_back");
    let mut line = format!(
        "{} succeeded, {failed} failed, {running} running, {} pending",
        n(c, "succeeded"),
        n(c, "pending")
    );
    for (key, word) in [("rolled_back", "rolled back"), ("skipped", "skipped")] {
        if n(c, key) > 0 {
            line.push_str(&format!(", {} {word}", n(c, key)));
        }
    }
    line
}

/// What the rollout waits on and, given the time now, since when
/// (`waiting on min_healthy for 4s`).
fn gate_line(r: &Json, now_ms: Option<i64>) -> String {
    match (r["gate"].as_str(), r["gate_since_ms"].as_i64(), now_ms) {
        (Some(gate), Some(since), Some(now)) => format!("waiting on {gate} for {}", seconds(now - since)),
        (Some(gate), _, _) => format!("waiting on {gate}"),
        _ => String::new(),
    }
}

fn seconds(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// One line of where the rollout is; with `now_ms`, the gate's age too.
fn status_line(r: &Json, now_ms: Option<i64>) -> String {
    let mut line = format!(
        "{} {}: wave {}/{}, {} (budget {} failures)",
        s(r, "id"),
        s(r, "state"),
        (n(r, "current_wave") + 1).min(n(r, "waves").max(1)),
        n(r, "waves"),
        counts_line(&r["counts"]),
        n(r, "budget")
    );
    let gate = gate_line(r, now_ms);
    if !gate.is_empty() {
        line.push_str("; ");
        line.push_str(&gate);
    }
    line
}

fn list_table(items: &[Json], now_ms: i64, out: &mut impl Write) -> Result<(), ClientError> {
    writeln!(
        out,
        "{:<28} {:<16} {:<13} {:>5} {:>6} {:>9} {:>6} {:<10} SELECTOR",
        "ID", "ACTION", "STATE", "WAVE", "HOSTS", "SUCCEEDED", "FAILED", "CREATED"
    )?;
    for r in items {
        let c = &r["counts"];
        writeln!(
            out,
            "{:<28} {:<16} {:<13} {:>5} {:>6} {:>9} {:>6} {:<10} {}",
            s(r, "id"),
            s(r, "action"),
            s(r, "state"),
            format!(
                "{}/{}",
                (n(r, "current_wave") + 1).min(n(r, "waves").max(1)),
                n(r, "waves")
            ),
            n(r, "total_hosts"),
            n(c, "succeeded"),
            n(c, "failed") + n(c, "rollback_failed"),
            r["created_ms"].as_i64().map(|t| ago(t, now_ms)).unwrap_or_default(),
            s(r, "selector"),
        )?;
    }
    Ok(())
}

fn detail(r: &Json, now_ms: i64, out: &mut impl Write) -> Result<(), ClientError> {
    for key in ["id", "action", "selector", "state", "reason", "actor", "created"] {
        if let Some(v) = r.get(key).and_then(Json::as_str) {
            writeln!(out, "{key:<12} {v}")?;
        }
    }
    if let Some(params) = r["params"].as_object().filter(|p| !p.is_empty()) {
        let list: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        writeln!(out, "{:<12} {}", "params", list.join(" "))?;
    }
    writeln!(out, "{:<12} {}", "progress", status_line(r, Some(now_ms)))?;
    for note in r["notes"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        writeln!(out, "{:<12} {}", "note", note.as_str().unwrap_or(""))?;
    }
    for w in r["wave_counts"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        writeln!(
            out,
            "wave {:<7} {} hosts: {}",
            n(w, "wave") + 1,
            n(w, "hosts"),
            counts_line(&w["counts"])
        )?;
    }
    if let Some(hosts) = r["hosts"].as_array() {
        writeln!(
            out,
            "\n{:<24} {:>4} {:<15} {:<22} REASON",
            "HOST", "WAVE", "STATE", "JOB"
        )?;
        for h in hosts {
            writeln!(
                out,
                "{:<24} {:>4} {:<15} {:<22} {}",
                s(h, "host_id"),
                n(h, "wave") + 1,
                s(h, "state"),
                s(h, "job_id"),
                s(h, "reason")
            )?;
        }
    }
    Ok(())
}

/// The one-line outcome of an ended rollout, as the error `watch` returns.
fn ended(r: &Json) -> Result<(), ClientError> {
    match s(r, "state") {
        "succeeded" => Ok(()),
        state => Err(ClientError::RolloutEnded {
            id: s(r, "id").to_string(),
            state: state.to_string(),
            reason: s(r, "reason").to_string(),
        }),
    }
}

/// Live bars on a terminal: one per wave plus a status line.
struct Bars {
    multi: MultiProgress,
    status: ProgressBar,
    waves: Vec<ProgressBar>,
}

impl Bars {
    fn new(r: &Json) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let status = multi.add(ProgressBar::new_spinner());
        let style = ProgressStyle::with_template("wave {prefix:>3} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let waves = r["wave_counts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|w| {
                let bar = multi.add(ProgressBar::new(n(w, "hosts")));
                bar.set_style(style.clone());
                bar.set_prefix((n(w, "wave") + 1).to_string());
                bar
            })
            .collect();
        Bars { multi, status, waves }
    }

    fn draw(&self, r: &Json, now_ms: i64) {
        self.status.set_message(status_line(r, Some(now_ms)));
        self.status.tick();
        for (bar, w) in self
            .waves
            .iter()
            .zip(r["wave_counts"].as_array().map(Vec::as_slice).unwrap_or(&[]))
        {
            let c = &w["counts"];
            let done =
                n(c, "succeeded") + n(c, "failed") + n(c, "skipped") + n(c, "rolled_back") + n(c, "rollback_failed");
            bar.set_position(done);
            bar.set_message(counts_line(c));
        }
    }

    fn finish(&self) {
        for bar in &self.waves {
            bar.abandon();
        }
        self.status.abandon();
        let _ = self.multi.clear();
    }
}

/// Polls the rollout until it ends; returns its final view.
async fn watch(client: &Client, id: &str, output: Output, out: &mut impl Write) -> Result<Json, ClientError> {
    let live = output == Output::Table && std::io::stderr().is_terminal();
    let mut bars: Option<Bars> = None;
    let mut last_line = String::new();
    loop {
        let r = client.get_json(&["rollouts", id]).await?;
        let now = steward_shared::now_ms();
        if live {
            bars.get_or_insert_with(|| Bars::new(&r)).draw(&r, now);
        } else if output == Output::Table {
            // Without a terminal: a line per change (without the gate's age,
            // or every poll would be a change).
            let line = status_line(&r, None);
            if line != last_line {
                writeln!(out, "{line}")?;
                out.flush()?;
                last_line = line;
            }
        }
        if is_terminal(s(&r, "state")) {
            if let Some(b) = &bars {
                b.finish();
            }
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_final(r: &Json, output: Output, out: &mut impl Write) -> Result<(), ClientError> {
    match output {
        Output::Json => write_json(out, r),
        Output::Table => {
            writeln!(out, "{}", status_line(r, None))?;
            if !s(r, "reason").is_empty() {
                writeln!(out, "reason: {}", s(r, "reason"))?;
            }
            Ok(())
        }
    }
}

fn set(body: &mut Json, key: &str, value: Option<Json>) {
    if let Some(v) = value {
        body[key] = v;
    }
}

pub(super) async fn run(command: &RolloutsCommand, cli: &Cli, out: &mut impl Write) -> Result<(), ClientError> {
    let client = Client::from_cli(cli)?;
    let now = steward_shared::now_ms();
    match command {
        RolloutsCommand::Start {
            action,
            selector,
            params,
            canary,
            batch,
            max_failures,
            pause,
            min_healthy,
            wave_deadline,
            progress_deadline,
            health,
            slo,
            rollback_action,
            rollback_params,
            no_auto_rollback,
            watch: follow,
        } => {
            let mut strategy = serde_json::json!({});
            set(&mut strategy, "canary", canary.map(Json::from));
            set(&mut strategy, "batch", batch.clone().map(Json::from));
            set(&mut strategy, "max_failures", max_failures.clone().map(Json::from));
            set(&mut strategy, "pause", pause.clone().map(Json::from));
            set(&mut strategy, "min_healthy", min_healthy.clone().map(Json::from));
            set(&mut strategy, "wave_deadline", wave_deadline.clone().map(Json::from));
            set(
                &mut strategy,
                "progress_deadline",
                progress_deadline.clone().map(Json::from),
            );
            set(
                &mut strategy,
                "health",
                (!health.is_empty()).then(|| Json::from(health.clone())),
            );
            set(&mut strategy, "slo", (!slo.is_empty()).then(|| Json::from(slo.clone())));
            if let Some(a) = rollback_action {
                let p: BTreeMap<String, String> = parse_params(rollback_params)?;
                strategy["rollback"] = serde_json::json!({ "action": a, "params": p });
            }
            if *no_auto_rollback {
                strategy["auto_rollback"] = Json::Bool(false);
            }
            let body = serde_json::json!({
                "action": action, "selector": selector, "params": parse_params(params)?, "strategy": strategy,
            });
            let created = client.post_json(&["rollouts"], &body).await?;
            if !follow {
                return match cli.output {
                    Output::Json => write_json(out, &created),
                    Output::Table => {
                        writeln!(out, "{}", s(&created, "id"))?;
                        Ok(())
                    }
                };
            }
            if cli.output == Output::Table {
                writeln!(out, "{}", s(&created, "id"))?;
            }
            let r = watch(&client, s(&created, "id"), cli.output, out).await?;
            print_final(&r, cli.output, out)?;
            ended(&r)
        }
        RolloutsCommand::List { state } => {
            let query: Vec<(&str, &str)> = state.as_deref().map(|v| ("state", v)).into_iter().collect();
            let list = client.list_all(&["rollouts"], &query, None).await?;
            match cli.output {
                Output::Json => write_json(out, &list),
                Output::Table => list_table(list["items"].as_array().map(Vec::as_slice).unwrap_or(&[]), now, out),
            }
        }
        RolloutsCommand::Show { id } => {
            let r = client.get_json(&["rollouts", id]).await?;
            match cli.output {
                Output::Json => write_json(out, &r),
                Output::Table => detail(&r, now, out),
            }
        }
        RolloutsCommand::Watch { id } => {
            let r = watch(&client, id, cli.output, out).await?;
            print_final(&r, cli.output, out)?;
            ended(&r)
        }
        RolloutsCommand::Pause { id } | RolloutsCommand::Resume { id } | RolloutsCommand::Abort { id, .. } => {
            let (verb, body) = match command {
                RolloutsCommand::Pause { .. } => ("pause", serde_json::json!({})),
                RolloutsCommand::Resume { .. } => ("resume", serde_json::json!({})),
                RolloutsCommand::Abort { no_rollback, .. } => {
                    ("abort", serde_json::json!({ "rollback": !no_rollback }))
                }
                _ => unreachable!("matched above"),
            };
            let r = client.post_json(&["rollouts", id, verb], &body).await?;
            match cli.output {
                Output::Json => write_json(out, &r),
                Output::Table => {
                    writeln!(out, "{}", status_line(&r, None))?;
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: &str, gate: Option<&str>) -> Json {
        serde_json::json!({
            "id": "ro-1", "state": state, "current_wave": 1, "waves": 3, "budget": 1,
            "gate": gate, "gate_since_ms": gate.map(|_| 1_000),
            "counts": {"pending": 10, "dispatched": 2, "succeeded": 6, "failed": 1, "skipped": 0,
                       "rolling_back": 0, "rolled_back": 0, "rollback_failed": 0},
        })
    }

    #[test]
    fn the_status_line_names_wave_counts_and_gate_age() {
        assert_eq!(
            status_line(&view("running", Some("min_healthy")), Some(66_000)),
            "ro-1 running: wave 2/3, 6 succeeded, 1 failed, 2 running, 10 pending (budget 1 failures); \
             waiting on min_healthy for 1m05s"
        );
        // Without the time (lines printed per change), the gate without its age.
        assert!(status_line(&view("running", Some("min_healthy")), None).ends_with("; waiting on min_healthy"));
        assert_eq!(
            status_line(&view("paused", None), Some(0)),
            "ro-1 paused: wave 2/3, 6 succeeded, 1 failed, 2 running, 10 pending (budget 1 failures)"
        );
    }

    #[test]
    fn each_end_has_its_own_exit_code() {
        let code = |state: &str| ended(&view(state, None)).err().map(|e| e.exit_code()).unwrap_or(0);
        assert_eq!(
            ["succeeded", "rolled_back", "aborted", "failed"].map(code),
            [0, 3, 4, 5]
        );
        assert!(
            ["succeeded", "rolled_back", "failed", "aborted"]
                .into_iter()
                .all(is_terminal)
        );
        assert!(
            !["running", "paused", "stopping", "rolling_back"]
                .into_iter()
                .any(is_terminal)
        );
    }
}
