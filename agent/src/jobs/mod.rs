//! The job executor: typed actions the control plane may ask for, checked
//! against the agent's local policy, journalled so no attempt runs twice,
//! and run with a timeout while their output streams back in bounded chunks.
//!
//! Layout:
//! - [`policy`] — `[actions]`: what this agent allows (refusals say
//!   `not allowed by agent policy: ...`).
//! - [`journal`] — `DATA_DIR/jobs.redb`: attempts begun and finished.
//! - [`backup`] — `[[backups]]`: snapshots, retention, verification.
//! - [`deploy`] — `[[apps]]`: releases, atomic switch, health gate, rollback.
//! - [`executor`] — runs one assignment: policy, journal, dispatch, timeout, output cap.
//! - [`outcome`] — assignment, progress and result types.
//! - [`runner`] — assignments from the stream → executor → `JobEvent` reports in the spool;
//!   cancels, local backup schedules, interrupted attempts, drain.
pub mod backup;
pub mod deploy;
pub mod executor;
pub mod journal;
pub mod outcome;
pub mod policy;
pub mod runner;

pub use executor::{ChecksRunner, Executor};
pub use outcome::{Assignment, JobOutcome, JobResult, OutputStream, Progress};
pub use runner::JobRunner;

use steward_shared::config::ConfigError;

use crate::config::AgentConfig;

/// Validates `[actions]`, `[[backups]]` and `[[apps]]`; called by [`AgentConfig::validate`].
pub fn validate(cfg: &AgentConfig, file: &str, src: &str) -> Result<(), ConfigError> {
    policy::Policy::from_config(&cfg.actions)
        .map_err(|e| ConfigError::at(file, src, &format!("actions.{}", e.key), e.message))?;
    backup::validate(&cfg.backups, file, src)?;
    deploy::validate(&cfg.apps, file, src)
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    const AGENT_TOML: &str = r#"[actions]
allow = ["checks.run", "backup.run", "backup.verify", "deploy.apply:web", "deploy.rollback:web",
         "service.restart:nginx.service", "exec"]
exec = ["/usr/bin/systemctl reload nginx"]

[[backups]]
name = "etc"
sources = ["/etc"]
destination = "/var/backups/steward"
schedule = "0 3 * * *"
keep_last = 3
keep_daily = 7

[[apps]]
name = "web"
releases_dir = "/srv/web"
unit = "web.service"
keep_releases = 5
[apps.health]
http = "http://127.0.0.1:8080/health"
retries = 5
deadline = "30s"
"#;

    #[test]
    fn agent_toml_carries_actions_backups_and_apps() {
        let cfg = AgentConfig::parse("agent.toml", AGENT_TOML).unwrap();
        assert_eq!(cfg.actions.allow.len(), 7);
        assert_eq!(cfg.backups[0].keep_daily, Some(7));
        assert_eq!(cfg.apps[0].health.retries, 5);
        // All three sections are optional.
        let empty = AgentConfig::parse("agent.toml", "").unwrap();
        assert!(empty.actions.allow.is_empty() && empty.backups.is_empty() && empty.apps.is_empty());
    }

    #[test]
    fn errors_in_the_job_sections_name_file_line_and_key() {
        let err = |src: String| AgentConfig::parse("agent.toml", &src).unwrap_err();
        let e = err(AGENT_TOML.replace("\"exec\"]", "\"exec\", \"reboot\"]"));
        assert_eq!(
            (e.file.as_str(), e.key.as_deref()),
            ("agent.toml", Some("actions.allow[7]")),
            "{e}"
        );
        assert_eq!(e.line, Some(3), "{e}");
        let e = err(AGENT_TOML.replace("reload nginx\"", "reload nginx; id\""));
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("actions.exec[0]")), "{e}");
        let e = err(AGENT_TOML.replace("keep_last = 3", "keep_last = 0"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(11), Some("backups[0].keep_last")),
            "{e}"
        );
        let e = err(AGENT_TOML.replace("keep_releases = 5", "keep_releases = 1"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(18), Some("apps[0].keep_releases")),
            "{e}"
        );
        let e = err(AGENT_TOML.replace("retries = 5", "retries = 5\nbogus = 1"));
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn the_service_manager_and_job_limits_are_validated_on_their_line() {
        let ok = AgentConfig::parse(
            "agent.toml",
            "[agent]\nservice_manager = \"command\"\nrestart_command = [\"/usr/local/bin/restart\", \"--now\"]\nmax_jobs = 3\n",
        )
        .unwrap();
        assert_eq!(ok.agent.max_jobs, 3);
        assert_eq!(ok.agent.service_manager, crate::config::ServiceManagerKind::Command);
        let defaults = AgentConfig::parse("agent.toml", "").unwrap();
        assert_eq!(
            defaults.agent.service_manager,
            crate::config::ServiceManagerKind::Systemctl
        );
        assert_eq!(defaults.agent.job_grace.as_std(), std::time::Duration::from_secs(30));
        let err = |src: &str| AgentConfig::parse("agent.toml", src).unwrap_err();
        let e = err("[agent]\nmax_jobs = 2\nservice_manager = \"command\"\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("agent.service_manager")),
            "{e}"
        );
        let e = err("[agent]\nrestart_command = [\"/bin/true\"]\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("agent.restart_command")),
            "{e}"
        );
        let e = err("[agent]\nservice_manager = \"command\"\nrestart_command = [\"restart\"]\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("agent.restart_command")),
            "{e}"
        );
        let e = err("[agent]\nservice_manager = \"upstart\"\n");
        assert_eq!(e.line, Some(2), "{e}");
        let e = err("[agent]\nmax_jobs = 0\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("agent.max_jobs")), "{e}");
    }
}
