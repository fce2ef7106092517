//! Durable writes: a file is synced before it is renamed into place, and its folder after, so a
//! published file survives a crash or power loss whole, or not at all.
//!
//! ```text
//!   write .NAME.spillway-tmp-<owner> ─▶ fsync(file) ─▶ rename ─▶ fsync(folder)
//! ```

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Syncs a file's data and metadata to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Syncs a folder, so the names created, renamed or removed in it are on disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let f = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    f.sync_all().map_err(|e| Error::io(dir, e))
}

/// Renames a synced `from` onto `to` and syncs `to`'s folder (and `from`'s, when it differs).
pub fn rename_synced(from: &Path, to: &Path) -> Result<()> {
    rename_synced_at(from, to, None)
}

/// [`rename_synced`], reaching fault point `point` between the rename and the folder sync.
pub(crate) fn rename_synced_at(from: &Path, to: &Path, point: Option<&str>) -> Result<()> {
    sync_file(from)?;
    std::fs::rename(from, to).map_err(|e| Error::io(to, e))?;
    if let Some(p) = point {
        spillway_faults::point(p);
    }
    let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
    sync_dir(&parent(to))?;
    if parent(from) != parent(to) {
        sync_dir(&parent(from))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` (created or truncated) and syncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Replaces `path` with `bytes` atomically and durably: a staged copy beside it, synced, then
/// renamed over it (a reader sees the old content or the new, never a mix).
pub fn replace_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = crate::staging::staging_path(path);
    let result = write_synced(&tmp, bytes).and_then(|()| rename_synced(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
