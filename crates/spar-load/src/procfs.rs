//! What `/proc` says about a process: resident memory, CPU time, file-descriptor limits.

use std::time::Duration;

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now, in KiB.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size since start (or since [`reset_peak`]), in KiB.
    pub hwm_kib: u64,
}

impl Memory {
    /// Resident now, in MB (10^6 bytes).
    pub fn rss_mb(&self) -> f64 {
        self.rss_kib as f64 * 1024.0 / 1e6
    }

    /// Peak, in MB.
    pub fn hwm_mb(&self) -> f64 {
        self.hwm_kib as f64 * 1024.0 / 1e6
    }
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Memory { rss_kib: field("VmRSS:"), hwm_kib: field("VmHWM:") })
}

/// Resets the peak resident size (`VmHWM`) of `pid` to its current size (Linux
/// `clear_refs` value 5; the caller must own the process).
pub fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    Ok(())
}

/// User plus system CPU time `pid` has used (from `/proc/<pid>/stat`, clock ticks of
/// 10 ms, the Linux default).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces: fields follow the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(Duration::from_millis((ticks(11) + ticks(12)) * 10))
}

/// The soft and hard limits on open files of this process.
pub fn nofile_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let nums: Vec<u64> =
        line.trim_start_matches("Max open files").split_whitespace().filter_map(|v| v.parse().ok()).collect();
    Some((*nums.first()?, *nums.get(1)?))
}

/// Makes sure this process (and children it starts later) may open `needed` files:
/// raises the soft limit to the hard limit with `prlimit(1)` when it is lower than
/// `needed`. Returns the soft limit in force afterwards.
pub fn ensure_nofile(needed: u64) -> u64 {
    let Some((soft, hard)) = nofile_limits() else { return 0 };
    if soft >= needed {
        return soft;
    }
    let pid = std::process::id().to_string();
    let status =
        std::process::Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={hard}:{hard}")]).status();
    if !matches!(status, Ok(s) if s.success()) {
        tracing::warn!(soft, hard, needed, "cannot raise the open-file limit (prlimit failed); raise `ulimit -n`");
    }
    let now = nofile_limits().map_or(soft, |(s, _)| s);
    if now < needed {
        tracing::warn!(soft = now, hard, needed, "open-file limit is below what this run needs; raise `ulimit -Hn`");
    }
    now
}
