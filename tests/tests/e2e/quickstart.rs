//! The README's first command: `steward-controlplane quickstart` brings up a
//! control plane, its CA and one local agent; `stewardctl hosts list` shows the
//! host with its checks within 30 seconds; Ctrl-C stops both; a second run with
//! the same directory reuses the CA, the token and the agent's identity.
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use steward_controlplane::store::testdb::{TestBackend, fresh_database_url};
use steward_e2e::{bin, run_cmd, wait_for};

struct Quickstart {
    child: std::process::Child,
}

impl Quickstart {
    fn start(dir: &std::path::Path, database_url: Option<&str>) -> Quickstart {
        let mut cmd = Command::new(bin("steward-controlplane"));
        cmd.args(["quickstart", "--dir"])
            .arg(dir)
            .args(["--rest-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.with_extension("log")).unwrap());
        if let Some(url) = database_url {
            cmd.args(["--database-url", url]);
        }
        Quickstart {
            child: cmd.spawn().unwrap(),
        }
    }

    fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn info(dir: &std::path::Path, previous_pid_file: Option<&str>) -> Value {
    let path = dir.join("quickstart.json");
    wait_for("quickstart.json", Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&path).ok()?;
        if previous_pid_file.is_some_and(|old| old == text) {
            return None;
        }
        serde_json::from_str::<Value>(&text).ok()
    })
    .await
    .unwrap()
}

fn stewardctl(info: &Value, args: &[&str]) -> (bool, String) {
    let (st, out, err) = run_cmd(
        Command::new(bin("stewardctl"))
            .args(args)
            .env("STEWARD_SERVER", info["rest_url"].as_str().unwrap())
            .env("STEWARD_TOKEN", info["admin_token"].as_str().unwrap()),
    );
    (st.success(), format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_shows_the_local_host_and_reuses_its_state() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("qs");
    let database_url = match TestBackend::from_env() {
        TestBackend::Sqlite => None,
        TestBackend::Postgres => Some(fresh_database_url(TestBackend::Postgres).await),
    };

    let qs = Quickstart::start(&dir, database_url.as_deref());
    let first = info(&dir, None).await;
    for key in [
        "rest_url",
        "grpc_addr",
        "admin_token",
        "ca_cert",
        "data_dir",
        "agent_config",
        "database_url",
    ] {
        assert!(
            first[key].as_str().is_some_and(|v| !v.is_empty()),
            "quickstart.json lacks {key}: {first}"
        );
    }
    if let Some(url) = &database_url {
        assert_eq!(first["database_url"].as_str(), Some(url.as_str()));
    }
    // Within 30 seconds the host shows with its four default checks.
    let listing = wait_for("the local host with its checks", Duration::from_secs(30), || async {
        let (ok, out) = stewardctl(&first, &["-o", "json", "checks", "list"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        (ok && v["items"].as_array().is_some_and(|a| a.len() >= 4)).then_some(v)
    })
    .await
    .unwrap();
    let names: Vec<&str> = listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for expected in ["disk", "memory", "load", "controlplane-tls"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let tls = listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "controlplane-tls")
        .unwrap();
    assert_eq!(
        tls["status"], "ok",
        "the control plane's own certificate verifies: {tls}"
    );
    let (ok, table) = stewardctl(&first, &["hosts", "list"]);
    assert!(ok && table.contains("online"), "{table}");
    let host_id = listing["items"][0]["host_id"].as_str().unwrap().to_string();
    let ca_before = std::fs::read_to_string(first["ca_cert"].as_str().unwrap()).unwrap();

    // Ctrl-C stops the control plane and the agent.
    let status = qs.interrupt();
    assert!(status.success(), "quickstart exits 0 on Ctrl-C: {status:?}");
    let (ok, out) = stewardctl(&first, &["hosts", "list"]);
    assert!(!ok && out.contains("cannot reach"), "{out}");

    // Run again with the same directory: same CA, same token, same host.
    let old = std::fs::read_to_string(dir.join("quickstart.json")).unwrap();
    let qs = Quickstart::start(&dir, None);
    let second = info(&dir, Some(&old)).await;
    assert_eq!(second["admin_token"], first["admin_token"]);
    assert_eq!(second["database_url"], first["database_url"]);
    assert_eq!(
        std::fs::read_to_string(second["ca_cert"].as_str().unwrap()).unwrap(),
        ca_before
    );
    wait_for("the same host online again", Duration::from_secs(30), || async {
        let (ok, out) = stewardctl(&second, &["-o", "json", "hosts", "list"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        let items = v["items"].as_array()?;
        (ok && items.len() == 1 && items[0]["id"] == host_id.as_str() && items[0]["online"] == true).then_some(())
    })
    .await
    .unwrap();
    assert!(qs.interrupt().success());
}
