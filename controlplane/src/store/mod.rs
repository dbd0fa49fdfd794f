//! The store: one interface, two backends (SQLite, PostgreSQL). (Interface stub:
//! the storage helper fills this in; signatures used by the gateway are fixed.)
use crate::model::{AgentHello, IngestBatch};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone)]
pub struct Store {}

impl Store {
    /// Records that `host_id` connected (creating the host on first sight) and
    /// returns the highest sequence stored for it (0 if none).
    pub async fn agent_connected(&self, _host_id: &str, _hello: &AgentHello, _now_ms: i64) -> Result<u64, StoreError> {
        unimplemented!()
    }

    /// Marks the host seen now (heartbeat), with the spool drop counter it reported.
    pub async fn agent_heartbeat(&self, _host_id: &str, _spool_dropped_total: u64, _now_ms: i64) -> Result<(), StoreError> {
        unimplemented!()
    }

    /// Records that the stream of `host_id` ended.
    pub async fn agent_disconnected(&self, _host_id: &str, _now_ms: i64) -> Result<(), StoreError> {
        unimplemented!()
    }

    /// Stores several hosts' batches in ONE transaction, idempotently on
    /// (host, seq); returns only after commit.
    pub async fn ingest(&self, _batches: &[IngestBatch], _now_ms: i64) -> Result<(), StoreError> {
        unimplemented!()
    }
}
