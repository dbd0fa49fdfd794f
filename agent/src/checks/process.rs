//! `process`: how many processes match a name (`/proc/PID/comm`, or the
//! basename of the command for names longer than the kernel's 15-byte
//! `comm`), or whether the process named by a pid file is alive. Zombies do
//! not count. The `/proc` scan runs on the blocking pool.
use std::path::{Path, PathBuf};
use steward_shared::status::{CheckStatus, Value};

use super::Outcome;

/// The kernel truncates `comm` to this many bytes.
const COMM_LEN: usize = 15;

pub(crate) enum Target {
    Name(String),
    Pidfile(PathBuf),
}

pub(crate) struct ProcessProbe {
    pub target: Target,
    /// Fewest matching processes that is `ok`.
    pub min: u32,
    /// Most matching processes that is `ok`.
    pub max: Option<u32>,
}

/// Whether a process with this `comm` and command line is `name`.
pub(crate) fn matches(name: &str, comm: &str, cmdline: impl FnOnce() -> Option<String>) -> bool {
    if comm == name {
        return true;
    }
    // A long name shows in comm truncated; confirm it with the command's basename.
    if name.len() > COMM_LEN && name.as_bytes().get(..COMM_LEN) == Some(comm.as_bytes()) {
        return cmdline().is_some_and(|cmd| {
            let argv0 = cmd.split('\0').next().unwrap_or("");
            let first_word = argv0.split(' ').next().unwrap_or("");
            basename(argv0) == name || basename(first_word) == name
        });
    }
    false
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// True when `/proc/PID/stat` says the process is a zombie (or dead).
pub(crate) fn is_zombie(stat: &str) -> bool {
    // The state follows the last ')' (comm may contain parentheses and spaces).
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|s| s == "Z" || s == "X")
}

/// Counts live processes named `name` under `proc_dir`.
pub(crate) fn count_by_name(proc_dir: &Path, name: &str) -> std::io::Result<u32> {
    let mut count = 0;
    for entry in std::fs::read_dir(proc_dir)? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let dir = proc_dir.join(pid);
        // Processes may exit between listing and reading: skip them silently.
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let cmdline = || {
            std::fs::read(dir.join("cmdline"))
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        if matches(name, comm.trim_end_matches('\n'), cmdline)
            && !std::fs::read_to_string(dir.join("stat")).is_ok_and(|s| is_zombie(&s))
        {
            count += 1;
        }
    }
    Ok(count)
}

/// Whether the process named in `pidfile` is alive: `Ok(Some(pid))` if so.
pub(crate) fn pidfile_alive(proc_dir: &Path, pidfile: &Path) -> Result<Option<u32>, String> {
    let text = std::fs::read_to_string(pidfile).map_err(|e| format!("cannot read {}: {e}", pidfile.display()))?;
    let pid: u32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{} does not hold a process id", pidfile.display()))?;
    match std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")) {
        Ok(stat) if !is_zombie(&stat) => Ok(Some(pid)),
        _ => Ok(None),
    }
}

impl ProcessProbe {
    pub async fn run(&self) -> Outcome {
        let proc_dir = PathBuf::from("/proc");
        let job = match &self.target {
            Target::Name(name) => {
                let name = name.clone();
                tokio::task::spawn_blocking(move || {
                    count_by_name(&proc_dir, &name)
                        .map(|n| (n, format!("named {name}")))
                        .map_err(|e| format!("cannot list /proc: {e}"))
                })
            }
            Target::Pidfile(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || match pidfile_alive(&proc_dir, &path) {
                    Ok(Some(pid)) => Ok((1, format!("with pid {pid} from {}", path.display()))),
                    Ok(None) => Ok((0, format!("from {}", path.display()))),
                    Err(e) => Err(e),
                })
            }
        };
        match job.await {
            Ok(Ok((count, what))) => self.evaluate(count, &what),
            // A missing or garbled pid file means the service is not running as configured.
            Ok(Err(e)) if matches!(self.target, Target::Pidfile(_)) => {
                Outcome::new(CheckStatus::Critical, vec![Value::new("count", 0.0, "count")], e)
            }
            Ok(Err(e)) => Outcome::unknown(e),
            Err(e) => Outcome::unknown(format!("process scan failed: {e}")),
        }
    }

    pub fn evaluate(&self, count: u32, what: &str) -> Outcome {
        let in_range = count >= self.min && self.max.is_none_or(|max| count <= max);
        let status = if in_range {
            CheckStatus::Ok
        } else {
            CheckStatus::Critical
        };
        let expected = match self.max {
            Some(max) if max == self.min => format!("{max}"),
            Some(max) => format!("{}..{max}", self.min),
            None => format!("at least {}", self.min),
        };
        let noun = if count == 1 { "process" } else { "processes" };
        let mut message = format!("{count} {noun} {what}");
        if !in_range {
            message.push_str(&format!(", expected {expected}"));
        }
        Outcome::new(status, vec![Value::new("count", count as f64, "count")], message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_comm_or_long_command_basenames() {
        assert!(matches("sshd", "sshd", || None));
        assert!(!matches("sshd", "sshd-session", || None));
        let long = "steward-controlplane";
        let comm = &long[..15];
        assert!(matches(long, comm, || Some(
            "/usr/bin/steward-controlplane\0--config\0x".into()
        )));
        assert!(!matches(long, comm, || Some(
            "/usr/bin/steward-controlplane-old\0".into()
        )));
        assert!(!matches(long, comm, || None), "process gone");
    }

    #[test]
    fn zombies_are_detected_after_the_last_paren() {
        assert!(is_zombie("123 (a) b) Z 1 2 3"));
        assert!(!is_zombie("123 (sleep) S 1 2 3"));
        assert!(!is_zombie("garbage"));
    }

    #[test]
    fn counts_in_a_fake_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        let add = |pid: &str, comm: &str, state: &str| {
            let p = dir.path().join(pid);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(p.join("stat"), format!("{pid} ({comm}) {state} 1 1")).unwrap();
            std::fs::write(p.join("cmdline"), format!("/usr/sbin/{comm}\0")).unwrap();
        };
        add("10", "nginx", "S");
        add("11", "nginx", "S");
        add("12", "nginx", "Z");
        add("13", "sshd", "R");
        std::fs::create_dir(dir.path().join("self")).unwrap();
        assert_eq!(count_by_name(dir.path(), "nginx").unwrap(), 2);
        assert_eq!(count_by_name(dir.path(), "postgres").unwrap(), 0);

        let pidfile = dir.path().join("nginx.pid");
        std::fs::write(&pidfile, "11\n").unwrap();
        assert_eq!(pidfile_alive(dir.path(), &pidfile).unwrap(), Some(11));
        std::fs::write(&pidfile, "12\n").unwrap();
        assert_eq!(pidfile_alive(dir.path(), &pidfile).unwrap(), None, "zombie");
        std::fs::write(&pidfile, "99\n").unwrap();
        assert_eq!(pidfile_alive(dir.path(), &pidfile).unwrap(), None, "gone");
        std::fs::write(&pidfile, "nope").unwrap();
        assert!(pidfile_alive(dir.path(), &pidfile).is_err());
    }

    #[test]
    fn counts_are_judged_against_min_and_max() {
        let p = ProcessProbe {
            target: Target::Name("x".into()),
            min: 1,
            max: Some(3),
        };
        assert_eq!(p.evaluate(0, "named x").status, CheckStatus::Critical);
        assert_eq!(p.evaluate(0, "named x").message, "0 processes named x, expected 1..3");
        assert_eq!(p.evaluate(1, "named x").status, CheckStatus::Ok);
        assert_eq!(p.evaluate(3, "named x").status, CheckStatus::Ok);
        assert_eq!(p.evaluate(4, "named x").status, CheckStatus::Critical);
    }

    #[tokio::test]
    async fn finds_this_test_process_and_misses_a_stale_pidfile() {
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_string();
        let p = ProcessProbe {
            target: Target::Name(comm),
            min: 1,
            max: None,
        };
        assert_eq!(p.run().await.status, CheckStatus::Ok);
        let dir = tempfile::tempdir().unwrap();
        let p = ProcessProbe {
            target: Target::Pidfile(dir.path().join("missing.pid")),
            min: 1,
            max: None,
        };
        let out = p.run().await;
        assert_eq!(out.status, CheckStatus::Critical, "{out:?}");
    }
}
