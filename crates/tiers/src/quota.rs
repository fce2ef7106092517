//! The disk quota for temp files: hand-off files and DataFusion's operator spill files share it.
//!
//! Our writers reserve every byte before writing it and fail with
//! [`Error::QuotaExceeded`] (the partial file is then removed by its owner) before the disk
//! fills. DataFusion's spill files are counted by reading its `DiskManager`'s usage; DataFusion
//! itself is given the same quota as its own maximum, so it stops at the quota too (it cannot
//! see our files, so together they may pass the quota by at most what DataFusion writes while
//! our files exist).

use crate::error::{Error, Result};
use datafusion::execution::disk_manager::DiskManager;
use spillway_governor::fmt_bytes;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of temp space allowed, and in use.
#[derive(Debug)]
pub struct DiskQuota {
    max: u64,
    ours: AtomicU64,
    datafusion: Mutex<Vec<Arc<DiskManager>>>,
}

impl DiskQuota {
    /// A quota of `max` bytes.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self { max, ours: AtomicU64::new(0), datafusion: Mutex::new(Vec::new()) })
    }

    /// The default quota: 80% of the free space where `root` lives (at least 64MiB).
    pub fn default_for(root: &Path) -> u64 {
        crate::rundir::free_space(root).map_or(u64::MAX, |free| (free / 5 * 4).max(64 << 20))
    }

    /// Counts a DataFusion disk manager's spill files against this quota.
    pub fn attach(&self, disk_manager: Arc<DiskManager>) {
        if let Ok(mut v) = self.datafusion.lock() {
            v.push(disk_manager);
        }
    }

    /// The quota in bytes.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Bytes in use: our files plus DataFusion's spill files.
    pub fn used(&self) -> u64 {
        let df: u64 = self
            .datafusion
            .lock()
            .map(|v| v.iter().map(|d| d.used_disk_space()).sum())
            .unwrap_or(0);
        self.ours.load(Ordering::Relaxed) + df
    }

    /// Reserves `bytes` for writing `path`, or fails with the numbers.
    pub fn reserve(&self, path: &Path, bytes: u64) -> Result<()> {
        let used = self.used();
        if used.saturating_add(bytes) > self.max {
            return Err(Error::QuotaExceeded {
                path: path.to_path_buf(),
                used: fmt_bytes(used),
                asking: fmt_bytes(bytes),
                quota: fmt_bytes(self.max),
            });
        }
        self.ours.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Returns `bytes` (a file was deleted).
    pub fn release(&self, bytes: u64) {
        let _ = self.ours.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(bytes)));
    }
}

/// A writer that reserves every byte from a [`DiskQuota`] before writing it.
pub(crate) struct QuotaWriter<W> {
    inner: W,
    quota: Arc<DiskQuota>,
    path: std::path::PathBuf,
    written: Arc<AtomicU64>,
}

impl<W> QuotaWriter<W> {
    pub(crate) fn new(inner: W, quota: Arc<DiskQuota>, path: &Path, written: Arc<AtomicU64>) -> Self {
        Self { inner, quota, path: path.to_path_buf(), written }
    }
}

impl<W: std::io::Write> std::io::Write for QuotaWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.quota.reserve(&self.path, buf.len() as u64).map_err(std::io::Error::other)?;
        match self.inner.write(buf) {
            Ok(n) => {
                self.quota.release((buf.len() - n) as u64);
                self.written.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.quota.release(buf.len() as u64);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
