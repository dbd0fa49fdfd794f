//! `memory`: memory and swap use, read directly from `/proc/meminfo` (one
//! small read per run; no process table, no `sysinfo::System`).
use steward_shared::status::Value;

use super::thresholds::{Thresholds, trim_float};
use super::{Outcome, human_bytes, verdict};

pub(crate) struct MemoryProbe {
    /// On memory used %.
    pub used: Thresholds,
    /// On swap used % (not evaluated when there is no swap).
    pub swap: Thresholds,
}

/// The fields of `/proc/meminfo` this check uses, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemInfo {
    pub total: u64,
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

/// Parses `/proc/meminfo`. `MemAvailable` (Linux ≥ 3.14) is preferred; older
/// kernels fall back to `MemFree + Buffers + Cached`.
pub(crate) fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let (mut total, mut available, mut free, mut buffers, mut cached) = (None, None, None, None, None);
    let (mut swap_total, mut swap_free) = (None, None);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            "MemFree" => &mut free,
            "Buffers" => &mut buffers,
            "Cached" => &mut cached,
            "SwapTotal" => &mut swap_total,
            "SwapFree" => &mut swap_free,
            _ => continue,
        };
        let mut parts = rest.split_whitespace();
        let n: u64 = parts
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad meminfo line {line:?}"))?;
        let scale = match parts.next() {
            Some("kB") => 1024,
            None => 1,
            Some(other) => return Err(format!("unexpected unit {other:?} in meminfo")),
        };
        *slot = Some(n.saturating_mul(scale));
    }
    let total = total.filter(|t| *t > 0).ok_or("no MemTotal in /proc/meminfo")?;
    let available = match available {
        Some(a) => a,
        None => free.unwrap_or(0) + buffers.unwrap_or(0) + cached.unwrap_or(0),
    }
    .min(total);
    let swap_total = swap_total.unwrap_or(0);
    Ok(MemInfo {
        total,
        available,
        swap_total,
        swap_free: swap_free.unwrap_or(0).min(swap_total),
    })
}

impl MemoryProbe {
    pub fn run(&self) -> Outcome {
        match std::fs::read_to_string("/proc/meminfo") {
            Ok(text) => match parse_meminfo(&text) {
                Ok(info) => self.evaluate(&info),
                Err(e) => Outcome::unknown(e),
            },
            Err(e) => Outcome::unknown(format!("cannot read /proc/meminfo: {e}")),
        }
    }

    pub fn evaluate(&self, m: &MemInfo) -> Outcome {
        let used_pct = (m.total - m.available) as f64 * 100.0 / m.total as f64;
        let mut status = self.used.status(used_pct);
        let mut message = format!(
            "memory {}% used{} ({} available of {})",
            trim_float(used_pct),
            verdict(status, &self.used),
            human_bytes(m.available),
            human_bytes(m.total)
        );
        let mut values = vec![
            Value::new("used_percent", used_pct, "percent"),
            Value::new("available_bytes", m.available as f64, "bytes"),
            Value::new("total_bytes", m.total as f64, "bytes"),
        ];
        if m.swap_total > 0 {
            let swap_pct = (m.swap_total - m.swap_free) as f64 * 100.0 / m.swap_total as f64;
            let swap_status = self.swap.status(swap_pct);
            status = status.worst(swap_status);
            message.push_str(&format!(
                ", swap {}% used{}",
                trim_float(swap_pct),
                verdict(swap_status, &self.swap)
            ));
            values.push(Value::new("swap_used_percent", swap_pct, "percent"));
        } else {
            message.push_str(", no swap");
            values.push(Value::new("swap_used_percent", 0.0, "percent"));
        }
        Outcome::new(status, values, message)
    }
}

#[cfg(test)]
mod tests {
    use super::super::thresholds::Direction;
    use super::*;
    use steward_shared::status::CheckStatus;

    const MEMINFO: &str = "MemTotal:        8000000 kB\nMemFree:          500000 kB\nMemAvailable:    2000000 kB\n\
Buffers:          100000 kB\nCached:          1000000 kB\nSwapCached:            0 kB\n\
SwapTotal:       1000000 kB\nSwapFree:         250000 kB\nHugePages_Total:       0\n";

    fn probe() -> MemoryProbe {
        MemoryProbe {
            used: Thresholds {
                warning: Some(70.0),
                critical: Some(90.0),
                direction: Direction::HigherIsWorse,
            },
            swap: Thresholds {
                warning: Some(50.0),
                critical: None,
                direction: Direction::HigherIsWorse,
            },
        }
    }

    #[test]
    fn parses_meminfo() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 8_000_000 * 1024);
        assert_eq!(m.available, 2_000_000 * 1024);
        assert_eq!(m.swap_total, 1_000_000 * 1024);
        assert_eq!(m.swap_free, 250_000 * 1024);
    }

    #[test]
    fn old_kernels_without_memavailable_fall_back() {
        let m = parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n").unwrap();
        assert_eq!(m.available, 400 * 1024);
        assert_eq!(m.swap_total, 0);
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: lots kB\n").is_err());
    }

    #[test]
    fn memory_and_swap_are_judged() {
        let out = probe().evaluate(&parse_meminfo(MEMINFO).unwrap());
        // 75% memory used -> warning; 75% swap used -> warning.
        assert_eq!(out.status, CheckStatus::Warning, "{out:?}");
        assert!(
            out.message.starts_with("memory 75% used (warning: >= 70)"),
            "{}",
            out.message
        );
        let get = |n: &str| out.values.iter().find(|v| v.name == n).unwrap().value;
        assert_eq!(get("used_percent"), 75.0);
        assert_eq!(get("swap_used_percent"), 75.0);
        assert_eq!(get("available_bytes"), 2_048_000_000.0);
    }

    #[test]
    fn reads_the_real_proc_meminfo() {
        let out = probe().run();
        assert_ne!(out.status, CheckStatus::Unknown, "{out:?}");
    }
}
