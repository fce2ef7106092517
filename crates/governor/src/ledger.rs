//! The machine-wide ledger: one budget for every spillway process on the machine.
//!
//! ```text
//!   /dev/shm/spillway-ledger     (a small text file, rewritten under flock(LOCK_EX))
//!     <pid> <start ticks> <governor> <bytes> <label>      one line per governor holding leases
//!
//!   Governor A (spillway run)  ──┐   Σ bytes of live entries ≤ capacity (the machine's leasable
//!   Governor B (views serve)   ──┼─▶ bytes, from `--machine-memory`, default 60% of its memory)
//!   Governor C (spillway sql)  ──┘
//! ```
//!
//! Each governor keeps its entry equal to the bytes it has lent out. A lease that fits the
//! process's own budget but not the machine's waits in the governor's FIFO queue; the sampler
//! thread looks at the ledger again every sample interval. An entry whose process is gone (no
//! `/proc/<pid>`, or a different start time: the pid was reused) is dropped by the next
//! process that reads the ledger, so a killed process's leases come back by themselves.
//!
//! The ledger is advisory among spillway processes: it holds no memory itself. A ledger that
//! cannot be opened or written (another user's file, a read-only folder) is reported once and
//! the process goes on with its own budget only (`spillway info` says which is in force).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Where the ledger is and how much it lends.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerConfig {
    /// The ledger file (default [`default_path`]).
    pub path: PathBuf,
    /// Bytes all processes together may hold in leases: the machine budget less its headroom.
    pub capacity: u64,
    /// Who this process is, shown by `spillway info` (e.g. `spillway run examples/tpch`).
    pub label: String,
}

/// `/dev/shm/spillway-ledger` where `/dev/shm` exists (memory-backed, cleared at boot), else
/// `spillway-ledger` in the system's temp folder.
pub fn default_path() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join("spillway-ledger")
    } else {
        std::env::temp_dir().join("spillway-ledger")
    }
}

/// One live entry of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    /// The process.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
    /// Which governor of the process (a process may run several).
    pub governor: u64,
    /// Bytes it has lent out.
    pub bytes: u64,
    /// Who it is.
    pub label: String,
}

impl Holding {
    fn line(&self) -> String {
        let label: String = self.label.chars().map(|c| if c.is_control() { ' ' } else { c }).take(120).collect();
        format!("{} {} {} {} {}\n", self.pid, self.start, self.governor, self.bytes, label)
    }
    fn parse(line: &str) -> Option<Holding> {
        let mut parts = line.splitn(5, ' ');
        Some(Holding {
            pid: parts.next()?.parse().ok()?,
            start: parts.next()?.parse().ok()?,
            governor: parts.next()?.parse().ok()?,
            bytes: parts.next()?.parse().ok()?,
            label: parts.next().unwrap_or("").trim_end().to_string(),
        })
    }
    fn is_alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start)
    }
}

/// A process's start time in clock ticks since boot, `None` if there is no such process.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

static NEXT_GOVERNOR: AtomicU64 = AtomicU64::new(1);

/// This governor's view of the ledger.
#[derive(Debug)]
pub(crate) struct Ledger {
    config: LedgerConfig,
    pid: u32,
    start: u64,
    governor: u64,
    /// What our entry says now (skips rewriting an unchanged claim).
    claimed: AtomicU64,
    /// Set after the first failure to read or write the ledger: the process then keeps to its
    /// own budget.
    broken: AtomicBool,
}

/// What a claim found.
pub(crate) enum Claim {
    /// The entry now says the bytes asked for.
    Granted,
    /// Other processes hold too much: the entry is unchanged.
    Refused,
}

impl Ledger {
    pub(crate) fn new(config: LedgerConfig) -> Ledger {
        let pid = std::process::id();
        Ledger {
            start: start_ticks(pid).unwrap_or(0),
            pid,
            governor: NEXT_GOVERNOR.fetch_add(1, Ordering::Relaxed),
            config,
            claimed: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.config.capacity
    }

    pub(crate) fn path(&self) -> &Path {
        &self.config.path
    }

    /// Whether the ledger could not be used (the process keeps to its own budget).
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Sets our entry to `total` bytes if the live entries of other processes leave room for
    /// it (a decrease always succeeds). On an I/O failure the ledger is given up (reported once)
    /// and every claim is granted.
    pub(crate) fn claim(&self, total: u64) -> Claim {
        if self.is_broken() || self.claimed.load(Ordering::Relaxed) == total {
            return Claim::Granted;
        }
        match self.update(total) {
            Ok(true) => {
                self.claimed.store(total, Ordering::Relaxed);
                Claim::Granted
            }
            Ok(false) => Claim::Refused,
            Err(e) => {
                if !self.broken.swap(true, Ordering::Relaxed) {
                    tracing::warn!(ledger = %self.config.path.display(), error = %e,
                        "the machine-wide ledger cannot be used: this process keeps to its own budget only");
                }
                Claim::Granted
            }
        }
    }

    /// Bytes the live entries of other processes (and other governors of this one) hold.
    pub(crate) fn others(&self) -> Vec<Holding> {
        read_live(&self.config.path).into_iter().filter(|h| !self.is_me(h)).collect()
    }

    fn is_me(&self, h: &Holding) -> bool {
        h.pid == self.pid && h.start == self.start && h.governor == self.governor
    }

    fn update(&self, total: u64) -> std::io::Result<bool> {
        let mut file = open_locked(&self.config.path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let live: Vec<Holding> = text.lines().filter_map(Holding::parse).filter(Holding::is_alive).collect();
        let others: u64 = live.iter().filter(|h| !self.is_me(h)).map(|h| h.bytes).sum();
        let mine = self.claimed.load(Ordering::Relaxed);
        if total > mine && others.saturating_add(total) > self.config.capacity {
            return Ok(false);
        }
        let mut out: String = live.iter().filter(|h| !self.is_me(h)).map(Holding::line).collect();
        if total > 0 {
            out.push_str(
                &Holding {
                    pid: self.pid,
                    start: self.start,
                    governor: self.governor,
                    bytes: total,
                    label: self.config.label.clone(),
                }
                .line(),
            );
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(out.as_bytes())?;
        Ok(true)
        // The lock goes with the file.
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if self.claimed.load(Ordering::Relaxed) > 0 && !self.is_broken() {
            let _ = self.update(0);
        }
    }
}

/// Opens (creating, readable and writable by every user of the machine) and locks the ledger.
/// The lock is on this open file, so threads of one process exclude each other too.
fn open_locked(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o666).open(path)?;
    if file.metadata()?.permissions().mode() & 0o777 != 0o666 {
        // The umask took some bits away; one machine, one ledger: every user may write it.
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o666));
    }
    // SAFETY: flock on a descriptor this function owns; it blocks until the lock is ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// The live entries of the ledger at `path` (none if it does not exist), for `spillway info`.
pub fn read_live(path: &Path) -> Vec<Holding> {
    let Ok(mut file) = File::open(path) else { return Vec::new() };
    // SAFETY: as in `open_locked`; a shared lock, so readers do not see half-written text.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) };
    let mut text = String::new();
    if file.read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    text.lines().filter_map(Holding::parse).filter(Holding::is_alive).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(dir: &Path, capacity: u64, label: &str) -> Ledger {
        Ledger::new(LedgerConfig { path: dir.join("ledger"), capacity, label: label.into() })
    }

    #[test]
    fn claims_share_the_capacity_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = ledger(dir.path(), 100, "a");
        let b = ledger(dir.path(), 100, "b");
        assert!(matches!(a.claim(60), Claim::Granted));
        assert!(matches!(b.claim(50), Claim::Refused));
        assert!(matches!(b.claim(40), Claim::Granted));
        assert_eq!(read_live(&dir.path().join("ledger")).iter().map(|h| h.bytes).sum::<u64>(), 100);
        assert_eq!(b.others().len(), 1);
        assert!(matches!(a.claim(10), Claim::Granted));
        assert!(matches!(b.claim(90), Claim::Granted));
        drop(a);
        let live = read_live(&dir.path().join("ledger"));
        assert_eq!(live.len(), 1);
        assert_eq!((live[0].bytes, live[0].label.as_str()), (90, "b"));
    }

    #[test]
    fn entries_of_dead_processes_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        // pid 1's start time is not 12345, and no process has pid 4194304 (above pid_max).
        std::fs::write(&path, "1 12345 1 80 spillway run (reused pid)\n4194304 7 1 80 spillway sql\n").unwrap();
        let a = ledger(dir.path(), 100, "a");
        assert!(matches!(a.claim(100), Claim::Granted));
        let live = read_live(&path);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].pid, std::process::id());
    }

    #[test]
    fn an_unusable_ledger_leaves_the_process_to_its_own_budget() {
        let a =
            Ledger::new(LedgerConfig { path: "/proc/no-such-folder/ledger".into(), capacity: 1, label: "a".into() });
        assert!(matches!(a.claim(1 << 30), Claim::Granted));
        assert!(a.is_broken());
    }

    #[test]
    fn start_ticks_of_this_process() {
        assert!(start_ticks(std::process::id()).is_some());
        assert_eq!(start_ticks(4_194_304), None);
    }
}
