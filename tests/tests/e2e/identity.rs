//! Agent identity end to end: enrollment with one-time tokens (labels from the
//! token, never from the agent), refusals that create nothing, revocation that
//! closes a live stream within a second and keeps the data, and certificate
//! renewal over the stream without losing a result.
use std::time::{Duration, Instant};

use steward_e2e::{Agent, ControlPlane, assert_contiguous, fast_checks, wait_for};

async fn host(cp: &ControlPlane, id: &str) -> Option<serde_json::Value> {
    match cp.get(&format!("/api/v1/hosts/{id}")).await {
        Ok((200, v)) => Some(v),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolls_with_a_token_and_gets_the_tokens_labels() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let token = cp
        .enrollment_token(&["--labels", "env=test,role=web", "--uses", "1"])
        .unwrap();
    let mut agent = Agent::prepare_unenrolled(root.path(), &cp, "fresh-01", &fast_checks(1), "").unwrap();
    let (ok, out, err) = agent.enroll(&token, &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("enrolled as fresh-01"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent.dir.join("agent.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the private key is the host's own, 0600");

    agent.spawn().unwrap();
    let h = wait_for("the enrolled host online", Duration::from_secs(30), || async {
        host(&cp, "fresh-01").await.filter(|h| h["online"] == true)
    })
    .await
    .unwrap();
    assert_eq!(h["labels"]["env"], "test");
    assert_eq!(h["labels"]["role"], "web");
    let (ok, out, _) = cp.stewardctl(&["hosts", "list", "--selector", "env=test"]);
    assert!(ok && out.contains("fresh-01"), "{out}");

    // The token was for one use: a second agent is refused and nothing is created.
    let other = Agent::prepare_unenrolled(root.path(), &cp, "fresh-02", "", "").unwrap();
    let (ok, _, err) = other.enroll(&token, &[]);
    assert!(!ok);
    assert!(err.contains("used up"), "{err}");
    assert!(
        host(&cp, "fresh-02").await.is_none(),
        "a refused enrollment creates nothing"
    );
    assert!(!other.dir.join("agent.pem").exists());
    // Both the enrollment and the refusal are in the audit log.
    let (status, audit) = cp.get("/api/v1/audit?action=hosts.enroll").await.unwrap();
    assert_eq!(status, 200, "{audit}");
    let text = audit.to_string();
    assert!(
        text.contains("host:fresh-01") && text.contains("host:fresh-02") && text.contains("denied"),
        "{text}"
    );
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_expired_and_malformed_tokens_are_refused_clearly() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let agent = Agent::prepare_unenrolled(root.path(), &cp, "nobody", "", "").unwrap();

    let (ok, _, err) = agent.enroll("not-a-token", &[]);
    assert!(!ok && err.contains("malformed"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Right CA fingerprint, but a token the control plane never issued.
    let real = cp.enrollment_token(&[]).unwrap();
    let fp = real.rsplit('_').next().unwrap();
    let forged = format!("stwe_abcdefabcdef_{}_{fp}", "x".repeat(32));
    let (ok, _, err) = agent.enroll(&forged, &[]);
    assert!(!ok && err.contains("unknown or invalid"), "{err}");

    // A token pinned to another CA: the agent refuses to talk to this control plane.
    let wrong_ca = format!("stwe_abcdefabcdef_{}_{}", "x".repeat(32), "00".repeat(32));
    let (ok, _, err) = agent.enroll(&wrong_ca, &[]);
    assert!(!ok && err.contains("cannot reach"), "{err}");

    let short = cp.enrollment_token(&["--ttl", "1s"]).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // the token's lifetime is the point of this test
    let (ok, _, err) = agent.enroll(&short, &[]);
    assert!(!ok && err.contains("expired"), "{err}");
    assert!(host(&cp, "nobody").await.is_none());

    // Bad REST input for token creation names the field.
    for (body, field) in [
        (r#"{"uses": 0}"#, "uses"),
        (r#"{"ttl": "forever"}"#, "ttl"),
        (r#"{"colour": 1}"#, "colour"),
    ] {
        let resp = cp
            .http()
            .unwrap()
            .post(format!("{}/api/v1/enrollment-tokens", cp.rest_url))
            .bearer_auth(&cp.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{body}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["field"], field, "{body}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_host_closes_its_stream_within_a_second_and_keeps_its_data() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let token = cp.enrollment_token(&[]).unwrap();
    let mut agent = Agent::prepare_unenrolled(root.path(), &cp, "doomed", &fast_checks(2), "").unwrap();
    assert!(agent.enroll(&token, &[]).0);
    agent.spawn().unwrap();
    wait_for("results of doomed", Duration::from_secs(30), || async {
        (cp.stored_seqs("doomed").await.map(|s| s.len()).unwrap_or(0) >= 4).then_some(())
    })
    .await
    .unwrap();

    let (ok, out, err) = cp.stewardctl(&["hosts", "revoke", "doomed"]);
    assert!(ok, "{out}{err}");
    let revoked_at = Instant::now();
    wait_for("the stream closed", Duration::from_secs(5), || async {
        agent.log().contains("stream to the control plane ended").then_some(())
    })
    .await
    .unwrap();
    assert!(
        revoked_at.elapsed() < Duration::from_millis(1500),
        "closed after {:?}",
        revoked_at.elapsed()
    );
    // Reconnecting with the same certificate is refused.
    wait_for("a refused reconnection", Duration::from_secs(10), || async {
        agent.log().contains("revoked").then_some(())
    })
    .await
    .unwrap();
    let stored = cp.stored_seqs("doomed").await.unwrap();
    assert!(stored.len() >= 4, "the host's data is kept");
    let h = host(&cp, "doomed").await.unwrap();
    assert_eq!(h["connected"], false);
    let (_, audit) = cp.get("/api/v1/audit?action=hosts.revoke").await.unwrap();
    assert!(
        audit.to_string().contains("host:doomed"),
        "the revocation is audited: {audit}"
    );
    agent.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_over_the_stream_without_losing_results() {
    let root = tempfile::tempdir().unwrap();
    // One-minute certificates: renewal is due after 40 seconds.
    let cp = ControlPlane::start_with_config(root.path(), "[pki]\nagent_cert_lifetime = \"1m\"\n")
        .await
        .unwrap();
    let token = cp.enrollment_token(&[]).unwrap();
    let mut agent = Agent::prepare_unenrolled(root.path(), &cp, "renewer", &fast_checks(2), "").unwrap();
    assert!(agent.enroll(&token, &[]).0);
    let first = std::fs::read_to_string(agent.dir.join("agent.pem")).unwrap();
    let key = std::fs::read_to_string(agent.dir.join("agent.key")).unwrap();
    agent.spawn().unwrap();
    wait_for("a renewed certificate", Duration::from_secs(60), || async {
        let now = std::fs::read_to_string(agent.dir.join("agent.pem")).ok()?;
        (now != first).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(agent.dir.join("agent.key")).unwrap(),
        key,
        "renewal keeps the key"
    );
    // Past the first certificate's expiry the agent still streams, with the new one.
    let n = cp.stored_seqs("renewer").await.unwrap().len();
    wait_for("results after renewal", Duration::from_secs(30), || async {
        (cp.stored_seqs("renewer").await.map(|s| s.len()).unwrap_or(0) >= n + 6).then_some(())
    })
    .await
    .unwrap();
    let status = agent.terminate().unwrap();
    assert!(status.success());
    let stats = agent.spool_stats().unwrap();
    assert_eq!(stats.depth, 0);
    assert_contiguous(&cp.stored_seqs("renewer").await.unwrap(), stats.next_seq - 1);
}
