//! The `steward-agent` binary's command line: exit codes, one-line errors that
//! name file, line and key, and `collect --once` without a server.
use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_steward-agent"))
}

fn write(dir: &tempfile::TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[[checks]]\nname = \"mem\"\nkind = \"memory\"\n");
    let out = agent().arg("--config").arg(&path).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_config_names_file_line_and_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[agent]\nheartbeat_interval = \"15s\"\n\n[spool]\nmax_size = \"lots\"\n",
    );
    let out = agent().arg("--config").arg(&path).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one readable line: {err}");
    assert!(err.contains(&format!("{}:5", path.display())), "{err}");
    assert!(err.contains("spool.max_size"), "{err}");

    let path = write(&dir, "[agent]\nhearbeat_interval = \"15s\"\n");
    let out = agent().arg("--config").arg(&path).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2") && err.contains("hearbeat_interval"), "{err}");
}

#[test]
fn a_missing_config_file_is_one_line_and_exit_1() {
    let out = agent()
        .args(["--config", "/nonexistent/agent.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("steward-agent: /nonexistent/agent.toml"), "{err}");
}

#[test]
fn bad_usage_exits_2() {
    let out = agent().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn collect_once_prints_every_check_as_json_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[[checks]]\nname = \"mem\"\nkind = \"memory\"\n\n[[checks]]\nname = \"load\"\nkind = \"cpu\"\n\n[[checks]]\nname = \"root\"\nkind = \"disk\"\nmount = \"/\"\n",
    );
    let out = agent()
        .arg("--config")
        .arg(&path)
        .args(["collect", "--once"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["name"], "mem");
    assert_eq!(items[2]["kind"], "disk");
    for item in items {
        assert!(
            ["ok", "warning", "critical", "unknown"].contains(&item["status"].as_str().unwrap()),
            "{item}"
        );
        assert!(item["observed_at_ms"].as_i64().unwrap() > 0);
    }
}

#[test]
fn version_prints_the_version_and_the_git_commit() {
    let out = agent().arg("version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.trim_end();
    let rest = line
        .strip_prefix(&format!("steward-agent {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        rest == "unknown" || (rest.len() >= 7 && rest.bytes().all(|b| b.is_ascii_hexdigit())),
        "a short git commit or \"unknown\": {line:?}"
    );
}

#[test]
fn an_enrollment_token_in_a_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = format!("stwe_abc_s3cr3ts3cr3ts3cr3t_{}", "0a".repeat(32));
    let path = write(
        &dir,
        &format!("[server]\nurl = \"https://127.0.0.1:7443\"\nenrollment_token = \"{token}\"\n"),
    );
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = agent().arg("--config").arg(&path).arg("check-config").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "mode {mode:o}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one readable line: {err}");
        assert!(err.contains(&format!("{}:3", path.display())), "{err}");
        assert!(
            err.contains("server.enrollment_token") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("s3cr3t"), "the token is not shown: {err}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = agent().arg("--config").arg(&path).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // A readable file without a token is fine.
    let path = write(&dir, "[server]\nurl = \"https://127.0.0.1:7443\"\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent().arg("--config").arg(&path).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
