//! Temp space hygiene: one run directory per process under the spill root, removed on success,
//! error and panic; run directories of dead processes are swept at the next start.
//!
//! ```text
//!   <spill root>/
//!     run-<pid>-<millis>/      owned by a live process: left alone
//!       LOCK                   "<pid> <process start time>"
//!       handoff/…  datafusion spill files…
//!     run-<pid>-<millis>/      owner gone (killed, crashed): removed by `SpillRoot::open`
//! ```
//!
//! A process is the owner if `/proc/<pid>/stat` exists with the same start time as recorded in
//! the lock file (so a recycled pid does not keep a stale directory alive).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Below this much free space at the spill root nothing is started.
const MIN_FREE: u64 = 16 << 20;

/// The spill root, opened: checked writable and swept of dead runs.
#[derive(Debug, Clone)]
pub struct SpillRoot {
    path: PathBuf,
}

/// What sweeping removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Directories removed.
    pub dirs: Vec<PathBuf>,
    /// Bytes they held.
    pub bytes: u64,
}

impl SpillRoot {
    /// Creates the root if needed, checks it is a writable directory, and removes run directories
    /// whose owner process is dead (logging what was removed).
    pub fn open(path: impl Into<PathBuf>) -> Result<(SpillRoot, Swept)> {
        let path = path.into();
        let bad = |reason: String| Error::SpillRoot { path: path.clone(), reason };
        if path.exists() && !path.is_dir() {
            return Err(bad("exists and is not a directory".into()));
        }
        std::fs::create_dir_all(&path).map_err(|e| bad(format!("cannot create it: {e}")))?;
        // Writable? Create and remove a probe file.
        let probe = path.join(format!(".probe-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| bad(format!("not writable: {e}")))?;
        let _ = std::fs::remove_file(&probe);
        if let Some(free) = free_space(&path) {
            if free < MIN_FREE {
                return Err(bad(format!(
                    "only {} free on its disk; spillway needs at least {} of temp space",
                    spillway_governor::fmt_bytes(free),
                    spillway_governor::fmt_bytes(MIN_FREE)
                )));
            }
        }
        let root = SpillRoot { path };
        let swept = root.sweep();
        Ok((root, swept))
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes run directories whose owner is dead. Errors removing one are logged, not fatal.
    pub fn sweep(&self) -> Swept {
        let mut swept = Swept::default();
        let Ok(entries) = std::fs::read_dir(&self.path) else { return swept };
        for entry in entries.filter_map(|e| e.ok()) {
            let dir = entry.path();
            let is_run = dir.is_dir()
                && dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("run-"));
            if !is_run || owner_alive(&dir) {
                continue;
            }
            let bytes = dir_size(&dir);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        bytes,
                        "removed the run directory of a process that is gone (killed or crashed)"
                    );
                    swept.bytes += bytes;
                    swept.dirs.push(dir);
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "could not remove stale run directory"),
            }
        }
        swept
    }

    /// Creates this process's run directory (mode 0700) with its lock file.
    pub fn create_run_dir(&self) -> Result<RunDir> {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let pid = std::process::id();
        let path = self.path.join(format!("run-{pid}-{millis}"));
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        let dir = RunDir { path };
        set_mode(&dir.path, 0o700)?;
        let lock = format!("{pid} {}\n", process_start_time(pid).unwrap_or(0));
        std::fs::write(dir.path.join("LOCK"), lock).map_err(|e| Error::io(dir.path.join("LOCK"), e))?;
        Ok(dir)
    }
}

/// This process's run directory. Removed with everything in it when dropped, including while
/// a panic unwinds.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory (created if needed), e.g. `handoff` or `datafusion`.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        Ok(p)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove run directory");
            }
        }
    }
}

/// Sets unix permissions on `path`.
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))
}

fn owner_alive(dir: &Path) -> bool {
    let Ok(lock) = std::fs::read_to_string(dir.join("LOCK")) else {
        // No lock: a directory being created right now has its lock within microseconds;
        // only treat it as stale once it is older than a minute.
        let age = std::fs::metadata(dir).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        return age.is_none_or(|a| a.as_secs() < 60);
    };
    let mut fields = lock.split_whitespace();
    let Some(pid) = fields.next().and_then(|p| p.parse::<u32>().ok()) else { return false };
    let recorded_start: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    match process_start_time(pid) {
        None => false,
        Some(start) => recorded_start == 0 || start == recorded_start,
    }
}

/// A process's start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`), if it exists.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Bytes under `dir` (best effort).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Free bytes on the filesystem holding `path` (or its nearest existing ancestor).
pub fn free_space(path: &Path) -> Option<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a zeroed struct the call fills in.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st) == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// The default spill root: `$XDG_CACHE_HOME/spillway/spill`, else `~/.cache/spillway/spill`,
/// else the system temp dir.
pub fn default_root() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("spillway/spill");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".cache/spillway/spill");
    }
    std::env::temp_dir().join("spillway/spill")
}
