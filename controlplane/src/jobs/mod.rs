//! The job queue's domain: job states and their transitions, the typed
//! actions of the contract and their parameters, retry backoff, and the
//! events agents report. Storage is [`crate::store::jobs`]; dispatch over
//! the agent streams is [`dispatcher`].
//!
//! Lifecycle: `queued` → `dispatched` (an attempt was claimed and sent under
//! a lease) → `running` (the agent accepted it) → `succeeded` | `failed` |
//! `timed_out` | `cancelled`; a failed or timed-out attempt with attempts
//! left goes back to `queued` after a backoff, and one without attempts left
//! (when retries were asked for) ends `discarded`, the dead letters.
//!
//! Invariants:
//! - An attempt ID (`<job id>-a<attempt>`) is sent to exactly one host and
//!   names exactly one attempt; re-sending it is safe because the agent
//!   journals attempt IDs and never runs one twice.
//! - Every write that ends an attempt is fenced on the attempt it ends
//!   (`id`, `attempt`, `attempt_id`, and for control-plane sweeps also
//!   `lease_owner` and the lease it saw), so a stale writer changes nothing.
use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub mod dispatcher;
pub mod metrics;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Discarded,
}

impl JobState {
    pub const ALL: [JobState; 8] = [
        Self::Queued,
        Self::Dispatched,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
        Self::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No further transition happens from this state.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Dispatched | Self::Running)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The actions of the contract: (name, required params, optional params).
pub const ACTIONS: &[(&str, &[&str], &[&str])] = &[
    ("checks.run", &[], &[]),
    ("backup.run", &["name"], &[]),
    ("backup.verify", &["name"], &["snapshot"]),
    ("deploy.apply", &["app", "version", "artifact", "sha256"], &[]),
    ("deploy.rollback", &["app"], &["version"]),
    ("service.restart", &["unit"], &[]),
    ("exec", &["command"], &[]),
];

/// Longest parameter value accepted.
pub const MAX_PARAM_BYTES: usize = 4096;

/// A request the contract does not allow: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidJob {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidJob {
    InvalidJob {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks an action name and its parameters against the contract (the agent
/// checks them again against its own policy).
pub fn validate(action: &str, params: &BTreeMap<String, String>) -> Result<(), InvalidJob> {
    let Some((_, required, optional)) = ACTIONS.iter().find(|(name, _, _)| *name == action) else {
        let names: Vec<&str> = ACTIONS.iter().map(|(n, _, _)| *n).collect();
        return Err(invalid(
            "action",
            format!("unknown action {action:?}; expected one of {}", names.join(", ")),
        ));
    };
    for (key, value) in params {
        if !required.contains(&key.as_str()) && !optional.contains(&key.as_str()) {
            let mut allowed: Vec<&str> = required.iter().chain(optional.iter()).copied().collect();
            allowed.sort_unstable();
            let allowed = if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            };
            return Err(invalid(
                format!("params.{}", clip(key)),
                format!("{action} takes no parameter {:?}; it accepts: {allowed}", clip(key)),
            ));
        }
        if value.is_empty() || value.len() > MAX_PARAM_BYTES || value.contains('\0') {
            return Err(invalid(
                format!("params.{key}"),
                format!("must be 1-{MAX_PARAM_BYTES} bytes of text without NUL"),
            ));
        }
    }
    for key in *required {
        if !params.contains_key(*key) {
            return Err(invalid(format!("params.{key}"), format!("{action} requires {key}")));
        }
    }
    if let Some(sha) = params.get("sha256")
        && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(invalid("params.sha256", "must be 64 hexadecimal digits"));
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub host_id: String,
    pub state: JobState,
    pub attempt: u32,
    pub max_attempts: u32,
    pub attempt_id: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_ms: Option<i64>,
    pub timeout_secs: u64,
    pub next_run_ms: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub dispatched_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// The agent's result (JSON text).
    pub result: Option<String>,
    /// The last progress report (JSON text: stage, percent, message).
    pub progress: Option<String>,
    pub output_bytes: u64,
    pub output_truncated: bool,
    pub cancel_requested: bool,
    pub idempotency_key: Option<String>,
    pub rollout_id: Option<String>,
    /// `api` or `local` (run by the agent on its own schedule).
    pub source: String,
    pub created_by: String,
}

/// A job to enqueue (one host).
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub host_id: String,
    pub max_attempts: u32,
    pub timeout_secs: u64,
    pub idempotency_key: Option<String>,
    pub rollout_id: Option<String>,
    pub created_by: String,
}

/// Filter of [`crate::store::Store::list_jobs`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub host_id: Option<String>,
    pub action: Option<String>,
}

/// One attempt handed to a host: what goes into `JobAssignment`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub job_id: String,
    pub attempt_id: String,
    pub host_id: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub timeout_secs: u64,
    /// When the job became runnable (for the dispatch-latency metric).
    pub ready_ms: i64,
    /// The same attempt sent again (its lease expired unaccepted).
    pub resend: bool,
}

/// A cancellation to deliver to a connected host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOrder {
    pub job_id: String,
    pub attempt_id: String,
    pub host_id: String,
}

/// One job event from an agent's report batch (already validated).
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    pub seq: u64,
    pub job_id: String,
    pub attempt_id: String,
    pub event: JobEventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobEventKind {
    Progress {
        stage: String,
        percent: f64,
        message: String,
    },
    Output {
        offset: u64,
        data: Vec<u8>,
        truncated: bool,
    },
    Finished {
        outcome: String,
        reason: String,
        result_json: String,
        finished_at_ms: i64,
        action: String,
        params: BTreeMap<String, String>,
        started_at_ms: i64,
    },
}

/// What applying reports changed, for metrics and the dispatcher.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// (final state, action) of each attempt that ended.
    pub finished: Vec<(JobState, String)>,
    /// Each attempt that ended, except cancellations: what job-success SLOs
    /// count (in the same transaction as the attempt's end).
    pub outcomes: Vec<AttemptOutcome>,
}

/// How one attempt of a job action on a host ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub host_id: String,
    pub action: String,
    /// `succeeded`; failures and timeouts are not.
    pub ok: bool,
    pub at_ms: i64,
}

impl Applied {
    /// Notes an attempt's end for the SLOs (cancellations are not counted).
    pub fn ended(&mut self, host_id: &str, action: &str, outcome: &str, at_ms: i64) {
        if outcome == "cancelled" {
            return;
        }
        self.outcomes.push(AttemptOutcome {
            host_id: host_id.to_string(),
            action: action.to_string(),
            ok: outcome == "succeeded",
            at_ms,
        });
    }
}

/// Queue settings (the `[jobs]` config section).
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    /// Output kept per job; the rest is dropped and the job marked truncated.
    pub output_cap: u64,
    /// How long a dispatched attempt waits for the agent's acceptance
    /// before it is sent again (to the host's next stream).
    pub dispatch_lease_ms: i64,
    /// Added to a running job's timeout before the control plane itself
    /// declares it timed out (the agent enforces the timeout first).
    pub timeout_grace_ms: i64,
    /// Jobs dispatched or running at once on one host.
    pub max_running_per_host: u32,
    /// First retry delay; doubled per attempt, capped at `retry_max_ms`.
    pub retry_base_ms: i64,
    pub retry_max_ms: i64,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            output_cap: 1024 * 1024,
            dispatch_lease_ms: 30_000,
            timeout_grace_ms: 30_000,
            max_running_per_host: 1,
            retry_base_ms: 5_000,
            retry_max_ms: 3_600_000,
        }
    }
}

impl JobSettings {
    /// Delay before attempt `attempt + 1` after attempt `attempt` failed:
    /// exponential with ±10 % jitter.
    pub fn retry_delay_ms(&self, attempt: u32) -> i64 {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self.retry_base_ms.saturating_mul(1i64 << exp).min(self.retry_max_ms);
        let jitter = (base / 10).max(1);
        base + rand::rng().random_range(-jitter..=jitter)
    }
}

/// A new job ID: 12 hex digits of milliseconds then 8 random ones, so IDs
/// sort by creation time.
pub fn new_job_id(now_ms: i64) -> String {
    format!("{:012x}{:08x}", now_ms.max(0), rand::rng().random::<u32>())
}

/// The attempt ID of attempt `attempt` of job `job_id`.
pub fn attempt_id(job_id: &str, attempt: u32) -> String {
    format!("{job_id}-a{attempt}")
}

/// The attempt number `attempt_id` names, when it is an attempt ID of
/// `job_id` as [`attempt_id`] writes it (the inverse); None otherwise.
pub fn attempt_of(job_id: &str, attempt_id: &str) -> Option<u32> {
    let n = attempt_id.strip_prefix(job_id)?.strip_prefix("-a")?;
    if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The state an ended attempt leaves the job in, from the agent's outcome
/// word, and whether it may be retried.
pub fn state_of_outcome(outcome: &str, reason: &str) -> (JobState, bool) {
    match outcome {
        "succeeded" => (JobState::Succeeded, false),
        "cancelled" => (JobState::Cancelled, false),
        "timed_out" => (JobState::TimedOut, true),
        // A refusal by the agent's policy will be refused again: never retried.
        _ if reason.starts_with("not allowed by agent policy") => (JobState::Failed, false),
        // A deploy that rolled back already restored the previous release.
        "rolled_back" => (JobState::Failed, false),
        _ => (JobState::Failed, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn actions_and_params_follow_the_contract() {
        assert!(validate("checks.run", &params(&[])).is_ok());
        assert!(validate("backup.verify", &params(&[("name", "db"), ("snapshot", "x")])).is_ok());
        assert_eq!(validate("rm", &params(&[])).unwrap_err().field, "action");
        assert_eq!(validate("backup.run", &params(&[])).unwrap_err().field, "params.name");
        assert_eq!(
            validate("exec", &params(&[("command", "ls"), ("shell", "1")]))
                .unwrap_err()
                .field,
            "params.shell"
        );
        assert_eq!(
            validate("exec", &params(&[("command", "")])).unwrap_err().field,
            "params.command"
        );
        let bad_sha = params(&[("app", "a"), ("version", "1"), ("artifact", "/x"), ("sha256", "zz")]);
        assert_eq!(validate("deploy.apply", &bad_sha).unwrap_err().field, "params.sha256");
    }

    #[test]
    fn retry_delays_grow_with_jitter_and_a_cap() {
        let s = JobSettings {
            retry_base_ms: 1000,
            retry_max_ms: 10_000,
            ..JobSettings::default()
        };
        for _ in 0..100 {
            assert!((900..=1100).contains(&s.retry_delay_ms(1)));
            assert!((1800..=2200).contains(&s.retry_delay_ms(2)));
            assert!((9000..=11_000).contains(&s.retry_delay_ms(20)));
        }
    }

    #[test]
    fn outcomes_map_to_states() {
        assert_eq!(state_of_outcome("succeeded", ""), (JobState::Succeeded, false));
        assert_eq!(state_of_outcome("failed", "interrupted"), (JobState::Failed, true));
        assert_eq!(
            state_of_outcome("failed", "not allowed by agent policy: exec"),
            (JobState::Failed, false)
        );
        assert_eq!(state_of_outcome("timed_out", "x"), (JobState::TimedOut, true));
        assert!(JobState::Discarded.is_terminal() && !JobState::Running.is_terminal());
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn job_ids_sort_by_time() {
        let a = new_job_id(1_700_000_000_000);
        let b = new_job_id(1_700_000_000_001);
        assert!(a < b && a.len() == 20);
        assert_eq!(attempt_id(&a, 2), format!("{a}-a2"));
        assert_eq!(attempt_of(&a, &attempt_id(&a, 2)), Some(2));
        assert_eq!(attempt_of(&a, &attempt_id(&a, 4_000_000_000)), Some(4_000_000_000));
        for bad in ["", "x-a1", "-a", "-a0", "-a01", "-a+1", "-a1x", "-a99999999999", "a1"] {
            assert_eq!(attempt_of(&a, &format!("{a}{bad}")), None, "{bad:?}");
        }
        assert_eq!(attempt_of(&a, "bogus"), None);
    }
}
