//! A process's temp space, opened once: the spill root (swept of dead runs), this process's run
//! folder, the one [`DiskQuota`] and the [`QuotaTempFiles`] every DataFusion session draws from.
//!
//! ```text
//!   TempSpace::open(spill dir, max) ─▶ <spill dir>/spillway/run-<owner>/
//!        ├── quota()       one DiskQuota: hand-offs + staged outputs + every session's spills
//!        ├── temp_files()  QuotaTempFiles over run-…/datafusion/
//!        └── handoff_dir() run-…/handoff/
//! ```

use crate::error::Result;
use crate::quota::{DiskQuota, QuotaTempFiles};
use crate::rundir::{RunDir, SpillRoot, Swept};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// This process's temp space. Dropping it removes the run folder.
#[derive(Debug)]
pub struct TempSpace {
    // Field order: the factory and quota go before the folder they point into.
    temp_files: Arc<QuotaTempFiles>,
    quota: Arc<DiskQuota>,
    swept: Swept,
    root: SpillRoot,
    run: RunDir,
}

impl TempSpace {
    /// Opens `spill_dir/spillway` (sweeping what dead processes left), creates this process's
    /// run folder, and a quota of `max` bytes (default: 80% of the free space there).
    pub fn open(spill_dir: &Path, max: Option<u64>) -> Result<TempSpace> {
        let (root, swept) = SpillRoot::open(spill_dir)?;
        if !swept.dirs.is_empty() {
            tracing::info!(dirs = swept.dirs.len(), bytes = swept.bytes, "removed temp files left by dead runs");
        }
        let run = root.create_run_dir()?;
        let quota = DiskQuota::new(max.unwrap_or_else(|| DiskQuota::default_for(root.path())));
        let temp_files = QuotaTempFiles::new(run.subdir("datafusion")?, quota.clone());
        Ok(TempSpace { temp_files, quota, swept, root, run })
    }

    /// The quota every temp byte of this process counts against.
    pub fn quota(&self) -> &Arc<DiskQuota> {
        &self.quota
    }

    /// Where DataFusion sessions get their spill files.
    pub fn temp_files(&self) -> &Arc<QuotaTempFiles> {
        &self.temp_files
    }

    /// The folder for hand-off files.
    pub fn handoff_dir(&self) -> Result<PathBuf> {
        self.run.subdir("handoff")
    }

    /// The spill root (`<spill dir>/spillway`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// This process's run folder.
    pub fn run_dir(&self) -> &Path {
        self.run.path()
    }

    /// What opening swept.
    pub fn swept(&self) -> &Swept {
        &self.swept
    }
}
