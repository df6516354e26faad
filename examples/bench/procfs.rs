//! What the benchmark reads from `/proc`: a process's CPU time (for the warm pool's slots)
//! and its resident memory (for the server), and the reset of its peak.

/// The unit of CPU times in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
pub(crate) const USER_HZ: f64 = 100.0;

/// A process's user plus system CPU time, in clock ticks, from `/proc/<pid>/stat`.
pub(crate) fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, ppid, ..., utime (the 12th), stime.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Resets a process's `VmHWM` to its current resident size.
pub(crate) fn reset_peak_rss(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readers_read_this_process() {
        let pid = std::process::id();
        assert!(proc_status_kib(pid, "VmRSS").is_some_and(|kib| kib > 0));
        assert!(proc_status_kib(pid, "NoSuchField").is_none());
        assert!(cpu_ticks(i32::try_from(pid).expect("a pid fits an i32")).is_some());
    }
}
