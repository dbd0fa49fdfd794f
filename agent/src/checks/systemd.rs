//! `systemd`: a unit's ActiveState and SubState, read with
//! `systemctl show -p LoadState -p ActiveState -p SubState -- UNIT`.
//! When systemd is not the init system (no `/run/systemd/system`) the result
//! is `unknown` with that reason, never `critical`.
use std::path::PathBuf;
use std::process::Stdio;
use steward_shared::status::{CheckStatus, Value};

use super::Outcome;

/// systemd's own marker that it is running as the init system (sd_booted(3)).
const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";

pub(crate) struct SystemdProbe {
    unit: String,
    /// The ActiveState that is `ok`: `active` or `inactive`.
    expected: String,
    runtime_dir: PathBuf,
}

/// Unit names are passed to `systemctl` as one argument after `--`; they are
/// still restricted to systemd's own alphabet so that nothing odd reaches it.
pub(crate) fn validate_unit_name(unit: &str) -> Result<(), String> {
    let ok = !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{unit:?} is not a systemd unit name (letters, digits and :-_.\\@, not starting with '-')"
        ))
    }
}

/// The properties `systemctl show` printed, as `Key=value` lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct UnitState {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
}

pub(crate) fn parse_show(output: &str) -> UnitState {
    let mut state = UnitState::default();
    for line in output.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let slot = match key {
            "LoadState" => &mut state.load_state,
            "ActiveState" => &mut state.active_state,
            "SubState" => &mut state.sub_state,
            _ => continue,
        };
        *slot = value.trim().to_string();
    }
    state
}

/// Maps a unit's state to a status: the expected state is `ok`, a transition
/// towards or away from it is `warning`, anything else is `critical`.
pub(crate) fn evaluate(unit: &str, expected: &str, s: &UnitState) -> Outcome {
    let active = if s.active_state == "active" { 1.0 } else { 0.0 };
    let values = vec![Value::new("active", active, "")];
    if s.active_state.is_empty() {
        return Outcome::unknown(format!("systemctl printed no ActiveState for {unit}"));
    }
    if s.load_state == "not-found" && expected == "active" {
        return Outcome::new(CheckStatus::Critical, values, format!("{unit} not found"));
    }
    let status = match (expected, s.active_state.as_str()) {
        (e, a) if e == a => CheckStatus::Ok,
        ("active", "activating" | "reloading" | "refreshing" | "deactivating") => CheckStatus::Warning,
        ("inactive", "deactivating" | "failed") => CheckStatus::Warning,
        _ => CheckStatus::Critical,
    };
    let mut message = format!("{unit} is {}", s.active_state);
    if !s.sub_state.is_empty() {
        message.push_str(&format!(" ({})", s.sub_state));
    }
    if status != CheckStatus::Ok {
        message.push_str(&format!(", expected {expected}"));
    }
    Outcome::new(status, values, message)
}

impl SystemdProbe {
    pub fn new(unit: String, expected: String) -> Self {
        Self {
            unit,
            expected,
            runtime_dir: PathBuf::from(SYSTEMD_RUNTIME_DIR),
        }
    }

    pub async fn run(&self) -> Outcome {
        if !self.runtime_dir.is_dir() {
            return Outcome::unknown(format!(
                "systemd is not running on this host (no {}): cannot check {}",
                self.runtime_dir.display(),
                self.unit
            ));
        }
        let output = tokio::process::Command::new("systemctl")
            .args([
                "show",
                "--no-pager",
                "-p",
                "LoadState",
                "-p",
                "ActiveState",
                "-p",
                "SubState",
                "--",
            ])
            .arg(&self.unit)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        match output {
            Ok(out) if out.status.success() => evaluate(
                &self.unit,
                &self.expected,
                &parse_show(&String::from_utf8_lossy(&out.stdout)),
            ),
            Ok(out) => Outcome::unknown(format!(
                "systemctl show {} failed ({}): {}",
                self.unit,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Outcome::unknown(format!("cannot run systemctl: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_output_in_any_order() {
        let s = parse_show("ActiveState=active\nSubState=running\nLoadState=loaded\n");
        assert_eq!(
            s,
            UnitState {
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: "running".into()
            }
        );
        assert_eq!(parse_show("junk\n").active_state, "");
    }

    #[test]
    fn states_map_to_statuses() {
        let state = |a: &str, sub: &str| UnitState {
            load_state: "loaded".into(),
            active_state: a.into(),
            sub_state: sub.into(),
        };
        let ok = evaluate("nginx.service", "active", &state("active", "running"));
        assert_eq!(ok.status, CheckStatus::Ok);
        assert_eq!(ok.message, "nginx.service is active (running)");
        assert_eq!(ok.values[0].value, 1.0);
        let failed = evaluate("nginx.service", "active", &state("failed", "failed"));
        assert_eq!(failed.status, CheckStatus::Critical);
        assert_eq!(failed.message, "nginx.service is failed (failed), expected active");
        assert_eq!(
            evaluate("a", "active", &state("inactive", "dead")).status,
            CheckStatus::Critical
        );
        assert_eq!(
            evaluate("a", "active", &state("activating", "start")).status,
            CheckStatus::Warning
        );
        assert_eq!(
            evaluate("a", "inactive", &state("inactive", "dead")).status,
            CheckStatus::Ok
        );
        assert_eq!(
            evaluate("a", "inactive", &state("active", "running")).status,
            CheckStatus::Critical
        );
        let missing = UnitState {
            load_state: "not-found".into(),
            active_state: "inactive".into(),
            sub_state: "dead".into(),
        };
        assert_eq!(
            evaluate("nope.service", "active", &missing).message,
            "nope.service not found"
        );
        assert_eq!(evaluate("nope.service", "inactive", &missing).status, CheckStatus::Ok);
        assert_eq!(
            evaluate("a", "active", &UnitState::default()).status,
            CheckStatus::Unknown
        );
    }

    #[test]
    fn unit_names_are_restricted() {
        assert!(validate_unit_name("nginx.service").is_ok());
        assert!(validate_unit_name("getty@tty1.service").is_ok());
        assert!(validate_unit_name("-H host").is_err());
        assert!(validate_unit_name("a;b").is_err());
        assert!(validate_unit_name("").is_err());
    }

    #[tokio::test]
    async fn without_systemd_the_result_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let mut probe = SystemdProbe::new("nginx.service".into(), "active".into());
        probe.runtime_dir = dir.path().join("no-systemd-here");
        let out = probe.run().await;
        assert_eq!(out.status, CheckStatus::Unknown);
        assert!(out.message.contains("systemd is not running"), "{}", out.message);
    }

    #[tokio::test]
    async fn this_hosts_real_systemd_state_is_reported() {
        // On a host without systemd as PID 1 this is the unknown path for real;
        // with systemd it asks systemctl about a unit that cannot exist.
        let out = SystemdProbe::new("steward-test-no-such-unit.service".into(), "active".into())
            .run()
            .await;
        if std::path::Path::new(SYSTEMD_RUNTIME_DIR).is_dir() {
            assert_ne!(out.status, CheckStatus::Ok, "{out:?}");
        } else {
            assert_eq!(out.status, CheckStatus::Unknown, "{out:?}");
            assert!(out.message.contains("/run/systemd/system"), "{}", out.message);
        }
    }
}
