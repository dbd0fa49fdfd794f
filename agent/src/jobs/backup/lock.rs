//! The per-backup lock file (`DEST/NAME/lock`, holding the holder's PID).
//!
//! A lock is cleared only when its holder is *provably* gone: the PID it names
//! no longer exists on this machine (restic #3219: backups silently blocked for
//! days by a stale lock). A live PID — even one reused by an unrelated process —
//! keeps the lock: blocking a backup is recoverable, two writers are not.
//! The lock is created atomically with its content (a temporary file
//! hard-linked to the lock name), so no reader ever sees an empty lock.
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("backup is locked by running process {pid} ({path})")]
    Held { pid: i32, path: PathBuf },
    #[error("lock file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A held lock; dropping it removes the lock file.
#[derive(Debug)]
pub struct LockGuard {
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this PID exists (signal 0 probe; `EPERM` means it exists).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(_) => true,
    }
}

/// Takes the lock at `path` for this process, clearing a stale one.
pub fn acquire(path: &Path) -> Result<LockGuard, LockError> {
    acquire_as(path, std::process::id() as i32)
}

/// Takes the lock at `path` on behalf of `pid` (tests use other PIDs).
pub fn acquire_as(path: &Path, pid: i32) -> Result<LockGuard, LockError> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp-{pid}-{:08x}", rand::random::<u32>()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(format!("{pid}\n").as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    // Two rounds: the second follows the removal of a stale lock.
    let mut result = Err(LockError::Held {
        pid: 0,
        path: path.to_path_buf(),
    });
    for _ in 0..2 {
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {
                result = Ok(LockGuard {
                    path: path.to_path_buf(),
                });
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
                match holder {
                    Some(holder) if pid_alive(holder) => {
                        result = Err(LockError::Held {
                            pid: holder,
                            path: path.to_path_buf(),
                        });
                        break;
                    }
                    // Holder gone, or a lock no PID can be read from (it was
                    // never written by this code): stale.
                    _ => {
                        tracing::warn!(lock = %path.display(), holder = ?holder, "clearing stale backup lock");
                        if let Err(e) = std::fs::remove_file(path)
                            && e.kind() != std::io::ErrorKind::NotFound
                        {
                            result = Err(io(e));
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                result = Err(io(e));
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PID that provably does not exist: a child that has exited and been reaped.
    fn dead_pid() -> i32 {
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        pid
    }

    #[test]
    fn a_stale_lock_from_a_dead_pid_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        std::fs::write(&path, format!("{}\n", dead_pid())).unwrap();
        let guard = acquire(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn a_live_holder_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let mut child = std::process::Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let held = acquire_as(&path, child.id() as i32).unwrap();
        let err = acquire(&path).unwrap_err();
        assert!(
            matches!(err, LockError::Held { pid, .. } if pid == child.id() as i32),
            "{err}"
        );
        // Once the holder is gone, the lock is cleared.
        child.kill().unwrap();
        child.wait().unwrap();
        std::mem::forget(held);
        acquire(&path).unwrap();
    }

    #[test]
    fn garbage_in_a_lock_file_counts_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        std::fs::write(&path, "not a pid").unwrap();
        acquire(&path).unwrap();
        assert!(
            dir.path()
                .read_dir()
                .unwrap()
                .all(|e| !e.unwrap().file_name().to_string_lossy().contains("tmp"))
        );
    }
}
