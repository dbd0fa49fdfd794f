//! Signed checkpoints: every control plane runs this task. It signs a
//! checkpoint when it starts, then whenever `checkpoint_every` entries or
//! `checkpoint_interval` have passed since the newest checkpoint (also when
//! nothing happened, so a silent gap is provable), after recovering from a
//! failed attempt, and when it stops.
//!
//! The decision reads the newest checkpoint from the database, not from
//! memory, so several replicas together keep the rhythm (a replica skips a
//! checkpoint another one just wrote); writing happens under the chain lock
//! ([`Store::append_checkpoint`]), so checkpoints stay gapless and chained.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::StoredCheckpoint;
use super::chain::{self, CheckpointBody, CheckpointKind, ZERO_HASH};
use super::signing::{self, KeyError, Signer};
use crate::config::AuditSection;
use crate::store::audit::ChainState;
use crate::store::{Store, StoreError};

/// When checkpoints are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// After this many new entries.
    pub every: u64,
    /// At least this often, also when nothing happened.
    pub interval: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every: 1000,
            interval: Duration::from_secs(3600),
        }
    }
}

impl From<&AuditSection> for CheckpointPolicy {
    fn from(cfg: &AuditSection) -> Self {
        CheckpointPolicy {
            every: cfg.checkpoint_every,
            interval: cfg.checkpoint_interval.as_std(),
        }
    }
}

impl CheckpointPolicy {
    pub fn interval_ms(&self) -> i64 {
        i64::try_from(self.interval.as_millis()).unwrap_or(i64::MAX)
    }

    /// How often the task looks at the database: a tenth of the interval,
    /// between 10 ms and 30 s (the entry count is noticed at most that late).
    pub fn poll_period(&self) -> Duration {
        (self.interval / 10).clamp(Duration::from_millis(10), Duration::from_secs(30))
    }

    /// Whether a scheduled checkpoint is due at `now_ms`.
    pub fn due(&self, now_ms: i64, state: &ChainState) -> bool {
        match &state.last_checkpoint {
            None => true,
            Some(last) => {
                state.head_seq.saturating_sub(last.last_seq) >= self.every
                    || now_ms.saturating_sub(last.created_ms) >= self.interval_ms()
            }
        }
    }
}

/// The next checkpoint after `state`, signed: it covers the newest entry and
/// chains to the newest checkpoint. Its time never goes backwards.
pub fn next_checkpoint(
    signer: &Signer,
    policy: &CheckpointPolicy,
    kind: CheckpointKind,
    now_ms: i64,
    state: &ChainState,
) -> StoredCheckpoint {
    let last = state.last_checkpoint.as_ref();
    let body = CheckpointBody {
        cp_seq: last.map(|c| c.cp_seq).unwrap_or(0) + 1,
        created_ms: now_ms.max(last.map(|c| c.created_ms).unwrap_or(i64::MIN)),
        kind,
        last_seq: state.head_seq,
        last_hash: state.head_hash,
        prev_hash: last.and_then(|c| chain::parse_hash(&c.hash)).unwrap_or(ZERO_HASH),
        max_interval_ms: policy.interval_ms(),
        max_entries: policy.every,
        public_key: signer.public_key(),
    };
    let bytes = body.encode();
    let signature = signer.sign(&chain::checkpoint_message(&bytes));
    StoredCheckpoint {
        cp_seq: body.cp_seq,
        created_ms: body.created_ms,
        kind: kind.as_str().to_string(),
        last_seq: body.last_seq,
        last_hash: chain::hex_hash(&body.last_hash),
        prev_hash: chain::hex_hash(&body.prev_hash),
        max_interval_ms: body.max_interval_ms,
        max_entries: body.max_entries,
        public_key: signing::encode_public_key(&body.public_key),
        hash: chain::hex_hash(&chain::checkpoint_hash(&bytes, &signature)),
        body: bytes,
        signature,
    }
}

/// Writes checkpoints for one control plane.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    store: Store,
    signer: Arc<Signer>,
    policy: CheckpointPolicy,
}

impl Checkpointer {
    pub fn new(store: Store, signer: Arc<Signer>, policy: CheckpointPolicy) -> Self {
        Checkpointer { store, signer, policy }
    }

    /// Writes a checkpoint of `kind` at `now_ms`: always when `force`, else
    /// only when one is due. Returns what was written.
    pub async fn checkpoint(
        &self,
        kind: CheckpointKind,
        force: bool,
        now_ms: i64,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        let own_key = signing::encode_public_key(&self.signer.public_key());
        self.store
            .append_checkpoint(|state| {
                if kind == CheckpointKind::Start
                    && let Some(last) = state.last_checkpoint.as_ref().filter(|c| c.public_key != own_key)
                {
                    tracing::warn!(
                        previous_key = %last.public_key, own_key = %own_key,
                        "the newest audit checkpoint was signed by another key: replicas should share \
                         audit-signing.key (stewardctl audit verify then needs --public-key for both)"
                    );
                }
                if kind != CheckpointKind::Start && state.last_checkpoint.is_none() {
                    // This control plane signed a `start` checkpoint when it
                    // started: someone deleted every checkpoint since. The one
                    // written now is numbered 1 again and not a `start`, which
                    // `audit verify` reports.
                    tracing::error!(
                        entries = state.head_seq,
                        "the audit checkpoints were deleted from the database: the audit log can no longer be \
                         proven intact (stewardctl audit verify fails at checkpoint #1)"
                    );
                }
                (force || self.policy.due(now_ms, state))
                    .then(|| next_checkpoint(&self.signer, &self.policy, kind, now_ms, state))
            })
            .await
    }

    /// Checks every [`CheckpointPolicy::poll_period`] until `shutdown`, then
    /// writes a `stop` checkpoint. A failed attempt is retried at the next
    /// poll and the first success after it is a `resume` checkpoint.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.policy.poll_period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // immediate; the start checkpoint was just written
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let kind = if failing {
                CheckpointKind::Resume
            } else {
                CheckpointKind::Scheduled
            };
            match self.checkpoint(kind, failing, steward_shared::now_ms()).await {
                Ok(written) => {
                    if let Some(cp) = written {
                        tracing::debug!(checkpoint = cp.cp_seq, last_seq = cp.last_seq, kind = %cp.kind, "audit checkpoint");
                    }
                    failing = false;
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "could not write an audit checkpoint; retrying");
                    }
                    failing = true;
                }
            }
        }
        if let Err(error) = self
            .checkpoint(CheckpointKind::Stop, true, steward_shared::now_ms())
            .await
        {
            tracing::warn!(%error, "could not write the audit checkpoint at shutdown");
        }
    }
}

/// Why the audit log's signing could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditStartError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("writing the first audit checkpoint: {0}")]
    Store(#[from] StoreError),
}

/// The running checkpointer, and what the REST API needs to sign exports.
#[derive(Debug)]
pub struct AuditService {
    pub signer: Arc<Signer>,
    pub policy: CheckpointPolicy,
    pub task: JoinHandle<()>,
}

/// Loads (or creates) the signing key, writes the `start` checkpoint, and
/// starts the checkpointer until `shutdown`.
pub async fn start(
    cfg: &AuditSection,
    data_dir: &Path,
    store: Store,
    shutdown: CancellationToken,
) -> Result<AuditService, AuditStartError> {
    let key_path = cfg
        .signing_key
        .clone()
        .unwrap_or_else(|| data_dir.join(signing::KEY_FILE));
    let signer = Arc::new(Signer::load_or_create(&key_path)?);
    let policy = CheckpointPolicy::from(cfg);
    let checkpointer = Checkpointer::new(store, signer.clone(), policy);
    checkpointer
        .checkpoint(CheckpointKind::Start, true, steward_shared::now_ms())
        .await?;
    tracing::info!(key_id = %signing::key_id(&signer.public_key()), every = policy.every,
        interval_secs = policy.interval.as_secs(), "audit checkpoints signed");
    let task = tokio::spawn(checkpointer.run(shutdown));
    Ok(AuditService { signer, policy, task })
}
