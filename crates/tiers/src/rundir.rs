//! Temp space hygiene: spillway works in a folder of its own under the spill dir, one run folder
//! per process, removed on success, error and panic; run folders of dead processes are swept at
//! the next start. Nothing is ever removed that spillway did not create.
//!
//! ```text
//!   <spill dir>/                   given by --spill-dir: never swept, may hold anything
//!     spillway/                    the spill root: created by spillway
//!       run-<owner tag>/           owned by a live process: left alone
//!         SPILLWAY-RUN             marker: magic first line, pid, start time, boot id, pid namespace
//!         handoff/…  datafusion/…
//!       run-<owner tag>/           owner gone (killed, crashed, rebooted): removed by the sweep
//!       .run-<owner tag>.creating  being created (marker written, not yet renamed)
//! ```
//!
//! The sweep removes a `run-*` folder only when it is a real folder (not a symlink), holds a
//! `SPILLWAY-RUN` regular file whose first line is the magic header, and that file names an owner
//! that is [dead](crate::owner::Liveness::Dead): same boot, same PID namespace, and no process with
//! that pid and start time; or another boot. A missing, unreadable or foreign marker, or an owner
//! in another PID namespace, leaves the folder alone. [`SpillRoot::inspect`] reports what a sweep
//! would remove without removing anything (`spillway info`).

use crate::error::{Error, Result};
use crate::owner::{Liveness, Owner};
use std::path::{Path, PathBuf};

/// Below this much free space at the spill root nothing is started.
const MIN_FREE: u64 = 16 << 20;

/// The name of the marker file in every run folder.
pub const MARKER: &str = "SPILLWAY-RUN";

/// The marker's first line: what makes a folder spillway's to remove.
const MAGIC: &str = "# spillway run folder v1: removed by spillway once the process below is gone";

/// The folder spillway creates for itself under any spill dir.
const ROOT_NAME: &str = "spillway";

/// The spill root, opened: checked writable and swept of dead runs.
#[derive(Debug, Clone)]
pub struct SpillRoot {
    path: PathBuf,
}

/// What sweeping removed (or, from [`SpillRoot::inspect`], would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Directories or files removed.
    pub dirs: Vec<PathBuf>,
    /// Bytes they held.
    pub bytes: u64,
}

impl Swept {
    /// Adds another sweep's findings.
    pub fn extend(&mut self, other: Swept) {
        self.dirs.extend(other.dirs);
        self.bytes += other.bytes;
    }
}

impl SpillRoot {
    /// The spill root for spill dir `dir`: `dir/spillway`.
    pub fn path_for(dir: &Path) -> PathBuf {
        dir.join(ROOT_NAME)
    }

    /// Creates `dir/spillway` if needed, checks it is a writable directory, and removes run
    /// folders whose owner process is dead (logging what was removed).
    pub fn open(dir: impl AsRef<Path>) -> Result<(SpillRoot, Swept)> {
        let root = Self::prepare(dir.as_ref())?;
        let swept = root.sweep(true);
        Ok((root, swept))
    }

    /// Like [`SpillRoot::open`] but removes nothing: the returned [`Swept`] lists what a sweep
    /// would remove. The root is not created when it does not exist.
    pub fn inspect(dir: impl AsRef<Path>) -> Swept {
        SpillRoot { path: Self::path_for(dir.as_ref()) }.sweep(false)
    }

    fn prepare(dir: &Path) -> Result<SpillRoot> {
        let path = Self::path_for(dir);
        let bad = |reason: String| Error::SpillRoot { path: path.clone(), reason };
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if !m.is_dir() {
                return Err(bad("exists and is not a directory (spillway only works in a folder it created)".into()));
            }
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
        Ok(SpillRoot { path })
    }

    /// The root directory (`<spill dir>/spillway`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finds run folders whose owner is dead and, with `remove`, removes them. Errors removing
    /// one are logged, not fatal.
    fn sweep(&self, remove: bool) -> Swept {
        let mut swept = Swept::default();
        let Ok(entries) = std::fs::read_dir(&self.path) else { return swept };
        for entry in entries.filter_map(|e| e.ok()) {
            let dir = entry.path();
            // `file_type` does not follow symlinks: a link named run-* is never ours.
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let owner = if name.starts_with("run-") {
                read_marker(&dir)
            } else if let Some(tag) = name.strip_prefix(".run-").and_then(|n| n.strip_suffix(".creating")) {
                // Half-created: the tag in the name is the owner.
                Owner::from_tag(tag)
            } else {
                None
            };
            let Some(owner) = owner.filter(|_| is_dir) else { continue };
            if owner.liveness() != Liveness::Dead {
                continue;
            }
            let bytes = dir_size(&dir);
            if !remove {
                swept.bytes += bytes;
                swept.dirs.push(dir);
                continue;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        bytes,
                        %owner,
                        "removed the run folder of a process that is gone (killed or crashed)"
                    );
                    swept.bytes += bytes;
                    swept.dirs.push(dir);
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "could not remove stale run folder"),
            }
        }
        swept
    }

    /// Creates this process's run folder (mode 0700) with its marker: written and synced under
    /// a `.creating` name first, then renamed, so a `run-*` folder always carries its marker.
    pub fn create_run_dir(&self) -> Result<RunDir> {
        let owner = Owner::current();
        let millis =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let tag = owner.tag();
        let creating = self.path.join(format!(".run-{tag}.creating"));
        let path = self.path.join(format!("run-{tag}-{millis}"));
        std::fs::create_dir(&creating).map_err(|e| Error::io(&creating, e))?;
        set_mode(&creating, 0o700)?;
        crate::durable::write_synced(&creating.join(MARKER), marker_for(&owner).as_bytes())?;
        std::fs::rename(&creating, &path).map_err(|e| Error::io(&path, e))?;
        Ok(RunDir { path })
    }
}

/// The marker a run folder of `owner` carries (what [`SpillRoot::open`] checks before removing).
pub fn marker_for(owner: &Owner) -> String {
    format!("{MAGIC}\npid={}\nstart={}\nboot={}\npid_ns={}\n", owner.pid, owner.start, owner.boot, owner.pid_ns)
}

/// The owner named by `dir`'s marker, if `dir` has a valid one.
fn read_marker(dir: &Path) -> Option<Owner> {
    let marker = dir.join(MARKER);
    let meta = std::fs::symlink_metadata(&marker).ok()?;
    if !meta.is_file() || meta.len() > 4096 {
        return None;
    }
    let text = std::fs::read_to_string(&marker).ok()?;
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let mut field = |key: &str| -> Option<String> {
        let line = lines.next()?;
        line.strip_prefix(key)?.strip_prefix('=').map(str::to_string)
    };
    let pid = field("pid")?.parse().ok()?;
    let start = field("start")?.parse().ok()?;
    let boot = field("boot")?;
    let pid_ns = field("pid_ns")?.parse().ok()?;
    Some(Owner { pid, start, boot, pid_ns })
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

/// The default spill dir: `$XDG_CACHE_HOME`, else `~/.cache`, else the system temp dir. spillway
/// works in `spillway/` under it ([`SpillRoot::path_for`]).
pub fn default_spill_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".cache");
    }
    std::env::temp_dir()
}
