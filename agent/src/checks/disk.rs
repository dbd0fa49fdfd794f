//! `disk`: used %, inodes used % and free bytes per filesystem, from
//! `statvfs(2)`. Without a `mount`, every real filesystem listed in
//! `/proc/self/mountinfo` is measured (pseudo filesystems skipped, bind
//! mounts of one device measured once).
//!
//! `statvfs` can block for minutes on a dead network mount, so it runs on the
//! blocking pool, and a run is refused while the previous one is still stuck
//! there (so stuck threads never pile up).
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use steward_shared::status::{CheckStatus, Value};

use super::thresholds::{Thresholds, trim_float};
use super::{Outcome, human_bytes, verdict};

/// Filesystem types that never hold user data.
const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nfsd",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "fuse.lxcfs",
    "fuse.gvfsd-fuse",
    "fuse.portal",
    "fuse.snapfuse",
];

pub(crate) struct DiskProbe {
    mount: Option<PathBuf>,
    /// On used % (of the space available to unprivileged users, like `df`).
    pub used: Thresholds,
    /// On inodes used % (filesystems without an inode count are skipped).
    pub inodes: Thresholds,
    in_flight: Arc<AtomicBool>,
}

/// One line of `/proc/self/mountinfo`, the parts this check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub device: String,
    pub mount_point: String,
    pub fstype: String,
}

/// Parses `/proc/self/mountinfo`; malformed lines are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let device = l.nth(2)?.to_string();
            let mount_point = unescape(l.nth(1)?);
            let fstype = right.split(' ').next()?.to_string();
            Some(MountEntry {
                device,
                mount_point,
                fstype,
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') as u32 * 64 + (bytes[i + 2] - b'0') as u32 * 8 + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points worth measuring, in mount order: real filesystem types
/// only, nothing under `/proc`, `/sys` or `/dev`, each device once.
pub(crate) fn real_filesystems(entries: &[MountEntry]) -> Vec<String> {
    let mut devices = HashSet::new();
    entries
        .iter()
        .filter(|e| !PSEUDO_FS.contains(&e.fstype.as_str()))
        .filter(|e| {
            !["/proc", "/sys", "/dev"]
                .iter()
                .any(|p| e.mount_point == *p || e.mount_point.starts_with(&format!("{p}/")))
        })
        .filter(|e| devices.insert(e.device.clone()))
        .map(|e| e.mount_point.clone())
        .collect()
}

/// What `statvfs` says about one filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    pub used_percent: f64,
    pub inodes_used_percent: Option<f64>,
    pub free_bytes: u64,
}

/// Computes usage the way `df` does: used / (used + available to users).
pub(crate) fn usage(
    block_size: u64,
    blocks: u64,
    free: u64,
    available: u64,
    files: u64,
    files_free: u64,
) -> Option<Usage> {
    let used = blocks.checked_sub(free)?;
    let denominator = used + available;
    if blocks == 0 || denominator == 0 {
        return None;
    }
    let inodes_used_percent =
        (files > 0 && files_free <= files).then(|| (files - files_free) as f64 * 100.0 / files as f64);
    Some(Usage {
        used_percent: used as f64 * 100.0 / denominator as f64,
        inodes_used_percent,
        free_bytes: available.saturating_mul(block_size),
    })
}

fn measure(path: &str) -> Result<Usage, String> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| e.desc().to_string())?;
    usage(
        s.fragment_size() as u64,
        s.blocks() as u64,
        s.blocks_free() as u64,
        s.blocks_available() as u64,
        s.files() as u64,
        s.files_free() as u64,
    )
    .ok_or_else(|| "reports no blocks".to_string())
}

/// Clears the in-flight flag when the blocking job ends, however it ends.
struct InFlight(Arc<AtomicBool>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl DiskProbe {
    pub fn new(mount: Option<PathBuf>, used: Thresholds, inodes: Thresholds) -> Self {
        Self {
            mount,
            used,
            inodes,
            in_flight: Arc::new(AtomicBool::new(false)),
        }
    }

    pub async fn run(&self) -> Outcome {
        if self.in_flight.swap(true, Ordering::AcqRel) {
            return Outcome::unknown("the previous statvfs is still blocked (hung network mount?)");
        }
        let guard = InFlight(Arc::clone(&self.in_flight));
        let mount = self.mount.clone();
        let job = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let mounts = match mount {
                Some(m) => vec![m.to_string_lossy().into_owned()],
                None => match std::fs::read_to_string("/proc/self/mountinfo") {
                    Ok(text) => real_filesystems(&parse_mountinfo(&text)),
                    Err(e) => return Err(format!("cannot read /proc/self/mountinfo: {e}")),
                },
            };
            Ok(mounts
                .into_iter()
                .map(|m| {
                    let usage = measure(&m);
                    (m, usage)
                })
                .collect::<Vec<_>>())
        });
        match job.await {
            Ok(Ok(measured)) => self.evaluate(&measured),
            Ok(Err(e)) => Outcome::unknown(e),
            Err(e) => Outcome::unknown(format!("disk measurement failed: {e}")),
        }
    }

    pub fn evaluate(&self, measured: &[(String, Result<Usage, String>)]) -> Outcome {
        if measured.is_empty() {
            return Outcome::unknown("no real filesystems found in /proc/self/mountinfo; set `mount`");
        }
        let mut status = CheckStatus::Ok;
        let mut values = Vec::with_capacity(measured.len() * 3);
        let mut problems = Vec::new();
        let mut details = Vec::new();
        let mut fullest: Option<(&str, f64)> = None;
        for (mount, result) in measured {
            let u = match result {
                Ok(u) => u,
                Err(e) => {
                    status = status.worst(CheckStatus::Unknown);
                    problems.push(format!("{mount}: cannot measure: {e}"));
                    continue;
                }
            };
            let used_status = self.used.status(u.used_percent);
            let mut text = format!(
                "{mount} {}% used{}",
                trim_float(u.used_percent),
                verdict(used_status, &self.used)
            );
            text.push_str(&format!(", {} free", human_bytes(u.free_bytes)));
            let mut mount_status = used_status;
            values.push(Value::new(format!("used_percent:{mount}"), u.used_percent, "percent"));
            if let Some(inodes) = u.inodes_used_percent {
                let inode_status = self.inodes.status(inodes);
                mount_status = mount_status.worst(inode_status);
                text.push_str(&format!(
                    ", inodes {}% used{}",
                    trim_float(inodes),
                    verdict(inode_status, &self.inodes)
                ));
                values.push(Value::new(format!("inodes_used_percent:{mount}"), inodes, "percent"));
            }
            values.push(Value::new(format!("free_bytes:{mount}"), u.free_bytes as f64, "bytes"));
            status = status.worst(mount_status);
            if mount_status != CheckStatus::Ok {
                problems.push(text.clone());
            }
            details.push(text);
            if fullest.is_none_or(|(_, pct)| u.used_percent > pct) {
                fullest = Some((mount, u.used_percent));
            }
        }
        let message = if measured.len() == 1 {
            problems.into_iter().chain(details).next().unwrap_or_default()
        } else if problems.is_empty() {
            let (m, pct) = fullest.unwrap_or(("-", 0.0));
            format!(
                "{} filesystems ok; fullest {m} at {}% used",
                measured.len(),
                trim_float(pct)
            )
        } else {
            format!("{} (of {} filesystems)", problems.join("; "), measured.len())
        };
        Outcome::new(status, values, message)
    }
}

#[cfg(test)]
mod tests {
    use super::super::thresholds::Direction;
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
23 1 0:22 / /sys rw - sysfs sysfs rw
25 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
26 25 0:5 / /dev rw - devtmpfs udev rw
30 25 0:25 / /run rw - tmpfs tmpfs rw
31 25 254:2 / /srv/my\\040data rw - xfs /dev/vda2 rw
32 25 254:1 /var/lib/x /mnt/bind rw - ext4 /dev/vda1 rw
33 25 7:0 / /snap/core/1 ro - squashfs /dev/loop0 ro
34 23 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
35 25 0:40 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw
36 25 0:50 / /home rw - nfs4 srv:/home rw
garbage line
";

    fn probe() -> DiskProbe {
        DiskProbe::new(
            None,
            Thresholds {
                warning: Some(80.0),
                critical: Some(90.0),
                direction: Direction::HigherIsWorse,
            },
            Thresholds {
                warning: None,
                critical: Some(95.0),
                direction: Direction::HigherIsWorse,
            },
        )
    }

    #[test]
    fn parses_mountinfo_and_keeps_real_filesystems_once() {
        let entries = parse_mountinfo(MOUNTINFO);
        assert_eq!(entries.len(), 11);
        assert_eq!(
            entries[2],
            MountEntry {
                device: "254:1".into(),
                mount_point: "/".into(),
                fstype: "ext4".into()
            }
        );
        assert_eq!(real_filesystems(&entries), ["/", "/srv/my data", "/home"]);
    }

    #[test]
    fn usage_matches_df() {
        // 1000 blocks of 4 KiB, 300 free of which 250 available to users.
        let u = usage(4096, 1000, 300, 250, 100, 25).unwrap();
        assert!((u.used_percent - 700.0 * 100.0 / 950.0).abs() < 1e-9);
        assert_eq!(u.free_bytes, 250 * 4096);
        assert_eq!(u.inodes_used_percent, Some(75.0));
        assert_eq!(
            usage(4096, 1000, 300, 250, 0, 0).unwrap().inodes_used_percent,
            None,
            "no inode count (btrfs)"
        );
        assert_eq!(usage(4096, 0, 0, 0, 0, 0), None);
    }

    #[test]
    fn several_mounts_give_one_result_with_the_worst_status() {
        let ok = Usage {
            used_percent: 40.0,
            inodes_used_percent: Some(10.0),
            free_bytes: 1 << 30,
        };
        let full = Usage {
            used_percent: 92.5,
            inodes_used_percent: Some(10.0),
            free_bytes: 1 << 20,
        };
        let out = probe().evaluate(&[
            ("/".into(), Ok(ok)),
            ("/data".into(), Ok(full)),
            ("/nfs".into(), Err("EIO".into())),
        ]);
        assert_eq!(out.status, CheckStatus::Critical);
        assert!(
            out.message.contains("/data 92.5% used (critical: >= 90)"),
            "{}",
            out.message
        );
        assert!(out.message.contains("/nfs: cannot measure"), "{}", out.message);
        let names: Vec<&str> = out.values.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "used_percent:/",
                "inodes_used_percent:/",
                "free_bytes:/",
                "used_percent:/data",
                "inodes_used_percent:/data",
                "free_bytes:/data"
            ]
        );
        let all_ok = probe().evaluate(&[("/".into(), Ok(ok)), ("/b".into(), Ok(ok))]);
        assert_eq!(all_ok.status, CheckStatus::Ok);
        assert_eq!(all_ok.message, "2 filesystems ok; fullest / at 40% used");
        let inodes = Usage {
            used_percent: 10.0,
            inodes_used_percent: Some(96.0),
            free_bytes: 1,
        };
        assert_eq!(
            probe().evaluate(&[("/".into(), Ok(inodes))]).status,
            CheckStatus::Critical
        );
        assert_eq!(probe().evaluate(&[]).status, CheckStatus::Unknown);
    }

    #[tokio::test]
    async fn measures_the_real_root_and_all_filesystems() {
        let mut p = probe();
        p.mount = Some("/".into());
        let out = p.run().await;
        assert_ne!(out.status, CheckStatus::Unknown, "{out:?}");
        assert!(out.values.iter().any(|v| v.name == "used_percent:/"), "{out:?}");
        let all = probe().run().await;
        assert!(!all.values.is_empty() || all.status == CheckStatus::Unknown, "{all:?}");
        assert!(!p.in_flight.load(Ordering::Acquire), "flag cleared after the run");
    }
}
