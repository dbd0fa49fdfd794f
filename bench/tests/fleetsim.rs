//! The fleet simulator against a real control plane (in this process, real
//! mTLS, the backend named by `STEWARD_TEST_BACKEND`): K agents connect, one
//! answers a job that succeeds, one fails a deploy of a listed version.
use std::time::Duration;

use steward_bench::sim::{Fleet, SimConfig, local::LocalControlPlane};
use steward_controlplane::store::testdb::TestBackend;

async fn job(http: &reqwest::Client, cp: &LocalControlPlane, body: serde_json::Value) -> String {
    let resp = http
        .post(format!("{}/api/v1/jobs", cp.rest_url))
        .bearer_auth(&cp.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "POST /api/v1/jobs: {}", resp.status());
    let v: serde_json::Value = resp.json().await.unwrap();
    v["items"][0]["id"].as_str().unwrap().to_string()
}

async fn wait_terminal(http: &reqwest::Client, cp: &LocalControlPlane, id: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = http
            .get(format!("{}/api/v1/jobs/{id}", cp.rest_url))
            .bearer_auth(&cp.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ["succeeded", "failed", "timed_out", "cancelled", "discarded"].contains(&v["state"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {id} not finished: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_connect_and_answer_jobs() {
    let cp = LocalControlPlane::start(TestBackend::from_env()).await.unwrap();
    let cfg = SimConfig {
        agents: 5,
        report_interval: Some(Duration::from_millis(200)),
        job_latency: Duration::from_millis(50),
        fail_versions: vec!["2.0.0".into()],
        ..SimConfig::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let fleet = Fleet::start(cfg, cp.identities(), cp.target(), Some(tx)).await.unwrap();
    fleet.wait_connected(5, Duration::from_secs(30)).await.unwrap();
    let http = reqwest::Client::new();

    // Every simulated host is known and connected.
    for h in &fleet.hosts {
        let v: serde_json::Value = http
            .get(format!("{}/api/v1/hosts/{h}", cp.rest_url))
            .bearer_auth(&cp.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["connected"], true, "{h}: {v}");
    }

    let ok = job(
        &http,
        &cp,
        serde_json::json!({"action": "checks.run", "host": "sim-00003", "timeout": "60s"}),
    )
    .await;
    let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.host_id.as_str(), got.job_id.as_str()), ("sim-00003", ok.as_str()));
    let v = wait_terminal(&http, &cp, &ok).await;
    assert_eq!(v["state"], "succeeded", "{v}");

    let params = serde_json::json!({"app": "web", "version": "2.0.0", "artifact": "https://example.com/web-2.0.0.tar.gz",
        "sha256": "0000000000000000000000000000000000000000000000000000000000000000"});
    let bad = job(
        &http,
        &cp,
        serde_json::json!({"action": "deploy.apply", "host": "sim-00001", "params": params, "timeout": "60s"}),
    )
    .await;
    let v = wait_terminal(&http, &cp, &bad).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["outcome"], "rolled_back", "{v}");

    // Check results were reported and acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fleet.stats.reports_acked.load(std::sync::atomic::Ordering::Relaxed) < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reports not acknowledged: {}",
            fleet.stats.to_json()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = fleet.stop().await.to_json();
    assert_eq!(stats["jobs_succeeded"], 1, "{stats}");
    assert_eq!(stats["jobs_failed"], 1, "{stats}");
    cp.stop().await;
}
