//! The audit log's canonical encoding, hash chain and verification. Pure
//! functions without I/O: the store uses them to append, and
//! `stewardctl audit verify` uses them on an export file, offline.
//!
//! Encoding (version 1). Integers are big-endian and fixed width; every
//! string or byte field is length-prefixed (`u32` length, then the bytes);
//! an optional field is a tag byte (0 absent, 1 present) before its value, so
//! an absent value, an empty one and `null` can never be confused; time is
//! whole epoch milliseconds (no precision lost on any backend); `details` is
//! the JSON text exactly as stored, never re-serialised (so integers beyond
//! 2^53 or key order cannot change what was hashed).
//!
//! ```text
//! entry       = u8 version(1) ‖ u64 seq ‖ i64 time_ms ‖ str actor ‖ str action ‖ opt target
//!               ‖ str outcome ‖ opt request_id ‖ str details
//! entry hash  = SHA-256( lp("steward.audit.entry.v1") ‖ u64 seq ‖ prev_hash[32] ‖ lp(entry) )
//!               (prev_hash of entry 1: 32 zero bytes)
//! checkpoint  = u8 version(1) ‖ u64 cp_seq ‖ i64 created_ms ‖ str kind ‖ u64 last_seq
//!               ‖ last_hash[32] ‖ prev_checkpoint_hash[32] ‖ i64 max_interval_ms ‖ u64 max_entries
//!               ‖ lp(public_key[32])
//! signature   = Ed25519( lp("steward.audit.checkpoint.v1") ‖ checkpoint )
//! cp hash     = SHA-256( lp("steward.audit.checkpoint.v1") ‖ lp(checkpoint) ‖ lp(signature) )
//! export head = Ed25519( lp("steward.audit.export-head.v1") ‖ i64 exported_at_ms ‖ u64 last_seq
//!               ‖ last_hash[32] ‖ u64 checkpoints ‖ last_checkpoint_hash[32] )
//! ```
//!
//! What verification proves: every entry's bytes hash to its stored hash and
//! chain to the one before; sequence numbers run 1, 2, 3… without a gap; the
//! queryable columns say what the hashed bytes say; each checkpoint is signed
//! by a trusted key, chains to the one before, and names the exact hash of the
//! entry it covers; no silent gap: consecutive checkpoints are at most about
//! one interval apart unless the later one records a (re)start; every entry is
//! tied to a signature: the log has checkpoints, the first one is a `start`
//! checkpoint (deleting them all, or the oldest ones, shows), and an export's
//! entries newer than the newest checkpoint are younger than one interval;
//! checkpoints the auditor pinned ([`PinnedCheckpoint`], seen earlier) are
//! there with the same hash. What it cannot prove: that entries after the
//! newest checkpoint were not removed from the tail of the database (an
//! export's signed head covers them from the moment of export on), or, without
//! a pin, that a database owner did not delete every checkpoint, rewrite the
//! history and restart a control plane, which then signs a fresh `start`
//! checkpoint over the rewritten log.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sha2::{Digest, Sha256};

use super::signing::{self, PublicKey};
use super::{StoredCheckpoint, StoredEntry};
use steward_shared::timestamp::rfc3339;

/// A SHA-256 hash.
pub type Hash = [u8; 32];
/// The `prev_hash` of entry 1 and of checkpoint 1.
pub const ZERO_HASH: Hash = [0; 32];
/// Version byte of entries and checkpoints written by this build.
pub const VERSION: u8 = 1;

const ENTRY_DOMAIN: &[u8] = b"steward.audit.entry.v1";
const CHECKPOINT_DOMAIN: &[u8] = b"steward.audit.checkpoint.v1";
const HEAD_DOMAIN: &[u8] = b"steward.audit.export-head.v1";

/// The fields of one entry, for [`encode_entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFields<'a> {
    pub seq: u64,
    pub time_ms: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub outcome: &'a str,
    pub request_id: Option<&'a str>,
    pub details: &'a str,
}

/// An entry read back from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEntry {
    pub seq: u64,
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub request_id: Option<String>,
    pub details: String,
}

/// Bytes that are not a canonical entry or checkpoint of a known version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// The canonical bytes of an entry (what is stored and hashed).
pub fn encode_entry(f: &EntryFields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + f.actor.len() + f.action.len() + f.details.len());
    out.push(VERSION);
    out.extend_from_slice(&f.seq.to_be_bytes());
    out.extend_from_slice(&f.time_ms.to_be_bytes());
    put_bytes(&mut out, f.actor.as_bytes());
    put_bytes(&mut out, f.action.as_bytes());
    put_opt(&mut out, f.target);
    put_bytes(&mut out, f.outcome.as_bytes());
    put_opt(&mut out, f.request_id);
    put_bytes(&mut out, f.details.as_bytes());
    out
}

/// Reads an entry back; refuses unknown versions and trailing bytes.
pub fn decode_entry(bytes: &[u8]) -> Result<DecodedEntry, DecodeError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError(format!("unknown entry version {version}")));
    }
    let entry = DecodedEntry {
        seq: r.u64()?,
        time_ms: r.i64()?,
        actor: r.string()?,
        action: r.string()?,
        target: r.opt_string()?,
        outcome: r.string()?,
        request_id: r.opt_string()?,
        details: r.string()?,
    };
    r.end()?;
    Ok(entry)
}

/// The hash of entry `seq` whose predecessor hashes to `prev`.
pub fn entry_hash(seq: u64, prev: &Hash, entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(lp(ENTRY_DOMAIN));
    h.update(ENTRY_DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(lp(entry));
    h.update(entry);
    h.finalize().into()
}

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// A control plane started (a gap before it means it was not running).
    Start,
    /// N entries or M minutes since the last one.
    Scheduled,
    /// The first one after a failed attempt (a gap before it is explained).
    Resume,
    /// A control plane stopped cleanly.
    Stop,
}

impl CheckpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Start => "start",
            CheckpointKind::Scheduled => "scheduled",
            CheckpointKind::Resume => "resume",
            CheckpointKind::Stop => "stop",
        }
    }

    pub fn parse(s: &str) -> Option<CheckpointKind> {
        [Self::Start, Self::Scheduled, Self::Resume, Self::Stop]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// Whether a silent period before this checkpoint is explained.
    fn explains_gap(self) -> bool {
        matches!(self, CheckpointKind::Start | CheckpointKind::Resume)
    }
}

/// What a checkpoint states (and its signature vouches for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointBody {
    pub cp_seq: u64,
    pub created_ms: i64,
    pub kind: CheckpointKind,
    /// The newest entry covered (0: the log was empty).
    pub last_seq: u64,
    /// Its hash ([`ZERO_HASH`] when `last_seq` is 0).
    pub last_hash: Hash,
    /// [`checkpoint_hash`] of checkpoint `cp_seq - 1` ([`ZERO_HASH`] for the first).
    pub prev_hash: Hash,
    /// The longest time the writer allowed between checkpoints.
    pub max_interval_ms: i64,
    /// The most entries the writer allowed between checkpoints.
    pub max_entries: u64,
    pub public_key: PublicKey,
}

impl CheckpointBody {
    /// The canonical bytes (what is stored and signed).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.push(VERSION);
        out.extend_from_slice(&self.cp_seq.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        put_bytes(&mut out, self.kind.as_str().as_bytes());
        out.extend_from_slice(&self.last_seq.to_be_bytes());
        out.extend_from_slice(&self.last_hash);
        out.extend_from_slice(&self.prev_hash);
        out.extend_from_slice(&self.max_interval_ms.to_be_bytes());
        out.extend_from_slice(&self.max_entries.to_be_bytes());
        put_bytes(&mut out, &self.public_key);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<CheckpointBody, DecodeError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError(format!("unknown checkpoint version {version}")));
        }
        let cp_seq = r.u64()?;
        let created_ms = r.i64()?;
        let kind = r.string()?;
        let kind =
            CheckpointKind::parse(&kind).ok_or_else(|| DecodeError(format!("unknown checkpoint kind {kind:?}")))?;
        let body = CheckpointBody {
            cp_seq,
            created_ms,
            kind,
            last_seq: r.u64()?,
            last_hash: r.hash()?,
            prev_hash: r.hash()?,
            max_interval_ms: r.i64()?,
            max_entries: r.u64()?,
            public_key: r
                .bytes()?
                .try_into()
                .map_err(|_| DecodeError("the public key is not 32 bytes".into()))?,
        };
        r.end()?;
        Ok(body)
    }
}

/// The message a checkpoint's signature is over.
pub fn checkpoint_message(body: &[u8]) -> Vec<u8> {
    let mut m = lp(CHECKPOINT_DOMAIN).to_vec();
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(body);
    m
}

/// The hash the next checkpoint chains to.
pub fn checkpoint_hash(body: &[u8], signature: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(lp(CHECKPOINT_DOMAIN));
    h.update(CHECKPOINT_DOMAIN);
    h.update(lp(body));
    h.update(body);
    h.update(lp(signature));
    h.update(signature);
    h.finalize().into()
}

/// What an export's signature vouches for: the log as it was when exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportHead {
    pub exported_at_ms: i64,
    pub last_seq: u64,
    pub last_hash: Hash,
    pub checkpoints: u64,
    pub last_checkpoint_hash: Hash,
}

impl ExportHead {
    /// The message the export's signature is over.
    pub fn message(&self) -> Vec<u8> {
        let mut m = lp(HEAD_DOMAIN).to_vec();
        m.extend_from_slice(HEAD_DOMAIN);
        m.extend_from_slice(&self.exported_at_ms.to_be_bytes());
        m.extend_from_slice(&self.last_seq.to_be_bytes());
        m.extend_from_slice(&self.last_hash);
        m.extend_from_slice(&self.checkpoints.to_be_bytes());
        m.extend_from_slice(&self.last_checkpoint_hash);
        m
    }
}

/// A signed [`ExportHead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    pub head: ExportHead,
    pub public_key: PublicKey,
    pub signature: Vec<u8>,
}

/// Lowercase hex of a hash.
pub fn hex_hash(h: &Hash) -> String {
    let mut out = [0u8; 64];
    // Neither can fail: the buffer is twice the hash's length, hex is ASCII.
    let _ = hex::encode_to_slice(h, &mut out);
    std::str::from_utf8(&out).map(str::to_owned).unwrap_or_default()
}

/// A hash from 64 hex digits.
pub fn parse_hash(s: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// How long two checkpoints may be apart, given the writer's interval, before
/// the silence between them counts as a gap: the interval, plus half of it and
/// a minute for polling, slow commits and clock steps.
pub fn allowed_gap_ms(max_interval_ms: i64) -> i64 {
    max_interval_ms
        .max(0)
        .saturating_add(max_interval_ms.max(0) / 2)
        .saturating_add(60_000)
}

// ---------------------------------------------------------------- verification

/// A checkpoint an auditor saw earlier (its number and hash, as `SEQ:HASH`):
/// verification fails unless the log has it, unchanged. Checkpoints chain, so
/// one pin vouches for every checkpoint and entry before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedCheckpoint {
    pub cp_seq: u64,
    pub hash: Hash,
}

impl fmt::Display for PinnedCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.cp_seq, hex_hash(&self.hash))
    }
}

impl std::str::FromStr for PinnedCheckpoint {
    type Err = String;

    /// `SEQ:HASH`: a checkpoint number from 1 and 64 hex digits.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (seq, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not SEQ:HASH (a checkpoint number, a colon, 64 hex digits)"))?;
        let cp_seq = seq
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{seq:?} is not a checkpoint number (1, 2, 3, ...)"))?;
        let hash = parse_hash(hash).ok_or_else(|| format!("{hash:?} is not a checkpoint hash (64 hex digits)"))?;
        Ok(PinnedCheckpoint { cp_seq, hash })
    }
}

/// What to verify. Entries and checkpoints in the order given (the store
/// reads them by sequence; an export lists them so).
#[derive(Debug, Clone, Copy)]
pub struct VerifyInput<'a> {
    pub entries: &'a [StoredEntry],
    pub checkpoints: &'a [StoredCheckpoint],
    /// Checkpoints and the export head must be signed by one of these.
    pub trusted_keys: &'a [PublicKey],
    /// An export's signed head (None when verifying the database itself).
    pub head: Option<&'a SignedHead>,
    /// Checkpoints that must be there, with these hashes.
    pub pinned: &'a [PinnedCheckpoint],
}

/// The first inconsistency found: proof of tampering (or corruption).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Tampered {
    /// The entry at fault, when there is one.
    pub seq: Option<u64>,
    /// The checkpoint at fault, when there is one.
    pub checkpoint: Option<u64>,
    pub reason: String,
}

impl fmt::Display for Tampered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.seq, self.checkpoint) {
            (Some(seq), _) => write!(f, "entry {seq}: {}", self.reason),
            (None, Some(cp)) => write!(f, "checkpoint #{cp}: {}", self.reason),
            (None, None) => f.write_str(&self.reason),
        }
    }
}

fn at_entry(seq: u64, reason: impl Into<String>) -> Tampered {
    Tampered {
        seq: Some(seq),
        checkpoint: None,
        reason: reason.into(),
    }
}

fn at_checkpoint(cp: u64, reason: impl Into<String>) -> Tampered {
    Tampered {
        seq: None,
        checkpoint: Some(cp),
        reason: reason.into(),
    }
}

/// An intact log, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// Hash of the newest entry ([`ZERO_HASH`] when empty).
    pub last_hash: Hash,
    pub checkpoints: u64,
    /// (checkpoint number, created_ms, newest entry covered) of the newest checkpoint.
    pub last_checkpoint: Option<(u64, i64, u64)>,
    /// The newest checkpoint, to pin next time.
    pub newest_pin: Option<PinnedCheckpoint>,
    /// Entries newer than the newest checkpoint (covered only by an export's head, if any).
    pub unsigned_entries: u64,
    /// Key IDs of the keys that signed checkpoints.
    pub signers: BTreeSet<String>,
    /// Explained silences (the control plane was not running), for the record.
    pub notes: Vec<String>,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit log intact: {}", plural(self.entries, "entry", "entries"))?;
        match self.last_checkpoint {
            None => write!(f, ", no checkpoint yet")?,
            Some((cp, at, covers)) => write!(
                f,
                ", {} (the newest, #{cp} of {}, covers entries up to {covers})",
                plural(self.checkpoints, "checkpoint", "checkpoints"),
                rfc3339(at)
            )?,
        }
        if self.unsigned_entries > 0 {
            write!(f, ", {} newer entries not yet checkpointed", self.unsigned_entries)?;
        }
        if !self.signers.is_empty() {
            let keys: Vec<&str> = self.signers.iter().map(String::as_str).collect();
            write!(f, "; signed by key {}", keys.join(", "))?;
        }
        Ok(())
    }
}

/// Verifies entries, checkpoints and (for an export) the signed head. Returns
/// the first inconsistency, naming the entry or checkpoint and why.
pub fn verify(input: &VerifyInput<'_>) -> Result<Verified, Tampered> {
    let mut signers = BTreeSet::new();
    let mut notes = Vec::new();
    let checkpoints = verify_checkpoints(input, &mut signers, &mut notes)?;
    let Some(first) = checkpoints.first() else {
        return Err(at_checkpoint(
            1,
            format!(
                "missing: the log has no signed checkpoint, so none of its {} is tied to a signature; every \
                 control plane signs a `start` checkpoint when it starts (the checkpoints were deleted)",
                plural(input.entries.len() as u64, "entry", "entries")
            ),
        ));
    };
    verify_pins(input.pinned, &checkpoints)?;

    // What the checkpoints say each covered entry hashes to.
    let mut claims: BTreeMap<u64, (u64, Hash)> = BTreeMap::new();
    for c in &checkpoints {
        if c.last_seq > 0 {
            claims.entry(c.last_seq).or_insert((c.cp_seq, c.last_hash));
        }
    }

    let (count, last_hash) = verify_entries(input.entries, &claims)?;

    if let Some(newest) = checkpoints.last()
        && newest.last_seq > count
    {
        return Err(at_entry(
            count + 1,
            format!(
                "missing: checkpoint #{} covers the log up to entry {}, but it ends at entry {count} \
                 (entries were removed from the end)",
                newest.cp_seq, newest.last_seq
            ),
        ));
    }

    // Entries older than the first checkpoint by more than an interval were
    // written before any control plane ran (`admin create-token` before the
    // first `serve`), or every checkpoint was deleted and a restarted control
    // plane signed the log anew. Only a pin tells; say so.
    if let Some(oldest) = input.entries.first()
        && first.last_seq >= oldest.seq
    {
        let age = first.created_ms.saturating_sub(oldest.time_ms);
        if age > allowed_gap_ms(first.max_interval_ms) {
            notes.push(format!(
                "entries up to {} are first covered by checkpoint #1 of {}, {} after the oldest of them: they \
                 were written before the first control plane started, or the checkpoints were deleted and the \
                 log signed anew (a checkpoint pinned earlier with --expect-checkpoint tells which)",
                first.last_seq,
                rfc3339(first.created_ms),
                human_ms(age)
            ));
        }
    }

    let last_cp_hash = checkpoints.last().map(|c| c.hash).unwrap_or(ZERO_HASH);
    if let Some(signed) = input.head {
        verify_head(
            input,
            signed,
            count,
            &last_hash,
            checkpoints.len() as u64,
            &last_cp_hash,
        )?;
        if let Some(newest) = checkpoints.last() {
            let silent = signed.head.exported_at_ms.saturating_sub(newest.created_ms);
            if silent > allowed_gap_ms(newest.max_interval_ms) {
                return Err(at_checkpoint(
                    newest.cp_seq,
                    format!(
                        "silent gap: no checkpoint after {} until the export at {} ({}), although one is written \
                         at least every {}; checkpoints (and entries) after it were removed, or the control plane \
                         stopped signing",
                        rfc3339(newest.created_ms),
                        rfc3339(signed.head.exported_at_ms),
                        human_ms(silent),
                        human_ms(newest.max_interval_ms)
                    ),
                ));
            }
            // The entries no checkpoint covers are covered by the head alone:
            // they must be younger than one interval (the newest checkpoint's
            // time alone does not tell: a replica's clock ahead pushes it on).
            if let Some(oldest) = input.entries.get(newest.last_seq as usize) {
                let age = signed.head.exported_at_ms.saturating_sub(oldest.time_ms);
                if age > allowed_gap_ms(newest.max_interval_ms) {
                    return Err(at_entry(
                        oldest.seq,
                        format!(
                            "covered by no checkpoint, although it is {} older than the export at {} and a \
                             checkpoint is written at least every {} (the newest one, #{}, covers entries up to \
                             {}): the checkpoints that covered it were removed",
                            human_ms(age),
                            rfc3339(signed.head.exported_at_ms),
                            human_ms(newest.max_interval_ms),
                            newest.cp_seq,
                            newest.last_seq
                        ),
                    ));
                }
            }
        }
    }

    let newest = checkpoints.last();
    Ok(Verified {
        entries: count,
        last_hash,
        checkpoints: checkpoints.len() as u64,
        last_checkpoint: newest.map(|c| (c.cp_seq, c.created_ms, c.last_seq)),
        newest_pin: newest.map(|c| PinnedCheckpoint {
            cp_seq: c.cp_seq,
            hash: c.hash,
        }),
        unsigned_entries: count - newest.map(|c| c.last_seq).unwrap_or(0).min(count),
        signers,
        notes,
    })
}

/// Every pinned checkpoint is among the verified ones, with the pinned hash.
fn verify_pins(pinned: &[PinnedCheckpoint], checkpoints: &[GoodCheckpoint]) -> Result<(), Tampered> {
    for pin in pinned {
        let found = pin
            .cp_seq
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| checkpoints.get(i));
        match found {
            None => {
                return Err(at_checkpoint(
                    pin.cp_seq,
                    format!(
                        "missing: it was pinned ({pin}), but the log has {} (checkpoints were removed, or the \
                         log was rolled back or rebuilt)",
                        plural(checkpoints.len() as u64, "checkpoint", "checkpoints")
                    ),
                ));
            }
            Some(c) if c.hash != pin.hash => {
                return Err(at_checkpoint(
                    pin.cp_seq,
                    format!(
                        "differs from the pinned one: its hash is {}, the pin {pin} (the checkpoints were \
                         replaced, and the entries up to {} they cover may have been rewritten)",
                        hex_hash(&c.hash),
                        c.last_seq
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A checkpoint that passed verification.
struct GoodCheckpoint {
    cp_seq: u64,
    created_ms: i64,
    last_seq: u64,
    last_hash: Hash,
    max_interval_ms: i64,
    hash: Hash,
}

fn verify_checkpoints(
    input: &VerifyInput<'_>,
    signers: &mut BTreeSet<String>,
    notes: &mut Vec<String>,
) -> Result<Vec<GoodCheckpoint>, Tampered> {
    let mut good: Vec<GoodCheckpoint> = Vec::with_capacity(input.checkpoints.len());
    for row in input.checkpoints {
        let expected = good.len() as u64 + 1;
        if row.cp_seq != expected {
            let reason = if row.cp_seq > expected {
                format!(
                    "missing (the checkpoints jump from #{} to #{})",
                    expected - 1,
                    row.cp_seq
                )
            } else {
                format!("out of order: #{} appears after #{}", row.cp_seq, expected - 1)
            };
            return Err(at_checkpoint(expected.min(row.cp_seq.max(1)), reason));
        }
        let cp = row.cp_seq;
        let body = CheckpointBody::decode(&row.body)
            .map_err(|e| at_checkpoint(cp, format!("the stored checkpoint bytes are unreadable: {e}")))?;
        if body.cp_seq != cp {
            return Err(at_checkpoint(
                cp,
                format!("the row holds the signed checkpoint #{}", body.cp_seq),
            ));
        }
        if !input.trusted_keys.contains(&body.public_key) {
            return Err(at_checkpoint(
                cp,
                format!(
                    "signed by key {}, which is not trusted (trusted: {})",
                    signing::key_id(&body.public_key),
                    key_ids(input.trusted_keys)
                ),
            ));
        }
        if !signing::verify(&body.public_key, &checkpoint_message(&row.body), &row.signature) {
            return Err(at_checkpoint(cp, "the signature does not verify"));
        }
        let hash = checkpoint_hash(&row.body, &row.signature);
        let columns = [
            ("created_ms", row.created_ms == body.created_ms),
            ("kind", row.kind == body.kind.as_str()),
            ("last_seq", row.last_seq == body.last_seq),
            ("last_hash", parse_hash(&row.last_hash) == Some(body.last_hash)),
            ("prev_hash", parse_hash(&row.prev_hash) == Some(body.prev_hash)),
            ("max_interval_ms", row.max_interval_ms == body.max_interval_ms),
            ("max_entries", row.max_entries == body.max_entries),
            (
                "public_key",
                signing::parse_public_key(&row.public_key) == Some(body.public_key),
            ),
            ("hash", parse_hash(&row.hash) == Some(hash)),
        ];
        if let Some((column, _)) = columns.iter().find(|(_, ok)| !ok) {
            return Err(at_checkpoint(
                cp,
                format!("column {column} differs from the signed checkpoint"),
            ));
        }
        let prev = good.last();
        if body.prev_hash != prev.map(|p| p.hash).unwrap_or(ZERO_HASH) {
            return Err(at_checkpoint(
                cp,
                format!(
                    "does not chain to checkpoint #{} (a checkpoint before it was replaced)",
                    cp - 1
                ),
            ));
        }
        if cp == 1 && body.kind != CheckpointKind::Start {
            return Err(at_checkpoint(
                cp,
                format!(
                    "is a `{}` checkpoint, but the first one is always a `start` (a control plane signs it when \
                     it first starts): the checkpoints before it were deleted and the numbering began again",
                    body.kind.as_str()
                ),
            ));
        }
        if body.last_seq == 0 && body.last_hash != ZERO_HASH {
            return Err(at_checkpoint(cp, "covers no entry but names a hash"));
        }
        if let Some(prev) = prev {
            if body.last_seq < prev.last_seq {
                return Err(at_checkpoint(
                    cp,
                    format!(
                        "covers fewer entries ({}) than checkpoint #{} ({})",
                        body.last_seq, prev.cp_seq, prev.last_seq
                    ),
                ));
            }
            let silent = body.created_ms.saturating_sub(prev.created_ms);
            if silent > allowed_gap_ms(prev.max_interval_ms) {
                let window = format!(
                    "no checkpoint from {} to {} ({}; one is due at least every {})",
                    rfc3339(prev.created_ms),
                    rfc3339(body.created_ms),
                    human_ms(silent),
                    human_ms(prev.max_interval_ms)
                );
                if body.kind.explains_gap() {
                    notes.push(format!(
                        "{window}: checkpoint #{cp} records a control-plane {}",
                        body.kind.as_str()
                    ));
                } else {
                    return Err(at_checkpoint(
                        cp,
                        format!("silent gap: {window}, and nothing records a restart"),
                    ));
                }
            }
        }
        signers.insert(signing::key_id(&body.public_key));
        good.push(GoodCheckpoint {
            cp_seq: cp,
            created_ms: body.created_ms,
            last_seq: body.last_seq,
            last_hash: body.last_hash,
            max_interval_ms: body.max_interval_ms,
            hash,
        });
    }
    Ok(good)
}

/// Verifies the entries; returns their number and the newest hash.
fn verify_entries(entries: &[StoredEntry], claims: &BTreeMap<u64, (u64, Hash)>) -> Result<(u64, Hash), Tampered> {
    // hashes[i] = hash of entry i (hashes[0] = the genesis predecessor).
    let mut hashes: Vec<Hash> = vec![ZERO_HASH];
    for row in entries {
        let expected = hashes.len() as u64;
        let prev = hashes[hashes.len() - 1];
        if row.seq > expected {
            return Err(at_entry(
                expected,
                format!(
                    "missing (the log jumps from entry {} to entry {})",
                    expected - 1,
                    row.seq
                ),
            ));
        }
        if row.seq < expected {
            return Err(at_entry(
                row.seq,
                format!("appears again, or out of order, after entry {}", expected - 1),
            ));
        }
        let seq = row.seq;
        let d = decode_entry(&row.entry)
            .map_err(|e| at_entry(seq, format!("the stored entry bytes are unreadable: {e}")))?;
        if d.seq != seq {
            if d.seq < seq
                && let Some(before) = d.seq.checked_sub(1).and_then(|i| hashes.get(i as usize))
                && parse_hash(&row.hash) == Some(entry_hash(d.seq, before, &row.entry))
            {
                return Err(at_entry(
                    d.seq,
                    format!(
                        "replaced: the original entry {} now sits at {seq} (an entry was inserted before it)",
                        d.seq
                    ),
                ));
            }
            return Err(at_entry(
                seq,
                format!("the row holds entry {} (entries were reordered or renumbered)", d.seq),
            ));
        }
        let hash = entry_hash(seq, &prev, &row.entry);
        let stored_hash = parse_hash(&row.hash);
        let stored_prev = parse_hash(&row.prev_hash);
        if stored_hash != Some(hash) {
            if seq > 1
                && stored_prev.is_some_and(|p| p != prev)
                && stored_hash.is_some_and(|h| Some(h) == stored_prev.map(|p| entry_hash(seq, &p, &row.entry)))
            {
                return Err(at_entry(
                    seq - 1,
                    format!("rewritten: entry {seq} was chained to a different entry {}", seq - 1),
                ));
            }
            return Err(at_entry(seq, "its contents do not match its stored hash"));
        }
        if stored_prev != Some(prev) {
            return Err(at_entry(
                seq,
                "column prev_hash differs from the hash of the entry before it",
            ));
        }
        let columns = [
            ("time_ms", row.time_ms == d.time_ms),
            ("actor", row.actor == d.actor),
            ("action", row.action == d.action),
            ("target", row.target == d.target),
            ("outcome", row.outcome == d.outcome),
            ("request_id", row.request_id == d.request_id),
            ("details", same_json(&row.details, &d.details)),
        ];
        if let Some((column, _)) = columns.iter().find(|(_, ok)| !ok) {
            return Err(at_entry(seq, format!("column {column} differs from the hashed entry")));
        }
        if let Some((cp, claimed)) = claims.get(&seq)
            && *claimed != hash
        {
            return Err(at_entry(
                seq,
                format!("differs from the entry signed by checkpoint #{cp} (it was rewritten)"),
            ));
        }
        hashes.push(hash);
    }
    let count = hashes.len() as u64 - 1;
    Ok((count, hashes[hashes.len() - 1]))
}

fn verify_head(
    input: &VerifyInput<'_>,
    signed: &SignedHead,
    count: u64,
    last_hash: &Hash,
    checkpoints: u64,
    last_cp_hash: &Hash,
) -> Result<(), Tampered> {
    let export = |reason: String| Tampered {
        seq: None,
        checkpoint: None,
        reason: format!("export head: {reason}"),
    };
    if !input.trusted_keys.contains(&signed.public_key) {
        return Err(export(format!(
            "signed by key {}, which is not trusted (trusted: {})",
            signing::key_id(&signed.public_key),
            key_ids(input.trusted_keys)
        )));
    }
    if !signing::verify(&signed.public_key, &signed.head.message(), &signed.signature) {
        return Err(export("the signature does not verify".into()));
    }
    let head = &signed.head;
    if head.last_seq > count {
        return Err(at_entry(
            count + 1,
            format!(
                "missing: the export was signed with entries up to {}, but it ends at entry {count} \
                 (the file was truncated)",
                head.last_seq
            ),
        ));
    }
    if head.last_seq < count {
        return Err(at_entry(
            head.last_seq + 1,
            format!(
                "not part of the export: it was signed with entries up to {} (entries were appended to the file)",
                head.last_seq
            ),
        ));
    }
    if head.last_hash != *last_hash {
        return Err(at_entry(
            count,
            "differs from the newest entry the export was signed with",
        ));
    }
    if head.checkpoints != checkpoints || head.last_checkpoint_hash != *last_cp_hash {
        return Err(export(format!(
            "signed with {} checkpoints, the file has {checkpoints} (checkpoints were removed or added)",
            head.checkpoints
        )));
    }
    Ok(())
}

/// Two JSON texts with the same meaning (or, if not JSON, the same text).
fn same_json(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn key_ids(keys: &[PublicKey]) -> String {
    if keys.is_empty() {
        return "none".into();
    }
    keys.iter().map(signing::key_id).collect::<Vec<_>>().join(", ")
}

/// `1 entry`, `2 entries`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A duration for messages: `90s`, `12m`, `3h`, `2d`.
pub fn human_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

// ---------------------------------------------------------------- bytes

fn lp(bytes: &[u8]) -> [u8; 4] {
    // Fields are bounded far below 4 GiB (entry fields are cut when built).
    u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes()
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&lp(bytes));
    out.extend_from_slice(bytes);
}

fn put_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_bytes(out, v.as_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }

    fn hash(&mut self) -> Result<Hash, DecodeError> {
        Ok(self.take(32)?.try_into().unwrap_or_default())
    }

    fn bytes(&mut self) -> Result<&[u8], DecodeError> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()) as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("a text field is not UTF-8".into()))
    }

    fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            tag => Err(DecodeError(format!("invalid optional-field tag {tag}"))),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!("{} trailing bytes", self.0.len())))
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn fields(seq: u64) -> EntryFields<'static> {
        EntryFields {
            seq,
            time_ms: 1_700_000_000_123,
            actor: "token:abc",
            action: "tokens.create",
            target: Some("token:def"),
            outcome: "success",
            request_id: None,
            details: r#"{"n":18446744073709551615}"#,
        }
    }

    #[test]
    fn entries_round_trip_and_every_field_changes_the_bytes() {
        let f = fields(7);
        let bytes = encode_entry(&f);
        let d = decode_entry(&bytes).unwrap();
        assert_eq!(
            (
                d.seq,
                d.time_ms,
                d.actor.as_str(),
                d.target.as_deref(),
                d.request_id.as_deref()
            ),
            (7, f.time_ms, "token:abc", Some("token:def"), None)
        );
        // The details text is kept byte for byte: an integer beyond 2^53 survives.
        assert_eq!(d.details, f.details);
        // Absent, empty and present are three different encodings.
        let empty = encode_entry(&EntryFields {
            request_id: Some(""),
            ..f
        });
        assert_ne!(bytes, empty);
        // Length prefixes: moving a character from one field to the next changes the bytes.
        let shifted = encode_entry(&EntryFields {
            actor: "token:ab",
            action: "ctokens.create",
            ..f
        });
        assert_ne!(bytes, shifted);
        assert!(decode_entry(&bytes[..bytes.len() - 1]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_entry(&trailing).is_err());
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(decode_entry(&v2).unwrap_err().to_string().contains("version 2"));
    }

    #[test]
    fn the_hash_covers_sequence_predecessor_and_bytes() {
        let bytes = encode_entry(&fields(1));
        let h = entry_hash(1, &ZERO_HASH, &bytes);
        assert_ne!(h, entry_hash(2, &ZERO_HASH, &bytes));
        assert_ne!(h, entry_hash(1, &[1; 32], &bytes));
        assert_ne!(h, entry_hash(1, &ZERO_HASH, &encode_entry(&fields(2))));
        assert_eq!(parse_hash(&hex_hash(&h)), Some(h));
        assert_eq!(hex_hash(&h), hex::encode(h), "64 lowercase hex digits");
        assert_eq!(parse_hash("zz"), None);
    }

    #[test]
    fn checkpoints_round_trip() {
        let body = CheckpointBody {
            cp_seq: 3,
            created_ms: 42,
            kind: CheckpointKind::Resume,
            last_seq: 9,
            last_hash: [7; 32],
            prev_hash: [8; 32],
            max_interval_ms: 3_600_000,
            max_entries: 1000,
            public_key: [9; 32],
        };
        assert_eq!(CheckpointBody::decode(&body.encode()).unwrap(), body);
        let mut bad = body.encode();
        bad.pop();
        assert!(CheckpointBody::decode(&bad).is_err());
    }

    #[test]
    fn pinned_checkpoints_are_seq_colon_hash() {
        let hash = hex_hash(&[0xab; 32]);
        let pin: PinnedCheckpoint = format!(" 12:{} ", hash.to_uppercase()).parse().unwrap();
        assert_eq!(
            pin,
            PinnedCheckpoint {
                cp_seq: 12,
                hash: [0xab; 32]
            }
        );
        assert_eq!(pin.to_string(), format!("12:{hash}"));
        for (bad, why) in [
            ("12", "not SEQ:HASH"),
            (&format!("0:{hash}")[..], "not a checkpoint number"),
            (&format!("-1:{hash}")[..], "not a checkpoint number"),
            ("3:abcd", "not a checkpoint hash"),
            (&format!("3:{hash}0")[..], "not a checkpoint hash"),
        ] {
            let e = bad.parse::<PinnedCheckpoint>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn gaps_allow_for_polling_and_slow_commits() {
        assert_eq!(allowed_gap_ms(3_600_000), 3_600_000 + 1_800_000 + 60_000);
        assert_eq!(allowed_gap_ms(-5), 60_000);
        assert_eq!(human_ms(90_000), "90s");
        assert_eq!(human_ms(3 * 3_600_000), "3h");
    }
}
