//! The on-disk spool (redb): every report gets the agent's next sequence number
//! and is committed to disk *before* it is sent; it is deleted only when the
//! control plane acknowledges a durable commit of it.
//!
//! Invariants:
//! - Sequence numbers are strictly increasing and never reused, across restarts.
//! - The spool never holds more than `max_bytes` of report payload: appending
//!   past the bound drops the oldest reports first and adds them to a
//!   persistent drop counter, which the stream reports to the control plane.
//! - Every mutation is one redb write transaction with immediate durability,
//!   so a `kill -9` at any moment leaves either the old or the new state.
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use steward_shared::proto::{Report, report};

const REPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("reports");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_SEQ: &str = "next_seq";
const ACKED_SEQ: &str = "acked_seq";
const DROPPED: &str = "dropped_total";
const BYTES: &str = "bytes";

/// Spool errors. A spool error is serious (disk full, corruption): the agent
/// logs it and keeps trying; it never silently discards reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    #[error("spool database: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("spool transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("spool table: {0}")]
    Table(#[from] redb::TableError),
    #[error("spool storage: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("spool commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("spool record {seq} is corrupt: {message}")]
    Corrupt { seq: u64, message: String },
}

/// Counters describing the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Reports waiting for acknowledgement.
    pub depth: u64,
    /// Payload bytes held.
    pub bytes: u64,
    /// Reports dropped because the spool was full, since the spool was created.
    pub dropped_total: u64,
    /// The sequence the next report will get.
    pub next_seq: u64,
    /// Highest sequence the control plane has acknowledged.
    pub acked_seq: u64,
}

/// The spool. Cheap to share behind an `Arc`; redb serialises writers.
pub struct Spool {
    db: Database,
    max_bytes: u64,
}

fn meta_get(table: &impl ReadableTable<&'static str, u64>, key: &str, default: u64) -> Result<u64, SpoolError> {
    Ok(table.get(key)?.map(|v| v.value()).unwrap_or(default))
}

impl Spool {
    /// Opens (or creates) the spool file at `path`, bounded to `max_bytes` of payload.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        // A small page cache keeps the agent's resident memory low; the spool is
        // written sequentially and read from its head, so a large cache buys nothing.
        let db = Database::builder().set_cache_size(2 << 20).create(path)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            if meta.get(NEXT_SEQ)?.is_none() {
                meta.insert(NEXT_SEQ, 1)?;
                meta.insert(ACKED_SEQ, 0)?;
                meta.insert(DROPPED, 0)?;
                meta.insert(BYTES, 0)?;
            }
            txn.open_table(REPORTS)?;
        }
        txn.commit()?;
        Ok(Spool { db, max_bytes })
    }

    /// Appends report bodies in one durable transaction; returns their sequence numbers.
    pub fn append(&self, bodies: Vec<report::Body>) -> Result<Vec<u64>, SpoolError> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_write()?;
        let mut seqs = Vec::with_capacity(bodies.len());
        {
            let mut meta = txn.open_table(META)?;
            let mut reports = txn.open_table(REPORTS)?;
            let mut next = meta_get(&meta, NEXT_SEQ, 1)?;
            let mut bytes = meta_get(&meta, BYTES, 0)?;
            let mut dropped = meta_get(&meta, DROPPED, 0)?;
            for body in bodies {
                let record = Report {
                    seq: next,
                    body: Some(body),
                }
                .encode_to_vec();
                bytes += record.len() as u64;
                reports.insert(next, record.as_slice())?;
                seqs.push(next);
                next += 1;
            }
            // Over the bound: drop the oldest first, and count them.
            while bytes > self.max_bytes {
                let Some((seq, len)) = reports.first()?.map(|(k, v)| (k.value(), v.value().len() as u64)) else {
                    break;
                };
                reports.remove(seq)?;
                bytes = bytes.saturating_sub(len);
                dropped += 1;
            }
            meta.insert(NEXT_SEQ, next)?;
            meta.insert(BYTES, bytes)?;
            meta.insert(DROPPED, dropped)?;
        }
        txn.commit()?;
        Ok(seqs)
    }

    /// Deletes every report with `seq <= acked` (the control plane stored them).
    pub fn ack(&self, acked: u64) -> Result<(), SpoolError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mut reports = txn.open_table(REPORTS)?;
            let prev = meta_get(&meta, ACKED_SEQ, 0)?;
            let mut bytes = meta_get(&meta, BYTES, 0)?;
            let mut removed = 0u64;
            for entry in reports.extract_from_if(..=acked, |_, _| true)? {
                let (_, v) = entry?;
                removed += v.value().len() as u64;
            }
            bytes = bytes.saturating_sub(removed);
            meta.insert(BYTES, bytes)?;
            meta.insert(ACKED_SEQ, prev.max(acked))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Reconciles with the control plane's view after a connect. If the
    /// control plane has stored sequences this spool never issued (the agent's
    /// state directory was reset), pending reports are renumbered past them so
    /// they are not mistaken for duplicates, and the counter moves on.
    pub fn reconcile(&self, cp_acked: u64) -> Result<(), SpoolError> {
        let stats = self.stats()?;
        if cp_acked < stats.next_seq {
            return self.ack(cp_acked);
        }
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mut reports = txn.open_table(REPORTS)?;
            let mut pending = Vec::new();
            for entry in reports.extract_from_if::<u64, _>(.., |_, _| true)? {
                let (_, v) = entry?;
                pending.push(v.value().to_vec());
            }
            let mut next = cp_acked + 1;
            for raw in pending {
                let mut record = Report::decode(raw.as_slice()).map_err(|e| SpoolError::Corrupt {
                    seq: next,
                    message: e.to_string(),
                })?;
                record.seq = next;
                reports.insert(next, record.encode_to_vec().as_slice())?;
                next += 1;
            }
            meta.insert(NEXT_SEQ, next)?;
            meta.insert(ACKED_SEQ, cp_acked)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Up to `max` reports with `seq > after`, in sequence order.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<Report>, SpoolError> {
        let txn = self.db.begin_read()?;
        let reports = txn.open_table(REPORTS)?;
        let mut out = Vec::new();
        let start = after.saturating_add(1);
        for entry in reports.range(start..)?.take(max) {
            let (k, v) = entry?;
            let seq = k.value();
            let record = Report::decode(v.value()).map_err(|e| SpoolError::Corrupt {
                seq,
                message: e.to_string(),
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// Current counters.
    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let reports = txn.open_table(REPORTS)?;
        Ok(SpoolStats {
            depth: reports.len()?,
            bytes: meta_get(&meta, BYTES, 0)?,
            dropped_total: meta_get(&meta, DROPPED, 0)?,
            next_seq: meta_get(&meta, NEXT_SEQ, 1)?,
            acked_seq: meta_get(&meta, ACKED_SEQ, 0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_shared::proto::CheckResult;

    fn body(name: &str) -> report::Body {
        report::Body::Check(CheckResult {
            name: name.into(),
            kind: "test".into(),
            ..Default::default()
        })
    }

    fn names(reports: &[Report]) -> Vec<String> {
        reports
            .iter()
            .map(|r| match &r.body {
                Some(report::Body::Check(c)) => c.name.clone(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn sequences_are_ordered_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        {
            let spool = Spool::open(&path, 1 << 20).unwrap();
            assert_eq!(spool.append(vec![body("a"), body("b")]).unwrap(), vec![1, 2]);
            assert_eq!(spool.append(vec![body("c")]).unwrap(), vec![3]);
        }
        let spool = Spool::open(&path, 1 << 20).unwrap();
        let all = spool.read_after(0, 10).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(names(&all), ["a", "b", "c"]);
        assert_eq!(spool.read_after(1, 1).unwrap()[0].seq, 2);
        assert_eq!(
            spool.append(vec![body("d")]).unwrap(),
            vec![4],
            "sequence continues after reopen"
        );
    }

    #[test]
    fn ack_deletes_only_acknowledged_reports() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("s.redb"), 1 << 20).unwrap();
        spool.append((0..5).map(|i| body(&i.to_string())).collect()).unwrap();
        spool.ack(3).unwrap();
        let stats = spool.stats().unwrap();
        assert_eq!((stats.depth, stats.acked_seq, stats.next_seq), (2, 3, 6));
        assert_eq!(
            spool
                .read_after(0, 10)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![4, 5]
        );
        spool.ack(2).unwrap();
        assert_eq!(spool.stats().unwrap().acked_seq, 3, "acks never move backwards");
        spool.ack(5).unwrap();
        let stats = spool.stats().unwrap();
        assert_eq!((stats.depth, stats.bytes), (0, 0));
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let one = Report {
            seq: 1,
            body: Some(body("x")),
        }
        .encode_to_vec()
        .len() as u64;
        // Room for exactly 10 records.
        let spool = Spool::open(&dir.path().join("s.redb"), one * 10).unwrap();
        for i in 0..25 {
            spool.append(vec![body("x")]).unwrap();
            assert!(spool.stats().unwrap().bytes <= one * 10, "bound holds after append {i}");
        }
        let stats = spool.stats().unwrap();
        assert_eq!(stats.depth, 10);
        assert_eq!(stats.dropped_total, 15);
        let kept: Vec<u64> = spool.read_after(0, 100).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(kept, (16..=25).collect::<Vec<_>>(), "the newest are kept");
    }

    #[test]
    fn reconcile_renumbers_when_the_control_plane_is_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("s.redb"), 1 << 20).unwrap();
        spool.append(vec![body("a"), body("b")]).unwrap();
        // The control plane already stored up to 100 from a previous life of this host.
        spool.reconcile(100).unwrap();
        let pending = spool.read_after(100, 10).unwrap();
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![101, 102]);
        assert_eq!(names(&pending), ["a", "b"]);
        assert_eq!(spool.append(vec![body("c")]).unwrap(), vec![103]);
        // Normal case: the control plane is behind or equal: just an ack.
        spool.reconcile(101).unwrap();
        assert_eq!(
            spool
                .read_after(0, 10)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![102, 103]
        );
    }
}
