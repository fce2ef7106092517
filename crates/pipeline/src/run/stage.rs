//! A model's temp folder and the files written into it for another process to read: a
//! PostgreSQL source for an isolated model's child (Arrow IPC) or for a Ballista cluster
//! (Parquet), a hand-off for the cluster (Parquet), a memory hand-off for a child (Arrow IPC).
//! What is written there counts against the run's temp-space quota (`--max-spill`) until the
//! folder is removed.

use crate::error::{Error, Result};
use futures::StreamExt;
use spillway_tiers::file::{FileFormat, FileSink, WriteOptions};
use spillway_tiers::DiskQuota;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A model's temp folder (an isolated child's, or a cluster model's staged inputs): removed,
/// and what was written in it given back to the quota, when dropped (after the output is
/// placed, or when cancelled).
pub(super) struct Folder {
    dir: PathBuf,
    quota: Arc<DiskQuota>,
    /// Files written here that count against the quota.
    counted: Mutex<Vec<PathBuf>>,
}

impl Folder {
    /// Creates `dir`.
    pub(super) fn create(dir: PathBuf, quota: Arc<DiskQuota>) -> Result<Folder> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Folder { dir, quota, counted: Mutex::new(Vec::new()) })
    }

    /// `dir/name`.
    pub(super) fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn count(&self, path: &Path) {
        self.counted.lock().unwrap_or_else(|e| e.into_inner()).push(path.to_path_buf());
    }

    /// `path`, already written by the caller, counted against the quota from now on.
    pub(super) fn reserve_written(&self, path: &Path) -> Result<()> {
        let bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        self.quota.reserve(path, bytes)?;
        self.count(path);
        Ok(())
    }

    /// Streams table `table` of `ctx` into `dir/name` as `format`, batch by batch, within the
    /// quota; returns the file, its rows and bytes.
    pub(super) async fn write_table(
        &self,
        ctx: &datafusion::prelude::SessionContext,
        table: &str,
        name: &str,
        format: FileFormat,
    ) -> Result<(PathBuf, u64, u64)> {
        let path = self.join(name);
        let df = ctx.table(table).await.map_err(spillway_engine::Error::from)?;
        let mut stream = df.execute_stream().await.map_err(spillway_engine::Error::from)?;
        let options = WriteOptions { quota: Some(self.quota.clone()), ..WriteOptions::default() };
        let mut sink = FileSink::create(format, &path, &stream.schema(), &options)?;
        // Counted from the first byte: a file left half-written by an error is given back too.
        self.count(&path);
        while let Some(batch) = stream.next().await {
            sink.write(&batch.map_err(spillway_engine::Error::from)?)?;
        }
        let (rows, bytes) = sink.finish()?;
        Ok((path, rows, bytes))
    }
}

impl std::ops::Deref for Folder {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let counted = std::mem::take(self.counted.get_mut().unwrap_or_else(|e| e.into_inner()));
        let bytes: u64 = counted.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a model's temp folder");
            }
        }
        self.quota.release(bytes);
    }
}
