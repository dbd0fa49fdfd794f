//! `steward-controlplane ca ...`: create the control plane's CA and issue
//! server and agent certificates from it. Private keys are written 0600.
use std::path::{Path, PathBuf};
use std::time::Duration;

use steward_shared::pki::{self, Ca, PkiError};

/// Errors of the CA commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{0} already exists: refusing to overwrite a CA (move it away first)")]
    Exists(String),
    #[error("no CA in {dir}: run `steward-controlplane ca init` first ({source})")]
    NoCa { dir: String, source: PkiError },
}

pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
pub const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
pub const AGENT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// Creates `ca.pem` and `ca.key` (0600) in `data_dir`. Returns the CA fingerprint.
pub fn init(data_dir: &Path) -> Result<String, CaError> {
    let cert = data_dir.join("ca.pem");
    if cert.exists() {
        return Err(CaError::Exists(cert.display().to_string()));
    }
    let ca = Ca::create("Steward CA", CA_LIFETIME)?;
    pki::write_private_file(&data_dir.join("ca.key"), &ca.key_pem())?;
    pki::write_file_mode(&cert, ca.cert_pem(), 0o644)?;
    Ok(ca.fingerprint()?)
}

/// Loads the CA from `data_dir`.
pub fn load(data_dir: &Path) -> Result<Ca, CaError> {
    Ca::load_dir(data_dir).map_err(|source| CaError::NoCa {
        dir: data_dir.display().to_string(),
        source,
    })
}

/// Issues the gateway's server certificate for `names` (DNS names or IPs).
pub fn issue_server(
    data_dir: &Path,
    names: &[String],
    cert: &Path,
    key: &Path,
    lifetime: Duration,
) -> Result<(), CaError> {
    let ca = load(data_dir)?;
    let issued = ca.issue_server(names, lifetime)?;
    pki::write_private_file(key, &issued.key_pem)?;
    pki::write_file_mode(cert, &issued.cert_pem, 0o644)?;
    Ok(())
}

/// Issues an agent certificate for `host_id` into `out_dir` as `agent.pem`,
/// `agent.key` (0600) and `ca.pem`: the files `agent.toml` expects by default.
pub fn issue_agent(
    data_dir: &Path,
    host_id: &str,
    out_dir: &Path,
    lifetime: Duration,
) -> Result<Vec<PathBuf>, CaError> {
    let ca = load(data_dir)?;
    let issued = ca.issue_agent(host_id, lifetime)?;
    let (cert, key, ca_path) = (
        out_dir.join("agent.pem"),
        out_dir.join("agent.key"),
        out_dir.join("ca.pem"),
    );
    pki::write_private_file(&key, &issued.key_pem)?;
    pki::write_file_mode(&cert, &issued.cert_pem, 0o644)?;
    pki::write_file_mode(&ca_path, ca.cert_pem(), 0o644)?;
    Ok(vec![cert, key, ca_path])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_issue_and_refuse_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let fp = init(dir.path()).unwrap();
        assert_eq!(fp.len(), 64);
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(init(dir.path()), Err(CaError::Exists(_))));
        let out = dir.path().join("agent-web");
        issue_agent(dir.path(), "web", &out, AGENT_LIFETIME).unwrap();
        let pem = std::fs::read_to_string(out.join("agent.pem")).unwrap();
        let der = pki::certs_from_pem(&pem).unwrap().remove(0);
        assert_eq!(pki::identity_from_cert(&der).unwrap().host_id, "web");
        assert!(matches!(
            issue_agent(dir.path(), "Bad Name", &out, AGENT_LIFETIME),
            Err(CaError::Pki(_))
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue_agent(empty.path(), "web", &out, AGENT_LIFETIME),
            Err(CaError::NoCa { .. })
        ));
    }
}
