//! Alerting end to end: an agent stops, the `HostSilent` alert fires in the
//! real control plane's evaluator, reaches a JSON-lines receiver, shows in
//! `stewardctl alerts list --state firing`, is acknowledged, silences are
//! added and expired through `stewardctl`, and the alert resolves when the
//! agent is back.
use std::time::Duration;

use steward_e2e::{Agent, ControlPlane, fast_checks, wait_for};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The `HostSilent` alerts of `host` in `state`, through `stewardctl`.
fn silent_alerts(cp: &ControlPlane, host: &str, state: &str) -> Vec<serde_json::Value> {
    let (ok, out, err) = cp.stewardctl(&["-o", "json", "alerts", "list", "--state", state]);
    assert!(ok, "{err}");
    json(&out)["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == "HostSilent" && a["labels"]["host"] == host)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_fires_host_silent_which_is_acked_silenced_and_resolves() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("alerts.jsonl");
    let cp = ControlPlane::start_with_config(
        root.path(),
        &format!(
            "[alerts]\ninterval = \"1s\"\nretry_initial = \"1s\"\n[alerts.host_silent]\nafter = \"5s\"\n\
             [[alerts.receivers]]\nname = \"log\"\nkind = \"file\"\npath = {:?}\n\
             [[alerts.routes]]\nreceivers = [\"log\"]\n",
            log.display().to_string()
        ),
    )
    .await
    .unwrap();
    let mut agent = Agent::start(root.path(), &cp, "web-1", &fast_checks(1)).await.unwrap();
    cp.wait_connected("web-1").await.unwrap();
    assert!(silent_alerts(&cp, "web-1", "firing").is_empty());

    agent.terminate();
    let alert = wait_for("HostSilent to fire", Duration::from_secs(60), || async {
        silent_alerts(&cp, "web-1", "firing").into_iter().next()
    })
    .await
    .unwrap();
    assert_eq!(alert["severity"], "critical");
    let id = alert["id"].as_str().unwrap().to_string();
    let (ok, out, _) = cp.stewardctl(&["alerts", "list", "--state", "firing"]);
    assert!(ok);
    assert!(
        out.contains("HostSilent") && out.contains("host=web-1") && out.contains(&id),
        "{out}"
    );

    // Delivered to the receiver.
    wait_for("the firing line", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("\"firing\""))
            .map(|_| ())
    })
    .await
    .unwrap();

    // Ack, once; an unknown ID is one readable line and a failure.
    let (ok, out, err) = cp.stewardctl(&["alerts", "ack", &id]);
    assert!(ok, "{err}");
    assert!(out.contains("acknowledged by token:"), "{out}");
    let (ok, out, err) = cp.stewardctl(&["alerts", "ack", "nosuch"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not found"), "{err}");

    // Silences: bad matcher refused before sending; added, listed, expired.
    let (ok, _, err) = cp.stewardctl(&["silences", "add", "--matcher", "web-1", "--for", "1h", "--comment", "x"]);
    assert!(!ok && err.contains("--matcher"), "{err}");
    let (ok, out, err) = cp.stewardctl(&[
        "-o",
        "json",
        "silences",
        "add",
        "--matcher",
        "host=web-1",
        "--for",
        "1h",
        "--comment",
        "disk swap",
    ]);
    assert!(ok, "{err}");
    let sid = json(&out)["id"].as_str().unwrap().to_string();
    let (ok, out, _) = cp.stewardctl(&["silences", "list", "--active"]);
    assert!(
        ok && out.contains(&sid) && out.contains("host=web-1") && out.contains("disk swap"),
        "{out}"
    );
    let (ok, out, err) = cp.stewardctl(&["silences", "expire", &sid]);
    assert!(ok && out.contains("expired"), "{out}{err}");
    let (ok, out, _) = cp.stewardctl(&["silences", "list", "--active"]);
    assert!(ok && out.contains("No silences."), "{out}");

    // Back: the alert resolves (still acknowledged) and the receiver hears of it.
    agent.spawn().unwrap();
    let resolved = wait_for("HostSilent to resolve", Duration::from_secs(60), || async {
        silent_alerts(&cp, "web-1", "resolved")
            .into_iter()
            .find(|a| a["id"] == id.as_str())
    })
    .await
    .unwrap();
    assert!(resolved["acked_by"].as_str().unwrap().starts_with("token:"));
    wait_for("the resolved line", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("\"resolved\""))
            .map(|_| ())
    })
    .await
    .unwrap();
    let events: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| json(l)["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["firing", "resolved"]);
    // Every transition is in the audit log.
    let (ok, out, err) = cp.stewardctl(&["-o", "json", "audit", "list"]);
    assert!(ok, "{err}");
    let actions: Vec<String> = json(&out)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .filter(|a| a.starts_with("alerts.") || a.starts_with("silences."))
        .collect();
    for a in [
        "alerts.fire",
        "alerts.ack",
        "silences.create",
        "silences.expire",
        "alerts.resolve",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} missing from {actions:?}");
    }
    agent.terminate();
}
