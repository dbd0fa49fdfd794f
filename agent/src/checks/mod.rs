//! Check kinds and thresholds. (Interface stub: the checks helper fills this in.)
use serde::Deserialize;
use std::sync::Arc;
use steward_shared::config::ConfigError;
use steward_shared::status::CheckResult;

use crate::config::AgentConfig;

/// One `[[checks]]` table of `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub name: String,
}

/// Validates every check's settings (names unique, thresholds ordered, ...).
pub fn validate(_checks: &[CheckConfig], _cfg: &AgentConfig, _file: &str, _src: &str) -> Result<(), ConfigError> {
    Ok(())
}

/// When a check runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Every(std::time::Duration),
    /// Six-field cron expression (seconds first), normalised from the user's five or six fields.
    Cron(String),
}

/// A ready-to-run check built from its config.
pub struct Check {
    pub name: String,
    pub kind: &'static str,
    pub schedule: Schedule,
    pub timeout: std::time::Duration,
}

impl Check {
    /// Runs the check once, within its timeout. Never panics: failures become
    /// `unknown` or `critical` results with a message.
    pub async fn run(&self) -> CheckResult {
        unimplemented!()
    }
}

/// Builds the runnable checks from a validated config.
pub fn build(_cfg: &AgentConfig) -> Vec<Arc<Check>> {
    Vec::new()
}
