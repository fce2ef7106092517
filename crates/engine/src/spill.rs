//! The spill directory of one process: created under the spill root at start, removed (with
//! everything DataFusion spilled into it) when dropped.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The default spill root: `$SPILLWAY_SPILL_DIR`, else `$XDG_CACHE_HOME/spillway/spill`, else
/// `~/.cache/spillway/spill`, else the system temp dir.
pub fn default_root() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("spillway/spill");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".cache/spillway/spill");
    }
    std::env::temp_dir().join("spillway/spill")
}

/// A directory owned by this run; removed with its contents on drop (also during a panic unwind).
#[derive(Debug)]
pub struct SpillDir {
    path: PathBuf,
}

impl SpillDir {
    /// Creates `root/run-<pid>-<millis>` (mode 0700).
    pub fn create(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let path = root.join(format!("run-{}-{millis}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(&path, e))?;
        }
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove spill directory");
            }
        }
    }
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
