//! The export document (`GET /api/v1/audit/export`, `stewardctl audit export`)
//! and its offline verification (`stewardctl audit verify -f FILE`).
//!
//! The document carries every entry with its stored bytes (`entry`, base64:
//! what was hashed; the readable fields beside it are checked against them),
//! every checkpoint with its signed bytes and signature, the exporting
//! control plane's public key, and a head signed at export time: the newest
//! entry and checkpoint then, so a file cut short after export is caught even
//! for entries no checkpoint covers yet.
//!
//! Which keys are trusted: with `--public-key` (the `audit-signing.pub` of the
//! control plane, obtained separately) only the keys given, which also proves
//! who signed it; without, the key named in the document, which proves only
//! that the file is consistent with itself (`stewardctl` refuses that unless
//! told `--trust-embedded-key`). Pinned checkpoints (`--expect-checkpoint`)
//! must be in the document with the hashes given.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::chain::{self, ExportHead, PinnedCheckpoint, SignedHead, Tampered, Verified, VerifyInput, ZERO_HASH};
use super::signing::{self, PublicKey, Signer};
use super::{AuditSnapshot, StoredCheckpoint, StoredEntry};
use steward_shared::timestamp::rfc3339;

/// `format` of an export document.
pub const FORMAT: &str = "steward-audit-export";
/// `version` of the export documents this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One audit entry as the API shows it (the items of `GET /api/v1/audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntryView {
    pub seq: u64,
    pub time_ms: i64,
    /// `time_ms` as RFC 3339 (UTC).
    pub time: String,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    /// `success`, `denied` or `failed`.
    pub outcome: String,
    pub request_id: Option<String>,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<&StoredEntry> for AuditEntryView {
    fn from(e: &StoredEntry) -> Self {
        AuditEntryView {
            seq: e.seq,
            time_ms: e.time_ms,
            time: rfc3339(e.time_ms),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            outcome: e.outcome.clone(),
            request_id: e.request_id.clone(),
            details: serde_json::from_str(&e.details).unwrap_or_else(|_| serde_json::Value::String(e.details.clone())),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

/// An entry in an export: the view plus the hashed bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportEntry {
    #[serde(flatten)]
    pub view: AuditEntryView,
    /// Base64 of the stored, hashed bytes.
    pub entry: String,
}

/// A checkpoint in an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCheckpoint {
    pub cp_seq: u64,
    pub created_ms: i64,
    pub created: String,
    pub kind: String,
    pub last_seq: u64,
    pub last_hash: String,
    pub prev_hash: String,
    pub max_interval_ms: i64,
    pub max_entries: u64,
    pub public_key: String,
    pub key_id: String,
    /// Base64 of the signed bytes.
    pub body: String,
    /// Base64 of the Ed25519 signature.
    pub signature: String,
    pub hash: String,
}

/// The head, signed at export time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeadView {
    pub exported_at_ms: i64,
    pub last_seq: u64,
    pub last_hash: String,
    pub checkpoints: u64,
    pub last_checkpoint_hash: String,
    pub public_key: String,
    pub signature: String,
}

/// `GET /api/v1/audit/export`: everything needed to verify the log offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportDocument {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    pub exported_at_ms: i64,
    pub exported_at: String,
    /// Base64 Ed25519 public key of the exporting control plane.
    pub public_key: String,
    pub key_id: String,
    pub entries: Vec<ExportEntry>,
    pub checkpoints: Vec<ExportCheckpoint>,
    pub head: ExportHeadView,
}

/// Builds the document from a snapshot and signs its head.
pub fn build(snapshot: &AuditSnapshot, signer: &Signer, now_ms: i64) -> ExportDocument {
    let public_key = signing::encode_public_key(&signer.public_key());
    let head = ExportHead {
        exported_at_ms: now_ms,
        last_seq: snapshot.entries.last().map(|e| e.seq).unwrap_or(0),
        last_hash: snapshot
            .entries
            .last()
            .and_then(|e| chain::parse_hash(&e.hash))
            .unwrap_or(ZERO_HASH),
        checkpoints: snapshot.checkpoints.len() as u64,
        last_checkpoint_hash: snapshot
            .checkpoints
            .last()
            .and_then(|c| chain::parse_hash(&c.hash))
            .unwrap_or(ZERO_HASH),
    };
    let signature = signer.sign(&head.message());
    ExportDocument {
        format: FORMAT.to_string(),
        version: FORMAT_VERSION,
        exported_at_ms: now_ms,
        exported_at: rfc3339(now_ms),
        key_id: signing::key_id(&signer.public_key()),
        entries: snapshot
            .entries
            .iter()
            .map(|e| ExportEntry {
                view: AuditEntryView::from(e),
                entry: STANDARD.encode(&e.entry),
            })
            .collect(),
        checkpoints: snapshot.checkpoints.iter().map(export_checkpoint).collect(),
        head: ExportHeadView {
            exported_at_ms: head.exported_at_ms,
            last_seq: head.last_seq,
            last_hash: chain::hex_hash(&head.last_hash),
            checkpoints: head.checkpoints,
            last_checkpoint_hash: chain::hex_hash(&head.last_checkpoint_hash),
            public_key: public_key.clone(),
            signature: STANDARD.encode(signature),
        },
        public_key,
    }
}

fn export_checkpoint(c: &StoredCheckpoint) -> ExportCheckpoint {
    ExportCheckpoint {
        cp_seq: c.cp_seq,
        created_ms: c.created_ms,
        created: rfc3339(c.created_ms),
        kind: c.kind.clone(),
        last_seq: c.last_seq,
        last_hash: c.last_hash.clone(),
        prev_hash: c.prev_hash.clone(),
        max_interval_ms: c.max_interval_ms,
        max_entries: c.max_entries,
        key_id: signing::parse_public_key(&c.public_key)
            .map(|k| signing::key_id(&k))
            .unwrap_or_default(),
        public_key: c.public_key.clone(),
        body: STANDARD.encode(&c.body),
        signature: STANDARD.encode(&c.signature),
        hash: c.hash.clone(),
    }
}

/// Why a document could not be verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a usable export (not JSON, another format or version, no key).
    #[error("{0}")]
    Unusable(String),
    /// An export whose contents are inconsistent: tampered with.
    #[error(transparent)]
    Tampered(#[from] Tampered),
}

/// Parses an export file.
pub fn parse(bytes: &[u8]) -> Result<ExportDocument, VerifyError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| VerifyError::Unusable(format!("not JSON: {e}")))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(VerifyError::Unusable(format!(
            "not a Steward audit export (no \"format\": \"{FORMAT}\")"
        )));
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        other => {
            return Err(VerifyError::Unusable(format!(
                "unsupported export version {}: this stewardctl reads version {FORMAT_VERSION}",
                other.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into())
            )));
        }
    }
    serde_json::from_value(value).map_err(|e| VerifyError::Unusable(format!("malformed audit export: {e}")))
}

/// Verifies a document. `pinned` keys, when given, are the only trusted
/// ones; otherwise the document's own key is. Each of `expected` must be one
/// of its checkpoints, unchanged.
pub fn verify(
    doc: &ExportDocument,
    pinned: &[PublicKey],
    expected: &[PinnedCheckpoint],
) -> Result<Verified, VerifyError> {
    let own = signing::parse_public_key(&doc.public_key)
        .ok_or_else(|| VerifyError::Unusable("the export's public_key is not an Ed25519 key".into()))?;
    let trusted: Vec<PublicKey> = if pinned.is_empty() { vec![own] } else { pinned.to_vec() };
    let entries: Vec<StoredEntry> = doc.entries.iter().map(stored_entry).collect();
    let checkpoints: Vec<StoredCheckpoint> = doc.checkpoints.iter().map(stored_checkpoint).collect();
    let head = signed_head(&doc.head)?;
    Ok(chain::verify(&VerifyInput {
        entries: &entries,
        checkpoints: &checkpoints,
        trusted_keys: &trusted,
        head: Some(&head),
        pinned: expected,
    })?)
}

/// Undecodable base64 becomes empty bytes, which verification reports as
/// unreadable at the entry or checkpoint concerned.
fn b64(s: &str) -> Vec<u8> {
    STANDARD.decode(s).unwrap_or_default()
}

fn stored_entry(e: &ExportEntry) -> StoredEntry {
    let v = &e.view;
    StoredEntry {
        seq: v.seq,
        time_ms: v.time_ms,
        actor: v.actor.clone(),
        action: v.action.clone(),
        target: v.target.clone(),
        outcome: v.outcome.clone(),
        request_id: v.request_id.clone(),
        details: serde_json::to_string(&v.details).unwrap_or_default(),
        entry: b64(&e.entry),
        prev_hash: v.prev_hash.clone(),
        hash: v.hash.clone(),
    }
}

fn stored_checkpoint(c: &ExportCheckpoint) -> StoredCheckpoint {
    StoredCheckpoint {
        cp_seq: c.cp_seq,
        created_ms: c.created_ms,
        kind: c.kind.clone(),
        last_seq: c.last_seq,
        last_hash: c.last_hash.clone(),
        prev_hash: c.prev_hash.clone(),
        max_interval_ms: c.max_interval_ms,
        max_entries: c.max_entries,
        public_key: c.public_key.clone(),
        body: b64(&c.body),
        signature: b64(&c.signature),
        hash: c.hash.clone(),
    }
}

fn signed_head(h: &ExportHeadView) -> Result<SignedHead, VerifyError> {
    let bad = |what: &str| {
        VerifyError::Tampered(Tampered {
            seq: None,
            checkpoint: None,
            reason: format!("export head: {what} is unreadable"),
        })
    };
    Ok(SignedHead {
        head: ExportHead {
            exported_at_ms: h.exported_at_ms,
            last_seq: h.last_seq,
            last_hash: chain::parse_hash(&h.last_hash).ok_or_else(|| bad("last_hash"))?,
            checkpoints: h.checkpoints,
            last_checkpoint_hash: chain::parse_hash(&h.last_checkpoint_hash)
                .ok_or_else(|| bad("last_checkpoint_hash"))?,
        },
        public_key: signing::parse_public_key(&h.public_key).ok_or_else(|| bad("public_key"))?,
        signature: b64(&h.signature),
    })
}
