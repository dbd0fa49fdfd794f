//! The job queue end to end: real control planes (SQLite or PostgreSQL) and
//! real agent processes. Idempotency keys, cancellation of a running job on
//! the agent, `kill -9` of the agent and of the control plane mid-job (every
//! job ends in a defined state and none runs twice), two control planes on
//! one PostgreSQL dispatching 1,000 jobs exactly once, and refusals by the
//! agent's local policy, audited.
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use steward_e2e::{Agent, ControlPlane, TestBackend, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// An `exec`-able script that appends one line to `log` and then runs for `secs`.
fn appending_script(dir: &Path, log: &Path, secs: u32) -> String {
    let script = dir.join("append.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho ran >> {}\nsleep {secs}\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.display().to_string()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().count()
}

fn id(job: &Value) -> String {
    job["id"].as_str().expect("job id").to_string()
}

/// Audit entries with `action`, all pages.
async fn audit_entries(cp: &ControlPlane, action: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/api/v1/audit?action={action}&limit=1000{cursor}");
        let (status, v) = cp.get(&path).await.unwrap();
        assert_eq!(status, 200, "{v}");
        out.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_job_and_bad_requests_name_the_field() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let mut agent = Agent::prepare(root.path(), &cp, "idem-01", "", "[actions]\nallow = [\"checks.run\"]\n").unwrap();
    agent.spawn().unwrap();
    cp.wait_connected("idem-01").await.unwrap();

    let body = json!({ "action": "checks.run", "host": "idem-01", "idempotency_key": "deploy-42" });
    let (s1, first) = cp.post("/api/v1/jobs", &body).await.unwrap();
    assert_eq!(s1, 201, "{first}");
    assert_eq!(first["created"], true);
    let (s2, again) = cp.post("/api/v1/jobs", &body).await.unwrap();
    assert_eq!(s2, 200, "{again}");
    assert_eq!(again["created"], false);
    assert_eq!(first["items"][0]["id"], again["items"][0]["id"]);
    let job = cp.wait_job(&id(&first["items"][0]), WAIT).await.unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, list) = cp.get("/api/v1/jobs?host=idem-01").await.unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "one job for one key: {list}"
    );

    for (body, field) in [
        (json!({ "action": "rm -rf", "host": "idem-01" }), "action"),
        (json!({ "action": "backup.run", "host": "idem-01" }), "params.name"),
        (
            json!({ "action": "exec", "host": "idem-01", "params": { "command": "/bin/true", "shell": "1" } }),
            "params.shell",
        ),
        (json!({ "action": "checks.run" }), "host"),
        (json!({ "action": "checks.run", "host": "nope" }), "host"),
        (json!({ "action": "checks.run", "selector": "role in (" }), "selector"),
        (
            json!({ "action": "checks.run", "host": "idem-01", "timeout": "soon" }),
            "timeout",
        ),
        (
            json!({ "action": "checks.run", "host": "idem-01", "colour": 1 }),
            "colour",
        ),
    ] {
        let (status, problem) = cp.post("/api/v1/jobs", &body).await.unwrap();
        assert!((400..500).contains(&status), "{body} -> {status} {problem}");
        assert_eq!(problem["field"], field, "{body} -> {problem}");
    }
    let (status, problem) = cp.get("/api/v1/jobs?state=sleeping").await.unwrap();
    assert_eq!((status, problem["field"].as_str()), (400, Some("state")));
    let (status, _) = cp.get("/api/v1/jobs/0000").await.unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn cancel_of_a_running_job_stops_it_on_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let log = root.path().join("cancel.log");
    let script = appending_script(root.path(), &log, 60);
    let extra = format!("[actions]\nallow = [\"exec\"]\nexec = [{script:?}]\n");
    let mut agent = Agent::prepare(root.path(), &cp, "cancel-01", "", &extra).unwrap();
    agent.spawn().unwrap();
    cp.wait_connected("cancel-01").await.unwrap();

    let job = cp
        .create_job(&json!({ "action": "exec", "host": "cancel-01", "params": { "command": script } }))
        .await
        .unwrap();
    let job_id = id(&job);
    cp.wait_job_state(&job_id, &["running"], WAIT).await.unwrap();
    wait_for("the script to start", WAIT, || async {
        (lines(&log) == 1).then_some(())
    })
    .await
    .unwrap();
    let started = Instant::now();
    let (status, v) = cp
        .post(&format!("/api/v1/jobs/{job_id}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 202, "{v}");
    let done = cp.wait_job(&job_id, WAIT).await.unwrap();
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped long before the script's 60 s"
    );
    let (status, v) = cp
        .post(&format!("/api/v1/jobs/{job_id}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!((status, v["field"].as_str()), (409, Some("id")), "{v}");
    // A queued job is cancelled at once and never reaches the agent.
    agent.kill9();
    let queued = cp
        .create_job(&json!({ "action": "exec", "host": "cancel-01", "params": { "command": script } }))
        .await
        .unwrap();
    let (status, v) = cp
        .post(&format!("/api/v1/jobs/{}/cancel", id(&queued)), &json!({}))
        .await
        .unwrap();
    assert!(status == 200 || status == 202, "{v}");
    agent.spawn().unwrap();
    let done = cp.wait_job(&id(&queued), WAIT).await.unwrap();
    assert_eq!(done["state"], "cancelled");
    assert_eq!(lines(&log), 1, "the cancelled queued job never ran");
    let cancels = audit_entries(&cp, "jobs.cancel").await;
    assert_eq!(cancels.len(), 2);
}

#[tokio::test]
async fn kill9_of_the_agent_or_the_control_plane_mid_job_ends_every_job_and_runs_none_twice() {
    let root = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(root.path()).await.unwrap();
    let log = root.path().join("runs.log");
    let script = appending_script(root.path(), &log, 3);
    let extra = format!("[actions]\nallow = [\"exec\"]\nexec = [{script:?}]\n");
    let mut agent = Agent::prepare(root.path(), &cp, "crash-01", "", &extra).unwrap();
    agent.spawn().unwrap();
    cp.wait_connected("crash-01").await.unwrap();
    let body = json!({ "action": "exec", "host": "crash-01", "params": { "command": script }, "timeout": "60s" });

    // The agent dies mid-job: after its restart the attempt is reported interrupted, never re-run.
    let a = id(&cp.create_job(&body).await.unwrap());
    cp.wait_job_state(&a, &["running"], WAIT).await.unwrap();
    wait_for("the first run to start", WAIT, || async {
        (lines(&log) == 1).then_some(())
    })
    .await
    .unwrap();
    agent.kill9();
    agent.spawn().unwrap();
    let done = cp.wait_job(&a, WAIT).await.unwrap();
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["reason"], "interrupted", "{done}");

    // The control plane dies mid-job: the agent finishes and reports through its spool.
    let b = id(&cp.create_job(&body).await.unwrap());
    cp.wait_job_state(&b, &["running"], WAIT).await.unwrap();
    cp.kill9();
    wait_for("the second run to start", WAIT, || async {
        (lines(&log) == 2).then_some(())
    })
    .await
    .unwrap();
    cp.spawn().await.unwrap();
    let done = cp.wait_job(&b, WAIT).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 1);

    // A job queued while the control plane was down, then both restarted: it runs once.
    agent.kill9();
    let c = id(&cp.create_job(&body).await.unwrap());
    cp.kill9();
    cp.spawn().await.unwrap();
    agent.spawn().unwrap();
    let done = cp.wait_job(&c, WAIT).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    // Give any duplicate a chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lines(&log), 3, "each of the three jobs ran exactly once");
    for j in [&a, &b, &c] {
        let starts = audit_entries(&cp, "jobs.finish")
            .await
            .into_iter()
            .filter(|e| e["target"] == format!("job:{j}"))
            .count();
        assert_eq!(starts, 1, "job {j} ended once");
    }
}

#[ignore = "PostgreSQL only: .ci/run runs it in its PostgreSQL pass (cargo test -p steward-e2e -- --ignored)"]
#[tokio::test]
async fn two_control_planes_on_one_postgresql_dispatch_1000_jobs_exactly_once() {
    // Ignored (reported as skipped, never as passed) unless asked for with
    // --ignored, which then needs PostgreSQL: one SQLite file serves one
    // control-plane process, replicas share a PostgreSQL database.
    assert_eq!(
        TestBackend::from_env(),
        TestBackend::Postgres,
        "PostgreSQL only: run with STEWARD_TEST_BACKEND=postgres (and STEWARD_TEST_PG_URL)"
    );
    let root = tempfile::tempdir().unwrap();
    let cp1 = ControlPlane::start(root.path()).await.unwrap();
    let cp2 = ControlPlane::start_replica(root.path(), "cp2", &cp1).await.unwrap();
    let extra = "[actions]\nallow = [\"checks.run\"]\n";
    let mut agents = Vec::new();
    let mut hosts = Vec::new();
    for i in 0..8 {
        let host = format!("rep-{i:02}");
        let cp = if i % 2 == 0 { &cp1 } else { &cp2 };
        let mut a = Agent::prepare(root.path(), cp, &host, "", extra).unwrap();
        a.spawn().unwrap();
        agents.push(a);
        hosts.push(host);
    }
    wait_for("every agent to connect", WAIT, || async {
        let (_, v) = cp1.get("/api/v1/hosts").await.ok()?;
        let n = v["items"].as_array()?.iter().filter(|h| h["connected"] == true).count();
        (n == hosts.len()).then_some(())
    })
    .await
    .unwrap();

    // 1,000 jobs, created through both control planes.
    let mut ids = Vec::new();
    for i in 0..1000 {
        let cp = if i % 2 == 0 { &cp1 } else { &cp2 };
        let body = json!({ "action": "checks.run", "host": hosts[i % hosts.len()] });
        ids.push(id(&cp.create_job(&body).await.unwrap()));
    }
    assert_eq!(ids.len(), 1000);
    wait_for("every job to succeed", Duration::from_secs(240), || async {
        let (_, v) = cp1.get("/api/v1/jobs?state=succeeded&limit=1000").await.ok()?;
        (v["items"].as_array()?.len() == 1000).then_some(())
    })
    .await
    .unwrap();
    let dispatches = audit_entries(&cp1, "jobs.dispatch").await;
    let mut per_job = std::collections::HashMap::new();
    let mut owners = std::collections::HashSet::new();
    for e in &dispatches {
        *per_job.entry(e["target"].as_str().unwrap().to_string()).or_insert(0) += 1;
        let details: Value = e["details"]
            .as_str()
            .map(|d| serde_json::from_str(d).unwrap())
            .unwrap_or_else(|| e["details"].clone());
        owners.insert(details["owner"].as_str().expect("owner").to_string());
    }
    assert_eq!(per_job.len(), 1000, "every job dispatched");
    assert!(per_job.values().all(|n| *n == 1), "no job dispatched twice");
    // Owners are `HOST:PID:RANDOM`: one of each control plane.
    assert_eq!(owners.len(), 2, "{owners:?}");
    for cp in [&cp1, &cp2] {
        let pid = format!(":{}:", cp.pid().unwrap());
        assert!(
            owners.iter().any(|o| o.contains(&pid)),
            "no dispatch by pid {pid}: {owners:?}"
        );
    }
    let (_, v) = cp1.get("/api/v1/jobs?limit=1000").await.unwrap();
    assert!(v["items"].as_array().unwrap().iter().all(|j| j["attempt"] == 1));
}

#[tokio::test]
async fn actions_outside_the_agents_policy_are_refused_and_audited() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let extra = "[actions]\nallow = [\"checks.run\", \"exec\"]\nexec = [\"/bin/true\"]\n";
    let mut agent = Agent::prepare(root.path(), &cp, "policy-01", "", extra).unwrap();
    agent.spawn().unwrap();
    cp.wait_connected("policy-01").await.unwrap();
    let refused = cp
        .create_job(&json!({ "action": "service.restart", "host": "policy-01", "params": { "unit": "nginx.service" }, "max_attempts": 3 }))
        .await
        .unwrap();
    let unlisted = cp
        .create_job(&json!({ "action": "exec", "host": "policy-01", "params": { "command": "/bin/false" } }))
        .await
        .unwrap();
    let listed = cp
        .create_job(&json!({ "action": "exec", "host": "policy-01", "params": { "command": "/bin/true" } }))
        .await
        .unwrap();
    for job in [&refused, &unlisted] {
        let done = cp.wait_job(&id(job), WAIT).await.unwrap();
        assert_eq!(done["state"], "failed", "{done}");
        assert!(
            done["reason"]
                .as_str()
                .unwrap()
                .starts_with("not allowed by agent policy"),
            "{done}"
        );
        assert_eq!(done["attempt"], 1, "a refusal is never retried");
    }
    assert_eq!(cp.wait_job(&id(&listed), WAIT).await.unwrap()["state"], "succeeded");
    let finishes = audit_entries(&cp, "jobs.finish").await;
    for job in [&refused, &unlisted] {
        let entry = finishes
            .iter()
            .find(|e| e["target"] == format!("job:{}", id(job)))
            .expect("the refusal is audited");
        assert_eq!(entry["actor"], "host:policy-01");
        assert!(
            entry["details"].to_string().contains("not allowed by agent policy"),
            "{entry}"
        );
    }

    // The same through stewardctl: --wait exits 0 only for a success, with one line otherwise.
    let run = ["jobs", "run", "exec", "--host", "policy-01", "--wait", "--param"];
    let (ok, out, err) = cp.stewardctl(&[&run[..], &["command=/bin/true"]].concat());
    assert!(ok, "{out}{err}");
    assert!(out.contains("succeeded"), "{out}");
    let (ok, out, err) = cp.stewardctl(&[&run[..], &["command=/bin/false"]].concat());
    assert!(!ok, "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not allowed by agent policy"), "{err}");
    let (ok, _, err) = cp.stewardctl(&["jobs", "run", "reboot", "--host", "policy-01"]);
    assert!(!ok && err.contains("action"), "{err}");
    let (ok, out, err) = cp.stewardctl(&["jobs", "list", "--host", "policy-01"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1 + 5, "header and five jobs: {out}");
    let (ok, out, _) = cp.stewardctl(&["jobs", "show", &id(&listed)]);
    assert!(ok && out.contains("succeeded"), "{out}");
    let (ok, _, err) = cp.stewardctl(&["jobs", "logs", &id(&listed)]);
    assert!(ok, "{err}");
    let (ok, _, err) = cp.stewardctl(&["jobs", "cancel", &id(&listed)]);
    assert!(!ok && err.contains("already ended"), "{err}");
    let (ok, out, err) = cp.stewardctl(&["backups", "list"]);
    assert!(ok && out.starts_with("HOST"), "{out}{err}");
}
