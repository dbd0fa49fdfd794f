//! `stewardctl audit list | export | verify`. `verify` checks an export file
//! offline, or fetches the control plane's export; its exit code is 0 when the
//! log is intact, 1 when it was tampered with (one line naming the first bad
//! entry or checkpoint and why, also a pinned `--expect-checkpoint` missing or
//! different), 2 when there is nothing usable to verify (unreadable file, not
//! an export, control plane unreachable or refusing, and no key to trust:
//! neither `--public-key` nor `--trust-embedded-key`).
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::table::audit_table;
use super::{Cli, Client, ClientError, Output, items, meaning, write_json};
use crate::audit::chain::{self, PinnedCheckpoint};
use crate::audit::export::{self, AuditEntryView, VerifyError};
use crate::audit::signing::{self, PublicKey};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit entries, oldest first.
    List {
        /// Only entries by this actor (`token:ID`, `host:ID`, `local:uid=N`, `system`, `anonymous`).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (`tokens.create`, `tokens.revoke`, `api.authenticate`, ...).
        #[arg(long)]
        action: Option<String>,
        /// Only entries at or after T: RFC 3339, epoch milliseconds, or a duration ago (`1h`, `7d`).
        #[arg(long, value_name = "T")]
        since: Option<String>,
    },
    /// Write the audit export (entries, checkpoints, public key, signed head) to FILE.
    Export {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Verify the audit log; exit 0 intact, 1 tampered, 2 unusable input.
    Verify {
        /// An export file to verify offline (default: fetch the control plane's export).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// Trust only this signing key: base64, or a file such as the control
        /// plane's DATA_DIR/audit-signing.pub (repeatable). Needed, unless
        /// --trust-embedded-key.
        #[arg(long = "public-key", value_name = "KEY|FILE")]
        public_keys: Vec<String>,
        /// Trust the key named in the export itself: proves only that the
        /// export is consistent with itself, not who signed it (whoever
        /// rewrote the log can sign it with a key of their own).
        #[arg(long = "trust-embedded-key", conflicts_with = "public_keys")]
        trust_embedded_key: bool,
        /// Fail unless the log has this checkpoint, unchanged: SEQ:HASH, as
        /// printed by an earlier verify (repeatable). Catches a log whose
        /// checkpoints were deleted and signed anew.
        #[arg(long = "expect-checkpoint", value_name = "SEQ:HASH")]
        expect_checkpoints: Vec<PinnedCheckpoint>,
    },
}

/// Runs one `audit` command.
pub(super) async fn run(command: &AuditCommand, cli: &Cli, out: &mut impl Write) -> Result<(), ClientError> {
    let client = || Client::from_cli(cli);
    match command {
        AuditCommand::List { actor, action, since } => {
            let client = client()?;
            let since = since.as_deref().map(since_param);
            let mut query = Vec::new();
            query.extend(actor.as_deref().map(|a| ("actor", a)));
            query.extend(action.as_deref().map(|a| ("action", a)));
            query.extend(since.as_deref().map(|s| ("since", s)));
            let list = client.list_all(&["audit"], &query, None).await?;
            match cli.output {
                Output::Json => write_json(out, &list)?,
                Output::Table => out.write_all(audit_table(&items::<AuditEntryView>(&list)?).as_bytes())?,
            }
        }
        AuditCommand::Export { file } => {
            let client = client()?;
            let doc = client
                .get(client.url(&["audit", "export"], &[]))
                .await?
                .map_err(|f| meaning(f, None))?;
            let count = |key: &str| doc.get(key).and_then(|v| v.as_array()).map_or(0, Vec::len);
            let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::from)? + "\n";
            steward_shared::pki::write_private_file(file, &text).map_err(|e| ClientError::WriteFile {
                path: file.display().to_string(),
                reason: e.to_string(),
            })?;
            writeln!(
                out,
                "exported {} and {} to {}",
                chain::plural(count("entries") as u64, "audit entry", "audit entries"),
                chain::plural(count("checkpoints") as u64, "checkpoint", "checkpoints"),
                file.display()
            )?;
        }
        AuditCommand::Verify {
            file,
            public_keys,
            trust_embedded_key,
            expect_checkpoints,
        } => {
            let unusable = |reason: String| ClientError::Unusable(format!("cannot verify the audit log: {reason}"));
            if public_keys.is_empty() && !trust_embedded_key {
                return Err(unusable(
                    "no --public-key: the export names its own signing key, and whoever rewrote the log can sign \
                     it with a key of their own; pass the control plane's DATA_DIR/audit-signing.pub with \
                     --public-key, or --trust-embedded-key to check only that the export is consistent with itself"
                        .into(),
                ));
            }
            let pinned = public_keys
                .iter()
                .map(|k| read_key(k).map_err(unusable))
                .collect::<Result<Vec<_>, _>>()?;
            let bytes = match file {
                Some(path) => {
                    std::fs::read(path).map_err(|e| unusable(format!("cannot read {}: {e}", path.display())))?
                }
                None => fetch_export(&client().map_err(|e| unusable(e.to_string()))?)
                    .await
                    .map_err(|e| unusable(e.to_string()))?,
            };
            let doc = export::parse(&bytes).map_err(|e| unusable(e.to_string()))?;
            if *trust_embedded_key {
                // The ID of the key itself, not the document's (unchecked) key_id text.
                let key_id = signing::parse_public_key(&doc.public_key)
                    .map(|k| signing::key_id(&k))
                    .unwrap_or_else(|| "unreadable".into());
                eprintln!(
                    "stewardctl: WARNING: trusting the key named in the export itself (key ID {}): this shows only \
                     that the export is consistent with itself, not that the control plane signed it; verify with \
                     --public-key DATA_DIR/audit-signing.pub for that",
                    key_id
                );
            }
            match export::verify(&doc, &pinned, expect_checkpoints) {
                Ok(verified) => {
                    writeln!(out, "{verified}")?;
                    for pin in expect_checkpoints {
                        writeln!(out, "pinned checkpoint #{} matches", pin.cp_seq)?;
                    }
                    if let Some(newest) = verified.newest_pin {
                        writeln!(
                            out,
                            "newest checkpoint: {newest} (keep it: verify with --expect-checkpoint {newest} next time)"
                        )?;
                    }
                    for note in &verified.notes {
                        writeln!(out, "note: {note}")?;
                    }
                }
                Err(VerifyError::Tampered(t)) => return Err(ClientError::Tampered(t.to_string())),
                Err(VerifyError::Unusable(reason)) => return Err(unusable(reason)),
            }
        }
    }
    Ok(())
}

/// The export as JSON bytes.
async fn fetch_export(client: &Client) -> Result<Vec<u8>, ClientError> {
    let doc = client
        .get(client.url(&["audit", "export"], &[]))
        .await?
        .map_err(|f| meaning(f, None))?;
    serde_json::to_vec(&doc).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// `--since`: a duration means that long ago (in epoch ms); anything else is
/// passed on for the control plane to read (and refuse with a reason).
fn since_param(raw: &str) -> String {
    match raw.parse::<steward_shared::units::Duration>() {
        Ok(ago) => {
            let ms = i64::try_from(ago.as_std().as_millis()).unwrap_or(i64::MAX);
            steward_shared::now_ms().saturating_sub(ms).to_string()
        }
        Err(_) => raw.to_string(),
    }
}

/// A `--public-key`: base64, or a file holding it.
fn read_key(raw: &str) -> Result<PublicKey, String> {
    if let Some(key) = signing::parse_public_key(raw) {
        return Ok(key);
    }
    let text = std::fs::read_to_string(Path::new(raw))
        .map_err(|e| format!("--public-key {raw:?} is not a base64 Ed25519 key, and not a readable file ({e})"))?;
    signing::parse_public_key(&text).ok_or_else(|| format!("{raw} does not hold a base64 Ed25519 public key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_and_passes_the_rest_on() {
        let ms: i64 = since_param("1h").parse().unwrap();
        let expected = steward_shared::now_ms() - 3_600_000;
        assert!((expected - 5_000..=expected).contains(&ms), "{ms}");
        assert_eq!(since_param("2024-05-01T00:00:00Z"), "2024-05-01T00:00:00Z");
        assert_eq!(since_param("1700000000000"), "1700000000000");
    }

    #[test]
    fn keys_are_base64_or_a_file() {
        let signer = crate::audit::signing::Signer::generate().unwrap();
        let b64 = signing::encode_public_key(&signer.public_key());
        assert_eq!(read_key(&b64), Ok(signer.public_key()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-signing.pub");
        std::fs::write(&path, format!("{b64}\n")).unwrap();
        assert_eq!(read_key(path.to_str().unwrap()), Ok(signer.public_key()));
        assert!(read_key("/nonexistent").unwrap_err().contains("not a base64"));
    }
}
