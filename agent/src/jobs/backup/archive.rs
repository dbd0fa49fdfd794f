//! Writing, listing, pruning and verifying snapshots (see the [`super`] docs
//! for the layout and invariants).
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use super::retention;
use super::{BackupConfig, BackupError, excluded, lock};

const MANIFEST_FORMAT: u32 = 1;
/// Most stderr bytes of a backup command kept for the error message.
const STDERR_CAP: usize = 4096;

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path inside the archive (the source path without its leading `/`).
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// A snapshot's manifest (`ID.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub backup: String,
    /// Unix seconds.
    pub created_at: i64,
    pub files: Vec<ManifestFile>,
    /// Sum of the files' sizes.
    pub bytes: u64,
    /// Size of the compressed archive.
    pub archive_bytes: u64,
}

/// What `backup.run` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupReport {
    pub backup: String,
    pub snapshot: String,
    pub files: u64,
    pub bytes: u64,
    pub archive_bytes: u64,
    pub duration_ms: u64,
    /// Snapshots removed by retention.
    pub deleted: Vec<String>,
    /// `Some(true)` when verified right after writing (`verify_after`).
    pub verified: Option<bool>,
    /// Paths skipped because they are neither files, directories nor symlinks.
    pub skipped: Vec<String>,
}

/// What `backup.verify` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub backup: String,
    pub snapshot: String,
    pub files: u64,
    pub bytes: u64,
    pub duration_ms: u64,
    pub verified: bool,
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BackupError::io(format!("fsync {}", dir.display())))
}

/// Removes what a crashed run or verification left behind (caller holds the lock).
fn clean_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".partial") {
            let _ = std::fs::remove_file(e.path());
        } else if name.starts_with(".verify-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

struct Writer {
    builder: tar::Builder<zstd::Encoder<'static, BufWriter<File>>>,
    files: Vec<ManifestFile>,
    skipped: Vec<String>,
    excludes: Vec<String>,
}

impl Writer {
    fn add(&mut self, path: &Path) -> Result<(), BackupError> {
        if excluded(path, &self.excludes) {
            return Ok(());
        }
        let meta = std::fs::symlink_metadata(path).map_err(BackupError::io(format!("stat {}", path.display())))?;
        let name: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let tar_err = |e| BackupError::io(format!("archive {}", path.display()))(e);
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if meta.is_dir() {
            if !name.as_os_str().is_empty() {
                self.builder
                    .append_data(&mut header, &name, io::empty())
                    .map_err(tar_err)?;
            }
            let mut children: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(BackupError::io(format!("read directory {}", path.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            children.sort();
            for child in children {
                self.add(&child)?;
            }
        } else if meta.is_file() {
            let file = File::open(path).map_err(BackupError::io(format!("open {}", path.display())))?;
            let size = meta.len();
            let mut reader = HashingReader {
                inner: file.take(size),
                hasher: Sha256::new(),
                bytes: 0,
            };
            header.set_size(size);
            self.builder
                .append_data(&mut header, &name, &mut reader)
                .map_err(tar_err)?;
            if reader.bytes != size {
                return Err(BackupError::Changed {
                    path: path.to_path_buf(),
                });
            }
            self.files.push(ManifestFile {
                path: name.to_string_lossy().into_owned(),
                size,
                sha256: hex::encode(reader.hasher.finalize()),
            });
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).map_err(BackupError::io(format!("readlink {}", path.display())))?;
            self.builder.append_link(&mut header, &name, &target).map_err(tar_err)?;
        } else {
            self.skipped.push(path.display().to_string());
        }
        Ok(())
    }

    fn add_file_as(&mut self, file: &Path, name: &str) -> Result<(), BackupError> {
        let meta = std::fs::metadata(file).map_err(BackupError::io(format!("stat {}", file.display())))?;
        let f = File::open(file).map_err(BackupError::io(format!("open {}", file.display())))?;
        let mut reader = HashingReader {
            inner: f.take(meta.len()),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        header.set_mode(0o600);
        header.set_size(meta.len());
        self.builder
            .append_data(&mut header, name, &mut reader)
            .map_err(BackupError::io(format!("archive {name}")))?;
        self.files.push(ManifestFile {
            path: name.to_string(),
            size: reader.bytes,
            sha256: hex::encode(reader.hasher.finalize()),
        });
        Ok(())
    }
}

/// Runs `argv` with stdout into `out`; a non-zero exit is an error with stderr's tail.
fn run_command(argv: &[String], out: &Path) -> Result<(), BackupError> {
    let program = argv.first().cloned().unwrap_or_default();
    let fail = |message: String| BackupError::Command {
        program: program.clone(),
        message,
    };
    let stdout = File::create(out).map_err(BackupError::io(format!("create {}", out.display())))?;
    let mut child = std::process::Command::new(&program)
        .args(&argv[1.min(argv.len())..])
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = (&mut pipe).take(STDERR_CAP as u64).read_to_end(&mut stderr);
        let _ = io::copy(&mut pipe, &mut io::sink());
    }
    let status = child.wait().map_err(|e| fail(format!("wait: {e}")))?;
    if !status.success() {
        return Err(fail(format!("{status}: {}", String::from_utf8_lossy(&stderr).trim())));
    }
    File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(BackupError::io(format!("fsync {}", out.display())))
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BackupError> {
    let tmp = dir.join(format!(".{name}.partial"));
    let mut f = File::create(&tmp).map_err(BackupError::io(format!("create {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(BackupError::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(BackupError::io(format!("rename {}", tmp.display())))
}

/// Writes a new snapshot of `cfg` taken at `now` (unix seconds), applies
/// retention, and verifies it when `verify_after` is set.
pub fn run(cfg: &BackupConfig, now: i64) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let dir = cfg.dir();
    std::fs::create_dir_all(&dir).map_err(BackupError::io(format!("create {}", dir.display())))?;
    let _lock = lock::acquire(&dir.join("lock"))?;
    clean_leftovers(&dir);
    let id = format!(
        "{}-{:08x}",
        steward_shared::timestamp::compact_secs(now),
        rand::random::<u32>()
    );
    let archive_tmp = dir.join(format!(".{id}.tar.zst.partial"));
    let result = write_snapshot(cfg, &dir, &id, &archive_tmp, now);
    let _ = std::fs::remove_file(&archive_tmp);
    let _ = std::fs::remove_file(dir.join(format!(".{id}.command.partial")));
    let (manifest, skipped) = result?;
    sync_dir(&dir)?;
    let deleted = prune(cfg, &dir, &id)?;
    let verified = if cfg.verify_after {
        verify_locked(cfg, &dir, &manifest)?;
        Some(true)
    } else {
        None
    };
    Ok(BackupReport {
        backup: cfg.name.clone(),
        snapshot: id,
        files: manifest.files.len() as u64,
        bytes: manifest.bytes,
        archive_bytes: manifest.archive_bytes,
        duration_ms: started.elapsed().as_millis() as u64,
        deleted,
        verified,
        skipped,
    })
}

fn write_snapshot(
    cfg: &BackupConfig,
    dir: &Path,
    id: &str,
    tmp: &Path,
    now: i64,
) -> Result<(Manifest, Vec<String>), BackupError> {
    let file = File::create(tmp).map_err(BackupError::io(format!("create {}", tmp.display())))?;
    let zio = BackupError::io(format!("compress {}", tmp.display()));
    let mut encoder = zstd::Encoder::new(BufWriter::new(file), 3).map_err(zio)?;
    encoder
        .include_checksum(true)
        .map_err(BackupError::io(format!("compress {}", tmp.display())))?;
    let mut writer = Writer {
        builder: tar::Builder::new(encoder),
        files: Vec::new(),
        skipped: Vec::new(),
        excludes: cfg.exclude.clone(),
    };
    writer.builder.follow_symlinks(false);
    for source in &cfg.sources {
        writer.add(source)?;
    }
    if let Some(argv) = &cfg.command {
        let out = dir.join(format!(".{id}.command.partial"));
        run_command(argv, &out)?;
        writer.add_file_as(&out, &format!("command/{}", cfg.command_output))?;
    }
    if !writer.skipped.is_empty() {
        tracing::info!(backup = %cfg.name, skipped = writer.skipped.len(), "special files skipped");
    }
    let fin = |what: &str| BackupError::io(format!("{what} {}", tmp.display()));
    let encoder = writer.builder.into_inner().map_err(fin("finish"))?;
    let buffered = encoder.finish().map_err(fin("compress"))?;
    let file = buffered.into_inner().map_err(|e| fin("flush")(e.into_error()))?;
    file.sync_all().map_err(fin("fsync"))?;
    let archive_bytes = file.metadata().map_err(fin("stat"))?.len();
    std::fs::rename(tmp, dir.join(format!("{id}.tar.zst"))).map_err(fin("rename"))?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        id: id.to_string(),
        backup: cfg.name.clone(),
        created_at: now,
        bytes: writer.files.iter().map(|f| f.size).sum(),
        files: writer.files,
        archive_bytes,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Manifest {
        snapshot: id.to_string(),
        message: e.to_string(),
    })?;
    write_atomically(dir, &format!("{id}.json"), &json)?;
    Ok((manifest, writer.skipped))
}

/// Complete snapshots of `cfg`, newest first.
pub fn list_snapshots(cfg: &BackupConfig) -> Result<Vec<Manifest>, BackupError> {
    let dir = cfg.dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BackupError::io(format!("read {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else { continue };
        if name.starts_with('.') {
            continue;
        }
        let bytes = std::fs::read(e.path()).map_err(BackupError::io(format!("read {}", e.path().display())))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|err| BackupError::Manifest {
            snapshot: id.to_string(),
            message: err.to_string(),
        })?;
        out.push(m);
    }
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
    Ok(out)
}

/// Deletes the snapshots retention does not keep; returns their IDs. The
/// snapshot `newest` (just written) counts as the newest even when others
/// share its second, so a run never deletes its own snapshot.
fn prune(cfg: &BackupConfig, dir: &Path, newest: &str) -> Result<Vec<String>, BackupError> {
    let mut snapshots = list_snapshots(cfg)?;
    if let Some(i) = snapshots.iter().position(|m| m.id == newest)
        && snapshots[i].created_at >= snapshots[0].created_at
    {
        let m = snapshots.remove(i);
        snapshots.insert(0, m);
    }
    let times: Vec<i64> = snapshots.iter().map(|m| m.created_at).collect();
    let keep = retention::keep(&times, &cfg.retention());
    let mut deleted = Vec::new();
    for (i, m) in snapshots.iter().enumerate() {
        if keep.contains(&i) {
            continue;
        }
        // Manifest first: a half-deleted snapshot is no longer listed.
        for name in [format!("{}.json", m.id), format!("{}.tar.zst", m.id)] {
            match std::fs::remove_file(dir.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(BackupError::io(format!("delete {name}"))(e)),
            }
        }
        deleted.push(m.id.clone());
    }
    if !deleted.is_empty() {
        sync_dir(dir)?;
    }
    Ok(deleted)
}

/// Restores `snapshot` (default: the latest) into a scratch directory and
/// compares every file's SHA-256 with the manifest.
pub fn verify(cfg: &BackupConfig, snapshot: Option<&str>) -> Result<VerifyReport, BackupError> {
    let started = Instant::now();
    let dir = cfg.dir();
    let snapshots = list_snapshots(cfg)?;
    let found = match snapshot {
        Some(id) => snapshots.into_iter().find(|m| m.id == id),
        None => snapshots.into_iter().next(),
    };
    let manifest = found.ok_or_else(|| BackupError::NoSnapshot {
        backup: cfg.name.clone(),
        snapshot: snapshot.map(str::to_string),
    })?;
    let _lock = lock::acquire(&dir.join("lock"))?;
    clean_leftovers(&dir);
    verify_locked(cfg, &dir, &manifest)?;
    Ok(VerifyReport {
        backup: cfg.name.clone(),
        snapshot: manifest.id,
        files: manifest.files.len() as u64,
        bytes: manifest.bytes,
        duration_ms: started.elapsed().as_millis() as u64,
        verified: true,
    })
}

/// Removes the scratch directory however verification ends.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn verify_locked(_cfg: &BackupConfig, dir: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let snapshot = manifest.id.clone();
    let unreadable = |message: String| BackupError::Unreadable {
        snapshot: snapshot.clone(),
        message,
    };
    let scratch = Scratch(dir.join(format!(".verify-{}-{:08x}", manifest.id, rand::random::<u32>())));
    std::fs::create_dir(&scratch.0).map_err(BackupError::io(format!("create {}", scratch.0.display())))?;
    let archive_path = dir.join(format!("{}.tar.zst", manifest.id));
    let file = File::open(&archive_path).map_err(|e| unreadable(format!("{}: {e}", archive_path.display())))?;
    let decoder = zstd::Decoder::new(file).map_err(|e| unreadable(e.to_string()))?;
    let mut archive = tar::Archive::new(decoder);
    let mut restored: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for entry in archive.entries().map_err(|e| unreadable(e.to_string()))? {
        let mut entry = entry.map_err(|e| unreadable(e.to_string()))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().map_err(|e| unreadable(e.to_string()))?.into_owned();
        if path.as_os_str().is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(unreadable(format!("entry {} escapes the snapshot", path.display())));
        }
        let target = scratch.0.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(BackupError::io(format!("create {}", parent.display())))?;
        }
        let out = File::create(&target).map_err(BackupError::io(format!("create {}", target.display())))?;
        let mut hashing = HashingReader {
            inner: &mut entry,
            hasher: Sha256::new(),
            bytes: 0,
        };
        io::copy(&mut hashing, &mut BufWriter::new(out)).map_err(|e| unreadable(format!("{}: {e}", path.display())))?;
        restored.insert(
            path.to_string_lossy().into_owned(),
            hex::encode(hashing.hasher.finalize()),
        );
    }
    // Read to the end of the zstd frame so its checksum is checked too.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| unreadable(e.to_string()))?;
    for f in &manifest.files {
        match restored.get(&f.path) {
            None => {
                return Err(BackupError::Missing {
                    snapshot: snapshot.clone(),
                    file: f.path.clone(),
                });
            }
            Some(actual) if *actual != f.sha256 => {
                return Err(BackupError::Differs {
                    snapshot: snapshot.clone(),
                    file: f.path.clone(),
                    expected: f.sha256.clone(),
                    actual: actual.clone(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _tmp: tempfile::TempDir,
        cfg: BackupConfig,
        src: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub/deep")).unwrap();
        std::fs::create_dir_all(src.join("cache")).unwrap();
        std::fs::write(src.join("a.txt"), "alpha").unwrap();
        std::fs::write(src.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
        std::fs::write(src.join("sub/deep/c.txt"), "gamma").unwrap();
        std::fs::write(src.join("cache/junk"), "junk").unwrap();
        std::fs::write(src.join("x.tmp"), "tmp").unwrap();
        std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
        let cfg = BackupConfig {
            name: "files".into(),
            sources: vec![src.clone()],
            exclude: vec![src.join("cache").display().to_string(), "*.tmp".into()],
            command: Some(vec!["/bin/echo".into(), "dump of the database".into()]),
            command_output: "db.sql".into(),
            destination: tmp.path().join("dest"),
            schedule: None,
            verify_schedule: None,
            verify_after: true,
            keep_last: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            rpo: None,
        };
        Fixture { _tmp: tmp, cfg, src }
    }

    fn rel(p: &Path) -> String {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect::<PathBuf>()
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_snapshot_holds_every_file_with_its_checksum_and_verifies() {
        let f = fixture();
        let report = run(&f.cfg, 1_700_000_000).unwrap();
        assert_eq!(report.verified, Some(true));
        assert!(report.snapshot.starts_with("20231114T221320Z-"), "{}", report.snapshot);
        let m = &list_snapshots(&f.cfg).unwrap()[0];
        let mut paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        paths.sort_unstable();
        let mut expected = vec![
            "command/db.sql".to_string(),
            rel(&f.src.join("a.txt")),
            rel(&f.src.join("sub/b.bin")),
            rel(&f.src.join("sub/deep/c.txt")),
        ];
        expected.sort_unstable();
        assert_eq!(paths, expected);
        assert_eq!(report.files, 4);
        assert_eq!(report.bytes, 5 + 100_000 + 5 + 21);
        let alpha = m.files.iter().find(|x| x.path.ends_with("a.txt")).unwrap();
        assert_eq!(alpha.sha256, hex::encode(Sha256::digest(b"alpha")));
        let v = verify(&f.cfg, None).unwrap();
        assert_eq!(
            (v.snapshot.as_str(), v.files, v.verified),
            (report.snapshot.as_str(), 4, true)
        );
        // Nothing temporary is left behind.
        let names: Vec<String> = std::fs::read_dir(f.cfg.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_flipped_byte_in_the_archive_fails_verification() {
        let f = fixture();
        let report = run(&f.cfg, 1_700_000_000).unwrap();
        let path = f.cfg.dir().join(format!("{}.tar.zst", report.snapshot));
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
        let err = verify(&f.cfg, Some(&report.snapshot)).unwrap_err();
        assert!(
            matches!(
                err,
                BackupError::Unreadable { .. } | BackupError::Differs { .. } | BackupError::Missing { .. }
            ),
            "{err}"
        );
        assert!(
            !f.cfg
                .dir()
                .read_dir()
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".verify"))
        );
    }

    #[test]
    fn a_changed_file_in_the_archive_is_named() {
        let f = fixture();
        let report = run(&f.cfg, 1_700_000_000).unwrap();
        // Rewrite the archive with one file's content changed (a valid archive
        // whose content no longer matches the manifest).
        let path = f.cfg.dir().join(format!("{}.tar.zst", report.snapshot));
        let mut src = tar::Archive::new(zstd::Decoder::new(File::open(&path).unwrap()).unwrap());
        let mut out = tar::Builder::new(zstd::Encoder::new(Vec::new(), 1).unwrap());
        for entry in src.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut header = entry.header().clone();
            let name = entry.path().unwrap().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if name.ends_with("c.txt") {
                data = b"GAMMA".to_vec();
            }
            header.set_size(data.len() as u64);
            header.set_cksum();
            out.append(&header, data.as_slice()).unwrap();
        }
        let bytes = out.into_inner().unwrap().finish().unwrap();
        std::fs::write(&path, bytes).unwrap();
        let err = verify(&f.cfg, None).unwrap_err();
        match err {
            BackupError::Differs { file, .. } => assert_eq!(file, rel(&f.src.join("sub/deep/c.txt"))),
            other => panic!("expected Differs, got {other}"),
        }
    }

    #[test]
    fn entries_escaping_the_snapshot_fail_verification_and_write_nothing_outside() {
        let f = fixture();
        let report = run(&f.cfg, 1_700_000_000).unwrap();
        let path = f.cfg.dir().join(format!("{}.tar.zst", report.snapshot));
        let original = std::fs::read(&path).unwrap();
        for hostile in [
            "../escaped.txt",
            "../../escaped.txt",
            "/tmp/escaped.txt",
            "a/../../escaped.txt",
        ] {
            // The snapshot's own entries, then one whose name (written raw, as a
            // hostile archive would) leaves the scratch directory.
            let mut src = tar::Archive::new(zstd::Decoder::new(original.as_slice()).unwrap());
            let mut out = tar::Builder::new(zstd::Encoder::new(Vec::new(), 1).unwrap());
            for entry in src.entries().unwrap() {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                out.append(&header, data.as_slice()).unwrap();
            }
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..hostile.len()].copy_from_slice(hostile.as_bytes());
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(4);
            h.set_cksum();
            out.append(&h, &b"evil"[..]).unwrap();
            std::fs::write(&path, out.into_inner().unwrap().finish().unwrap()).unwrap();
            let err = verify(&f.cfg, None).unwrap_err();
            assert!(
                matches!(&err, BackupError::Unreadable { message, .. } if message.contains("escapes the snapshot")),
                "{hostile}: {err}"
            );
            for outside in [
                f.cfg.dir().join("escaped.txt"),
                f.cfg.dir().parent().unwrap().join("escaped.txt"),
            ] {
                assert!(!outside.exists(), "{hostile}: {} was written", outside.display());
            }
        }
        // The untouched snapshot still verifies.
        std::fs::write(&path, &original).unwrap();
        assert!(verify(&f.cfg, None).unwrap().verified);
    }

    #[test]
    fn retention_runs_after_each_snapshot() {
        let mut f = fixture();
        f.cfg.keep_daily = Some(2);
        f.cfg.verify_after = false;
        f.cfg.command = None;
        let day = |d: u8| steward_shared::timestamp::epoch_days(2026, 1, d).unwrap() * 86_400 + 3600;
        let first = run(&f.cfg, day(1)).unwrap();
        let second = run(&f.cfg, day(2)).unwrap();
        assert!(second.deleted.is_empty());
        let third = run(&f.cfg, day(3)).unwrap();
        assert_eq!(third.deleted, vec![first.snapshot.clone()]);
        let ids: Vec<String> = list_snapshots(&f.cfg).unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![third.snapshot, second.snapshot]);
        assert!(!f.cfg.dir().join(format!("{}.tar.zst", first.snapshot)).exists());
    }

    #[test]
    fn a_failing_command_fails_the_backup_and_leaves_no_snapshot() {
        let mut f = fixture();
        f.cfg.command = Some(vec!["/bin/sh".into(), "-c".into(), "echo boom >&2; exit 3".into()]);
        let err = run(&f.cfg, 1_700_000_000).unwrap_err();
        assert!(
            matches!(&err, BackupError::Command { message, .. } if message.contains("boom")),
            "{err}"
        );
        assert!(list_snapshots(&f.cfg).unwrap().is_empty());
        let left: Vec<_> = f.cfg.dir().read_dir().unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_live_lock_blocks_a_run_and_a_stale_one_does_not() {
        let f = fixture();
        std::fs::create_dir_all(f.cfg.dir()).unwrap();
        let mut child = std::process::Command::new("/bin/sleep").arg("30").spawn().unwrap();
        std::fs::write(f.cfg.dir().join("lock"), format!("{}\n", child.id())).unwrap();
        let err = run(&f.cfg, 1_700_000_000).unwrap_err();
        assert!(
            matches!(err, BackupError::Locked(lock::LockError::Held { .. })),
            "{err}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        run(&f.cfg, 1_700_000_000).unwrap();
    }

    #[test]
    fn verify_without_snapshots_or_of_an_unknown_one_fails_clearly() {
        let f = fixture();
        assert!(matches!(verify(&f.cfg, None), Err(BackupError::NoSnapshot { .. })));
        run(&f.cfg, 1_700_000_000).unwrap();
        let err = verify(&f.cfg, Some("../../etc/passwd")).unwrap_err();
        assert!(err.to_string().contains("has no snapshot"), "{err}");
    }

    #[test]
    fn status_compares_the_last_snapshot_with_the_rpo() {
        let mut f = fixture();
        f.cfg.rpo = Some(steward_shared::units::Duration::from_secs(3600));
        assert!(super::super::status(&f.cfg, 0).unwrap().stale);
        run(&f.cfg, 1_000_000).unwrap();
        let fresh = super::super::status(&f.cfg, 1_000_000 + 60).unwrap();
        assert_eq!((fresh.stale, fresh.age_secs), (false, Some(60)));
        assert!(super::super::status(&f.cfg, 1_000_000 + 7200).unwrap().stale);
    }
}
