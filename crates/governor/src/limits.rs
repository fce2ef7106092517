//! What this process may use: memory limit (cgroup v1/v2 vs MemTotal) and CPU parallelism
//! (affinity and cgroup CPU quota), read from `/proc` and `/sys/fs/cgroup`.
//!
//! Every function takes the filesystem root so tests can point it at a fake tree.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where the effective memory limit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitSource {
    /// `/proc/meminfo` MemTotal (no tighter cgroup limit).
    MemTotal,
    /// cgroup v1 `memory.limit_in_bytes` at this path.
    CgroupV1(PathBuf),
    /// cgroup v2 `memory.max` at this path.
    CgroupV2(PathBuf),
}

impl fmt::Display for LimitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitSource::MemTotal => write!(f, "MemTotal"),
            LimitSource::CgroupV1(p) => write!(f, "cgroup v1 {}", p.display()),
            LimitSource::CgroupV2(p) => write!(f, "cgroup v2 {}", p.display()),
        }
    }
}

/// The memory this process may use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes: the smaller of MemTotal and the cgroup limit.
    pub bytes: u64,
    /// Where `bytes` was read.
    pub source: LimitSource,
    /// MemTotal in bytes, for information.
    pub mem_total: u64,
}

/// CPU parallelism available to this process, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cores {
    /// Cores to use: min(affinity, ceil(cgroup quota)), at least 1.
    pub count: usize,
    /// How it was derived, e.g. `affinity 2, cgroup quota none`.
    pub source: String,
}

/// Reads the effective memory limit of this process from the real system.
pub fn memory_limit() -> MemoryLimit {
    memory_limit_at(Path::new("/"))
}

/// Reads the effective memory limit with `/proc` and `/sys` under `root` (for tests).
pub fn memory_limit_at(root: &Path) -> MemoryLimit {
    let mem_total = read_mem_total(&root.join("proc/meminfo")).unwrap_or(u64::MAX);
    let mut best = MemoryLimit { bytes: mem_total, source: LimitSource::MemTotal, mem_total };
    let cgroup = std::fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (base, file, v2) = if controllers.split(',').any(|c| c == "memory") {
            ("sys/fs/cgroup/memory", "memory.limit_in_bytes", false)
        } else if controllers.is_empty() {
            ("sys/fs/cgroup", "memory.max", true)
        } else {
            continue;
        };
        // The limit that binds is the smallest along the path from our cgroup to the root.
        let mut dir = PathBuf::from(path.trim_start_matches('/'));
        loop {
            let candidate = root.join(base).join(&dir).join(file);
            if let Some(limit) = read_limit_file(&candidate) {
                if limit < best.bytes {
                    let shown = Path::new("/").join(candidate.strip_prefix(root).unwrap_or(&candidate));
                    best.bytes = limit;
                    best.source = if v2 { LimitSource::CgroupV2(shown) } else { LimitSource::CgroupV1(shown) };
                }
            }
            if !dir.pop() {
                break;
            }
        }
    }
    best
}

/// CPU parallelism for this process from the real system.
pub fn cores() -> Cores {
    let affinity = affinity_count();
    cores_at(Path::new("/"), affinity)
}

/// CPU parallelism with cgroup files under `root` and a given affinity count (for tests).
pub fn cores_at(root: &Path, affinity: Option<usize>) -> Cores {
    let host = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let affinity_n = affinity.unwrap_or(host);
    let quota = cpu_quota(root);
    let count = match quota {
        Some(q) => affinity_n.min(q.ceil().max(1.0) as usize),
        None => affinity_n,
    }
    .max(1);
    let quota_desc = quota.map_or("none".to_string(), |q| format!("{q:.2}"));
    Cores { count, source: format!("affinity {affinity_n}, cgroup cpu quota {quota_desc}") }
}

fn affinity_count() -> Option<usize> {
    // SAFETY: `set` is a plain bitmask the kernel fills in; we pass its exact size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let n = libc::CPU_COUNT(&set);
            if n > 0 {
                return Some(n as usize);
            }
        }
    }
    None
}

/// cgroup CPU quota in cores, if one is set (v1 `cpu.cfs_quota_us/cpu.cfs_period_us`, v2 `cpu.max`).
fn cpu_quota(root: &Path) -> Option<f64> {
    let cgroup = std::fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
    let mut best: Option<f64> = None;
    let mut consider = |q: f64| best = Some(best.map_or(q, |b: f64| b.min(q)));
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "cpu") {
            for base in ["sys/fs/cgroup/cpu", "sys/fs/cgroup/cpu,cpuacct"] {
                let dir = root.join(base).join(rel);
                let quota = read_trim(&dir.join("cpu.cfs_quota_us")).and_then(|s| s.parse::<i64>().ok());
                let period = read_trim(&dir.join("cpu.cfs_period_us")).and_then(|s| s.parse::<i64>().ok());
                if let (Some(q), Some(p)) = (quota, period) {
                    if q > 0 && p > 0 {
                        consider(q as f64 / p as f64);
                    }
                }
            }
        } else if controllers.is_empty() {
            let dir = root.join("sys/fs/cgroup").join(rel);
            if let Some(s) = read_trim(&dir.join("cpu.max")) {
                let mut it = s.split_whitespace();
                if let (Some(q), Some(p)) = (it.next(), it.next()) {
                    if let (Ok(q), Ok(p)) = (q.parse::<f64>(), p.parse::<f64>()) {
                        if q > 0.0 && p > 0.0 {
                            consider(q / p);
                        }
                    }
                }
            }
        }
    }
    best
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// A cgroup limit file: a number, or `max` / a huge value meaning "no limit".
fn read_limit_file(path: &Path) -> Option<u64> {
    let s = read_trim(path)?;
    if s == "max" {
        return None;
    }
    let v: u64 = s.parse().ok()?;
    // cgroup v1 reports "unlimited" as a page-rounded i64::MAX.
    (v < (1u64 << 62)).then_some(v)
}

fn read_mem_total(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident memory of this process from `/proc/self/statm`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set size: everything the kernel counts as resident.
    pub rss: u64,
    /// Anonymous resident memory (RSS less file-backed pages such as the binary's code): the
    /// memory our data occupies, and what the kernel cannot simply drop under pressure.
    pub anon: u64,
}

/// Reads this process's resident memory.
pub fn process_memory() -> Option<ProcessMemory> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = s.split_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(ProcessMemory { rss: resident * page, anon: resident.saturating_sub(shared) * page })
}

/// Resident set size of this process in bytes.
pub fn process_rss() -> Option<u64> {
    process_memory().map(|m| m.rss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spillway-limits-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn cgroup_v1_limit_wins_when_smaller() {
        let root = tmp("v1");
        write(&root, "proc/meminfo", "MemTotal:       24683656 kB\n");
        write(&root, "proc/self/cgroup", "4:memory:/jobs/a\n1:cpu:/\n");
        write(&root, "sys/fs/cgroup/memory/jobs/a/memory.limit_in_bytes", "9223372036854771712\n");
        write(&root, "sys/fs/cgroup/memory/jobs/memory.limit_in_bytes", "2147483648\n");
        let l = memory_limit_at(&root);
        assert_eq!(l.bytes, 2 << 30);
        assert_eq!(l.source, LimitSource::CgroupV1("/sys/fs/cgroup/memory/jobs/memory.limit_in_bytes".into()));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn cgroup_v2_and_memtotal() {
        let root = tmp("v2");
        write(&root, "proc/meminfo", "MemTotal:       1048576 kB\n");
        write(&root, "proc/self/cgroup", "0::/user.slice\n");
        write(&root, "sys/fs/cgroup/user.slice/memory.max", "max\n");
        let l = memory_limit_at(&root);
        assert_eq!((l.bytes, l.source.clone()), (1 << 30, LimitSource::MemTotal));
        write(&root, "sys/fs/cgroup/user.slice/memory.max", "536870912\n");
        write(&root, "sys/fs/cgroup/user.slice/cpu.max", "150000 100000\n");
        let l = memory_limit_at(&root);
        assert_eq!(l.bytes, 512 << 20);
        assert!(matches!(l.source, LimitSource::CgroupV2(_)));
        assert_eq!(cores_at(&root, Some(8)).count, 2);
        assert_eq!(cores_at(&root, Some(1)).count, 1);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn real_system_reads_something() {
        assert!(memory_limit().bytes > 0);
        assert!(cores().count >= 1);
        let m = process_memory().unwrap();
        assert!(m.rss > 0 && m.anon > 0 && m.anon <= m.rss);
    }
}
