//! Table output of `stewardctl`: aligned columns, one line per row, times as
//! "12s ago". Pure functions of the API's views and a clock, unit-tested here.
use std::collections::BTreeMap;

use crate::api::views::{CheckView, HostView};
use crate::audit::export::AuditEntryView;

/// Hosts as a table; "No hosts found." when empty.
pub fn hosts_table(hosts: &[HostView], now_ms: i64) -> String {
    if hosts.is_empty() {
        return "No hosts found.\n".into();
    }
    let rows = hosts
        .iter()
        .map(|h| {
            vec![
                h.id.clone(),
                or_dash(&h.hostname),
                if h.online { "online" } else { "offline" }.to_string(),
                ago(h.last_seen_ms, now_ms),
                h.checks.ok.to_string(),
                h.checks.warning.to_string(),
                h.checks.critical.to_string(),
                h.checks.unknown.to_string(),
                or_dash(&labels(&h.labels)),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "LAST SEEN",
            "OK",
            "WARN",
            "CRIT",
            "UNKNOWN",
            "LABELS",
        ],
        &rows,
    )
}

/// Checks as a table (with a HOST column when `with_host`); "No checks found." when empty.
pub fn checks_table(checks: &[CheckView], now_ms: i64, with_host: bool) -> String {
    if checks.is_empty() {
        return "No checks found.\n".into();
    }
    let rows = checks
        .iter()
        .map(|c| {
            let mut row = Vec::new();
            if with_host {
                row.push(if c.hostname.is_empty() {
                    c.host_id.clone()
                } else {
                    c.hostname.clone()
                });
            }
            row.extend([
                c.name.clone(),
                c.kind.clone(),
                c.status.to_string(),
                ago(c.observed_at_ms, now_ms),
                truncate(&c.message, 80),
            ]);
            row
        })
        .collect::<Vec<_>>();
    let headers: &[&str] = if with_host {
        &["HOST", "CHECK", "KIND", "STATUS", "AGE", "MESSAGE"]
    } else {
        &["CHECK", "KIND", "STATUS", "AGE", "MESSAGE"]
    };
    table(headers, &rows)
}

/// `hosts show`: the host's fields, then its checks.
pub fn host_detail(h: &HostView, checks: &[CheckView], now_ms: i64) -> String {
    let status = match (h.online, h.connected) {
        (true, true) => "online (connected)",
        (true, false) => "online (stream closed)",
        (false, true) => "offline (stream open but silent)",
        (false, false) => "offline",
    };
    let fields = [
        ("ID", h.id.clone()),
        ("Hostname", or_dash(&h.hostname)),
        ("Status", status.to_string()),
        (
            "Last seen",
            format!("{} ({})", h.last_seen, ago(h.last_seen_ms, now_ms)),
        ),
        ("Agent version", or_dash(&h.agent_version)),
        ("Labels", or_dash(&labels(&h.labels))),
        ("Facts", or_dash(&labels(&h.facts))),
        ("Last sequence", h.last_seq.to_string()),
        ("Spool drops", h.spool_dropped_total.to_string()),
        (
            "Checks",
            format!(
                "{} ok, {} warning, {} critical, {} unknown",
                h.checks.ok, h.checks.warning, h.checks.critical, h.checks.unknown
            ),
        ),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(&format!("{:<width$} {}\n", format!("{k}:"), clean(&v), width = width));
    }
    out.push('\n');
    out.push_str(&checks_table(checks, now_ms, false));
    out
}

/// Audit entries as a table, oldest first; "No audit entries found." when empty.
pub fn audit_table(entries: &[AuditEntryView]) -> String {
    if entries.is_empty() {
        return "No audit entries found.\n".into();
    }
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.time.clone(),
                e.actor.clone(),
                e.action.clone(),
                or_dash(e.target.as_deref().unwrap_or("")),
                e.outcome.clone(),
                or_dash(e.request_id.as_deref().unwrap_or("")),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "REQUEST ID"],
        &rows,
    )
}

/// Left-aligned columns separated by three spaces, headers first.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            s.push_str(cell);
            if i < last {
                s.push_str(&" ".repeat(w - cell.chars().count() + 3));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// "12s ago", "5m ago", "3h ago", "2d ago"; "just now" for a future time.
pub fn ago(then_ms: i64, now_ms: i64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        s if s < 0 => "just now".into(),
        s if s < 60 => format!("{s}s ago"),
        s if s < 3_600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3_600),
        s => format!("{}d ago", s / 86_400),
    }
}

fn labels(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_string() }
}

/// Control characters (newlines, tabs, escapes) become spaces: a cell is one line.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max - 1).chain(std::iter::once('…')).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use steward_shared::status::CheckStatus;

    use super::*;
    use crate::api::views::ValueView;
    use crate::model::StatusCounts;

    const NOW: i64 = 1_700_000_000_000;

    fn host(id: &str, hostname: &str, online: bool, seen_ago_s: i64) -> HostView {
        HostView {
            id: id.into(),
            hostname: hostname.into(),
            labels: BTreeMap::from([("env".into(), "prod".into()), ("role".into(), "web".into())]),
            facts: BTreeMap::from([("os".into(), "linux".into())]),
            agent_version: "0.1.0".into(),
            online,
            connected: online,
            first_seen_ms: 0,
            last_seen_ms: NOW - seen_ago_s * 1000,
            last_seen: "2023-11-14T22:13:08.000Z".into(),
            last_seq: 42,
            spool_dropped_total: 0,
            checks: StatusCounts {
                ok: 5,
                warning: 1,
                critical: 0,
                unknown: 2,
            },
        }
    }

    fn check(host: &str, name: &str, status: CheckStatus, message: &str) -> CheckView {
        CheckView {
            host_id: host.into(),
            hostname: format!("{host}.example"),
            name: name.into(),
            kind: "disk".into(),
            status,
            values: vec![ValueView {
                name: "used".into(),
                value: Some(81.5),
                unit: "percent".into(),
            }],
            message: message.into(),
            observed_at_ms: NOW - 5_000,
            observed_at: "x".into(),
            duration_us: 1,
            seq: 1,
        }
    }

    #[test]
    fn hosts_table_is_aligned_and_readable() {
        let t = hosts_table(&[host("id-1", "web-1", true, 12), host("id-22", "", false, 7_200)], NOW);
        let expected = "\
ID      HOSTNAME   STATUS    LAST SEEN   OK   WARN   CRIT   UNKNOWN   LABELS
id-1    web-1      online    12s ago     5    1      0      2         env=prod,role=web
id-22   -          offline   2h ago      5    1      0      2         env=prod,role=web
";
        assert_eq!(t, expected);
        assert_eq!(hosts_table(&[], NOW), "No hosts found.\n");
    }

    #[test]
    fn checks_table_cleans_and_truncates_messages() {
        let long = "x".repeat(100);
        let t = checks_table(
            &[
                check("a", "root", CheckStatus::Critical, "line1\nline2\ttab"),
                check("b", "tls", CheckStatus::Ok, &long),
            ],
            NOW,
            true,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "HOST        CHECK   KIND   STATUS     AGE      MESSAGE");
        assert_eq!(
            lines[1],
            "a.example   root    disk   critical   5s ago   line1 line2 tab"
        );
        assert!(
            lines[2].ends_with('…') && lines[2].chars().count() < 130,
            "{}",
            lines[2]
        );
        assert_eq!(checks_table(&[], NOW, true), "No checks found.\n");
    }

    #[test]
    fn host_detail_lists_fields_then_checks() {
        let d = host_detail(
            &host("id-1", "web-1", true, 3),
            &[check("id-1", "root", CheckStatus::Ok, "fine")],
            NOW,
        );
        assert!(
            d.starts_with("ID:            id-1\nHostname:      web-1\nStatus:        online (connected)\n"),
            "{d}"
        );
        assert!(d.contains("Last seen:     2023-11-14T22:13:08.000Z (3s ago)\n"), "{d}");
        assert!(
            d.contains("Checks:        5 ok, 1 warning, 0 critical, 2 unknown\n"),
            "{d}"
        );
        assert!(
            d.contains("\nCHECK   KIND   STATUS   AGE      MESSAGE\nroot    disk   ok       5s ago   fine\n"),
            "{d}"
        );
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(ago(NOW, NOW), "0s ago");
        assert_eq!(ago(NOW - 59_999, NOW), "59s ago");
        assert_eq!(ago(NOW - 60_000, NOW), "1m ago");
        assert_eq!(ago(NOW - 3 * 86_400_000, NOW), "3d ago");
        assert_eq!(ago(NOW + 10_000, NOW), "just now");
        assert_eq!(ago(i64::MIN, NOW), format!("{}d ago", i64::MAX / 1000 / 86_400));
    }
}
