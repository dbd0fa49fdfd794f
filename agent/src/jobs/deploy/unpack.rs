//! Fetching a release artifact (local path or http(s) URL) with a size limit
//! and SHA-256 check, and unpacking `.tar.gz` / `.tar.zst` into a release
//! directory, refusing every entry that could write outside it: absolute
//! paths, `..`, symlinks whose target leaves the release (resolved through
//! the links already unpacked, and every link checked again once all are in
//! place, so no chain of links reaches outside), entries reached through a
//! symlink, hard links, device files and FIFOs.
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

/// Compression of an artifact, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    TarGz,
    TarZst,
}

impl ArchiveKind {
    /// `.tar.gz`/`.tgz` or `.tar.zst`/`.tzst` (a URL's query is ignored).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.split(['?', '#']).next().unwrap_or(name).to_ascii_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(ArchiveKind::TarGz)
        } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
            Some(ArchiveKind::TarZst)
        } else {
            None
        }
    }
}

/// Fetch and unpack errors (one-line reasons).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    /// The actual hash is never shown: for a local path it would tell the
    /// caller the hash of a file it may not read.
    #[error("artifact sha256 does not match the expected {expected}")]
    Checksum { expected: String },
    #[error("artifact is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("archive unpacks to more than the limit of {limit} bytes")]
    UnpacksTooLarge { limit: u64 },
    #[error("cannot fetch the artifact: {0}")]
    Fetch(String),
    #[error("archive entry {entry:?} refused: {reason}")]
    Unsafe { entry: String, reason: String },
    #[error("archive is unreadable: {0}")]
    Unreadable(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> UnpackError {
    let context = context.into();
    move |source| UnpackError::Io { context, source }
}

/// Fetches `artifact` into `dest`, refusing more than `limit` bytes or a
/// SHA-256 other than `sha256` (hex, any case). `dest` is removed on failure.
pub async fn fetch(artifact: &str, dest: &Path, sha256: &str, limit: u64) -> Result<u64, UnpackError> {
    let result = if artifact.starts_with("http://") || artifact.starts_with("https://") {
        fetch_url(artifact, dest, limit).await
    } else {
        let (src, dst) = (PathBuf::from(artifact), dest.to_path_buf());
        tokio::task::spawn_blocking(move || copy_local(&src, &dst, limit))
            .await
            .unwrap_or_else(|e| Err(UnpackError::Fetch(format!("copy task failed: {e}"))))
    };
    let checked = result.and_then(|(bytes, actual)| {
        if actual.eq_ignore_ascii_case(sha256) {
            Ok(bytes)
        } else {
            Err(UnpackError::Checksum {
                expected: sha256.to_ascii_lowercase(),
            })
        }
    });
    if checked.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    checked
}

fn copy_local(src: &Path, dest: &Path, limit: u64) -> Result<(u64, String), UnpackError> {
    if !src.is_absolute() {
        return Err(UnpackError::Fetch(format!(
            "{} is neither an http(s) URL nor an absolute path",
            src.display()
        )));
    }
    let mut input = File::open(src).map_err(|e| UnpackError::Fetch(format!("{}: {e}", src.display())))?;
    let mut out = File::create(dest).map_err(io_err(format!("create {}", dest.display())))?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| UnpackError::Fetch(format!("{}: {e}", src.display())))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > limit {
            return Err(UnpackError::TooLarge { limit });
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io_err(format!("write {}", dest.display())))?;
    }
    out.sync_all().map_err(io_err(format!("fsync {}", dest.display())))?;
    Ok((total, hex::encode(hasher.finalize())))
}

async fn fetch_url(url: &str, dest: &Path, limit: u64) -> Result<(u64, String), UnpackError> {
    use tokio::io::AsyncWriteExt;
    let client = super::health::http_client(std::time::Duration::from_secs(3600)).map_err(UnpackError::Fetch)?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| UnpackError::Fetch(format!("GET {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(UnpackError::Fetch(format!("GET {url}: status {}", resp.status())));
    }
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(UnpackError::TooLarge { limit });
    }
    let mut out = tokio::fs::File::create(dest)
        .await
        .map_err(io_err(format!("create {}", dest.display())))?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| UnpackError::Fetch(format!("GET {url}: {e}")))?
    {
        total += chunk.len() as u64;
        if total > limit {
            return Err(UnpackError::TooLarge { limit });
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(io_err(format!("write {}", dest.display())))?;
    }
    out.sync_all()
        .await
        .map_err(io_err(format!("fsync {}", dest.display())))?;
    Ok((total, hex::encode(hasher.finalize())))
}

/// The normal components of a relative entry path; refuses absolute paths and `..`.
fn relative_components(entry: &Path) -> Result<Vec<&std::ffi::OsStr>, String> {
    let mut out = Vec::new();
    for c in entry.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` escapes the release directory".into()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute paths are not allowed".into()),
        }
    }
    Ok(out)
}

/// Whether a symlink at `entry` (components) pointing to `target` stays inside the root.
fn link_stays_inside(entry: &[&std::ffi::OsStr], target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = entry.len().saturating_sub(1) as i64;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Whether the symlink at `link` (components under `root`) stays inside
/// `root` once every symlink on the way is followed, as the kernel would
/// (at most 40 links; an absolute target or a `..` above `root` is outside).
/// Components that do not exist (yet) are taken literally.
fn resolves_inside(root: &Path, link: &[&std::ffi::OsStr]) -> bool {
    use std::ffi::OsString;
    let up = OsString::from("..");
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: Vec<OsString> = link.iter().rev().map(|c| c.to_os_string()).collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == up {
            if resolved.pop().is_none() {
                return false;
            }
            continue;
        }
        resolved.push(c);
        let here: PathBuf = resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let Ok(target) = std::fs::read_link(&here) else {
            continue;
        };
        hops += 1;
        if hops > 40 {
            return false;
        }
        resolved.pop();
        for c in target.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_os_string()),
                Component::ParentDir => pending.push(up.clone()),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return false,
            }
        }
    }
    true
}

/// Unpacks `archive` into `dest` (which must exist and be empty), writing at
/// most `max_bytes` of file content; returns the number of entries written.
pub fn unpack(archive: &Path, kind: ArchiveKind, dest: &Path, max_bytes: u64) -> Result<u64, UnpackError> {
    let file = File::open(archive).map_err(io_err(format!("open {}", archive.display())))?;
    let reader: Box<dyn Read> = match kind {
        ArchiveKind::TarGz => Box::new(flate2::read::GzDecoder::new(file)),
        ArchiveKind::TarZst => Box::new(zstd::Decoder::new(file).map_err(|e| UnpackError::Unreadable(e.to_string()))?),
    };
    let mut tar = tar::Archive::new(reader);
    let mut count = 0u64;
    let mut written = 0u64;
    // Every symlink made, checked again at the end: a later link can change
    // where an earlier one leads.
    let mut links: Vec<(PathBuf, String)> = Vec::new();
    for entry in tar.entries().map_err(|e| UnpackError::Unreadable(e.to_string()))? {
        let mut entry = entry.map_err(|e| UnpackError::Unreadable(e.to_string()))?;
        let raw = entry
            .path()
            .map_err(|e| UnpackError::Unreadable(e.to_string()))?
            .into_owned();
        let shown = raw.to_string_lossy().chars().take(200).collect::<String>();
        let refuse = |reason: String| UnpackError::Unsafe {
            entry: shown.clone(),
            reason,
        };
        let parts = relative_components(&raw).map_err(refuse)?;
        if parts.is_empty() {
            continue;
        }
        let target: PathBuf = parts.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        // No entry may be reached through a symlink (which could chain outside).
        let mut walk = dest.to_path_buf();
        for c in &parts[..parts.len() - 1] {
            walk.push(c);
            if std::fs::symlink_metadata(&walk).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(refuse("its parent directory is a symlink".into()));
            }
        }
        if let Ok(m) = std::fs::symlink_metadata(&target)
            && !m.is_dir()
        {
            std::fs::remove_file(&target).map_err(io_err(format!("replace {}", target.display())))?;
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(io_err(format!("create {}", target.display())))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
                }
                let mut out = File::create(&target).map_err(io_err(format!("create {}", target.display())))?;
                let left = max_bytes - written;
                let n = io::copy(&mut (&mut entry).take(left.saturating_add(1)), &mut out)
                    .map_err(|e| UnpackError::Unreadable(format!("{shown}: {e}")))?;
                if n > left {
                    return Err(UnpackError::UnpacksTooLarge { limit: max_bytes });
                }
                written += n;
                use std::os::unix::fs::PermissionsExt;
                let _ = out.set_permissions(std::fs::Permissions::from_mode(mode | 0o600));
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| UnpackError::Unreadable(e.to_string()))?
                    .ok_or_else(|| refuse("symlink without a target".into()))?
                    .into_owned();
                if !link_stays_inside(&parts, &link) {
                    return Err(refuse(format!(
                        "symlink to {} points outside the release",
                        link.display()
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
                }
                std::os::unix::fs::symlink(&link, &target).map_err(io_err(format!("symlink {}", target.display())))?;
                if !resolves_inside(dest, &parts) {
                    let _ = std::fs::remove_file(&target);
                    return Err(refuse(format!(
                        "symlink to {} leads outside the release through other links",
                        link.display()
                    )));
                }
                links.push((raw.clone(), shown.clone()));
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => return Err(refuse(format!("entry type {other:?} is not allowed"))),
        }
        count += 1;
    }
    for (raw, shown) in &links {
        let Ok(parts) = relative_components(raw) else { continue };
        let path: PathBuf = parts.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        let still_a_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if still_a_link && !resolves_inside(dest, &parts) {
            return Err(UnpackError::Unsafe {
                entry: shown.clone(),
                reason: "symlink leads outside the release through links unpacked after it".into(),
            });
        }
    }
    Ok(count)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a `.tar.gz` from raw entries: (name written verbatim, type, data or link target).
    pub(crate) fn raw_tar_gz(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name(data).unwrap();
                h.set_size(0);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            } else {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, data.as_bytes()).unwrap();
            }
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn try_unpack(entries: &[(&str, tar::EntryType, &str)]) -> (tempfile::TempDir, Result<u64, UnpackError>) {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar.gz");
        std::fs::write(&archive, raw_tar_gz(entries)).unwrap();
        let dest = tmp.path().join("root/release");
        std::fs::create_dir_all(&dest).unwrap();
        let r = unpack(&archive, ArchiveKind::TarGz, &dest, 1 << 20);
        (tmp, r)
    }

    use tar::EntryType::{Directory, Link, Regular, Symlink};

    #[test]
    fn a_normal_archive_unpacks() {
        let (tmp, r) = try_unpack(&[
            ("./", Directory, ""),
            ("bin/", Directory, ""),
            ("bin/app", Regular, "#!app"),
            ("static/index.html", Regular, "hi"),
            ("latest", Symlink, "static/index.html"),
            ("static/up", Symlink, "../bin/app"),
        ]);
        assert_eq!(r.unwrap(), 5);
        let root = tmp.path().join("root/release");
        assert_eq!(std::fs::read_to_string(root.join("latest")).unwrap(), "hi");
        assert_eq!(std::fs::read_to_string(root.join("static/up")).unwrap(), "#!app");
    }

    #[test]
    fn escaping_entries_are_refused() {
        for entries in [
            vec![("../evil", Regular, "x")],
            vec![("a/../../evil", Regular, "x")],
            vec![("/etc/evil", Regular, "x")],
            vec![("out", Symlink, "/etc")],
            vec![("out", Symlink, "../../x")],
            vec![("a/b", Symlink, "../../x")],
            vec![("d", Symlink, "."), ("d/x", Regular, "through a link")],
            vec![("hard", Link, "/etc/passwd")],
        ] {
            let (tmp, r) = try_unpack(&entries);
            let err = r.unwrap_err();
            assert!(matches!(err, UnpackError::Unsafe { .. }), "{entries:?}: {err}");
            assert!(!tmp.path().join("root/evil").exists() && !tmp.path().join("evil").exists());
        }
    }

    #[test]
    fn chains_of_symlinks_that_escape_are_refused() {
        for entries in [
            // Each link looks inside on its own; followed, `l2` is the release's parent.
            vec![
                ("a/", Directory, ""),
                ("a/l1", Symlink, ".."),
                ("l2", Symlink, "a/l1/.."),
            ],
            // The same, the escaping link first (checked again at the end).
            vec![
                ("l2", Symlink, "a/l1/.."),
                ("a/", Directory, ""),
                ("a/l1", Symlink, ".."),
            ],
            // Then a file written through the chain.
            vec![
                ("a/", Directory, ""),
                ("a/l1", Symlink, ".."),
                ("l2", Symlink, "a/l1/.."),
                ("l2/evil", Regular, "x"),
            ],
            // A loop.
            vec![("x", Symlink, "y/.."), ("y", Symlink, "x/..")],
        ] {
            let (tmp, r) = try_unpack(&entries);
            let err = r.unwrap_err();
            assert!(matches!(err, UnpackError::Unsafe { .. }), "{entries:?}: {err}");
            assert!(!tmp.path().join("root/evil").exists(), "{entries:?}");
        }
        // Links through links that stay inside still unpack; a link replaced
        // by a file is replaced, not written through.
        let (tmp, r) = try_unpack(&[
            ("v1/bin/app", Regular, "#!app"),
            ("current", Symlink, "v1"),
            ("bin", Symlink, "current/bin"),
            ("v1/up", Symlink, "../bin/app"),
            ("outside", Symlink, "v1"),
            ("outside", Regular, "a file now"),
        ]);
        r.unwrap();
        let root = tmp.path().join("root/release");
        assert_eq!(std::fs::read_to_string(root.join("v1/up")).unwrap(), "#!app");
        assert_eq!(std::fs::read_to_string(root.join("outside")).unwrap(), "a file now");
        assert_eq!(std::fs::read_to_string(root.join("v1/bin/app")).unwrap(), "#!app");
    }

    #[test]
    fn device_files_and_fifos_are_refused() {
        for kind in [tar::EntryType::Char, tar::EntryType::Block, tar::EntryType::Fifo] {
            let (tmp, r) = try_unpack(&[("ok", Regular, "x"), ("dev", kind, "")]);
            match r {
                Err(UnpackError::Unsafe { entry, reason }) => {
                    assert_eq!(entry, "dev");
                    assert!(reason.contains("not allowed"), "{kind:?}: {reason}");
                }
                other => panic!("{kind:?}: {other:?}"),
            }
            assert!(std::fs::symlink_metadata(tmp.path().join("root/release/dev")).is_err());
        }
    }

    #[test]
    fn an_archive_that_unpacks_past_the_limit_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar.gz");
        let big = "x".repeat(3000);
        std::fs::write(&archive, raw_tar_gz(&[("a", Regular, &big), ("b", Regular, &big)])).unwrap();
        let dest = tmp.path().join("r");
        std::fs::create_dir(&dest).unwrap();
        let err = unpack(&archive, ArchiveKind::TarGz, &dest, 5000).unwrap_err();
        assert!(matches!(err, UnpackError::UnpacksTooLarge { limit: 5000 }), "{err}");
        let dest = tmp.path().join("r2");
        std::fs::create_dir(&dest).unwrap();
        assert_eq!(unpack(&archive, ArchiveKind::TarGz, &dest, 6000).unwrap(), 2);
    }

    #[test]
    fn kinds_come_from_the_name() {
        assert_eq!(
            ArchiveKind::from_name("https://x/app-1.2.tar.gz?sig=1"),
            Some(ArchiveKind::TarGz)
        );
        assert_eq!(ArchiveKind::from_name("/tmp/app.TZST"), Some(ArchiveKind::TarZst));
        assert_eq!(ArchiveKind::from_name("/tmp/app.zip"), None);
    }

    #[tokio::test]
    async fn a_wrong_checksum_or_an_oversized_artifact_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("a.tar.gz");
        std::fs::write(&src, b"payload").unwrap();
        let dest = tmp.path().join("incoming");
        let good = hex::encode(Sha256::digest(b"payload"));
        let src = src.to_str().unwrap();
        assert_eq!(fetch(src, &dest, &good.to_uppercase(), 100).await.unwrap(), 7);
        let err = fetch(src, &dest, &"0".repeat(64), 100).await.unwrap_err();
        assert!(matches!(err, UnpackError::Checksum { .. }), "{err}");
        assert!(
            !err.to_string().contains(&good),
            "the file's hash is not revealed: {err}"
        );
        assert!(!dest.exists());
        assert!(matches!(
            fetch(src, &dest, &good, 3).await,
            Err(UnpackError::TooLarge { limit: 3 })
        ));
        assert!(matches!(
            fetch("relative/x.tar.gz", &dest, &good, 100).await,
            Err(UnpackError::Fetch(_))
        ));
    }
}
