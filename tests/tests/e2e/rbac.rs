//! API tokens, roles and scopes end to end, through `stewardctl` against a
//! real control plane: a scoped token sees only its hosts, a relabelled
//! host moves into view, escalation is refused in one line, and a revoked
//! token stops working.
use std::process::Command;

use steward_e2e::{Agent, ControlPlane, bin, run_cmd};

/// `stewardctl` with another token: (success, stdout, stderr).
fn ctl_as(cp: &ControlPlane, token: &str, args: &[&str]) -> (bool, String, String) {
    let (st, out, err) = run_cmd(
        Command::new(bin("stewardctl"))
            .args(args)
            .env("STEWARD_SERVER", &cp.rest_url)
            .env("STEWARD_TOKEN", token),
    );
    (st.success(), out, err)
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_roles_and_relabelling_through_stewardctl() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    for (host, team) in [("web-a", "a"), ("web-b", "b")] {
        let token = cp.enrollment_token(&["--labels", &format!("team={team}")]).unwrap();
        let agent = Agent::prepare_unenrolled(root.path(), &cp, host, "", "").unwrap();
        let (ok, out, err) = agent.enroll(&token, &[]);
        assert!(ok, "{out}{err}");
    }

    // A scoped viewer token, created by the bootstrap admin token.
    let (ok, out, err) = cp.stewardctl(&[
        "-o", "json", "tokens", "create", "--name", "team-a", "--role", "viewer", "--scope", "team=a", "--ttl", "1h",
    ]);
    assert!(ok, "{err}");
    let created = json(&out);
    let scoped = created["token"].as_str().unwrap().to_string();
    let scoped_id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["scope"], "team=a");
    let (ok, out, err) = cp.stewardctl(&["tokens", "create", "--name", "t", "--role", "operator"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("stw_") && out.contains("role operator, all hosts"),
        "{out}"
    );

    let (ok, out, err) = ctl_as(&cp, &scoped, &["-o", "json", "hosts", "list"]);
    assert!(ok, "{err}");
    let ids: Vec<String> = json(&out)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["web-a"]);
    let (ok, _, err) = ctl_as(&cp, &scoped, &["hosts", "show", "web-b"]);
    assert!(!ok);
    assert_eq!(err.trim(), "stewardctl: host \"web-b\" not found");

    // Escalation and missing permissions: one readable line, exit 1.
    let (ok, _, err) = ctl_as(&cp, &scoped, &["tokens", "create", "--name", "x", "--role", "admin"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("Forbidden") && err.contains("tokens:create"), "{err}");
    let (ok, _, err) = cp.stewardctl(&[
        "tokens",
        "create",
        "--name",
        "x",
        "--role",
        "viewer",
        "--scope",
        "team in (",
    ]);
    assert!(!ok && err.starts_with("stewardctl: invalid scope:"), "{err}");

    // Tokens list (no secrets) and roles.
    let (ok, out, err) = cp.stewardctl(&["tokens", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("team-a") && out.contains("team=a") && out.contains("viewer"),
        "{out}"
    );
    assert!(!out.contains(&scoped), "a secret was listed");
    let role_file = root.path().join("oncall.json");
    std::fs::write(
        &role_file,
        r#"{"description": "on call", "rules": [
            {"effect": "allow", "permission": "*:read"},
            {"effect": "allow", "permission": "hosts:label", "hosts": "team=a"},
            {"effect": "deny", "permission": "audit:*"}]}"#,
    )
    .unwrap();
    let (ok, out, err) = cp.stewardctl(&["roles", "apply", "oncall", "-f", role_file.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = cp.stewardctl(&["roles", "list"]);
    assert!(ok);
    for role in ["viewer", "operator", "deployer", "admin", "oncall"] {
        assert!(out.contains(role), "{out}");
    }
    assert!(out.contains("deny audit:*"), "{out}");
    std::fs::write(&role_file, r#"{"rules": [{"effect": "allow", "permission": "jobs"}]}"#).unwrap();
    let (ok, _, err) = cp.stewardctl(&["roles", "apply", "bad", "-f", role_file.to_str().unwrap()]);
    assert!(
        !ok && err.starts_with("stewardctl: invalid rules[0].permission:"),
        "{err}"
    );

    // Jobs and backups with a scoped operator token: only its hosts.
    let (ok, out, err) = cp.stewardctl(&[
        "-o", "json", "tokens", "create", "--name", "ops-a", "--role", "operator", "--scope", "team=a",
    ]);
    assert!(ok, "{err}");
    let ops_a = json(&out)["token"].as_str().unwrap().to_string();
    let (ok, out, err) = cp.stewardctl(&["-o", "json", "jobs", "run", "checks.run", "--host", "web-b"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = ctl_as(
        &cp,
        &ops_a,
        &["-o", "json", "jobs", "run", "checks.run", "--host", "web-a"],
    );
    assert!(ok, "{out}{err}");
    let job_a = json(&out)["items"][0]["id"].as_str().unwrap().to_string();
    let (ok, _, err) = ctl_as(&cp, &ops_a, &["jobs", "run", "checks.run", "--host", "web-b"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not found"), "{err}");
    let (ok, out, err) = ctl_as(&cp, &ops_a, &["-o", "json", "jobs", "list"]);
    assert!(ok, "{err}");
    let hosts: Vec<String> = json(&out)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["host_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts, ["web-a"]);
    let (ok, out, err) = ctl_as(&cp, &scoped, &["jobs", "cancel", &job_a]);
    assert!(!ok, "a viewer cancelled a job: {out}");
    assert!(err.contains("jobs:cancel"), "{err}");
    let (ok, _, err) = ctl_as(&cp, &ops_a, &["jobs", "cancel", &job_a]);
    assert!(ok, "{err}");
    let (ok, out, err) = ctl_as(&cp, &ops_a, &["backups", "list"]);
    assert!(ok && out.starts_with("HOST"), "{out}{err}");

    // Relabelling in the control plane moves web-b into the scope at once.
    let (ok, out, err) = cp.stewardctl(&["hosts", "labels", "web-b", "team=a,env=prod"]);
    assert!(ok, "{err}");
    assert!(out.contains("env=prod,team=a"), "{out}");
    let (ok, out, _) = ctl_as(&cp, &scoped, &["hosts", "show", "web-b"]);
    assert!(ok && out.contains("web-b"), "{out}");
    let (ok, out, _) = cp.stewardctl(&["audit", "list", "--action", "set_host_labels"]);
    assert!(ok && out.contains("host:web-b"), "{out}");

    // Revocation takes effect on the next request.
    let (ok, _, err) = cp.stewardctl(&["tokens", "revoke", &scoped_id]);
    assert!(ok, "{err}");
    let (ok, _, err) = ctl_as(&cp, &scoped, &["hosts", "list"]);
    assert!(!ok);
    assert_eq!(err.trim(), "stewardctl: unauthorized: check --token or STEWARD_TOKEN");

    // The served OpenAPI document needs no token.
    let doc: serde_json::Value = cp
        .http()
        .unwrap()
        .get(format!("{}/api/v1/openapi.json", cp.rest_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/api/v1/tokens"]["post"].is_object());
}
