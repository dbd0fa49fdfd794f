//! The restore drill of `docs/RUNBOOK.md`, for real: back up a live control
//! plane that agents stream to, stop it, lose the database, restore the
//! backup, start it again, and find the hosts and results there, with the
//! agent carrying on. On PostgreSQL, `backup` points to `pg_dump` instead.
use std::process::Command;
use std::time::Duration;

use steward_e2e::{Agent, ControlPlane, bin, fast_checks, run_cmd, wait_for};

fn backup(cp: &ControlPlane, to: &std::path::Path) -> (std::process::ExitStatus, String, String) {
    run_cmd(
        Command::new(bin("steward-controlplane"))
            .arg("--config")
            .arg(&cp.config)
            .arg("backup")
            .arg("--to")
            .arg(to),
    )
}

async fn stored(cp: &ControlPlane, host: &str) -> Vec<i64> {
    cp.stored_seqs(host).await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_live_controlplane_restores_its_hosts_and_results() {
    let root = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(root.path()).await.unwrap();
    let target = root.path().join("steward-backup.db");

    if !cp.database_url.starts_with("sqlite:") {
        let (st, out, err) = backup(&cp, &target);
        assert_eq!(st.code(), Some(1), "{out}{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("pg_dump"), "{err}");
        assert!(!target.exists());
        return;
    }

    let mut agent = Agent::start(root.path(), &cp, "drill-01", &fast_checks(2))
        .await
        .unwrap();
    wait_for("10 stored results", Duration::from_secs(30), || async {
        (stored(&cp, "drill-01").await.len() >= 10).then_some(())
    })
    .await
    .unwrap();

    // 1. Online backup while the agent streams.
    let before = stored(&cp, "drill-01").await.len();
    let (st, out, err) = backup(&cp, &target);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("written to"), "{out}");
    // A second backup to the same file is refused and leaves it alone.
    let size = std::fs::metadata(&target).unwrap().len();
    let (st, _, err) = backup(&cp, &target);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::metadata(&target).unwrap().len(), size);

    // 2. Stop everything; the database is lost.
    let status = agent.terminate().unwrap();
    assert!(status.success(), "{}", agent.log());
    let status = cp.terminate().unwrap();
    assert!(status.success(), "{}", cp.log());
    let db = cp.database_url.trim_start_matches("sqlite://").to_string();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{db}{suffix}"));
    }

    // 3. Restore the file and start again.
    std::fs::copy(&target, &db).unwrap();
    cp.spawn().await.unwrap();
    let seqs = stored(&cp, "drill-01").await;
    assert!(
        seqs.len() >= before,
        "the backup holds what was stored before it: {} < {before}",
        seqs.len()
    );
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "a consistent prefix");
    let (status, host) = cp.get("/api/v1/hosts/drill-01").await.unwrap();
    assert_eq!(status, 200, "{host}");
    let (status, checks) = cp.get("/api/v1/hosts/drill-01/checks").await.unwrap();
    assert_eq!(status, 200, "{checks}");
    assert_eq!(checks["items"].as_array().map(Vec::len), Some(2), "{checks}");
    // The admin token in the backup still works: `cp.get` used it.

    // 4. The agent carries on against the restored control plane.
    agent.spawn().unwrap();
    let restored = seqs.len();
    wait_for("new results after the restore", Duration::from_secs(30), || async {
        (stored(&cp, "drill-01").await.len() > restored + 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    let status = agent.terminate().unwrap();
    assert!(status.success(), "{}", agent.log());
}
