//! Deploys (`[[apps]]` in `agent.toml`): versioned release directories, an
//! atomic `current` switch, a service restart, a health gate, and automatic
//! rollback to the previous release when the new one is unhealthy.
//!
//! Layout under `releases_dir`: `releases/VERSION/` (unpacked artifacts),
//! `current` and `previous` (relative symlinks to `releases/VERSION`), and
//! `.incoming-*` / `releases/.unpack-*` only while a deploy is in flight.
//!
//! Invariants:
//! - `current` always resolves: it is switched by creating a temporary symlink
//!   and `rename(2)`-ing it over `current` (never `ln -sfn`, which unlinks first).
//! - An artifact is unpacked only after its SHA-256 matched, into a temporary
//!   directory renamed to `releases/VERSION` once complete; entries that would
//!   write outside the release are refused ([`unpack`]).
//! - Pruning never removes the `current` or `previous` release.
//! - Hooks come from the local config only; the control plane names a version
//!   and an artifact, nothing that runs; the artifact must be within the
//!   app's `artifact_sources` ([`sources`]), checked before anything is fetched.
pub mod health;
pub mod service;
pub mod sources;
pub mod unpack;

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;
use steward_shared::config::ConfigError;
use steward_shared::units::{ByteSize, Duration};

pub use health::HealthConfig;
pub use service::{CommandService, ServiceManager, Systemctl};
pub use unpack::{ArchiveKind, UnpackError};

/// One `[[apps]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Unique name (letters, digits, `.`, `_`, `-`): `deploy.apply app=...`.
    pub name: String,
    /// Absolute directory holding `releases/`, `current` and `previous`.
    pub releases_dir: PathBuf,
    /// systemd unit restarted after each switch, e.g. `web.service`.
    pub unit: String,
    /// The health gate run after each restart (`[apps.health]`).
    pub health: HealthConfig,
    /// Releases kept on disk, counting `current` and `previous` (never removed). Default 5.
    #[serde(default = "default_keep")]
    pub keep_releases: usize,
    /// Largest artifact accepted. Default `1GiB`.
    #[serde(default = "default_max_artifact")]
    pub max_artifact_size: ByteSize,
    /// Most file content an artifact may unpack to. Default `4GiB`.
    #[serde(default = "default_max_unpacked")]
    pub max_unpacked_size: ByteSize,
    /// Where `deploy.apply` may fetch artifacts from: URL prefixes
    /// (`https://host/path/`) or absolute directories. Empty (the default):
    /// every deploy of this app is refused.
    #[serde(default)]
    pub artifact_sources: Vec<String>,
    /// Run (argv, no shell) after unpacking and before switching; a failure stops the deploy.
    /// Environment: `STEWARD_APP`, `STEWARD_VERSION`, `STEWARD_RELEASE_DIR`.
    pub pre_hook: Option<Vec<String>>,
    /// Run after a healthy switch; a failure rolls the deploy back.
    pub post_hook: Option<Vec<String>>,
    /// Longest a hook may run. Default `60s`.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout: Duration,
}

fn default_keep() -> usize {
    5
}
fn default_max_artifact() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_max_unpacked() -> ByteSize {
    ByteSize(4 << 30)
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Deploy errors: the attempt failed and nothing needed rolling back (or the
/// rollback itself failed, which the message says).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Artifact(#[from] UnpackError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeployError {
    let context = context.into();
    move |source| DeployError::Io { context, source }
}

/// How a deploy or rollback ended when it did not fail outright.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DeployOutcome {
    /// The requested release is current and healthy.
    Deployed,
    /// The requested release was already current; nothing changed.
    Unchanged,
    /// The new release failed; the previous one is current again and healthy.
    RolledBack { reason: String },
}

/// What `deploy.apply` and `deploy.rollback` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployReport {
    pub app: String,
    /// The release asked for.
    pub version: String,
    /// The release current before.
    pub previous: Option<String>,
    /// The release current now.
    pub current: Option<String>,
    pub outcome: DeployOutcome,
    pub artifact_bytes: u64,
    /// Health probes run for the release now current.
    pub health_probes: u32,
    /// Releases removed by pruning.
    pub pruned: Vec<String>,
    pub duration_ms: u64,
}

/// The directory layout of one app.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }
    fn release(&self, version: &str) -> PathBuf {
        self.releases().join(version)
    }
    fn current(&self) -> PathBuf {
        self.root.join("current")
    }
    fn previous(&self) -> PathBuf {
        self.root.join("previous")
    }
    /// The version a link (`current`/`previous`) points at, if any.
    fn version_of(&self, link: &Path) -> Option<String> {
        let target = std::fs::read_link(link).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }
}

/// Points `link` at `releases/VERSION` atomically: a temporary symlink renamed over it.
pub fn switch_link(link: &Path, version: &str) -> Result<(), DeployError> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{:08x}", rand::random::<u32>()));
    let target = Path::new("releases").join(version);
    std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(format!("symlink {}", tmp.display())))?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(format!("rename over {}", link.display()))(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

async fn run_hook(app: &AppConfig, argv: &[String], version: &str, release: &Path) -> Result<(), String> {
    let program = argv.first().cloned().unwrap_or_default();
    let child = tokio::process::Command::new(&program)
        .args(&argv[1.min(argv.len())..])
        .env("STEWARD_APP", &app.name)
        .env("STEWARD_VERSION", version)
        .env("STEWARD_RELEASE_DIR", release)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(app.hook_timeout.as_std(), child).await {
        Err(_) => Err(format!("hook {program} timed out")),
        Ok(Err(e)) => Err(format!("hook {program}: cannot start: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "hook {program}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(500)
                .collect::<String>()
        )),
    }
}

/// Restarts the unit and runs the health gate; the probe count or a reason.
async fn restart_and_check(app: &AppConfig, svc: &dyn ServiceManager) -> Result<u32, String> {
    svc.restart(&app.unit)
        .await
        .map_err(|e| format!("restart failed: {e}"))?;
    health::check(&app.health).await
}

fn check_sha256(s: &str) -> Result<(), DeployError> {
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(DeployError::Invalid("sha256 must be 64 hex digits".into()))
    }
}

/// Installs `version` of `app` from `artifact` (http(s) URL or absolute path)
/// if its SHA-256 is `sha256`, switches to it, restarts and health-checks; on
/// failure switches back and reports [`DeployOutcome::RolledBack`].
pub async fn apply(
    app: &AppConfig,
    svc: &dyn ServiceManager,
    version: &str,
    artifact: &str,
    sha256: &str,
) -> Result<DeployReport, DeployError> {
    let started = Instant::now();
    crate::jobs::backup::check_name(version).map_err(|m| DeployError::Invalid(format!("version {m}")))?;
    check_sha256(sha256)?;
    let kind = ArchiveKind::from_name(artifact)
        .ok_or_else(|| DeployError::Invalid("artifact must end in .tar.gz, .tgz, .tar.zst or .tzst".into()))?;
    let artifact = &sources::allowed(&app.name, &app.artifact_sources, artifact).map_err(DeployError::Invalid)?;
    let layout = Layout {
        root: app.releases_dir.clone(),
    };
    std::fs::create_dir_all(layout.releases()).map_err(io_err(format!("create {}", layout.releases().display())))?;
    clean_leftovers(&layout);
    let before = layout.version_of(&layout.current());
    let before_previous = layout.version_of(&layout.previous());
    let mut report = DeployReport {
        app: app.name.clone(),
        version: version.to_string(),
        previous: before.clone(),
        current: before.clone(),
        outcome: DeployOutcome::Unchanged,
        artifact_bytes: 0,
        health_probes: 0,
        pruned: Vec::new(),
        duration_ms: 0,
    };
    if before.as_deref() == Some(version) {
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }

    // Fetch and check, then unpack into a temporary directory.
    let incoming = layout
        .root
        .join(format!(".incoming-{version}-{:08x}", rand::random::<u32>()));
    let fetched = unpack::fetch(artifact, &incoming, sha256, app.max_artifact_size.0).await;
    report.artifact_bytes = fetched?;
    let staging = layout
        .releases()
        .join(format!(".unpack-{version}-{:08x}", rand::random::<u32>()));
    let unpacked = {
        let (archive, staging) = (incoming.clone(), staging.clone());
        let max_unpacked = app.max_unpacked_size.0;
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir(&staging).map_err(|e| UnpackError::Io {
                context: "create staging".into(),
                source: e,
            })?;
            unpack::unpack(&archive, kind, &staging, max_unpacked)
        })
        .await
        .unwrap_or_else(|e| Err(UnpackError::Unreadable(format!("unpack task failed: {e}"))))
    };
    let _ = std::fs::remove_file(&incoming);
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.into());
    }
    let release = layout.release(version);
    if std::fs::symlink_metadata(&release).is_ok() {
        std::fs::remove_dir_all(&release).map_err(io_err(format!("replace {}", release.display())))?;
    }
    std::fs::rename(&staging, &release).map_err(io_err(format!("rename to {}", release.display())))?;

    if let Some(hook) = &app.pre_hook {
        run_hook(app, hook, version, &release)
            .await
            .map_err(DeployError::Failed)?;
    }

    // Switch, restart, check.
    if let Some(old) = &before {
        switch_link(&layout.previous(), old)?;
    }
    switch_link(&layout.current(), version)?;
    let mut result = restart_and_check(app, svc).await;
    if let (Ok(_), Some(hook)) = (&result, &app.post_hook) {
        result = run_hook(app, hook, version, &release)
            .await
            .map(|_| 0)
            .map_err(|e| format!("post hook failed: {e}"));
    }
    match result {
        Ok(probes) => {
            report.outcome = DeployOutcome::Deployed;
            report.current = Some(version.to_string());
            report.health_probes = probes;
        }
        Err(reason) => {
            let Some(old) = &before else {
                report.duration_ms = started.elapsed().as_millis() as u64;
                return Err(DeployError::Failed(format!(
                    "{reason}; no previous release to roll back to"
                )));
            };
            tracing::warn!(app = %app.name, version, %reason, previous = %old, "deploy failed, rolling back");
            switch_link(&layout.current(), old)?;
            match &before_previous {
                Some(p) => switch_link(&layout.previous(), p)?,
                None => {
                    let _ = std::fs::remove_file(layout.previous());
                }
            }
            match restart_and_check(app, svc).await {
                Ok(probes) => {
                    report.outcome = DeployOutcome::RolledBack { reason };
                    report.health_probes = probes;
                }
                Err(again) => {
                    return Err(DeployError::Failed(format!(
                        "{reason}; rolled back to {old}, which is unhealthy too: {again}"
                    )));
                }
            }
        }
    }
    report.pruned = prune(app, &layout);
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Switches `app` back to `version` (default: the `previous` release),
/// restarts and health-checks it.
pub async fn rollback(
    app: &AppConfig,
    svc: &dyn ServiceManager,
    version: Option<&str>,
) -> Result<DeployReport, DeployError> {
    let started = Instant::now();
    let layout = Layout {
        root: app.releases_dir.clone(),
    };
    let before = layout.version_of(&layout.current());
    let target = match version {
        Some(v) => {
            crate::jobs::backup::check_name(v).map_err(|m| DeployError::Invalid(format!("version {m}")))?;
            v.to_string()
        }
        None => layout
            .version_of(&layout.previous())
            .ok_or_else(|| DeployError::Invalid(format!("app {} has no previous release", app.name)))?,
    };
    if !layout.release(&target).is_dir() {
        return Err(DeployError::Invalid(format!(
            "app {} has no release {target:?}",
            app.name
        )));
    }
    let mut report = DeployReport {
        app: app.name.clone(),
        version: target.clone(),
        previous: before.clone(),
        current: Some(target.clone()),
        outcome: DeployOutcome::Unchanged,
        artifact_bytes: 0,
        health_probes: 0,
        pruned: Vec::new(),
        duration_ms: 0,
    };
    if before.as_deref() != Some(target.as_str()) {
        if let Some(old) = &before {
            switch_link(&layout.previous(), old)?;
        }
        switch_link(&layout.current(), &target)?;
        report.outcome = DeployOutcome::Deployed;
    }
    report.health_probes = restart_and_check(app, svc).await.map_err(DeployError::Failed)?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Removes what an interrupted deploy left (callers never overlap per app).
fn clean_leftovers(layout: &Layout) {
    for (dir, prefix) in [(layout.root.clone(), ".incoming-"), (layout.releases(), ".unpack-")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
    }
}

/// Removes releases beyond `keep_releases` (oldest first by modification
/// time), never `current` or `previous`; returns the removed versions.
fn prune(app: &AppConfig, layout: &Layout) -> Vec<String> {
    let protected: HashSet<String> = [layout.current(), layout.previous()]
        .iter()
        .filter_map(|l| layout.version_of(l))
        .collect();
    let Ok(entries) = std::fs::read_dir(layout.releases()) else {
        return Vec::new();
    };
    let mut releases: Vec<(std::time::SystemTime, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().ok()?;
            (!name.starts_with('.') && meta.is_dir()).then(|| (meta.modified().unwrap_or(std::time::UNIX_EPOCH), name))
        })
        .collect();
    releases.sort_by(|a, b| b.cmp(a));
    let mut kept = 0usize;
    let mut pruned = Vec::new();
    for (_, name) in releases {
        if protected.contains(&name) {
            continue;
        }
        if kept < app.keep_releases.saturating_sub(protected.len()) {
            kept += 1;
            continue;
        }
        if std::fs::remove_dir_all(layout.release(&name)).is_ok() {
            pruned.push(name);
        }
    }
    pruned
}

/// Validates every `[[apps]]` table; errors name `apps[i].key`.
pub fn validate(apps: &[AppConfig], file: &str, src: &str) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, a) in apps.iter().enumerate() {
        let at = |key: &str, msg: String| ConfigError::at(file, src, &format!("apps[{i}].{key}"), msg);
        crate::jobs::backup::check_name(&a.name).map_err(|m| at("name", m))?;
        if !seen.insert(a.name.as_str()) {
            return Err(at("name", format!("duplicate app name {:?}", a.name)));
        }
        if !a.releases_dir.is_absolute()
            || !a
                .releases_dir
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(at(
                "releases_dir",
                "must be an absolute path without `.` or `..`".into(),
            ));
        }
        if a.unit.is_empty() || a.unit.starts_with('-') || a.unit.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(at("unit", format!("{:?} is not a systemd unit name", a.unit)));
        }
        a.health
            .validate()
            .map_err(|(key, m)| at(&format!("health.{key}"), m))?;
        if a.keep_releases < 2 {
            return Err(at("keep_releases", "must be at least 2 (current and previous)".into()));
        }
        sources::validate(&a.artifact_sources).map_err(|m| at("artifact_sources", m))?;
        for (key, hook) in [("pre_hook", &a.pre_hook), ("post_hook", &a.post_hook)] {
            if let Some(argv) = hook
                && !argv.first().is_some_and(|p| p.starts_with('/'))
            {
                return Err(at(
                    key,
                    "must be a non-empty argv whose program is an absolute path".into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
