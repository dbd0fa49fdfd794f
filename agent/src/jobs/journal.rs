//! The job journal (`DATA_DIR/jobs.redb`, its own redb file beside the spool):
//! which attempts this agent has begun and how they ended.
//!
//! Invariants:
//! - [`Journal::begin`] commits durably *before* an attempt runs and refuses an
//!   attempt ID it has seen, so a re-delivered attempt never runs twice.
//! - An attempt begun and never finished (the agent was killed mid-job) is
//!   listed by [`Journal::interrupted`] after restart; the runtime reports it
//!   as failed with reason `interrupted` and records that with [`Journal::finish`].
//! - Each mutation is one write transaction with immediate durability.
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::outcome::JobResult;

/// The journal's file name in the agent's data directory.
pub const JOURNAL_FILE: &str = "jobs.redb";

const ATTEMPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("attempts");

/// Journal errors (disk, corruption).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("job journal database: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("job journal transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("job journal table: {0}")]
    Table(#[from] redb::TableError),
    #[error("job journal storage: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("job journal commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("job journal record {attempt:?} is corrupt: {message}")]
    Corrupt { attempt: String, message: String },
    #[error("attempt {0:?} was already run on this agent")]
    AlreadyBegun(String),
    #[error("attempt {0:?} was never begun")]
    NotBegun(String),
}

/// One journalled attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub attempt_id: String,
    pub job_id: String,
    pub action: String,
    /// Unix seconds.
    pub begun_at: i64,
    /// Set by [`Journal::finish`].
    pub result: Option<JobResult>,
}

/// The journal.
pub struct Journal {
    db: Database,
}

impl Journal {
    /// Opens (or creates) the journal at `path` (conventionally `DATA_DIR/jobs.redb`).
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let db = Database::builder().set_cache_size(1 << 20).create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(ATTEMPTS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// Records that an attempt starts. Fails with [`JournalError::AlreadyBegun`]
    /// if the attempt ID is already journalled (finished or not).
    pub fn begin(&self, attempt_id: &str, job_id: &str, action: &str, now: i64) -> Result<(), JournalError> {
        let entry = JournalEntry {
            attempt_id: attempt_id.to_string(),
            job_id: job_id.to_string(),
            action: action.to_string(),
            begun_at: now,
            result: None,
        };
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ATTEMPTS)?;
            if table.get(attempt_id)?.is_some() {
                return Err(JournalError::AlreadyBegun(attempt_id.to_string()));
            }
            table.insert(attempt_id, encode(&entry).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Records how an attempt ended.
    pub fn finish(&self, result: &JobResult) -> Result<(), JournalError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ATTEMPTS)?;
            let mut entry = match table.get(result.attempt_id.as_str())? {
                Some(v) => decode(&result.attempt_id, v.value())?,
                None => return Err(JournalError::NotBegun(result.attempt_id.clone())),
            };
            entry.result = Some(result.clone());
            table.insert(result.attempt_id.as_str(), encode(&entry).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The journalled attempt, if any.
    pub fn get(&self, attempt_id: &str) -> Result<Option<JournalEntry>, JournalError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ATTEMPTS)?;
        table
            .get(attempt_id)?
            .map(|v| decode(attempt_id, v.value()))
            .transpose()
    }

    /// Attempts begun but never finished: cut short by a crash or `kill -9`.
    pub fn interrupted(&self) -> Result<Vec<JournalEntry>, JournalError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ATTEMPTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let entry = decode(k.value(), v.value())?;
            if entry.result.is_none() {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Forgets finished attempts begun before `before` (unix seconds), keeping
    /// the journal bounded; returns how many were removed. Unfinished ones stay.
    pub fn prune_finished(&self, before: i64) -> Result<usize, JournalError> {
        let txn = self.db.begin_write()?;
        let removed;
        {
            let mut table = txn.open_table(ATTEMPTS)?;
            let mut doomed = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                let entry = decode(k.value(), v.value())?;
                if entry.result.is_some() && entry.begun_at < before {
                    doomed.push(entry.attempt_id);
                }
            }
            for id in &doomed {
                table.remove(id.as_str())?;
            }
            removed = doomed.len();
        }
        txn.commit()?;
        Ok(removed)
    }
}

fn encode(entry: &JournalEntry) -> Vec<u8> {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_vec(entry).unwrap_or_default()
}

fn decode(attempt: &str, bytes: &[u8]) -> Result<JournalEntry, JournalError> {
    serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
        attempt: attempt.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::outcome::JobOutcome;

    fn result(attempt: &str) -> JobResult {
        JobResult {
            job_id: "job-1".into(),
            attempt_id: attempt.into(),
            action: "backup.run".into(),
            outcome: JobOutcome::Succeeded,
            result: serde_json::json!({"files": 3}),
            output_truncated: false,
            duration_ms: 12,
        }
    }

    #[test]
    fn an_attempt_is_begun_once() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("jobs.redb")).unwrap();
        j.begin("a1", "job-1", "backup.run", 100).unwrap();
        assert!(matches!(
            j.begin("a1", "job-1", "backup.run", 101),
            Err(JournalError::AlreadyBegun(_))
        ));
        j.finish(&result("a1")).unwrap();
        assert!(matches!(
            j.begin("a1", "job-1", "backup.run", 102),
            Err(JournalError::AlreadyBegun(_))
        ));
        assert!(matches!(j.finish(&result("zz")), Err(JournalError::NotBegun(_))));
        assert_eq!(j.get("a1").unwrap().unwrap().result, Some(result("a1")));
    }

    #[test]
    fn unfinished_attempts_are_listed_as_interrupted_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        {
            let j = Journal::open(&path).unwrap();
            j.begin("done", "job-1", "backup.run", 100).unwrap();
            j.finish(&result("done")).unwrap();
            j.begin("cut", "job-2", "deploy.apply", 101).unwrap();
            // Dropped without finishing "cut": a crash.
        }
        let j = Journal::open(&path).unwrap();
        let interrupted = j.interrupted().unwrap();
        assert_eq!(interrupted.len(), 1);
        assert_eq!(
            (interrupted[0].attempt_id.as_str(), interrupted[0].job_id.as_str()),
            ("cut", "job-2")
        );
        assert!(matches!(
            j.begin("done", "job-1", "backup.run", 200),
            Err(JournalError::AlreadyBegun(_))
        ));
        assert!(matches!(
            j.begin("cut", "job-2", "deploy.apply", 200),
            Err(JournalError::AlreadyBegun(_))
        ));
    }

    #[test]
    fn pruning_keeps_unfinished_and_recent_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("jobs.redb")).unwrap();
        j.begin("old", "j", "exec", 10).unwrap();
        j.finish(&result("old")).unwrap();
        j.begin("old-unfinished", "j", "exec", 10).unwrap();
        j.begin("new", "j", "exec", 1000).unwrap();
        j.finish(&result("new")).unwrap();
        assert_eq!(j.prune_finished(500).unwrap(), 1);
        assert!(j.get("old").unwrap().is_none());
        assert!(j.get("old-unfinished").unwrap().is_some());
        assert!(j.get("new").unwrap().is_some());
    }
}
