//! Job actions end to end: a real control plane (SQLite or PostgreSQL) and a
//! real agent process; jobs created with `POST /api/v1/jobs`, results read
//! back through the REST API. Backups with verification and a corrupted
//! archive, scheduled backups while the control plane is down, deploys of a
//! real small HTTP service (started by the systemd fake,
//! `agent/tests/fixtures/fake-restart.sh`) with a health gate and rollback,
//! refused artifacts, and the agent's local policy.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use steward_e2e::{Agent, ControlPlane, wait_for};

/// `POST /api/v1/jobs` for one host; returns the job's ID.
async fn create_job(cp: &ControlPlane, host: &str, action: &str, params: Value) -> String {
    let resp = cp
        .http()
        .unwrap()
        .post(format!("{}/api/v1/jobs", cp.rest_url))
        .bearer_auth(&cp.token)
        .json(&json!({ "action": action, "host": host, "params": params, "timeout": "120s" }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert!((200..300).contains(&status), "POST /api/v1/jobs: {status} {body}");
    body["items"][0]["id"].as_str().expect("a job ID").to_string()
}

/// Waits until `host` is known and connected (jobs are created for known hosts only).
async fn connected(cp: &ControlPlane, agent: &Agent) {
    let path = format!("/api/v1/hosts/{}", agent.host);
    wait_for(
        &format!("{} to connect", agent.host),
        Duration::from_secs(30),
        || async {
            let (status, v) = cp.get(&path).await.ok()?;
            (status == 200 && v["connected"] == true).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
}

/// Waits for the job to end; returns its view.
async fn wait_job(cp: &ControlPlane, id: &str) -> Value {
    wait_for(&format!("job {id} to end"), Duration::from_secs(90), || async {
        let (status, v) = cp.get(&format!("/api/v1/jobs/{id}")).await.ok()?;
        if status != 200 {
            return None;
        }
        let state = v["state"].as_str()?;
        matches!(state, "succeeded" | "failed" | "timed_out" | "cancelled" | "discarded").then_some(v)
    })
    .await
    .unwrap()
}

/// Runs a job to its end.
async fn run_job(cp: &ControlPlane, host: &str, action: &str, params: Value) -> Value {
    let id = create_job(cp, host, action, params).await;
    wait_job(cp, &id).await
}

fn reason(job: &Value) -> String {
    job["reason"].as_str().unwrap_or_default().to_string()
}

/// The job's result JSON.
fn result(job: &Value) -> Value {
    job["result"].clone()
}

/// Puts `keys` into the agent's `[agent]` table.
fn agent_keys(agent: &Agent, keys: &str) {
    let cfg = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        cfg.replacen("[agent]\n", &format!("[agent]\n{keys}\n"), 1),
    )
    .unwrap();
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Rewrites the snapshot archive with the content of the entry ending in
/// `name` changed (same size): a readable archive that no longer matches.
fn corrupt_file_in_archive(archive: &Path, name: &str) {
    let raw = zstd::decode_all(std::fs::File::open(archive).unwrap()).unwrap();
    let mut out = tar::Builder::new(Vec::new());
    for entry in tar::Archive::new(raw.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if path.to_string_lossy().ends_with(name) {
            data.iter_mut().for_each(|b| *b = b'X');
        }
        out.append_data(&mut header, &path, data.as_slice()).unwrap();
    }
    let tar = out.into_inner().unwrap();
    std::fs::write(archive, zstd::encode_all(tar.as_slice(), 3).unwrap()).unwrap();
}

fn backup_section(root: &Path, schedule: &str) -> String {
    let src = root.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "alpha").unwrap();
    std::fs::write(src.join("sub/b.txt"), "bravo").unwrap();
    format!(
        "[actions]\nallow = [\"backup.run\", \"backup.verify\"]\n\n[[backups]]\nname = \"files\"\nsources = [{}]\n\
         destination = {}\nkeep_last = 5\nrpo = \"1h\"\n{schedule}\n",
        toml_str(&src),
        toml_str(&root.join("dest"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_its_verification_and_a_corrupted_archive_that_verification_catches() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let mut agent = Agent::prepare(root.path(), &cp, "bk-01", "", &backup_section(root.path(), "")).unwrap();
    agent.spawn().unwrap();
    connected(&cp, &agent).await;

    let job = run_job(&cp, "bk-01", "backup.run", json!({ "name": "files" })).await;
    assert_eq!(job["state"], "succeeded", "{job}\n{}", agent.log());
    let r = result(&job);
    let snapshot = r["snapshot"].as_str().expect("snapshot id").to_string();
    assert_eq!((r["files"].as_u64(), r["bytes"].as_u64()), (Some(2), Some(10)), "{r}");
    assert_eq!(r["verified"], true);
    assert_eq!(r["rpo_secs"], 3600);
    let archive = root.path().join("dest/files").join(format!("{snapshot}.tar.zst"));
    assert!(archive.exists() && archive.with_extension("").with_extension("json").exists());

    let job = run_job(&cp, "bk-01", "backup.verify", json!({ "name": "files" })).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        (result(&job)["snapshot"].as_str(), result(&job)["verified"].as_bool()),
        (Some(snapshot.as_str()), Some(true))
    );

    corrupt_file_in_archive(&archive, "a.txt");
    let job = run_job(
        &cp,
        "bk-01",
        "backup.verify",
        json!({ "name": "files", "snapshot": snapshot }),
    )
    .await;
    assert_eq!(job["state"], "failed", "{job}");
    let why = reason(&job);
    assert!(
        why.contains("a.txt") && why.contains("differs from the manifest"),
        "{why}"
    );

    // The backups view: the last good snapshot and the failed verification.
    let (status, view) = cp.get("/api/v1/backups").await.unwrap();
    assert_eq!(status, 200, "{view}");
    let text = view.to_string();
    assert!(
        text.contains("bk-01") && text.contains("files") && text.contains(&snapshot),
        "{text}"
    );
    let _ = agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_run_while_the_controlplane_is_down_and_reach_it_later() {
    let root = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(root.path()).await.unwrap();
    let section = backup_section(
        root.path(),
        "schedule = \"*/1 * * * * *\"\nverify_schedule = \"*/2 * * * * *\"",
    );
    let mut agent = Agent::prepare(root.path(), &cp, "bk-02", "", &section).unwrap();
    cp.kill9();
    agent.spawn().unwrap();
    let dir = root.path().join("dest/files");
    wait_for(
        "two scheduled snapshots without a control plane",
        Duration::from_secs(30),
        || async {
            let n = std::fs::read_dir(&dir)
                .ok()?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count();
            (n >= 2).then_some(())
        },
    )
    .await
    .unwrap();
    cp.spawn().await.unwrap();
    let view = wait_for(
        "the scheduled backups in GET /api/v1/backups",
        Duration::from_secs(30),
        || async {
            let (status, v) = cp.get("/api/v1/backups").await.ok()?;
            (status == 200 && v.to_string().contains("bk-02")).then_some(v)
        },
    )
    .await
    .unwrap();
    assert!(view.to_string().contains("files"), "{view}");
    let _ = agent.terminate();
}

/// A `.tar.gz` release with `index.html` naming the version, and `health` if healthy.
fn release(dir: &Path, version: &str, healthy: bool) -> (String, String) {
    let mut files = vec![("index.html", version.to_string())];
    if healthy {
        files.push(("health", "ok".into()));
    }
    targz(dir, &format!("web-{version}.tar.gz"), &files, false)
}

fn targz(dir: &Path, name: &str, files: &[(&str, String)], raw_names: bool) -> (String, String) {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        if raw_names {
            // A hostile artifact: names the tar crate itself would refuse.
            h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, body.as_bytes()).unwrap();
        } else {
            h.set_cksum();
            b.append_data(&mut h, path, body.as_bytes()).unwrap();
        }
    }
    let bytes = b.into_inner().unwrap().finish().unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path.display().to_string(), hex::encode(Sha256::digest(&bytes)))
}

/// Stops the fake service's process when the test ends, however it ends.
struct Service(PathBuf);
impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

async fn serves(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/index.html");
    wait_for("the service to answer", Duration::from_secs(10), || async {
        reqwest::get(&url).await.ok()?.text().await.ok()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_pass_the_health_gate_roll_back_when_unhealthy_and_refuse_bad_artifacts() {
    let root = tempfile::tempdir().unwrap();
    let _service = Service(root.path().join("web.service.pid"));
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let releases = root.path().join("web");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/fake-restart.sh");
    // Artifacts come only from this directory (`artifact_sources`).
    let art = root.path().join("artifacts");
    std::fs::create_dir(&art).unwrap();
    let extra = format!(
        "[actions]\nallow = [\"deploy.apply:web\", \"deploy.rollback:web\"]\n\n[[apps]]\nname = \"web\"\n\
         releases_dir = {}\nunit = \"web.service\"\nartifact_sources = [{}]\n\
         [apps.health]\nhttp = \"http://127.0.0.1:{port}/health\"\n\
         retries = 50\ninterval = \"100ms\"\ndeadline = \"6s\"\ntimeout = \"1s\"\n",
        toml_str(&releases),
        toml_str(&art)
    );
    let mut agent = Agent::prepare(root.path(), &cp, "web-01", "", &extra).unwrap();
    agent_keys(
        &agent,
        &format!(
            "service_manager = \"command\"\nrestart_command = [\"/bin/sh\", {}, {}, \"{port}\"]",
            toml_str(&script),
            toml_str(&releases)
        ),
    );
    agent.spawn().unwrap();
    connected(&cp, &agent).await;
    let deploy = |version: &str, artifact: &str, sha: &str| json!({ "app": "web", "version": version, "artifact": artifact, "sha256": sha });

    let (v1, sha1) = release(&art, "1.0", true);
    let job = run_job(&cp, "web-01", "deploy.apply", deploy("1.0", &v1, &sha1)).await;
    assert_eq!(job["state"], "succeeded", "{job}\n{}", agent.log());
    assert_eq!(serves(port).await, "1.0");

    // Unhealthy: rolled back automatically; the previous release serves again.
    let (v2, sha2) = release(&art, "2.0", false);
    let job = run_job(&cp, "web-01", "deploy.apply", deploy("2.0", &v2, &sha2)).await;
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("failed"), Some("rolled_back")),
        "{job}"
    );
    assert!(reason(&job).contains("health"), "{job}");
    assert_eq!(
        std::fs::read_link(releases.join("current")).unwrap(),
        Path::new("releases/1.0")
    );
    assert_eq!(serves(port).await, "1.0");

    // An artifact outside `artifact_sources`: refused before it is read.
    let (outside, outside_sha) = release(root.path(), "1.5", true);
    let job = run_job(&cp, "web-01", "deploy.apply", deploy("1.5", &outside, &outside_sha)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(reason(&job).contains("not within the artifact_sources"), "{job}");
    assert!(!releases.join("releases/1.5").exists());

    // Wrong SHA-256: refused, nothing unpacked.
    let (v3, _) = release(&art, "3.0", true);
    let job = run_job(&cp, "web-01", "deploy.apply", deploy("3.0", &v3, &"0".repeat(64))).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(reason(&job).contains("sha256"), "{job}");
    assert!(!releases.join("releases/3.0").exists());

    // `../` in the archive: refused, nothing written outside the release.
    let files = [("index.html", "4.0".to_string()), ("../escaped", "x".to_string())];
    let (v4, sha4) = targz(&art, "web-4.0.tar.gz", &files, true);
    let job = run_job(&cp, "web-01", "deploy.apply", deploy("4.0", &v4, &sha4)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(reason(&job).contains("../escaped"), "{job}");
    assert!(!releases.join("releases/escaped").exists() && !releases.join("escaped").exists());
    assert_eq!(serves(port).await, "1.0");
    let _ = agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_outside_the_agent_policy_and_unlisted_commands_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let marker = root.path().join("ran");
    let extra = "[actions]\nallow = [\"exec\", \"service.restart:web.service\"]\nexec = [\"/bin/echo hello\"]\n";
    let mut agent = Agent::prepare(root.path(), &cp, "pol-01", "", extra).unwrap();
    agent.spawn().unwrap();
    connected(&cp, &agent).await;

    let job = run_job(&cp, "pol-01", "exec", json!({ "command": "/bin/echo hello" })).await;
    assert_eq!(job["state"], "succeeded", "{job}\n{}", agent.log());

    let unlisted = format!("/usr/bin/touch {}", marker.display());
    let job = run_job(&cp, "pol-01", "exec", json!({ "command": unlisted })).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(reason(&job).starts_with("not allowed by agent policy: "), "{job}");
    assert!(!marker.exists(), "the unlisted command did not run");

    let job = run_job(&cp, "pol-01", "backup.run", json!({ "name": "etc" })).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(reason(&job).starts_with("not allowed by agent policy: "), "{job}");
    let job_id = job["id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| job["id"].to_string());

    let job = run_job(&cp, "pol-01", "service.restart", json!({ "unit": "sshd.service" })).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(reason(&job).contains("not allowed by agent policy"), "{job}");

    // The refusal is in the audit log and in the agent's log.
    let audit = wait_for("the refusal in the audit log", Duration::from_secs(10), || async {
        let (status, v) = cp.get("/api/v1/audit?limit=500").await.ok()?;
        let text = v.to_string();
        (status == 200 && text.contains(&job_id) && text.contains("not allowed by agent policy")).then_some(text)
    })
    .await;
    assert!(audit.is_ok(), "{audit:?}");
    assert!(agent.log().contains("job refused"), "{}", agent.log());
    let _ = agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_policy_to_new_jobs_and_sigterm_drains_running_ones() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let extra = "[actions]\nallow = [\"exec\"]\nexec = [\"/bin/echo hello\", \"/bin/sleep 30\"]\n";
    let mut agent = Agent::prepare(root.path(), &cp, "sig-01", "", extra).unwrap();
    agent_keys(&agent, "job_grace = \"1s\"");
    agent.spawn().unwrap();
    connected(&cp, &agent).await;
    let job = run_job(&cp, "sig-01", "exec", json!({ "command": "/bin/echo hello" })).await;
    assert_eq!(job["state"], "succeeded", "{job}\n{}", agent.log());

    let reloads = |agent: &Agent| agent.log().matches("config reloaded").count();
    let reload = async |agent: &Agent, from: &str, to: &str| {
        let before = reloads(agent);
        let cfg = std::fs::read_to_string(&agent.config).unwrap();
        std::fs::write(&agent.config, cfg.replacen(from, to, 1)).unwrap();
        agent.sighup();
        wait_for("the reload", Duration::from_secs(10), || async {
            (reloads(agent) > before).then_some(())
        })
        .await
        .unwrap();
    };
    reload(&agent, "allow = [\"exec\"]", "allow = []").await;
    let job = run_job(&cp, "sig-01", "exec", json!({ "command": "/bin/echo hello" })).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(reason(&job).starts_with("not allowed by agent policy: "), "{job}");
    reload(&agent, "allow = []", "allow = [\"exec\"]").await;

    // SIGTERM while a job runs: it gets `job_grace`, then is cancelled and reported.
    let id = create_job(&cp, "sig-01", "exec", json!({ "command": "/bin/sleep 30" })).await;
    wait_for("the job to run", Duration::from_secs(30), || async {
        let (_, v) = cp.get(&format!("/api/v1/jobs/{id}")).await.ok()?;
        (v["state"] == "running").then_some(())
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let status = agent.terminate().unwrap();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let job = wait_job(&cp, &id).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(reason(&job), "agent is shutting down", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_command_and_a_job_cut_short_by_kill9_is_reported_interrupted() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let extra = "[actions]\nallow = [\"exec\"]\nexec = [\"/bin/sleep 37\", \"/bin/sleep 4\"]\n";
    let mut agent = Agent::prepare(root.path(), &cp, "kill-01", "", extra).unwrap();
    agent.spawn().unwrap();
    connected(&cp, &agent).await;
    let sleeping = || {
        std::process::Command::new("pgrep")
            .args(["-f", "^/bin/sleep 37$"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    };
    let running = async |id: &str| {
        wait_for("the job to run", Duration::from_secs(30), || async {
            let (_, v) = cp.get(&format!("/api/v1/jobs/{id}")).await.ok()?;
            (v["state"] == "running").then_some(())
        })
        .await
        .unwrap();
    };

    // Cancel through the API: the agent kills the command and reports `cancelled`.
    let id = create_job(&cp, "kill-01", "exec", json!({ "command": "/bin/sleep 37" })).await;
    running(&id).await;
    let resp = cp
        .http()
        .unwrap()
        .post(format!("{}/api/v1/jobs/{id}/cancel", cp.rest_url))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let job = wait_job(&cp, &id).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    wait_for("the command to be gone", Duration::from_secs(10), || async {
        (!sleeping()).then_some(())
    })
    .await
    .unwrap();

    // kill -9 of the agent mid-job: after the restart the attempt is reported
    // failed with reason `interrupted`, and it is not run again.
    // (A short command: the orphan it leaves behind ends by itself.)
    let id = create_job(&cp, "kill-01", "exec", json!({ "command": "/bin/sleep 4" })).await;
    running(&id).await;
    agent.kill9();
    agent.spawn().unwrap();
    let job = wait_job(&cp, &id).await;
    assert_eq!(
        (job["state"].as_str(), job["reason"].as_str()),
        (Some("failed"), Some("interrupted")),
        "{job}"
    );
    assert_eq!(job["attempt"], 1, "{job}");
    assert!(agent.log().contains("interrupted"), "{}", agent.log());
    let _ = agent.terminate();
}
