//! `/metrics` of a real, busy control plane passes `promtool check metrics`
//! (Debian's `prometheus` package): an agent streaming results, a job, a
//! rollout, an SLO evaluated by the alert round, KPIs sampled and the API's
//! own requests flushed, so every metric family has samples. Without
//! `promtool` the test says it skipped on stderr, except under CI (`CI` set
//! to anything but empty, `0` or `false`), where it fails.
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use steward_e2e::{Agent, ControlPlane, fast_checks, wait_for};

const WAIT: Duration = Duration::from_secs(90);

fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    // Any CI value but empty, 0 or false counts (CI=1 too): there the test
    // fails rather than pass without checking.
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
    assert!(
        !ci,
        "promtool not found (Debian: apt-get install --no-install-recommends prometheus); under CI it is needed"
    );
    eprintln!("promtool not found: `promtool check metrics` skipped (install Debian's prometheus package)");
    None
}

/// `promtool check metrics` over `text`: (success, what it said).
fn check_metrics(promtool: &str, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_busy_control_plane_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with_config(
        root.path(),
        "[kpi]\nsample_interval = \"1s\"\n[alerts]\ninterval = \"1s\"\n",
    )
    .await
    .unwrap();
    let mut agent = Agent::prepare(
        root.path(),
        &cp,
        "metrics-01",
        &fast_checks(2),
        "[actions]\nallow = [\"checks.run\"]\n",
    )
    .unwrap();
    agent.spawn().unwrap();
    cp.wait_connected("metrics-01").await.unwrap();
    let http = cp.http().unwrap();

    // An SLO over the agent's c0 results.
    let r = http
        .put(format!("{}/api/v1/slos/memory", cp.rest_url))
        .bearer_auth(&cp.token)
        .json(&json!({
            "indicator": {"type": "checkAvailability", "check": "c0"},
            "objectives": [{"target": 0.99}],
            "timeWindow": [{"duration": "30d"}],
            "alerting": {"minEvents": 1}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());

    // A job and a rollout that both end.
    let r = http
        .put(format!("{}/api/v1/hosts/metrics-01/labels", cp.rest_url))
        .bearer_auth(&cp.token)
        .json(&json!({ "labels": { "app": "m" } }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let job = cp
        .create_job(&json!({ "action": "checks.run", "host": "metrics-01" }))
        .await
        .unwrap();
    let done = cp.wait_job(job["id"].as_str().unwrap(), WAIT).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let (status, v) = cp
        .post(
            "/api/v1/rollouts",
            &json!({ "action": "checks.run", "selector": "app=m", "strategy": { "min_healthy": "1s" } }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    wait_for("the rollout to succeed", WAIT, || async {
        let (_, v) = cp.get(&format!("/api/v1/rollouts/{id}")).await.ok()?;
        (v["state"] == "succeeded").then_some(())
    })
    .await
    .unwrap();

    // Every family has samples once the SLO round, the KPI sampler and the API flush caught up.
    let wanted = [
        "steward_results_ingested_total ",
        "steward_ingest_batch_seconds_bucket{",
        "steward_agents_connected 1",
        "steward_agent_streams_total{outcome=\"accepted\"}",
        "steward_hosts 1",
        "steward_http_requests_total{",
        "steward_http_request_seconds_bucket{",
        "steward_jobs{",
        "steward_jobs_dispatched_total ",
        "steward_job_dispatch_seconds_bucket{",
        "steward_job_attempts_finished_total{",
        "steward_kpi{kpi=\"agent_connectivity\"} 1",
        "steward_kpi{kpi=\"rollout_success_rate\"} 1",
        "steward_kpi{kpi=\"api_availability\"} 1",
        "steward_kpi{kpi=\"api_latency_p95\"}",
        "steward_slo_sli{slo=\"memory\"} 1",
        "steward_slo_error_budget_remaining{slo=\"memory\"} 1",
        "steward_slo_burn_rate{slo=\"memory\",window=\"5m\"} 0",
        "steward_slo_alert_firing{slo=\"memory\",tier=\"page-1h\"} 0",
        "steward_slo_metrics_dropped 0",
    ];
    let text = wait_for("every metric family to have samples", WAIT, || async {
        let text = http
            .get(format!("{}/metrics", cp.rest_url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        wanted.iter().all(|w| text.contains(w)).then_some(text)
    })
    .await
    .unwrap_or_else(|e| {
        let text = std::fs::read_to_string(cp.dir.join("controlplane.log")).unwrap_or_default();
        panic!("{e}\n{text}")
    });

    let (ok, said) = check_metrics(promtool, &text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n---\n{text}"
    );
    // promtool does see problems: a counter without _total fails.
    let (ok, said) = check_metrics(
        promtool,
        "# HELP steward_bad A counter.\n# TYPE steward_bad counter\nsteward_bad 1\n",
    );
    assert!(!ok || !said.trim().is_empty(), "promtool accepted a bad counter name");
    drop(agent);
}
