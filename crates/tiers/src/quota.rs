//! The disk quota for temp files: one per process, shared by hand-off files and the operator
//! spill files of every DataFusion session.
//!
//! ```text
//!   DiskQuota (max, used, peak) ◀── reserve ── QuotaWriter      hand-offs, staged outputs
//!        ▲                      ◀── reserve ── QuotaTempFiles   every session's DiskManager
//!        └── one Arc per process: N models spilling at once share one `--max-spill`
//! ```
//!
//! Every byte is reserved before it is written; a write that would pass the quota fails with
//! [`Error::QuotaExceeded`] (the numbers, the file) before the disk fills, and the partial file is
//! removed by its owner. DataFusion's sessions get their temp files from [`QuotaTempFiles`], a
//! `TempFileFactory` over the same quota, instead of a `DiskManager` each allowed the whole quota.

use crate::error::{Error, Result};
use bytes::Bytes;
use datafusion::common::DataFusionError;
use datafusion::execution::disk_manager::{DiskManager, DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::spill_file::{SpillFile, SpillWriter, TempFileFactory};
use futures::Stream;
use spillway_governor::fmt_bytes;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of temp space allowed, in use, and the most ever in use at once.
#[derive(Debug)]
pub struct DiskQuota {
    max: u64,
    used: AtomicU64,
    peak: AtomicU64,
}

impl DiskQuota {
    /// A quota of `max` bytes.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self { max, used: AtomicU64::new(0), peak: AtomicU64::new(0) })
    }

    /// The default quota: 80% of the free space where `root` lives (at least 64MiB).
    pub fn default_for(root: &Path) -> u64 {
        crate::rundir::free_space(root).map_or(u64::MAX, |free| (free / 5 * 4).max(64 << 20))
    }

    /// The quota in bytes.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Bytes in use: hand-off and staged files plus every session's spill files.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes in use at once so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` for writing `path`, or fails with the numbers.
    pub fn reserve(&self, path: &Path, bytes: u64) -> Result<()> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.saturating_add(bytes);
            if next > self.max {
                return Err(Error::QuotaExceeded {
                    path: path.to_path_buf(),
                    used: fmt_bytes(used),
                    asking: fmt_bytes(bytes),
                    quota: fmt_bytes(self.max),
                });
            }
            match self.used.compare_exchange_weak(used, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    self.peak.fetch_max(next, Ordering::Relaxed);
                    return Ok(());
                }
                Err(now) => used = now,
            }
        }
    }

    /// Returns `bytes` (a file was deleted, or left temp space by being published).
    pub fn release(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(bytes)));
    }
}

/// DataFusion's temp files, from the process's one [`DiskQuota`]: a `TempFileFactory` that
/// creates spill files in a run folder's `datafusion/` and reserves every byte written to them.
/// A file's bytes return to the quota when DataFusion drops its last handle (the file is then
/// deleted).
#[derive(Debug)]
pub struct QuotaTempFiles {
    dir: PathBuf,
    quota: Arc<DiskQuota>,
}

impl QuotaTempFiles {
    /// Temp files under `dir`, counted against `quota`.
    pub fn new(dir: impl Into<PathBuf>, quota: Arc<DiskQuota>) -> Arc<Self> {
        Arc::new(Self { dir: dir.into(), quota })
    }

    /// A DataFusion disk manager builder whose files come from this factory; `fan_in` bounds
    /// the files one spill merge opens (`None`: DataFusion's default).
    pub fn disk_manager(self: &Arc<Self>, fan_in: Option<usize>) -> DiskManagerBuilder {
        let mut b = DiskManager::builder().with_mode(DiskManagerMode::Custom(self.clone()));
        // DataFusion's own cap must not bite first: the quota is ours.
        b = b.with_max_temp_directory_size(u64::MAX);
        if let Some(n) = fan_in {
            b = b.with_max_spill_merge_fan_in(n);
        }
        b
    }
}

impl TempFileFactory for QuotaTempFiles {
    fn create_temp_file(&self, description: &str) -> datafusion::common::Result<Arc<dyn SpillFile>> {
        std::fs::create_dir_all(&self.dir).map_err(DataFusionError::IoError)?;
        let file = tempfile::Builder::new()
            .prefix("spill-")
            .tempfile_in(&self.dir)
            .map_err(|e| DataFusionError::IoError(std::io::Error::new(e.kind(), format!("{description}: {e}"))))?;
        Ok(Arc::new(QuotaSpillFile {
            file: Arc::new(file),
            written: Arc::new(AtomicU64::new(0)),
            quota: self.quota.clone(),
        }))
    }
}

/// One spill file: deleted, and its bytes returned to the quota, when the last handle drops.
struct QuotaSpillFile {
    file: Arc<tempfile::NamedTempFile>,
    written: Arc<AtomicU64>,
    quota: Arc<DiskQuota>,
}

impl Drop for QuotaSpillFile {
    fn drop(&mut self) {
        self.quota.release(self.written.load(Ordering::Relaxed));
    }
}

impl SpillFile for QuotaSpillFile {
    fn path(&self) -> Option<&Path> {
        Some(self.file.path())
    }

    fn size(&self) -> Option<u64> {
        Some(self.written.load(Ordering::Relaxed))
    }

    fn read_stream(
        &self,
    ) -> datafusion::common::Result<Pin<Box<dyn Stream<Item = datafusion::common::Result<Bytes>> + Send>>> {
        use tokio::io::AsyncReadExt;
        let path = self.file.path().to_path_buf();
        // Keep the file alive while it is read.
        let keep = self.file.clone();
        let stream = futures::stream::try_unfold((None::<tokio::fs::File>, keep), move |(file, keep)| {
            let path = path.clone();
            async move {
                let mut f = match file {
                    Some(f) => f,
                    None => tokio::fs::File::open(&path).await.map_err(DataFusionError::IoError)?,
                };
                let mut buf = vec![0u8; 128 << 10];
                let n = f.read(&mut buf).await.map_err(DataFusionError::IoError)?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some((Bytes::from(buf), (Some(f), keep))))
            }
        });
        Ok(Box::pin(stream))
    }

    fn open_writer(&self) -> datafusion::common::Result<Box<dyn SpillWriter>> {
        let file = self.file.as_file().try_clone().map_err(DataFusionError::IoError)?;
        Ok(Box::new(QuotaSpillWriter {
            file,
            path: self.file.path().to_path_buf(),
            written: self.written.clone(),
            quota: self.quota.clone(),
        }))
    }
}

struct QuotaSpillWriter {
    file: std::fs::File,
    path: PathBuf,
    written: Arc<AtomicU64>,
    quota: Arc<DiskQuota>,
}

impl std::io::Write for QuotaSpillWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        spillway_faults::point("spill-write");
        self.quota.reserve(&self.path, buf.len() as u64).map_err(std::io::Error::other)?;
        if let Err(e) = self.file.write_all(buf) {
            self.quota.release(buf.len() as u64);
            return Err(e);
        }
        self.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl SpillWriter for QuotaSpillWriter {
    fn finish(&mut self) -> datafusion::common::Result<()> {
        Ok(())
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
