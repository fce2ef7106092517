//! Memory cgroups (v1 and v2) for isolated steps: found under the runner's own cgroup, created
//! per child before it allocates anything, read for the child's peak and OOM kills, removed
//! afterwards (and swept at the next start when a crashed runner left one).
//!
//! | what | cgroup v1 (`memory` hierarchy) | cgroup v2 (unified) |
//! |---|---|---|
//! | hard limit | `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`) | `memory.max`, `memory.swap.max = 0` |
//! | reclaim early | - | `memory.high` (90% of the limit) |
//! | peak | `memory.max_usage_in_bytes` | `memory.peak` |
//! | OOM kills | `memory.oom_control`: `oom_kill N` | `memory.events`: `oom_kill N` |
//! | kill all | SIGKILL to each of `cgroup.procs` | `cgroup.kill` |
//!
//! A child cgroup is named `spillway-<pid>-<start ticks>-<n>` after the runner that made it, so
//! one whose runner is gone is recognised and removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Which cgroup interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    /// The v1 `memory` controller's own hierarchy.
    V1,
    /// The unified v2 hierarchy.
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        })
    }
}

/// The folder child cgroups are made in: the runner's own memory cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct Hierarchy {
    /// v1 or v2.
    pub version: Version,
    /// The runner's own cgroup folder.
    pub dir: PathBuf,
}

/// Finds the runner's own memory cgroup from `/proc/self/cgroup` and `/proc/self/mountinfo`
/// (the v1 memory controller where it is mounted, else the v2 hierarchy); the reason otherwise.
pub fn own() -> Result<Hierarchy, String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    locate(&cgroups, &mounts)
}

/// [`own`] from the two files' text.
pub fn locate(cgroups: &str, mountinfo: &str) -> Result<Hierarchy, String> {
    // mountinfo: id parent major:minor root mount-point options ... - fstype source super-options
    let mounts: Vec<(&str, &str, &str, &str)> = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            Some((*f.get(3)?, *f.get(4)?, *f.get(dash + 1)?, *f.get(dash + 3).unwrap_or(&"")))
        })
        .collect();
    let join = |mount_root: &str, point: &str, path: &str| {
        let rel = path.strip_prefix(mount_root).unwrap_or(path).trim_start_matches('/');
        Path::new(point).join(rel)
    };
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        if controllers.split(',').any(|c| c == "memory") {
            if let Some((root, point, _, _)) =
                mounts.iter().find(|(_, _, t, o)| *t == "cgroup" && o.split(',').any(|x| x == "memory"))
            {
                return Ok(Hierarchy { version: Version::V1, dir: join(root, point, path) });
            }
        }
    }
    if let Some(path) = cgroups.lines().find_map(|l| l.strip_prefix("0::")) {
        if let Some((root, point, _, _)) = mounts.iter().find(|(_, _, t, _)| *t == "cgroup2") {
            return Ok(Hierarchy { version: Version::V2, dir: join(root, point, path) });
        }
    }
    Err("no memory cgroup controller is mounted".into())
}

static NEXT: AtomicU64 = AtomicU64::new(1);

impl Hierarchy {
    /// Checks that child cgroups with a memory limit can be made here (v2: enables the memory
    /// controller for children if it is not yet), by making and removing one.
    pub fn check_writable(&self) -> Result<(), String> {
        if self.version == Version::V2 {
            let sub = self.dir.join("cgroup.subtree_control");
            let on = std::fs::read_to_string(&sub).unwrap_or_default();
            if !on.split_whitespace().any(|c| c == "memory") {
                std::fs::write(&sub, "+memory")
                    .map_err(|e| format!("{}: cannot enable the memory controller for children: {e}", sub.display()))?;
            }
        }
        let probe = self.dir.join(format!("spillway-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let limit = probe.join(self.limit_file());
        let wrote = std::fs::write(&limit, (256u64 << 20).to_string());
        let _ = std::fs::remove_dir(&probe);
        wrote.map_err(|e| format!("{}: {e}", limit.display()))
    }

    fn limit_file(&self) -> &'static str {
        match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        }
    }

    /// Makes a child cgroup limited to `limit` bytes (nothing in it yet).
    pub fn create(&self, limit: u64) -> std::io::Result<Cgroup> {
        let (pid, start) = me();
        let name = format!("spillway-{pid}-{start}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir)?;
        let cg = Cgroup { version: self.version, dir, limit, removed: false };
        let set = |file: &str, value: String| std::fs::write(cg.dir.join(file), value);
        match self.version {
            Version::V1 => {
                set("memory.limit_in_bytes", limit.to_string())?;
                // Swap counts too where it is accounted (the file exists only then).
                if cg.dir.join("memory.memsw.limit_in_bytes").exists() {
                    let _ = set("memory.memsw.limit_in_bytes", limit.to_string());
                }
            }
            Version::V2 => {
                set("memory.max", limit.to_string())?;
                set("memory.high", (limit / 10 * 9).to_string())?;
                let _ = set("memory.swap.max", "0".into());
                // The whole child goes when one of its threads is chosen.
                let _ = set("memory.oom.group", "1".into());
            }
        }
        Ok(cg)
    }

    /// Removes child cgroups whose runner is gone (killing what is left in them). Returns how many.
    pub fn sweep(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return 0 };
        let mut removed = 0;
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((pid, start)) = owner_of(&name) else { continue };
            if spillway_governor::ledger::start_ticks(pid) == Some(start) {
                continue;
            }
            let mut cg = Cgroup { version: self.version, dir: e.path(), limit: 0, removed: false };
            if cg.remove().is_ok() {
                removed += 1;
                tracing::info!(cgroup = %e.path().display(), "removed the cgroup of a runner that is gone");
            }
        }
        removed
    }
}

/// This process's pid and start ticks.
fn me() -> (u32, u64) {
    let pid = std::process::id();
    (pid, spillway_governor::ledger::start_ticks(pid).unwrap_or(0))
}

/// The runner a child cgroup's name says made it.
fn owner_of(name: &str) -> Option<(u32, u64)> {
    let mut parts = name.strip_prefix("spillway-")?.split('-');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    Some((pid, start))
}

/// One child's cgroup. Dropping it kills what is left in it and removes it.
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    dir: PathBuf,
    limit: u64,
    removed: bool,
}

impl Cgroup {
    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// v1 or v2.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The hard limit, bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The file a process writes `0` to in order to move itself in.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The most memory the cgroup held (bytes), where the kernel keeps it.
    pub fn peak(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        std::fs::read_to_string(self.dir.join(file)).ok()?.trim().parse().ok()
    }

    /// How many processes the kernel's OOM killer killed in it.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())).unwrap_or(0)
    }

    /// Kills every process in it.
    pub fn kill_all(&self) {
        if self.version == Version::V2 && std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            // SAFETY: kill(2) with a pid read from the cgroup; no memory is touched.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills what is left in it and removes it, waiting up to two seconds for killed processes
    /// to leave.
    pub fn remove(&mut self) -> std::io::Result<()> {
        if self.removed {
            return Ok(());
        }
        self.kill_all();
        let mut last = None;
        for _ in 0..100 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => {
                    self.removed = true;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.removed = true;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("cgroup not removed")))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(cgroup = %self.dir.display(), error = %e, "could not remove a child's cgroup (the next start sweeps it)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_v1_memory_and_v2() {
        let mounts = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                      35 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      40 31 0:36 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let cg = "4:memory:/process_api/abc\n0::/\n";
        let h = locate(cg, mounts).unwrap();
        assert_eq!(h, Hierarchy { version: Version::V1, dir: "/sys/fs/cgroup/memory/process_api/abc".into() });
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = locate("0::/user.slice/job.scope\n", v2).unwrap();
        assert_eq!(h, Hierarchy { version: Version::V2, dir: "/sys/fs/cgroup/user.slice/job.scope".into() });
        assert!(locate("0::/\n", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n").is_err());
    }

    /// The v2 layout against a fake cgroupfs folder: what is written, what is read.
    #[test]
    fn v2_files_in_a_fake_cgroupfs() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "memory pids").unwrap();
        let h = Hierarchy { version: Version::V2, dir: root.path().to_path_buf() };
        h.check_writable().unwrap();
        let mut cg = h.create(100 << 20).unwrap();
        let dir = cg.dir().to_path_buf();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (100u64 << 20).to_string());
        assert_eq!(read("memory.high"), (90u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        std::fs::write(cg.dir().join("memory.peak"), "73400320\n").unwrap();
        std::fs::write(cg.dir().join("memory.events"), "low 0\nhigh 12\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(cg.peak(), Some(73400320));
        assert_eq!(cg.oom_kills(), 1);
        assert_eq!(cg.procs_file(), cg.dir().join("cgroup.procs"));
        // A fake folder holds real files, so it cannot be rmdir'ed; cgroup.kill was written.
        assert!(cg.remove().is_err());
        assert_eq!(read("cgroup.kill"), "1");
        cg.removed = true;
    }

    #[test]
    fn swept_names() {
        assert_eq!(owner_of("spillway-123-456-7"), Some((123, 456)));
        assert_eq!(owner_of("spillway-probe-12"), None);
        assert_eq!(owner_of("other"), None);
    }

    /// A real cgroup: CI's machines have a writable cgroup v1 memory controller.
    #[test]
    fn real_cgroup_is_made_and_removed() {
        let h = own().expect("a memory cgroup");
        h.check_writable().expect("a writable memory cgroup");
        let mut cg = h.create(64 << 20).unwrap();
        assert!(cg.dir().is_dir());
        assert_eq!(cg.oom_kills(), 0);
        cg.remove().unwrap();
        assert!(!cg.dir().exists());
        // One left by a runner that is gone (no pid is above pid_max) is swept; ours is not.
        let stale = h.dir.join("spillway-4194304-1-1");
        std::fs::create_dir(&stale).unwrap();
        let mut live = h.create(64 << 20).unwrap();
        assert!(h.sweep() >= 1);
        assert!(!stale.exists() && live.dir().is_dir());
        live.remove().unwrap();
    }
}
