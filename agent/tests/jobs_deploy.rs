//! Deploys through the job runner with the command service manager and the
//! fake systemd (`tests/fixtures/fake-restart.sh`), which runs a real HTTP
//! service (`python3 -m http.server`) from the release `current` points to.
//! Everything a job does is read back from the spool, as the control plane
//! would receive it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use steward_agent::jobs::deploy::{AppConfig, CommandService};
use steward_agent::jobs::journal::Journal;
use steward_agent::jobs::policy::ActionsSection;
use steward_agent::jobs::{Executor, JobRunner};
use steward_agent::spool::Spool;
use steward_shared::proto::{self, job_event, report};
use tokio::sync::Notify;

/// Stops the fake service's process when the test ends, however it ends.
struct Service {
    pidfile: PathBuf,
}
impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `.tar.gz` release: `index.html` naming the version, and `health` if healthy.
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
            // Bypass the tar crate's own refusal of `..`, as a hostile artifact would.
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

/// Fields drop in order: the service is stopped before its directory goes.
struct Fx {
    _service: Service,
    tmp: tempfile::TempDir,
    runner: Arc<JobRunner>,
    spool: Arc<Spool>,
    new_data: Arc<Notify>,
    port: u16,
    releases: PathBuf,
}

fn fixture() -> Fx {
    // reqwest in this test uses ring, the workspace's one rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let releases = tmp.path().join("web");
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-restart.sh");
    let app: AppConfig = toml::from_str(&format!(
        "name = \"web\"\nreleases_dir = {:?}\nunit = \"web.service\"\nkeep_releases = 3\n\
         artifact_sources = [{:?}]\n\
         [health]\nhttp = \"http://127.0.0.1:{port}/health\"\nretries = 50\ninterval = \"100ms\"\n\
         deadline = \"6s\"\ntimeout = \"1s\"\n",
        releases.display().to_string(),
        tmp.path().display().to_string()
    ))
    .unwrap();
    let actions = ActionsSection {
        allow: vec![
            "deploy.apply:web".into(),
            "deploy.rollback:web".into(),
            "service.restart:web.service".into(),
        ],
        exec: vec![],
    };
    let services = CommandService {
        argv: vec![
            "/bin/sh".into(),
            script.display().to_string(),
            releases.display().to_string(),
            port.to_string(),
        ],
        timeout: Duration::from_secs(30),
    };
    let journal = Arc::new(Journal::open(&tmp.path().join("jobs.redb")).unwrap());
    let executor = Executor::new(&actions, vec![], vec![app], journal.clone(), Arc::new(services)).unwrap();
    let spool = Arc::new(Spool::open(&tmp.path().join("spool.redb"), 64 << 20).unwrap());
    let new_data = Arc::new(Notify::new());
    let runner = JobRunner::new(
        executor,
        journal,
        spool.clone(),
        new_data.clone(),
        2,
        Duration::from_secs(120),
    );
    let service = Service {
        pidfile: tmp.path().join("web.service.pid"),
    };
    Fx {
        _service: service,
        tmp,
        runner,
        spool,
        new_data,
        port,
        releases,
    }
}

impl Fx {
    async fn run(&self, attempt: &str, action: &str, params: &[(&str, &str)]) -> proto::JobFinished {
        self.runner.assign(proto::JobAssignment {
            job_id: format!("job-{attempt}"),
            attempt_id: attempt.into(),
            action: action.into(),
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            timeout_secs: 120,
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let found = self
                .spool
                .read_after(0, 100_000)
                .unwrap()
                .into_iter()
                .find_map(|r| match r.body {
                    Some(report::Body::Job(proto::JobEvent {
                        attempt_id,
                        event: Some(job_event::Event::Finished(f)),
                        ..
                    })) if attempt_id == attempt => Some(f),
                    _ => None,
                });
            if let Some(f) = found {
                return f;
            }
            assert!(tokio::time::Instant::now() < deadline, "{attempt} did not finish");
            let _ = tokio::time::timeout(Duration::from_millis(200), self.new_data.notified()).await;
        }
    }

    /// What the service serves as `index.html` (waits, bounded, for a just-restarted process to listen).
    async fn serves(&self) -> String {
        let url = format!("http://127.0.0.1:{}/index.html", self.port);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match reqwest::get(&url).await {
                Ok(r) => return r.text().await.unwrap(),
                Err(e) if tokio::time::Instant::now() >= deadline => panic!("service not serving: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn current(&self) -> String {
        std::fs::read_link(self.releases.join("current"))
            .unwrap()
            .display()
            .to_string()
    }

    fn pid(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("web.service.pid")).unwrap()
    }
}

fn result(f: &proto::JobFinished) -> serde_json::Value {
    serde_json::from_str(&f.result_json).unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn deploys_roll_back_on_a_failed_health_check_and_refuse_bad_artifacts() {
    let fx = fixture();
    let dir = fx.tmp.path().to_path_buf();

    // A good release: unpacked, switched, the service started, healthy.
    let (v1, sha1) = release(&dir, "1.0", true);
    let f = fx
        .run(
            "d1",
            "deploy.apply",
            &[("app", "web"), ("version", "1.0"), ("artifact", &v1), ("sha256", &sha1)],
        )
        .await;
    assert_eq!(f.outcome, "succeeded", "{}", f.reason);
    assert_eq!(result(&f)["current"], "1.0");
    assert_eq!(fx.serves().await, "1.0");
    let pid1 = fx.pid();

    // A release whose health check fails: rolled back, and 1.0 serves again
    // from a restarted process.
    let (v2, sha2) = release(&dir, "2.0", false);
    let f = fx
        .run(
            "d2",
            "deploy.apply",
            &[("app", "web"), ("version", "2.0"), ("artifact", &v2), ("sha256", &sha2)],
        )
        .await;
    assert_eq!(f.outcome, "rolled_back", "{}", f.reason);
    assert!(f.reason.contains("health"), "{}", f.reason);
    assert_eq!(result(&f)["current"], "1.0");
    assert_eq!(fx.current(), "releases/1.0");
    assert_eq!(fx.serves().await, "1.0");
    assert_ne!(fx.pid(), pid1, "the service was restarted on the previous release");

    // A wrong SHA-256: refused before anything is unpacked.
    let (v3, _) = release(&dir, "3.0", true);
    let f = fx
        .run(
            "d3",
            "deploy.apply",
            &[
                ("app", "web"),
                ("version", "3.0"),
                ("artifact", &v3),
                ("sha256", &"0".repeat(64)),
            ],
        )
        .await;
    assert_eq!(f.outcome, "failed");
    assert!(f.reason.contains("sha256"), "{}", f.reason);
    assert!(!fx.releases.join("releases/3.0").exists());

    // An archive with `../` paths: refused, nothing written outside.
    let files = [("index.html", "4.0".to_string()), ("../escaped", "x".to_string())];
    let (v4, sha4) = targz(&dir, "web-4.0.tar.gz", &files, true);
    let f = fx
        .run(
            "d4",
            "deploy.apply",
            &[("app", "web"), ("version", "4.0"), ("artifact", &v4), ("sha256", &sha4)],
        )
        .await;
    assert_eq!(f.outcome, "failed");
    assert!(
        f.reason.contains("../escaped") && f.reason.contains("refused"),
        "{}",
        f.reason
    );
    assert!(!fx.releases.join("releases/escaped").exists() && !fx.releases.join("escaped").exists());
    assert!(!fx.releases.join("releases/4.0").exists());
    assert_eq!(fx.current(), "releases/1.0");
    assert_eq!(fx.serves().await, "1.0");

    // service.restart through the configured command; an unlisted unit is refused.
    let pid = fx.pid();
    let f = fx.run("s1", "service.restart", &[("unit", "web.service")]).await;
    assert_eq!(f.outcome, "succeeded", "{}", f.reason);
    assert_ne!(fx.pid(), pid);
    assert_eq!(fx.serves().await, "1.0");
    let f = fx.run("s2", "service.restart", &[("unit", "sshd.service")]).await;
    assert_eq!(f.outcome, "failed");
    assert!(f.reason.starts_with("not allowed by agent policy: "), "{}", f.reason);

    // A good 2.1, then deploy.rollback back to 1.0.
    let (v5, sha5) = release(&dir, "2.1", true);
    let f = fx
        .run(
            "d5",
            "deploy.apply",
            &[("app", "web"), ("version", "2.1"), ("artifact", &v5), ("sha256", &sha5)],
        )
        .await;
    assert_eq!(f.outcome, "succeeded", "{}", f.reason);
    assert_eq!(fx.serves().await, "2.1");
    let f = fx.run("r1", "deploy.rollback", &[("app", "web")]).await;
    assert_eq!(f.outcome, "succeeded", "{}", f.reason);
    assert_eq!(fx.serves().await, "1.0");
    let params: BTreeMap<String, String> = f.params.into_iter().collect();
    assert_eq!(params.get("app").map(String::as_str), Some("web"));
}
