//! The reporting pipeline end to end: checks → spool → mTLS stream → store →
//! REST and stewardctl, through crashes of either side.
use std::time::Duration;

use serde_json::Value;
use steward_e2e::{Agent, ControlPlane, assert_contiguous, fast_checks, wait_for};

async fn host_checks(cp: &ControlPlane, host: &str) -> Option<Vec<Value>> {
    match cp.get(&format!("/api/v1/hosts/{host}/checks")).await {
        Ok((200, v)) => v["items"].as_array().cloned(),
        _ => None,
    }
}

async fn host_view(cp: &ControlPlane, host: &str) -> Option<Value> {
    match cp.get(&format!("/api/v1/hosts/{host}")).await {
        Ok((200, v)) => Some(v),
        _ => None,
    }
}

/// Waits until the control plane has stored at least `n` reports of `host`.
async fn wait_stored(cp: &ControlPlane, host: &str, n: usize, timeout: Duration) {
    wait_for(&format!("{n} stored reports of {host}"), timeout, || async {
        (cp.stored_seqs(host).await.map(|s| s.len()).unwrap_or(0) >= n).then_some(())
    })
    .await
    .unwrap();
}

/// Stops the agent gracefully (SIGTERM: exit 0 within the harness's
/// `shutdown_grace` of 10 s) and checks that the database holds exactly the
/// sequences 1..=N the agent produced: nothing lost, nothing twice.
async fn stop_and_assert_exactly_once(cp: &ControlPlane, agent: &mut Agent) {
    let started = std::time::Instant::now();
    let status = agent.terminate().expect("agent was running");
    assert!(status.success(), "agent exit {status:?}; log:\n{}", agent.log());
    assert!(
        started.elapsed() < Duration::from_secs(10 + 5),
        "the drain ends within shutdown_grace; took {:?}",
        started.elapsed()
    );
    let stats = agent.spool_stats().unwrap();
    assert_eq!(
        stats.depth,
        0,
        "the graceful stop delivered the whole spool; log:\n{}",
        agent.log()
    );
    assert_eq!(stats.dropped_total, 0);
    let produced = stats.next_seq - 1;
    assert!(produced > 0);
    let seqs = cp.stored_seqs(&agent.host).await.unwrap();
    assert_contiguous(&seqs, produced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_results_reach_the_rest_api_and_stewardctl() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let mut agent = Agent::start(root.path(), &cp, "web-01", &fast_checks(2)).await.unwrap();

    let checks = wait_for("checks of web-01", Duration::from_secs(30), || async {
        host_checks(&cp, "web-01").await.filter(|c| c.len() == 2)
    })
    .await
    .unwrap();
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(names.contains(&"c0") && names.contains(&"c1"), "{checks:?}");
    assert!(
        checks
            .iter()
            .all(|c| ["ok", "warning", "critical", "unknown"].contains(&c["status"].as_str().unwrap_or("")))
    );

    let host = host_view(&cp, "web-01").await.unwrap();
    assert_eq!(host["id"], "web-01");
    assert_eq!(host["online"], true);
    assert!(
        host["facts"]["hostname"].is_string(),
        "self-reported facts are kept: {host}"
    );
    assert!(
        host["labels"].as_object().is_some_and(|l| l.is_empty()),
        "agents cannot set labels: {host}"
    );

    // The CLI, as an operator would run it.
    let (st, out, err) = steward_e2e::run_cmd(
        std::process::Command::new(steward_e2e::bin("stewardctl"))
            .args(["hosts", "list"])
            .env("STEWARD_SERVER", &cp.rest_url)
            .env("STEWARD_TOKEN", &cp.token),
    );
    assert!(st.success(), "{err}");
    assert!(out.contains("web-01"), "{out}");
    let (st, out, _) = steward_e2e::run_cmd(
        std::process::Command::new(steward_e2e::bin("stewardctl"))
            .args(["-o", "json", "checks", "list", "--host", "web-01"])
            .env("STEWARD_SERVER", &cp.rest_url)
            .env("STEWARD_TOKEN", &cp.token),
    );
    assert!(st.success());
    let json: Value = serde_json::from_str(&out).unwrap();
    assert!(json.to_string().contains("\"c0\""), "{out}");

    // The ingest shows on /metrics.
    let metrics = reqwest::get(format!("{}/metrics", cp.rest_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ingested = metrics
        .lines()
        .find_map(|l| l.strip_prefix("steward_results_ingested_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(ingested >= 2.0, "{metrics}");
    assert!(metrics.contains("steward_agents_connected 1"), "{metrics}");

    stop_and_assert_exactly_once(&cp, &mut agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controlplane_kill9_loses_nothing_and_stores_nothing_twice() {
    let root = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(root.path()).await.unwrap();
    let mut agent = Agent::start(root.path(), &cp, "kill-cp", &fast_checks(4))
        .await
        .unwrap();
    wait_stored(&cp, "kill-cp", 8, Duration::from_secs(30)).await;

    cp.kill9();
    // The agent keeps checking and spooling while the control plane is gone.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        agent.is_running(),
        "the agent survives the outage; log:\n{}",
        agent.log()
    );
    let before_restart = cp.stored_seqs("kill-cp").await.unwrap().len();

    cp.spawn().await.unwrap();
    // ~4 results/s for 30 s were spooled: they must all arrive after the restart.
    wait_stored(&cp, "kill-cp", before_restart + 100, Duration::from_secs(60)).await;
    stop_and_assert_exactly_once(&cp, &mut agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill9_mid_batch_leaves_no_gap_and_no_duplicate() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let mut agent = Agent::start(root.path(), &cp, "kill-agent", &fast_checks(6))
        .await
        .unwrap();
    for round in 1..=3 {
        wait_stored(&cp, "kill-agent", round * 12, Duration::from_secs(30)).await;
        agent.kill9();
        agent.spawn().unwrap();
    }
    wait_stored(&cp, "kill-agent", 48, Duration::from_secs(30)).await;
    stop_and_assert_exactly_once(&cp, &mut agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_the_oldest_and_the_count_reaches_the_api() {
    let root = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(root.path()).await.unwrap();
    cp.kill9(); // the agent starts while the control plane is down
    let mut agent = Agent::prepare(
        root.path(),
        &cp,
        "tiny-spool",
        &fast_checks(6),
        "[spool]\nmax_size = \"4KiB\"\n",
    )
    .unwrap();
    agent.spawn().unwrap();
    // 6 results a second into a 4 KiB spool overflow within a few seconds.
    tokio::time::sleep(Duration::from_secs(8)).await;
    cp.spawn().await.unwrap();
    let host = wait_for("a reported drop count", Duration::from_secs(30), || async {
        host_view(&cp, "tiny-spool")
            .await
            .filter(|h| h["spool_dropped_total"].as_u64().unwrap_or(0) > 0)
    })
    .await
    .unwrap();
    let dropped = host["spool_dropped_total"].as_u64().unwrap();
    agent.terminate();
    let stats = agent.spool_stats().unwrap();
    assert!(stats.dropped_total >= dropped);
    // What was not dropped arrived; the oldest were the ones dropped.
    let seqs = cp.stored_seqs("tiny-spool").await.unwrap();
    assert!(!seqs.is_empty());
    assert!(seqs[0] > 1, "the oldest reports were dropped, not the newest");
    assert_eq!(*seqs.last().unwrap() as u64, stats.next_seq - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_running_one() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let mut agent = Agent::start(root.path(), &cp, "reload", &fast_checks(1)).await.unwrap();
    wait_stored(&cp, "reload", 2, Duration::from_secs(30)).await;
    let good = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("{good}\n[[checks]]\nname = \"bad\"\nkind = \"nonsense\"\n"),
    )
    .unwrap();
    agent.sighup();
    wait_for("the refusal in the log", Duration::from_secs(10), || async {
        agent.log().contains("reload refused").then_some(())
    })
    .await
    .unwrap();
    let n = cp.stored_seqs("reload").await.unwrap().len();
    wait_stored(&cp, "reload", n + 3, Duration::from_secs(30)).await;
    assert!(agent.is_running());
    // A good config is applied: a second check appears.
    std::fs::write(
        &agent.config,
        format!(
            "{good}\n{}",
            "[[checks]]\nname = \"added\"\nkind = \"memory\"\ninterval = \"1s\"\n"
        ),
    )
    .unwrap();
    agent.sighup();
    wait_for("the added check", Duration::from_secs(30), || async {
        host_checks(&cp, "reload")
            .await
            .filter(|c| c.iter().any(|c| c["name"] == "added"))
    })
    .await
    .unwrap();
    stop_and_assert_exactly_once(&cp, &mut agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rest_input_gets_problem_json() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let client = reqwest::Client::new();
    let cases: &[(&str, bool, u16, Option<&str>)] = &[
        ("/api/v1/hosts?selector=env%3D%3Dprod%2C", true, 400, Some("selector")),
        ("/api/v1/hosts?limit=abc", true, 400, Some("limit")),
        ("/api/v1/hosts?limit=0", true, 400, Some("limit")),
        ("/api/v1/checks?status=purple", true, 400, Some("status")),
        ("/api/v1/hosts?cursor=%%%", true, 400, Some("cursor")),
        ("/api/v1/hosts/nope", true, 404, None),
        ("/api/v1/nothing-here", true, 404, None),
        ("/api/v1/hosts", false, 401, None),
    ];
    for (path, auth, status, field) in cases {
        let mut req = client.get(format!("{}{path}", cp.rest_url));
        if *auth {
            req = req.bearer_auth(&cp.token);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), *status, "{path}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("application/problem+json"), "{path}: {ct}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"].as_u64(), Some(*status as u64), "{path}: {body}");
        assert!(
            body["title"].is_string() && body["detail"].is_string(),
            "{path}: {body}"
        );
        if let Some(f) = field {
            assert_eq!(body["field"].as_str(), Some(*f), "{path}: {body}");
        }
    }
    let resp = client
        .get(format!("{}/api/v1/hosts", cp.rest_url))
        .bearer_auth("stw_bogus_token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client.get(format!("{}/readyz", cp.rest_url)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "bad input took nothing down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_serves_https_when_a_certificate_is_configured() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with_rest_tls(root.path()).await.unwrap();
    assert!(cp.rest_url.starts_with("https://"));
    let (status, body) = cp.get("/api/v1/hosts").await.unwrap();
    assert_eq!(status, 200, "{body}");
    // stewardctl trusts a private CA with --ca-cert.
    let (st, out, err) = steward_e2e::run_cmd(
        std::process::Command::new(steward_e2e::bin("stewardctl"))
            .args(["--ca-cert"])
            .arg(cp.dir.join("ca.pem"))
            .args(["hosts", "list"])
            .env("STEWARD_SERVER", &cp.rest_url)
            .env("STEWARD_TOKEN", &cp.token),
    );
    assert!(st.success(), "{out}{err}");
    // Plain HTTP on the HTTPS port gets nothing useful.
    let plain = cp.rest_url.replace("https://localhost", "http://127.0.0.1");
    let resp = reqwest::Client::new().get(format!("{plain}/healthz")).send().await;
    assert!(
        resp.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not be served"
    );
}
