//! `cpu`: load averages from `/proc/loadavg`, load per core, and CPU busy %
//! since the previous run from `/proc/stat` counter deltas (the first run
//! reports load only).
use std::sync::Mutex;
use steward_shared::status::Value;

use super::thresholds::{Thresholds, trim_float};
use super::{Outcome, verdict};

pub(crate) struct CpuProbe {
    /// On the 1-minute load average divided by the number of cores.
    pub load: Thresholds,
    /// On CPU busy % since the previous run.
    pub busy: Thresholds,
    previous: Mutex<Option<CpuTimes>>,
}

/// Aggregate CPU time counters (clock ticks) from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// user + nice + system + idle + iowait + irq + softirq + steal.
    pub total: u64,
    /// idle + iowait.
    pub idle: u64,
}

/// Parses `/proc/stat`: the aggregate counters and the number of `cpuN` lines.
pub(crate) fn parse_stat(text: &str) -> Result<(CpuTimes, usize), String> {
    let mut times = None;
    let mut cores = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                // guest and guest_nice are already counted in user and nice.
                let n: Vec<u64> = fields.take(8).map(|f| f.parse().unwrap_or(0)).collect();
                if n.len() < 4 {
                    return Err(format!("short cpu line in /proc/stat: {line:?}"));
                }
                let idle = n[3] + n.get(4).copied().unwrap_or(0);
                times = Some(CpuTimes {
                    total: n.iter().sum(),
                    idle,
                });
            }
            Some(f) if f.len() > 3 && f.starts_with("cpu") && f[3..].bytes().all(|b| b.is_ascii_digit()) => cores += 1,
            _ => {}
        }
    }
    let times = times.ok_or("no cpu line in /proc/stat")?;
    Ok((times, cores))
}

/// Parses the three load averages of `/proc/loadavg`.
pub(crate) fn parse_loadavg(text: &str) -> Result<[f64; 3], String> {
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Ok([a, b, c]),
        _ => Err(format!("unexpected /proc/loadavg: {:?}", text.trim())),
    }
}

/// Busy % between two samples; `None` when no time passed or the counters
/// went backwards (e.g. CPU hotplug).
pub(crate) fn busy_percent(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let idle = after.idle.checked_sub(before.idle)?;
    if total == 0 || idle > total {
        return None;
    }
    Some((total - idle) as f64 * 100.0 / total as f64)
}

impl CpuProbe {
    pub fn new(load: Thresholds, busy: Thresholds) -> Self {
        Self {
            load,
            busy,
            previous: Mutex::new(None),
        }
    }

    pub fn run(&self) -> Outcome {
        let load = match std::fs::read_to_string("/proc/loadavg") {
            Ok(text) => match parse_loadavg(&text) {
                Ok(l) => l,
                Err(e) => return Outcome::unknown(e),
            },
            Err(e) => return Outcome::unknown(format!("cannot read /proc/loadavg: {e}")),
        };
        let stat = std::fs::read_to_string("/proc/stat")
            .map_err(|e| e.to_string())
            .and_then(|t| parse_stat(&t));
        let (busy, cores) = match stat {
            Ok((now, cores)) => {
                let mut previous = self.previous.lock().unwrap_or_else(|e| e.into_inner());
                let busy = previous.and_then(|before| busy_percent(before, now));
                *previous = Some(now);
                (busy, cores)
            }
            Err(_) => (None, 0),
        };
        let cores = if cores > 0 {
            cores
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        self.evaluate(load, cores, busy)
    }

    pub fn evaluate(&self, load: [f64; 3], cores: usize, busy: Option<f64>) -> Outcome {
        let per_core = load[0] / cores.max(1) as f64;
        let mut status = self.load.status(per_core);
        let mut message = format!(
            "load {} {} {} on {cores} cores ({} per core){}",
            trim_float(load[0]),
            trim_float(load[1]),
            trim_float(load[2]),
            trim_float(per_core),
            verdict(status, &self.load)
        );
        let mut values = vec![
            Value::new("load1", load[0], ""),
            Value::new("load5", load[1], ""),
            Value::new("load15", load[2], ""),
            Value::new("load1_per_core", per_core, ""),
            Value::new("cores", cores as f64, "count"),
        ];
        if let Some(busy) = busy {
            let busy_status = self.busy.status(busy);
            status = status.worst(busy_status);
            message.push_str(&format!(
                ", CPU {}% busy{}",
                trim_float(busy),
                verdict(busy_status, &self.busy)
            ));
            values.push(Value::new("busy_percent", busy, "percent"));
        }
        Outcome::new(status, values, message)
    }
}

#[cfg(test)]
mod tests {
    use super::super::thresholds::Direction;
    use super::*;
    use steward_shared::status::CheckStatus;

    const STAT: &str = "cpu  100 5 50 800 20 3 2 10 7 0\ncpu0 50 2 25 400 10 1 1 5 3 0\n\
cpu1 50 3 25 400 10 2 1 5 4 0\nintr 12345 0 0\nctxt 999\nbtime 1700000000\ncpus_running 1\n";

    fn probe() -> CpuProbe {
        CpuProbe::new(
            Thresholds {
                warning: Some(1.0),
                critical: Some(2.0),
                direction: Direction::HigherIsWorse,
            },
            Thresholds {
                warning: Some(90.0),
                critical: None,
                direction: Direction::HigherIsWorse,
            },
        )
    }

    #[test]
    fn parses_stat_and_counts_cores() {
        let (t, cores) = parse_stat(STAT).unwrap();
        assert_eq!(cores, 2, "cpus_running is not a core");
        assert_eq!(t, CpuTimes { total: 990, idle: 820 });
        assert!(parse_stat("intr 1\n").is_err());
    }

    #[test]
    fn busy_percent_from_deltas() {
        let a = CpuTimes { total: 1000, idle: 800 };
        let b = CpuTimes { total: 1200, idle: 850 };
        assert_eq!(busy_percent(a, b), Some(75.0));
        assert_eq!(busy_percent(a, a), None, "no time passed");
        assert_eq!(busy_percent(b, a), None, "counters went backwards");
    }

    #[test]
    fn parses_loadavg() {
        assert_eq!(parse_loadavg("0.29 0.57 0.28 1/82 9557\n").unwrap(), [0.29, 0.57, 0.28]);
        assert!(parse_loadavg("garbage").is_err());
    }

    #[test]
    fn load_per_core_is_judged() {
        let out = probe().evaluate([3.0, 1.0, 0.5], 2, None);
        assert_eq!(out.status, CheckStatus::Warning, "1.5 per core");
        assert!(
            out.message.contains("(1.5 per core) (warning: >= 1)"),
            "{}",
            out.message
        );
        assert!(!out.values.iter().any(|v| v.name == "busy_percent"));
        let out = probe().evaluate([0.5, 1.0, 0.5], 2, Some(95.0));
        assert_eq!(out.status, CheckStatus::Warning, "busy");
        let out = probe().evaluate([4.0, 1.0, 0.5], 2, Some(10.0));
        assert_eq!(out.status, CheckStatus::Critical);
    }

    #[test]
    fn first_run_reports_load_and_second_adds_busy() {
        let p = probe();
        let first = p.run();
        assert!(!first.values.iter().any(|v| v.name == "busy_percent"), "{first:?}");
        // The counters move in 10 ms ticks, so two quick reads may show no
        // change; busy_percent is then left out rather than reported as 0.
        let second = p.run();
        assert_ne!(second.status, CheckStatus::Unknown, "{second:?}");
    }
}
