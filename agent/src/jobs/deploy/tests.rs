//! Deploy tests against a real tiny HTTP service on 127.0.0.1 that serves the
//! files of `current/`, (re)started by a fake [`ServiceManager`].
use super::*;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves files under a document root; 503 while "stopped" (root `None`).
async fn serve(listener: tokio::net::TcpListener, root: Arc<Mutex<Option<PathBuf>>>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let root = root.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]).into_owned();
            let path = head
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let doc = root.lock().unwrap().clone();
            let (status, body) = match doc {
                None => ("503 Service Unavailable", b"stopped".to_vec()),
                Some(dir) if path.split('/').any(|p| p == "..") => {
                    ("400 Bad Request", dir.display().to_string().into_bytes())
                }
                Some(dir) => match std::fs::read(dir.join(&path)) {
                    Ok(b) => ("200 OK", b),
                    Err(_) => ("404 Not Found", b"missing".to_vec()),
                },
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        });
    }
}

/// A "service" whose restart re-reads `current` (like a process started in it).
struct FakeService {
    current: PathBuf,
    root: Arc<Mutex<Option<PathBuf>>>,
    restarts: AtomicUsize,
}

impl ServiceManager for FakeService {
    fn restart<'a>(&'a self, unit: &'a str) -> service::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            assert_eq!(unit, "web.service");
            self.restarts.fetch_add(1, Ordering::SeqCst);
            *self.root.lock().unwrap() = None;
            let dir = std::fs::canonicalize(&self.current).map_err(|e| format!("cannot start: {e}"))?;
            *self.root.lock().unwrap() = Some(dir);
            Ok(())
        })
    }
}

struct Env {
    tmp: tempfile::TempDir,
    app: AppConfig,
    svc: FakeService,
    port: u16,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let releases_dir = tmp.path().join("web");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let root = Arc::new(Mutex::new(None));
    tokio::spawn(serve(listener, root.clone()));
    let app = AppConfig {
        name: "web".into(),
        releases_dir: releases_dir.clone(),
        unit: "web.service".into(),
        health: HealthConfig {
            http: Some(format!("http://127.0.0.1:{port}/health")),
            status: 200,
            tcp: None,
            command: None,
            retries: 3,
            interval: Duration(StdDuration::from_millis(20)),
            deadline: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        },
        keep_releases: 3,
        max_artifact_size: ByteSize(1 << 20),
        max_unpacked_size: ByteSize(1 << 20),
        artifact_sources: vec![tmp.path().display().to_string()],
        pre_hook: None,
        post_hook: None,
        hook_timeout: Duration::from_secs(10),
    };
    let svc = FakeService {
        current: releases_dir.join("current"),
        root,
        restarts: AtomicUsize::new(0),
    };
    Env { tmp, app, svc, port }
}

/// A release artifact: `index.html` saying `version`, plus `health` if healthy.
fn artifact(env: &Env, version: &str, healthy: bool, zst: bool) -> (String, String) {
    let mut files = vec![("index.html", version.to_string())];
    if healthy {
        files.push(("health", "ok".into()));
    }
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body.as_bytes()).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let (bytes, ext) = if zst {
        (zstd::encode_all(tar.as_slice(), 1).unwrap(), "tar.zst")
    } else {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        (gz.finish().unwrap(), "tar.gz")
    };
    let path = env.tmp.path().join(format!("web-{version}.{ext}"));
    std::fs::write(&path, &bytes).unwrap();
    (path.display().to_string(), hex::encode(Sha256::digest(&bytes)))
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let client = health::http_client(StdDuration::from_secs(5)).unwrap();
    let resp = client
        .get(format!("http://127.0.0.1:{port}/{path}"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn a_good_release_passes_its_health_check() {
    let e = env().await;
    let (path, sha) = artifact(&e, "1.0", true, false);
    let r = apply(&e.app, &e.svc, "1.0", &path, &sha).await.unwrap();
    assert_eq!(r.outcome, DeployOutcome::Deployed);
    assert_eq!((r.current.as_deref(), r.previous.as_deref()), (Some("1.0"), None));
    assert_eq!(get(e.port, "index.html").await, (200, "1.0".into()));
    // Applying the current version again changes nothing.
    let again = apply(&e.app, &e.svc, "1.0", &path, &sha).await.unwrap();
    assert_eq!(again.outcome, DeployOutcome::Unchanged);
    assert_eq!(e.svc.restarts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_bad_release_is_rolled_back_and_the_previous_serves_again() {
    let e = env().await;
    let (p1, s1) = artifact(&e, "1.0", true, false);
    apply(&e.app, &e.svc, "1.0", &p1, &s1).await.unwrap();
    let (p2, s2) = artifact(&e, "2.0", false, true);
    let r = apply(&e.app, &e.svc, "2.0", &p2, &s2).await.unwrap();
    match &r.outcome {
        DeployOutcome::RolledBack { reason } => assert!(reason.contains("status 404"), "{reason}"),
        other => panic!("expected a rollback, got {other:?}"),
    }
    assert_eq!(r.current.as_deref(), Some("1.0"));
    assert_eq!(get(e.port, "index.html").await, (200, "1.0".into()));
    let current = std::fs::read_link(e.app.releases_dir.join("current")).unwrap();
    assert_eq!(current, Path::new("releases/1.0"));
    assert!(!e.app.releases_dir.join("previous").exists());
    assert_eq!(e.svc.restarts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_first_release_that_fails_has_nothing_to_roll_back_to() {
    let e = env().await;
    let (p, s) = artifact(&e, "1.0", false, false);
    let err = apply(&e.app, &e.svc, "1.0", &p, &s).await.unwrap_err();
    assert!(err.to_string().contains("no previous release"), "{err}");
}

#[tokio::test]
async fn a_wrong_sha256_is_refused_before_anything_changes() {
    let e = env().await;
    let (p1, s1) = artifact(&e, "1.0", true, false);
    apply(&e.app, &e.svc, "1.0", &p1, &s1).await.unwrap();
    let (p2, _) = artifact(&e, "2.0", true, false);
    let err = apply(&e.app, &e.svc, "2.0", &p2, &"ab".repeat(32)).await.unwrap_err();
    assert!(
        matches!(err, DeployError::Artifact(UnpackError::Checksum { .. })),
        "{err}"
    );
    assert!(!e.app.releases_dir.join("releases/2.0").exists());
    assert_eq!(
        std::fs::read_link(e.app.releases_dir.join("current")).unwrap(),
        Path::new("releases/1.0")
    );
    let leftovers: Vec<_> = std::fs::read_dir(&e.app.releases_dir)
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(matches!(
        apply(&e.app, &e.svc, "2.0", &p2, "xyz").await,
        Err(DeployError::Invalid(_))
    ));
    assert!(matches!(
        apply(&e.app, &e.svc, "../x", &p2, &s1).await,
        Err(DeployError::Invalid(_))
    ));
}

#[tokio::test]
async fn artifacts_outside_the_allowed_sources_are_refused_before_any_fetch() {
    let mut e = env().await;
    // A server that would hand out the artifact, but is not an allowed source.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (local, sha) = artifact(&e, "1.0", true, false);
    // A local file outside the allowed directory, with the hash the caller guesses.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.tar.gz");
    std::fs::write(&secret, b"not for the control plane").unwrap();
    let secret_sha = hex::encode(Sha256::digest(b"not for the control plane"));
    for artifact in [
        format!("http://127.0.0.1:{port}/web-1.0.tar.gz"),
        secret.display().to_string(),
    ] {
        let err = apply(&e.app, &e.svc, "1.0", &artifact, &"0".repeat(64))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DeployError::Invalid(m) if m.contains("not within the artifact_sources")),
            "{artifact}: {err}"
        );
        assert!(!err.to_string().contains(&secret_sha), "{err}");
    }
    assert!(
        listener
            .accept()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing was fetched"
    );
    assert!(!e.app.releases_dir.join("releases/1.0").exists());
    // A wrong hash of an allowed local file does not reveal the file's hash.
    let err = apply(&e.app, &e.svc, "1.0", &local, &"0".repeat(64)).await.unwrap_err();
    assert!(
        matches!(err, DeployError::Artifact(UnpackError::Checksum { .. })),
        "{err}"
    );
    assert!(!err.to_string().contains(&sha), "{err}");
    // Without artifact_sources, nothing deploys.
    e.app.artifact_sources.clear();
    let err = apply(&e.app, &e.svc, "1.0", &local, &sha).await.unwrap_err();
    assert!(err.to_string().contains("artifact_sources"), "{err}");
    assert!(!e.app.releases_dir.join("releases/1.0").exists());
}

#[tokio::test]
async fn an_archive_with_dotdot_entries_is_refused() {
    let e = env().await;
    let bytes = unpack::tests::raw_tar_gz(&[
        ("health", tar::EntryType::Regular, "ok"),
        ("../escape", tar::EntryType::Regular, "x"),
    ]);
    let path = e.tmp.path().join("evil.tar.gz");
    std::fs::write(&path, &bytes).unwrap();
    let sha = hex::encode(Sha256::digest(&bytes));
    let err = apply(&e.app, &e.svc, "6.6.6", path.to_str().unwrap(), &sha)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeployError::Artifact(UnpackError::Unsafe { .. })),
        "{err}"
    );
    assert!(!e.app.releases_dir.join("releases/escape").exists() && !e.app.releases_dir.join("escape").exists());
    assert!(!e.app.releases_dir.join("releases/6.6.6").exists());
    assert!(
        std::fs::read_dir(e.app.releases_dir.join("releases"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test]
async fn artifacts_are_fetched_over_http() {
    let mut e = env().await;
    // A second server hands out artifacts from the temp dir.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    e.app.artifact_sources.push(format!("http://127.0.0.1:{port}/"));
    tokio::spawn(serve(listener, Arc::new(Mutex::new(Some(e.tmp.path().to_path_buf())))));
    let (_, sha) = artifact(&e, "3.1", true, true);
    let url = format!("http://127.0.0.1:{port}/web-3.1.tar.zst");
    let r = apply(&e.app, &e.svc, "3.1", &url, &sha).await.unwrap();
    assert_eq!(r.outcome, DeployOutcome::Deployed);
    assert_eq!(get(e.port, "index.html").await, (200, "3.1".into()));
    let missing = format!("http://127.0.0.1:{port}/nope.tar.gz");
    assert!(matches!(
        apply(&e.app, &e.svc, "3.2", &missing, &sha).await,
        Err(DeployError::Artifact(UnpackError::Fetch(_)))
    ));
}

#[tokio::test]
async fn rollback_switches_to_the_previous_or_a_named_release_and_pruning_keeps_them() {
    let e = env().await;
    for v in ["1", "2", "3", "4", "5"] {
        let (p, s) = artifact(&e, v, true, false);
        let r = apply(&e.app, &e.svc, v, &p, &s).await.unwrap();
        assert_eq!(r.outcome, DeployOutcome::Deployed);
        // Distinct modification times for pruning order.
        tokio::time::sleep(StdDuration::from_millis(15)).await;
    }
    let mut left: Vec<String> = std::fs::read_dir(e.app.releases_dir.join("releases"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["3", "4", "5"]);
    let r = rollback(&e.app, &e.svc, None).await.unwrap();
    assert_eq!((r.version.as_str(), r.previous.as_deref()), ("4", Some("5")));
    assert_eq!(get(e.port, "index.html").await, (200, "4".into()));
    rollback(&e.app, &e.svc, Some("3")).await.unwrap();
    assert_eq!(get(e.port, "index.html").await, (200, "3".into()));
    assert!(matches!(
        rollback(&e.app, &e.svc, Some("1")).await,
        Err(DeployError::Invalid(_))
    ));
}

#[test]
fn the_current_switch_is_atomic() {
    let tmp = tempfile::tempdir().unwrap();
    for v in ["a", "b"] {
        std::fs::create_dir_all(tmp.path().join("releases").join(v)).unwrap();
        std::fs::write(tmp.path().join("releases").join(v).join("marker"), v).unwrap();
    }
    let current = tmp.path().join("current");
    switch_link(&current, "a").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, marker) = (stop.clone(), current.join("marker"));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let seen = std::fs::read_to_string(&marker).expect("current must always resolve");
                assert!(seen == "a" || seen == "b");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..500 {
        switch_link(&current, if i % 2 == 0 { "b" } else { "a" }).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(watcher.join().unwrap() > 0);
    assert_eq!(std::fs::read_to_string(current.join("marker")).unwrap(), "a");
    // No temporary links are left behind.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
}

#[test]
fn config_errors_name_the_key() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        apps: Vec<AppConfig>,
    }
    let good = "[[apps]]\nname = \"web\"\nreleases_dir = \"/srv/web\"\nunit = \"web.service\"\n\
                [apps.health]\nhttp = \"http://127.0.0.1:8080/health\"\n";
    let parse = |src: &str| -> Result<(), ConfigError> {
        let doc: Doc = steward_shared::config::parse_toml("agent.toml", src)?;
        validate(&doc.apps, "agent.toml", src)
    };
    parse(good).unwrap();
    let e = parse(&good.replace("/srv/web", "srv/web")).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(3), Some("apps[0].releases_dir")),
        "{e}"
    );
    let e = parse(&good.replace("http = \"http://127.0.0.1:8080/health\"", "tcp = \"nope\"")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("apps[0].health.tcp"));
    let e = parse(&good.replace("[apps.health]", "pre_hook = [\"deploy.sh\"]\n[apps.health]")).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("apps[0].pre_hook")), "{e}");
    let e = parse(&good.replace("web.service", "web service")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("apps[0].unit"));
    let e = parse(&good.replace("[apps.health]", "artifact_sources = [\"releases/\"]\n[apps.health]")).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(5), Some("apps[0].artifact_sources")),
        "{e}"
    );
    parse(&good.replace(
        "[apps.health]",
        "artifact_sources = [\"https://releases.example.com/web/\", \"/srv/artifacts\"]\n[apps.health]",
    ))
    .unwrap();
}

#[tokio::test]
async fn leftovers_of_an_interrupted_deploy_are_cleaned_up() {
    let e = env().await;
    std::fs::create_dir_all(e.app.releases_dir.join("releases/.unpack-9-deadbeef/x")).unwrap();
    std::fs::write(e.app.releases_dir.join(".incoming-9-deadbeef"), "partial").unwrap();
    let (p, s) = artifact(&e, "1.0", true, false);
    apply(&e.app, &e.svc, "1.0", &p, &s).await.unwrap();
    assert!(!e.app.releases_dir.join("releases/.unpack-9-deadbeef").exists());
    assert!(!e.app.releases_dir.join(".incoming-9-deadbeef").exists());
}
