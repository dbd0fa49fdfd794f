//! What the daemons print, as a log shipper or the journal reads it: plain
//! lines without colour codes when stderr is a file, one JSON object per
//! line with `--log-format json` (`STEWARD_LOG_FORMAT=json`), and `<N>`
//! priority prefixes without a timestamp when stderr is the journal's
//! stream (`JOURNAL_STREAM` naming stderr's device and inode).
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use steward_e2e::{Agent, ControlPlane, fast_checks, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_plain_json_or_journal_lines_as_asked() {
    let root = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(root.path()).await.unwrap();
    // Default (auto) into a file: text, no ANSI escape anywhere.
    let text = cp.log();
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\x1b'), "colour codes in a log file:\n{text}");

    // JSON: every line parses, with the stable fields.
    let mut agent = Agent::prepare(root.path(), &cp, "json-host", &fast_checks(1), "").unwrap();
    agent.env.push(("STEWARD_LOG_FORMAT".into(), "json".into()));
    agent.spawn().unwrap();
    wait_for(
        "the agent's first check runs, in JSON",
        Duration::from_secs(30),
        || async { agent.log().lines().any(|l| l.contains("\"message\"")).then_some(()) },
    )
    .await
    .unwrap();
    agent.terminate();
    let lines: Vec<serde_json::Value> = agent
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{lines:?}");
    for l in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(l[field].is_string(), "{field} missing: {l}");
        }
    }
    assert!(lines.iter().any(|l| l["level"] == "INFO"), "{lines:?}");

    // Under systemd: stderr is the journal's stream (here the log file, named
    // by JOURNAL_STREAM as systemd names its socket).
    cp.terminate();
    let log = cp.dir.join("controlplane.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    cp.env = vec![("JOURNAL_STREAM".into(), format!("{}:{}", meta.dev(), meta.ino()))];
    cp.spawn().await.unwrap();
    let journal = cp.log();
    let first = journal.lines().next().unwrap_or_default();
    assert!(first.starts_with("<6>"), "no priority prefix: {journal}");
    assert!(
        journal.lines().all(|l| l.starts_with('<') && !l.contains('\x1b')),
        "{journal}"
    );
    // No second timestamp: the journal stamps each line itself.
    assert!(first["<6>".len()..].trim_start().starts_with("INFO"), "{first}");
}
