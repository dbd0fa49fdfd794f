//! The KPI engine end to end: a real control plane with a fast `[kpi]`
//! sampler and a real agent; `stewardctl kpis list | show` print the
//! catalog, a value computed from the agent's results, and the trend.
use std::time::Duration;

use serde_json::Value;
use steward_e2e::{Agent, ControlPlane, wait_for};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn stewardctl_kpis_list_and_show_with_a_trend() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with_config(root.path(), "[kpi]\nsample_interval = \"1s\"\n")
        .await
        .unwrap();
    let mut agent = Agent::prepare(root.path(), &cp, "kpi-01", "", "").unwrap();
    agent.spawn().unwrap();
    cp.wait_connected("kpi-01").await.unwrap();

    // The agent connected: connectivity is 100 % once the sampler has seen it twice.
    let shown: Value = wait_for("two connectivity samples of 1.0", WAIT, || async {
        let (ok, out, err) = cp.stewardctl(&["-o", "json", "kpis", "show", "agent_connectivity"]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let ones = v["trend"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["value"].as_f64() == Some(1.0))
            .count();
        (ones >= 2).then_some(v)
    })
    .await
    .unwrap();
    assert_eq!(shown["value"].as_f64(), Some(1.0), "{shown}");
    assert_eq!(shown["unit"], "ratio");

    let (ok, out, err) = cp.stewardctl(&["kpis", "show", "agent_connectivity", "--window", "1h"]);
    assert!(ok, "{err}");
    assert!(out.contains("value:      100.0%"), "{out}");
    // the last samples are 1.0: the top bar, or mid-height bars when the series is constant
    let trend = out
        .lines()
        .find(|l| l.starts_with("trend:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(trend.contains("██") || trend.contains("▄▄"), "{out}");

    let (ok, out, err) = cp.stewardctl(&["kpis", "list", "--window", "7d"]);
    assert!(ok, "{err}");
    for name in ["agent_connectivity", "disk_full_forecast", "change_failure_rate"] {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }

    // Bad input: one readable line, non-zero exit.
    let (ok, _, err) = cp.stewardctl(&["kpis", "show", "agent_connectivity", "--window", "soon"]);
    assert!(!ok);
    assert!(err.contains("window"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (ok, _, err) = cp.stewardctl(&["kpis", "show", "no_such_kpi"]);
    assert!(!ok);
    assert!(err.contains("no_such_kpi"), "{err}");
}
