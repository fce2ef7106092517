//! Staging names: files and folders being written beside their destination before they are
//! renamed into place, named so that a later run can tell whose they are and sweep them once
//! their owner is gone (a SIGKILL leaves them behind).
//!
//! ```text
//!   output/revenue.parquet                                   published
//!   output/.revenue.parquet.spillway-tmp-<owner tag>         being written by <owner>
//! ```
//!
//! The owner tag is [`Owner::tag`](crate::owner::Owner::tag): boot id prefix, PID namespace,
//! pid and start time. [`sweep`] removes only entries whose name has this exact shape and whose
//! owner is [dead](crate::owner::Liveness::Dead); it never follows a symlink (a staged symlink,
//! such as a run folder's `latest` link, is removed itself, never what it points to).

use crate::owner::{Liveness, Owner};
use crate::rundir::{dir_size, Swept};
use std::path::{Path, PathBuf};

const INFIX: &str = ".spillway-tmp-";

/// Where `dest` is staged by this process: `.NAME.spillway-tmp-<owner tag>` beside it.
pub fn staging_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    dir.join(format!(".{name}{INFIX}{}", Owner::current().tag()))
}

/// The owner of a staging entry named `name`, if it is one.
fn owner_of(name: &str) -> Option<Owner> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(INFIX)?;
    if at == 0 {
        return None;
    }
    Owner::from_tag(&rest[at + INFIX.len()..])
}

/// Removes the staging entries in `dir` whose owner is dead (files, or folders such as TPC-H's
/// table staging). Returns what was removed; errors are logged, not fatal.
pub fn sweep(dir: &Path) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = std::fs::read_dir(dir) else { return swept };
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(owner) = entry.file_name().to_str().and_then(owner_of) else { continue };
        if owner.liveness() != Liveness::Dead {
            continue;
        }
        let path = entry.path();
        let result = match entry.file_type() {
            Ok(t) if t.is_dir() => {
                let bytes = dir_size(&path);
                std::fs::remove_dir_all(&path).map(|()| bytes)
            }
            Ok(t) if t.is_file() || t.is_symlink() => {
                let bytes = if t.is_file() { entry.metadata().map(|m| m.len()).unwrap_or(0) } else { 0 };
                // On a symlink this removes the link, not its target.
                std::fs::remove_file(&path).map(|()| bytes)
            }
            _ => continue, // a socket, a device: not ours
        };
        match result {
            Ok(bytes) => {
                tracing::warn!(path = %path.display(), bytes, %owner, "removed a staging file left by a process that is gone");
                swept.bytes += bytes;
                swept.dirs.push(path);
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove a stale staging file"),
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_carry_their_owner() {
        let p = staging_path(Path::new("out/a.b.parquet"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(".a.b.parquet.spillway-tmp-"), "{name}");
        assert_eq!(owner_of(name), Some(Owner::current()));
        assert_eq!(owner_of(".spillway-tmp-0123abcd-1-2-3"), None);
        assert_eq!(owner_of("a.parquet"), None);
        assert_eq!(owner_of(".a.parquet.tmp-123"), None);
    }
}
