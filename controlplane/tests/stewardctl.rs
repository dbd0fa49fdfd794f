//! The real `stewardctl` binary against a real REST server (in-process, on
//! 127.0.0.1:0, over a real store): output, pagination, and the one-line
//! errors with exit code 1 for connection refused, 401 and 404; `audit
//! verify`'s exit codes 0 (intact), 1 (tampered, a pinned checkpoint missing or
//! different), 2 (unusable input, no key to trust).
use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use steward_controlplane::api::{self, ApiState};
use steward_controlplane::audit::chain::CheckpointKind;
use steward_controlplane::audit::checkpointer::{CheckpointPolicy, Checkpointer};
use steward_controlplane::audit::signing::{self, Signer};
use steward_controlplane::metrics::Metrics;
use steward_controlplane::model::{AgentHello, IngestBatch};
use steward_controlplane::store::Store;
use steward_controlplane::store::testdb::{TestBackend, TestDatabase};
use steward_shared::status::{CheckResult, CheckStatus, Value};
use tokio::sync::oneshot;

/// A REST server on 127.0.0.1:0 over a fresh store; stops when dropped.
struct Server {
    url: String,
    token: String,
    store: Store,
    /// Signs the server's audit exports.
    signer: Arc<Signer>,
    _stop: oneshot::Sender<()>,
    _db: TestDatabase,
}

async fn start_server() -> Server {
    let db = TestDatabase::create(TestBackend::from_env()).await;
    let store = db.store().await;
    let token = api::create_admin_token(&store, "stewardctl-test", None).await.unwrap();
    let signer = Arc::new(Signer::generate().unwrap());
    let state =
        ApiState::new(store.clone(), Arc::new(Metrics::new()), Duration::from_secs(300)).with_audit(signer.clone(), 60);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        warp::serve(api::routes(state))
            .incoming(listener)
            .graceful(async move {
                let _ = stopped.await;
            })
            .run(),
    );
    Server {
        url,
        token,
        store,
        signer,
        _stop: stop,
        _db: db,
    }
}

async fn add_host(store: &Store, id: &str, hostname: &str, status: CheckStatus) {
    let hello = AgentHello {
        agent_version: "0.1.0".into(),
        facts: BTreeMap::from([("hostname".to_string(), hostname.to_string())]),
        spool_dropped_total: 0,
    };
    let now = steward_shared::now_ms();
    store.agent_connected(id, &hello, now).await.unwrap();
    let result = CheckResult {
        name: "root".into(),
        kind: "disk".into(),
        status,
        values: vec![Value::new("used", 91.0, "percent")],
        message: format!("root is {status}"),
        observed_at_ms: now,
        duration_us: 10,
    };
    store
        .ingest(
            &[IngestBatch {
                host_id: id.into(),
                results: vec![(1, result)],
                spool_dropped_total: 0,
            }],
            now,
        )
        .await
        .unwrap();
}

async fn stewardctl(args: &[&str], server: &str, token: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_stewardctl"));
    cmd.args(args)
        .env("STEWARD_SERVER", server)
        .env_remove("STEWARD_TOKEN")
        .env_remove("STEWARD_CA_CERT")
        .env_remove("STEWARD_INSECURE");
    if let Some(token) = token {
        cmd.env("STEWARD_TOKEN", token);
    }
    cmd.output().await.expect("run stewardctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit code 1 and exactly one line on stderr, equal to `expected`.
fn assert_fails_with(out: &Output, expected: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr, format!("{expected}\n"));
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
}

#[tokio::test]
async fn connection_refused_is_one_line_and_exit_1() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let out = stewardctl(&["hosts", "list"], &server, Some("stw_x_y")).await;
    assert_fails_with(
        &out,
        &format!("stewardctl: cannot reach the control plane at {server}: connection refused"),
    );
}

#[tokio::test]
async fn a_token_over_plain_http_to_a_remote_host_is_refused_before_connecting() {
    // 192.0.2.0/24 is TEST-NET-1: refused before any connection is tried.
    let out = stewardctl(&["hosts", "list"], "http://192.0.2.1:8080", Some("stw_x_y")).await;
    assert_fails_with(
        &out,
        "stewardctl: refusing to send the token over plain http:// to 192.0.2.1: use https://, or --insecure if the network is trusted",
    );
}

#[tokio::test]
async fn hosts_list_shows_hosts_in_a_table_and_as_json() {
    let s = start_server().await;
    add_host(&s.store, "id-web-1", "web-1", CheckStatus::Ok).await;
    add_host(&s.store, "id-db-1", "db-1", CheckStatus::Critical).await;

    let out = stewardctl(&["hosts", "list"], &s.url, Some(&s.token)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("LAST SEEN"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("id-db-1 ") && lines[1].contains("db-1") && lines[1].contains("online"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("id-web-1 ") && lines[2].contains("s ago"),
        "{stdout}"
    );

    let out = stewardctl(&["-o", "json", "hosts", "list"], &s.url, Some(&s.token)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 2);
    assert!(json["next_cursor"].is_null());
    assert_eq!(json["items"][0]["checks"]["critical"], 1);

    let out = stewardctl(&["checks", "list", "--status", "critical"], &s.url, Some(&s.token)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stdout.contains("db-1") && stdout.contains("root is critical"),
        "{stdout}"
    );

    let out = stewardctl(&["hosts", "show", "web-1"], &s.url, Some(&s.token)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ID:") && stdout.contains("id-web-1") && stdout.contains("root is ok"),
        "{stdout}"
    );
}

#[tokio::test]
async fn lists_follow_pagination_to_the_end() {
    let s = start_server().await;
    for i in 0..1_003 {
        s.store
            .agent_heartbeat(&format!("h{i:04}"), 0, steward_shared::now_ms())
            .await
            .unwrap();
    }
    let out = stewardctl(&["-o", "json", "hosts", "list"], &s.url, Some(&s.token)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1_003);
    assert_eq!(ids.first(), Some(&"h0000"));
    assert_eq!(ids.last(), Some(&"h1002"));
}

#[tokio::test]
async fn unauthorized_and_not_found_are_one_line_and_exit_1() {
    let s = start_server().await;
    let unauthorized = "stewardctl: unauthorized: check --token or STEWARD_TOKEN";
    assert_fails_with(&stewardctl(&["hosts", "list"], &s.url, None).await, unauthorized);
    assert_fails_with(
        &stewardctl(&["hosts", "list"], &s.url, Some("stw_abc_wrong")).await,
        unauthorized,
    );
    assert_fails_with(
        &stewardctl(&["hosts", "list", "--token", "garbage"], &s.url, None).await,
        unauthorized,
    );

    assert_fails_with(
        &stewardctl(&["hosts", "show", "x"], &s.url, Some(&s.token)).await,
        "stewardctl: host \"x\" not found",
    );
    assert_fails_with(
        &stewardctl(&["checks", "list", "--host", "ghost"], &s.url, Some(&s.token)).await,
        "stewardctl: host \"ghost\" not found",
    );
    let out = stewardctl(&["hosts", "list", "--selector", "env in (a"], &s.url, Some(&s.token)).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.starts_with("stewardctl: invalid selector: invalid selector at position 9"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let out = stewardctl(&["hosts", "frobnicate"], "http://127.0.0.1:9", None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = stewardctl(&["checks", "list", "--status", "purple"], "http://127.0.0.1:9", None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = stewardctl(&["hosts", "list"], "not a url", None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("stewardctl: invalid --server URL \"not a url\""),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn audit_list_export_and_verify_with_exit_codes() {
    let s = start_server().await;
    Checkpointer::new(s.store.clone(), s.signer.clone(), CheckpointPolicy::default())
        .checkpoint(CheckpointKind::Start, true, steward_shared::now_ms())
        .await
        .unwrap();
    api::create_token(&s.store, "ci", steward_controlplane::model::Role::Viewer, None)
        .await
        .unwrap();
    assert_eq!(
        stewardctl(&["hosts", "list"], &s.url, Some("stw_nope_bad"))
            .await
            .status
            .code(),
        Some(1)
    );

    let out = stewardctl(&["audit", "list"], &s.url, Some(&s.token)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].starts_with("SEQ ") && lines[0].contains("OUTCOME"), "{stdout}");
    assert!(
        lines[2].contains("tokens.create") && lines[2].contains("success"),
        "{stdout}"
    );
    assert!(
        lines[3].contains("api.authenticate") && lines[3].contains("denied"),
        "{stdout}"
    );
    let out = stewardctl(
        &["-o", "json", "audit", "list", "--actor", "anonymous", "--since", "1h"],
        &s.url,
        Some(&s.token),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 1);
    let out = stewardctl(&["audit", "list", "--since", "last week"], &s.url, Some(&s.token)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("stewardctl: invalid since: "),
        "{}",
        text(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.json");
    let file_arg = file.to_str().unwrap();
    let out = stewardctl(&["audit", "export", "-f", file_arg], &s.url, Some(&s.token)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("exported 3 audit entries and 1 checkpoint to "),
        "{}",
        text(&out.stdout)
    );

    // With the control plane's key: offline (no server needed) and online, intact.
    let key = signing::encode_public_key(&s.signer.public_key());
    let out = stewardctl(
        &["audit", "verify", "-f", file_arg, "--public-key", &key],
        "http://127.0.0.1:9",
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("audit log intact: 3 entries, 1 checkpoint "),
        "{stdout}"
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let out = stewardctl(&["audit", "verify", "--public-key", &key], &s.url, Some(&s.token)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // The newest checkpoint, printed to pin next time; pinned, it must be there unchanged.
    let checkpoint = s.store.audit_snapshot().await.unwrap().checkpoints[0].clone();
    let pin = format!("1:{}", checkpoint.hash);
    assert!(
        stdout.contains(&format!(
            "newest checkpoint: {pin} (keep it: verify with --expect-checkpoint {pin}"
        )),
        "{stdout}"
    );
    let pinned = |pin: String| {
        let key = key.clone();
        async move {
            let args = [
                "audit",
                "verify",
                "-f",
                file_arg,
                "--public-key",
                &key,
                "--expect-checkpoint",
                &pin,
            ];
            stewardctl(&args, "http://x", None).await
        }
    };
    let out = pinned(pin.clone()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("pinned checkpoint #1 matches"),
        "{}",
        text(&out.stdout)
    );
    let other_hash = "ab".repeat(32);
    let out = pinned(format!("1:{other_hash}")).await;
    assert_fails_with(
        &out,
        &format!(
            "stewardctl: audit log tampered: checkpoint #1: differs from the pinned one: its hash is {}, the pin \
             1:{other_hash} (the checkpoints were replaced, and the entries up to {} they cover may have been \
             rewritten)",
            checkpoint.hash, checkpoint.last_seq
        ),
    );
    let out = pinned(format!("2:{}", checkpoint.hash)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("stewardctl: audit log tampered: checkpoint #2: missing: it was pinned"),
        "{}",
        text(&out.stderr)
    );
    // A pin that is not SEQ:HASH is bad usage.
    let out = pinned("1:nothex".into()).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not a checkpoint hash"),
        "{}",
        text(&out.stderr)
    );

    // Without a key: refused (exit 2, one line) unless told to trust the
    // export's own key, which still warns.
    for args in [
        vec!["audit", "verify", "-f", file_arg],
        vec!["audit", "verify", "-f", file_arg, "--expect-checkpoint", &pin],
    ] {
        let out = stewardctl(&args, "http://x", None).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with("stewardctl: cannot verify the audit log: no --public-key: "),
            "{stderr}"
        );
        assert!(stderr.contains("--trust-embedded-key"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
    let out = stewardctl(&["audit", "verify", "--trust-embedded-key"], &s.url, Some(&s.token)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("audit log intact: "),
        "{}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("stewardctl: WARNING: trusting the key named in the export itself (key ID "),
        "{stderr}"
    );
    let out = stewardctl(
        &[
            "audit",
            "verify",
            "-f",
            file_arg,
            "--trust-embedded-key",
            "--public-key",
            &key,
        ],
        "http://x",
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // Tampered: one line naming the entry and why, exit 1.
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    doc["entries"][1]["outcome"] = "failed".into();
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = stewardctl(
        &[
            "audit",
            "verify",
            "-f",
            tampered.to_str().unwrap(),
            "--public-key",
            &key,
        ],
        "http://x",
        None,
    )
    .await;
    assert_fails_with(
        &out,
        "stewardctl: audit log tampered: entry 2: column outcome differs from the hashed entry",
    );
    let other = signing::encode_public_key(&Signer::generate().unwrap().public_key());
    let out = stewardctl(
        &["audit", "verify", "-f", file_arg, "--public-key", &other],
        "http://x",
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not trusted"), "{}", text(&out.stderr));

    // Unusable input: exit 2, one line.
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    let missing = dir.path().join("missing.json");
    for (args, server) in [
        (
            vec!["audit", "verify", "-f", garbage.to_str().unwrap(), "--public-key", &key],
            "http://x",
        ),
        (
            vec!["audit", "verify", "-f", missing.to_str().unwrap(), "--public-key", &key],
            "http://x",
        ),
        (vec!["audit", "verify", "--public-key", "nokey"], s.url.as_str()),
        (vec!["audit", "verify", "--public-key", &key], "http://127.0.0.1:9"),
    ] {
        let out = stewardctl(&args, server, Some(&s.token)).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("stewardctl: cannot verify the audit log: "),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let out = stewardctl(&["audit", "verify", "--public-key", &key], &s.url, Some("stw_nope_bad")).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[tokio::test]
async fn audit_verify_fails_when_no_checkpoint_ties_the_log_to_a_signature() {
    // A control plane whose checkpoints are gone (here: never written).
    let s = start_server().await;
    api::create_token(&s.store, "ci", steward_controlplane::model::Role::Viewer, None)
        .await
        .unwrap();
    let key = signing::encode_public_key(&s.signer.public_key());
    let out = stewardctl(&["audit", "verify", "--public-key", &key], &s.url, Some(&s.token)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "stewardctl: audit log tampered: checkpoint #1: missing: the log has no signed checkpoint, so none \
             of its 2 entries is tied to a signature"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
