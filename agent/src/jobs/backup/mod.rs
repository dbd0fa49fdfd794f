//! Backups (`[[backups]]` in `agent.toml`): snapshots of files and/or a
//! command's output as a zstd-compressed tar archive plus a JSON manifest with
//! the SHA-256 of every file, restic-style retention, and restore verification.
//!
//! Layout under `destination`: `NAME/ID.tar.zst` and `NAME/ID.json` (the
//! manifest), `NAME/lock` while a run or verification holds the backup, and
//! `NAME/.*.partial` / `NAME/.verify-*` only while work is in flight.
//!
//! Invariants:
//! - A snapshot exists only once complete: archive and manifest are written
//!   under temporary names, fsynced and renamed into place, manifest last; a
//!   snapshot is listed only when its manifest is present.
//! - One writer per backup: the lock names its holder's PID and is cleared
//!   only when that process no longer exists ([`lock`]).
//! - Verification restores into a scratch directory and compares every
//!   file's SHA-256 with the manifest; the scratch directory is always removed.
//!
//! The functions here block (file I/O, a child process): the executor calls
//! them on tokio's blocking pool.
pub mod archive;
pub mod lock;
pub mod retention;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use steward_shared::config::ConfigError;
use steward_shared::units::Duration;

pub use archive::{BackupReport, Manifest, ManifestFile, VerifyReport, list_snapshots, run, verify};
pub use retention::Retention;

/// One `[[backups]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Unique name (letters, digits, `.`, `_`, `-`; at most 64): `backup.run name=...`.
    pub name: String,
    /// Absolute paths to archive, recursively. Symlinks are stored as links, not followed.
    #[serde(default)]
    pub sources: Vec<PathBuf>,
    /// Paths left out. `/var/lib/app/cache` leaves out that path and everything
    /// beneath it; `/var/log/app/debug*` leaves out every path starting with that
    /// text; `*.tmp` leaves out every path ending with that text.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A command whose standard output is stored in the archive as
    /// `command/<command_output>`, e.g. `["/usr/bin/pg_dump", "-Fc", "app"]`.
    /// Run without a shell; a non-zero exit fails the backup.
    pub command: Option<Vec<String>>,
    /// File name for the command's output inside the archive. Default `command.out`.
    #[serde(default = "default_command_output")]
    pub command_output: String,
    /// Absolute directory holding the snapshots (a subdirectory per backup name).
    pub destination: PathBuf,
    /// Cron schedule (UTC) for running the backup locally: five fields
    /// (`"0 3 * * *"`) or six with seconds first. Default: only on demand.
    pub schedule: Option<String>,
    /// Cron schedule for `backup.verify` of the latest snapshot. Default: none.
    pub verify_schedule: Option<String>,
    /// Verify each new snapshot right after writing it. Default `true`.
    #[serde(default = "default_true")]
    pub verify_after: bool,
    /// Keep the N newest snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have snapshots.
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have snapshots.
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have snapshots.
    pub keep_monthly: Option<u32>,
    /// Age after which the last good snapshot counts as stale (`"26h"`). Default: none.
    pub rpo: Option<Duration>,
}

fn default_command_output() -> String {
    "command.out".into()
}
fn default_true() -> bool {
    true
}

impl BackupConfig {
    /// The retention keys as one value.
    pub fn retention(&self) -> Retention {
        Retention {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
        }
    }

    /// `destination/name`.
    pub fn dir(&self) -> PathBuf {
        self.destination.join(&self.name)
    }
}

/// Backup errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error(transparent)]
    Locked(#[from] lock::LockError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("command {program} failed: {message}")]
    Command { program: String, message: String },
    #[error("file {path} changed while it was being archived")]
    Changed { path: PathBuf },
    #[error("backup {backup} has no snapshot{}", .snapshot.as_ref().map(|s| format!(" {s:?}")).unwrap_or_default())]
    NoSnapshot { backup: String, snapshot: Option<String> },
    #[error("snapshot {snapshot}: archive is unreadable: {message}")]
    Unreadable { snapshot: String, message: String },
    #[error("snapshot {snapshot}: file {file} differs from the manifest (sha256 {actual}, expected {expected})")]
    Differs {
        snapshot: String,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("snapshot {snapshot}: file {file} is in the manifest but not in the archive")]
    Missing { snapshot: String, file: String },
    #[error("snapshot {snapshot}: manifest is unreadable: {message}")]
    Manifest { snapshot: String, message: String },
}

impl BackupError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
        let context = context.into();
        move |source| BackupError::Io { context, source }
    }
}

/// Whether `path` is left out by one of `patterns` (see [`BackupConfig::exclude`]).
pub fn excluded(path: &Path, patterns: &[String]) -> bool {
    let text = path.to_string_lossy();
    patterns.iter().any(|p| {
        if let Some(suffix) = p.strip_prefix('*') {
            text.ends_with(suffix)
        } else if let Some(prefix) = p.strip_suffix('*') {
            text.starts_with(prefix)
        } else {
            path.starts_with(p)
        }
    })
}

/// The backup's RPO in seconds, if it has one.
pub fn rpo_secs(cfg: &BackupConfig) -> Option<u64> {
    cfg.rpo.map(|r| r.as_std().as_secs())
}

/// `result_json` of a successful `backup.run` (assigned or scheduled): the
/// report plus `created_at` (unix seconds) and the backup's `rpo_secs`, which
/// the control plane needs for `GET /api/v1/backups`.
pub fn run_json(cfg: &BackupConfig, report: &BackupReport, created_at: i64) -> serde_json::Value {
    let mut v = serde_json::to_value(report).unwrap_or_else(|_| serde_json::json!({ "backup": cfg.name }));
    if let Some(map) = v.as_object_mut() {
        map.insert("created_at".into(), created_at.into());
        map.insert("rpo_secs".into(), rpo_secs(cfg).into());
    }
    v
}

/// `result_json` of a successful `backup.verify`.
pub fn verify_json(cfg: &BackupConfig, report: &VerifyReport) -> serde_json::Value {
    let mut v = serde_json::to_value(report).unwrap_or_else(|_| serde_json::json!({ "backup": cfg.name }));
    if let Some(map) = v.as_object_mut() {
        map.insert("rpo_secs".into(), rpo_secs(cfg).into());
    }
    v
}

/// `result_json` of a failed `backup.run` (`verify` false) or `backup.verify` (`verified: false`).
pub fn failed_json(cfg: &BackupConfig, verify: bool) -> serde_json::Value {
    let mut v = serde_json::json!({ "backup": cfg.name, "rpo_secs": rpo_secs(cfg) });
    if verify {
        v["verified"] = false.into();
    }
    v
}

/// Age of the last good snapshot against the RPO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupStatus {
    pub backup: String,
    pub last_snapshot: Option<String>,
    /// Seconds since the last snapshot was taken.
    pub age_secs: Option<i64>,
    /// No snapshot, or the last one is older than `rpo`.
    pub stale: bool,
}

/// The status of a backup at `now` (unix seconds).
pub fn status(cfg: &BackupConfig, now: i64) -> Result<BackupStatus, BackupError> {
    let last = list_snapshots(cfg)?.into_iter().next();
    let age = last.as_ref().map(|m| now - m.created_at);
    let stale = match (age, cfg.rpo) {
        (None, _) => true,
        (Some(age), Some(rpo)) => age > i64::try_from(rpo.as_std().as_secs()).unwrap_or(i64::MAX),
        (Some(_), None) => false,
    };
    Ok(BackupStatus {
        backup: cfg.name.clone(),
        last_snapshot: last.map(|m| m.id),
        age_secs: age,
        stale,
    })
}

/// Checks a name used in paths and actions: 1–64 of `[A-Za-z0-9._-]`, not `.`/`..`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1-64 letters, digits, '.', '_' or '-', not starting with '.'"
        ))
    }
}

/// Validates a five- or six-field cron expression, exactly as the checks do.
pub(crate) fn check_cron(expr: &str) -> Result<(), String> {
    crate::checks::normalize_cron(expr).map(|_| ())
}

fn absolute_clean(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Validates every `[[backups]]` table; errors name `backups[i].key`.
pub fn validate(backups: &[BackupConfig], file: &str, src: &str) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, b) in backups.iter().enumerate() {
        let at = |key: &str, msg: String| ConfigError::at(file, src, &format!("backups[{i}].{key}"), msg);
        check_name(&b.name).map_err(|m| at("name", m))?;
        if let Some(first) = seen.insert(&b.name, i) {
            return Err(at(
                "name",
                format!("duplicate backup name {:?} (already used by backups[{first}])", b.name),
            ));
        }
        if b.sources.is_empty() && b.command.is_none() {
            return Err(at("sources", "set `sources`, `command` or both".into()));
        }
        for (j, s) in b.sources.iter().enumerate() {
            if !absolute_clean(s) {
                return Err(at(
                    &format!("sources[{j}]"),
                    format!("{} must be an absolute path without `.` or `..`", s.display()),
                ));
            }
        }
        for (j, p) in b.exclude.iter().enumerate() {
            let ok = if let Some(suffix) = p.strip_prefix('*') {
                !suffix.is_empty() && !suffix.contains('*')
            } else {
                p.starts_with('/') && p.trim_end_matches('*').len() > 1 && !p.trim_end_matches('*').contains('*')
            };
            if !ok {
                return Err(at(
                    &format!("exclude[{j}]"),
                    format!("{p:?}: expected an absolute path, a path prefix ending in `*`, or `*suffix`"),
                ));
            }
        }
        if let Some(argv) = &b.command {
            match argv.first() {
                Some(program) if program.starts_with('/') => {}
                _ => {
                    return Err(at(
                        "command",
                        "must be a non-empty argv whose program is an absolute path".into(),
                    ));
                }
            }
        }
        if check_name(&b.command_output).is_err() {
            return Err(at(
                "command_output",
                format!("{:?} must be a plain file name", b.command_output),
            ));
        }
        if !absolute_clean(&b.destination) {
            return Err(at("destination", "must be an absolute path without `.` or `..`".into()));
        }
        if let Some(s) = b.sources.iter().find(|s| b.destination.starts_with(s)) {
            return Err(at(
                "destination",
                format!("is inside source {}: the backup would archive itself", s.display()),
            ));
        }
        if let Some(expr) = &b.schedule {
            check_cron(expr).map_err(|m| at("schedule", m))?;
        }
        if let Some(expr) = &b.verify_schedule {
            check_cron(expr).map_err(|m| at("verify_schedule", m))?;
        }
        for (key, v) in [
            ("keep_last", b.keep_last),
            ("keep_daily", b.keep_daily),
            ("keep_weekly", b.keep_weekly),
            ("keep_monthly", b.keep_monthly),
        ] {
            if v == Some(0) {
                return Err(at(key, "must be at least 1 (leave it out to not use this rule)".into()));
            }
        }
        if b.rpo.is_some_and(|r| r.as_std().as_secs() == 0) {
            return Err(at("rpo", "must be at least 1s".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Vec<BackupConfig>, ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            backups: Vec<BackupConfig>,
        }
        let doc: Doc = steward_shared::config::parse_toml("agent.toml", src)?;
        validate(&doc.backups, "agent.toml", src)?;
        Ok(doc.backups)
    }

    const GOOD: &str = "[[backups]]\nname = \"etc\"\nsources = [\"/etc\"]\nexclude = [\"/etc/ssl/private\", \"*.swp\", \"/etc/tmp*\"]\n\
        destination = \"/var/backups/steward\"\nschedule = \"0 3 * * *\"\nkeep_daily = 7\nrpo = \"26h\"\n";

    #[test]
    fn a_good_config_parses() {
        let b = &parse(GOOD).unwrap()[0];
        assert_eq!(b.retention().keep_daily, Some(7));
        assert!(b.verify_after);
        assert_eq!(b.dir(), PathBuf::from("/var/backups/steward/etc"));
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = parse(&GOOD.replace("0 3 * * *", "0 3 * *")).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(6), Some("backups[0].schedule")),
            "{e}"
        );
        let e = parse(&GOOD.replace("keep_daily = 7", "keep_daily = 0")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backups[0].keep_daily"));
        let e = parse(&GOOD.replace("\"/etc\"]", "\"etc\"]")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backups[0].sources[0]"));
        let e = parse(&GOOD.replace("*.swp", "*")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backups[0].exclude[1]"));
        let e = parse(&GOOD.replace("name = \"etc\"", "name = \"../x\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backups[0].name"));
        let e = parse(&GOOD.replace("/var/backups/steward", "/etc/backups")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backups[0].destination"));
        let e = parse(&format!("{GOOD}{GOOD}")).unwrap_err();
        assert!(e.message.contains("duplicate"), "{e}");
        let e = parse(&GOOD.replace("rpo", "rpoo")).unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse(&GOOD.replace("sources = [\"/etc\"]\n", "command = [\"pg_dump\"]\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backups[0].command"));
    }

    #[test]
    fn exclude_patterns_match_prefixes_and_suffixes() {
        let p: Vec<String> = ["/srv/cache", "/srv/log/debug*", "*.tmp"].map(String::from).to_vec();
        assert!(excluded(Path::new("/srv/cache"), &p));
        assert!(excluded(Path::new("/srv/cache/a/b"), &p));
        assert!(!excluded(Path::new("/srv/cache2"), &p));
        assert!(excluded(Path::new("/srv/log/debug.1"), &p));
        assert!(excluded(Path::new("/srv/data/x.tmp"), &p));
        assert!(!excluded(Path::new("/srv/data/x.tmpl"), &p));
    }
}
