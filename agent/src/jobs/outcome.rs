//! The executor's wire-neutral types: an assignment from the control plane,
//! the progress it streams, and the result it reports (the stream layer
//! converts these to protobuf at the edge).
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One attempt of one job, as received from the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job_id: String,
    /// Unique per attempt: the journal refuses to run the same attempt twice.
    pub attempt_id: String,
    /// e.g. `backup.run` (see [`super::policy::ACTIONS`]).
    pub action: String,
    pub params: BTreeMap<String, String>,
    /// Longest the attempt may run; past it the result is [`JobOutcome::TimedOut`].
    pub timeout: Duration,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobOutcome {
    Succeeded,
    /// Refused (`not allowed by agent policy: ...`), invalid, or failed while
    /// running; `interrupted` when the agent stopped mid-attempt.
    Failed {
        reason: String,
    },
    /// A deploy whose new release failed and was switched back.
    RolledBack {
        reason: String,
    },
    /// The attempt ran past its timeout and was abandoned.
    TimedOut {
        reason: String,
    },
    /// The control plane cancelled the attempt while it ran.
    Cancelled {
        reason: String,
    },
}

impl JobOutcome {
    pub fn failed(reason: impl Into<String>) -> Self {
        JobOutcome::Failed { reason: reason.into() }
    }
    /// The reason of a non-success, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            JobOutcome::Succeeded => None,
            JobOutcome::Failed { reason }
            | JobOutcome::RolledBack { reason }
            | JobOutcome::TimedOut { reason }
            | JobOutcome::Cancelled { reason } => Some(reason),
        }
    }
}

/// The reason reported for an attempt the agent began but never finished.
pub const INTERRUPTED: &str = "interrupted";

/// The result of one attempt, journalled and then reported through the spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: String,
    pub attempt_id: String,
    pub action: String,
    pub outcome: JobOutcome,
    /// Action-specific JSON (a backup report, a deploy report, an exit code).
    pub result: serde_json::Value,
    /// Output bytes were dropped past the executor's cap.
    pub output_truncated: bool,
    pub duration_ms: u64,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
    /// Progress lines written by the agent itself ("fetching artifact").
    Agent,
}

/// One progress message of a running attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The attempt was journalled and is starting.
    Started { job_id: String, attempt_id: String },
    /// A chunk of output (at most [`super::executor::CHUNK_BYTES`]).
    Output {
        job_id: String,
        attempt_id: String,
        stream: OutputStream,
        chunk: String,
    },
    /// The output cap was reached; later output is dropped (sent once).
    Truncated { job_id: String, attempt_id: String },
}
