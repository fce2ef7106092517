//! Who owns a temp file or folder: this process's identity as recorded in run-folder markers and
//! staging names, and whether a recorded owner is still alive.
//!
//! A pid alone is not an identity: pids are recycled, and the same number means another process
//! in another PID namespace (a container) or after a reboot. An [`Owner`] is the pid plus the
//! process's start time (field 22 of `/proc/<pid>/stat`), the boot id
//! (`/proc/sys/kernel/random/boot_id`) and the PID namespace (`/proc/self/ns/pid`).
//!
//! [`Owner::liveness`] answers for a recorded owner:
//! - another boot: [`Liveness::Dead`] (nothing survives a reboot);
//! - this boot, another PID namespace: [`Liveness::Unknown`] (its pids cannot be checked from
//!   here), so the caller leaves the thing alone;
//! - this boot and namespace: alive only if `/proc/<pid>/stat` shows the recorded start time.

use std::fmt;

/// A process's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Process id (in `pid_ns`).
    pub pid: u32,
    /// Start time, clock ticks since boot.
    pub start: u64,
    /// Boot id, lowercase hex without dashes (empty where the kernel does not say).
    pub boot: String,
    /// PID namespace inode (0 where the kernel does not say).
    pub pid_ns: u64,
}

/// Whether a recorded owner still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The process runs: leave its files alone.
    Alive,
    /// The process is gone: its files may be removed.
    Dead,
    /// Cannot be told from here (another PID namespace): leave its files alone.
    Unknown,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner { pid, start: process_start_time(pid).unwrap_or(0), boot: boot_id(), pid_ns: pid_namespace() }
    }

    /// Whether the process recorded as `self` still runs, judged from this process.
    pub fn liveness(&self) -> Liveness {
        let here = Owner::current();
        if !self.boot.is_empty() && !here.boot.is_empty() && self.boot != here.boot {
            return Liveness::Dead;
        }
        if self.pid_ns != here.pid_ns || self.boot.is_empty() || here.boot.is_empty() {
            return Liveness::Unknown;
        }
        match process_start_time(self.pid) {
            Some(start) if start == self.start => Liveness::Alive,
            _ => Liveness::Dead,
        }
    }

    /// The short form used in staging names: `<boot8>-<pidns>-<pid>-<start>`.
    pub fn tag(&self) -> String {
        let boot8: String = self.boot.chars().take(8).collect();
        format!("{boot8}-{}-{}-{}", self.pid_ns, self.pid, self.start)
    }

    /// Parses [`Owner::tag`]; the boot id is then its first 8 hex digits only, which
    /// [`Owner::liveness`] compares as a prefix.
    pub fn from_tag(tag: &str) -> Option<Owner> {
        let mut it = tag.split('-');
        let boot = it.next()?;
        if boot.len() != 8 || !boot.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let pid_ns = it.next()?.parse().ok()?;
        let pid = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        if it.next().is_some() {
            return None;
        }
        let full = boot_id();
        // A tag's boot prefix that matches this boot stands for this boot.
        let boot = if full.starts_with(boot) { full } else { boot.to_string() };
        Some(Owner { pid, start, boot, pid_ns })
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} (started at tick {}, boot {}, pid namespace {})",
            self.pid, self.start, self.boot, self.pid_ns
        )
    }
}

/// A process's start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`), if it exists.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_ascii_lowercase())
        .unwrap_or_default()
}

fn pid_namespace() -> u64 {
    // "pid:[4026531836]"
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|l| {
            let s = l.to_string_lossy().into_owned();
            s.trim_start_matches("pid:[").trim_end_matches(']').parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_an_exited_one_dead() {
        let me = Owner::current();
        assert_eq!(me.liveness(), Liveness::Alive);
        assert_eq!(Owner::from_tag(&me.tag()), Some(me.clone()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(Owner { pid, ..me.clone() }.liveness(), Liveness::Dead);
        // Same pid, other start time: a recycled pid.
        assert_eq!(Owner { start: me.start + 1, ..me.clone() }.liveness(), Liveness::Dead);
        // Another boot: dead; another PID namespace: not ours to judge.
        assert_eq!(Owner { boot: "0".repeat(32), ..me.clone() }.liveness(), Liveness::Dead);
        assert_eq!(Owner { pid_ns: me.pid_ns + 1, ..me.clone() }.liveness(), Liveness::Unknown);
        assert_eq!(Owner::from_tag("nothex00-1-2-3"), None);
        assert_eq!(Owner::from_tag("0123abcd-1-2"), None);
    }
}
