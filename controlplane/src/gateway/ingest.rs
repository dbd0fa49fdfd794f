//! Batched ingest: sessions hand their batches to a writer task, which commits
//! the batches of many agents in one transaction and then answers each
//! session. Batching is what turns a disk that manages ~1k commits/s into
//! 100k results/s (REFERENCE.md).
//!
//! Agents' acceptances of job attempts (`JobAccepted`) go through one more
//! writer task the same way: the acceptances that arrived meanwhile, of any
//! hosts, are recorded in one transaction ([`Store::accept_jobs`]).
//!
//! Invariants:
//! - A session's reply arrives only after the transaction holding its batch
//!   (or acceptance) committed (or failed): acks never run ahead of durability.
//! - All batches of one host go to the same writer, so one host's batches
//!   commit in the order they were sent.
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::jobs::{JobReport, JobSettings};
use crate::metrics::Metrics;
use crate::model::IngestBatch;
use crate::store::jobs::{Acceptance, JobBatch, JobIngest};
use crate::store::{Store, StoreError};

struct Item {
    batch: IngestBatch,
    /// The batch's job reports, committed in the same transaction.
    jobs: Vec<JobReport>,
    reply: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

struct AcceptItem {
    acceptance: Acceptance,
    reply: oneshot::Sender<Result<bool, Arc<StoreError>>>,
}

/// Handle to the writer tasks; cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    workers: Arc<Vec<mpsc::Sender<Item>>>,
    accepts: mpsc::Sender<AcceptItem>,
}

/// The ingest writers stopped (the control plane is shutting down) or the commit failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest is shutting down")]
    Closed,
    #[error("storing the batch failed: {0}")]
    Store(Arc<StoreError>),
}

impl Ingestor {
    /// Starts `workers` writer tasks; each commits at most `max_rows` reports
    /// per transaction. The tasks end when every handle is dropped.
    pub fn start(store: Store, metrics: Arc<Metrics>, workers: usize, max_rows: usize) -> Self {
        Self::start_with_jobs(store, metrics, workers, max_rows, JobSettings::default())
    }

    /// [`Ingestor::start`] with the job queue's settings (output cap, retries).
    pub fn start_with_jobs(
        store: Store,
        metrics: Arc<Metrics>,
        workers: usize,
        max_rows: usize,
        settings: JobSettings,
    ) -> Self {
        let mut senders = Vec::with_capacity(workers);
        for _ in 0..workers.max(1) {
            let (tx, rx) = mpsc::channel::<Item>(1024);
            senders.push(tx);
            tokio::spawn(writer(rx, store.clone(), metrics.clone(), max_rows, settings.clone()));
        }
        let (accepts, rx) = mpsc::channel::<AcceptItem>(1024);
        tokio::spawn(acceptor(rx, store, settings));
        Ingestor {
            workers: Arc::new(senders),
            accepts,
        }
    }

    /// Records that the agent of `host_id` accepted `attempt_id` of `job_id`
    /// (see [`Store::accept_job`]), batched with other sessions' acceptances;
    /// returns once committed. False when nothing changed.
    pub async fn accept(&self, host_id: &str, job_id: &str, attempt_id: &str) -> Result<bool, IngestError> {
        let (reply, done) = oneshot::channel();
        let acceptance = Acceptance {
            host_id: host_id.into(),
            job_id: job_id.into(),
            attempt_id: attempt_id.into(),
        };
        self.accepts
            .send(AcceptItem { acceptance, reply })
            .await
            .map_err(|_| IngestError::Closed)?;
        match done.await {
            Ok(Ok(changed)) => Ok(changed),
            Ok(Err(e)) => Err(IngestError::Store(e)),
            Err(_) => Err(IngestError::Closed),
        }
    }

    /// Stores one host's batch; returns once it is committed.
    pub async fn submit(&self, batch: IngestBatch) -> Result<(), IngestError> {
        self.submit_with_jobs(batch, Vec::new()).await
    }

    /// Stores one host's batch with its job reports; returns once committed.
    pub async fn submit_with_jobs(&self, batch: IngestBatch, jobs: Vec<JobReport>) -> Result<(), IngestError> {
        // A batch the store would refuse must not fail the other hosts' batches
        // it would share a transaction with: refuse it here, alone.
        crate::store::validate_batch(&batch).map_err(|e| IngestError::Store(Arc::new(e)))?;
        let idx = worker_for(&batch.host_id, self.workers.len());
        let (reply, done) = oneshot::channel();
        self.workers[idx]
            .send(Item { batch, jobs, reply })
            .await
            .map_err(|_| IngestError::Closed)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(IngestError::Store(e)),
            Err(_) => Err(IngestError::Closed),
        }
    }
}

fn worker_for(host_id: &str, workers: usize) -> usize {
    // FNV-1a: stable and cheap; only needs to spread hosts over a few workers.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in host_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % workers.max(1) as u64) as usize
}

async fn writer(
    mut rx: mpsc::Receiver<Item>,
    store: Store,
    metrics: Arc<Metrics>,
    max_rows: usize,
    settings: JobSettings,
) {
    let mut pending: Vec<Item> = Vec::new();
    loop {
        if pending.is_empty() && rx.recv_many(&mut pending, 512).await == 0 {
            return; // every sender dropped
        }
        // Take items until the row budget is spent; the rest waits for the next round.
        let mut rows = 0usize;
        let mut take = 0usize;
        for item in &pending {
            let n = item.batch.results.len() + item.jobs.len();
            if take > 0 && rows + n > max_rows {
                break;
            }
            rows += n;
            take += 1;
        }
        let round: Vec<Item> = pending.drain(..take).collect();
        let batches: Vec<IngestBatch> = round.iter().map(|i| i.batch.clone()).collect();
        let job_batches: Vec<JobBatch> = round
            .iter()
            .filter(|i| !i.jobs.is_empty())
            .map(|i| JobBatch {
                host_id: i.batch.host_id.clone(),
                reports: i.jobs.clone(),
            })
            .collect();
        let jobs = JobIngest {
            batches: &job_batches,
            settings: settings.clone(),
        };
        let started = Instant::now();
        let result = store.ingest_with_jobs(&batches, &jobs, steward_shared::now_ms()).await;
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(applied) => {
                metrics.ingest_batch(rows as u64, secs);
                for (state, action) in &applied.finished {
                    metrics.job_finished(state.as_str(), action);
                }
                for item in round {
                    let _ = item.reply.send(Ok(()));
                }
            }
            Err(error) => {
                tracing::error!(error = %error, batches = round.len(), rows, "ingest transaction failed");
                let error = Arc::new(error);
                for item in round {
                    let _ = item.reply.send(Err(error.clone()));
                }
            }
        }
        // Top up without waiting, so a backlog is drained in full rounds.
        if pending.len() < 512 {
            while let Ok(item) = rx.try_recv() {
                pending.push(item);
                if pending.len() >= 512 {
                    break;
                }
            }
        }
    }
}

/// Records the acceptances that arrived meanwhile in one transaction.
async fn acceptor(mut rx: mpsc::Receiver<AcceptItem>, store: Store, settings: JobSettings) {
    let mut round: Vec<AcceptItem> = Vec::new();
    while rx.recv_many(&mut round, 512).await > 0 {
        let items: Vec<Acceptance> = round.iter().map(|i| i.acceptance.clone()).collect();
        match store.accept_jobs(&items, steward_shared::now_ms(), &settings).await {
            Ok(changed) => {
                for (item, changed) in round.drain(..).zip(changed) {
                    let _ = item.reply.send(Ok(changed));
                }
            }
            Err(error) => {
                tracing::warn!(%error, acceptances = items.len(), "recording job acceptances failed");
                let error = Arc::new(error);
                for item in round.drain(..) {
                    let _ = item.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::worker_for;

    #[test]
    fn a_host_always_maps_to_the_same_worker() {
        for host in ["a", "web-01", "db-17"] {
            let w = worker_for(host, 4);
            assert!(w < 4);
            assert_eq!(w, worker_for(host, 4));
        }
        assert_eq!(worker_for("x", 1), 0);
    }
}
