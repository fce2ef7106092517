//! Spill files of this crate's operators: Arrow IPC streams in the session's spill directory
//! (spillway's temp-space quota), written batch by batch and read back as a stream.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, SpillFile, SpillWriter, TaskContext};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, SpillMetrics};
use datafusion::physical_plan::spill::SpillManager;
use std::io::BufWriter;
use std::sync::Arc;

/// An IPC stream being written to a new spill file.
pub(crate) struct IpcFile {
    file: Arc<dyn SpillFile>,
    ipc: StreamWriter<BufWriter<Box<dyn SpillWriter>>>,
    rows: usize,
}

impl IpcFile {
    /// A new spill file for batches of `schema` (`what` names it in the quota's errors).
    pub fn create(task: &TaskContext, what: &str, schema: &SchemaRef) -> Result<Self> {
        let file = task.runtime_env().disk_manager.create_tmp_file(what)?;
        let out = BufWriter::with_capacity(64 << 10, file.open_writer()?);
        Ok(Self { ipc: StreamWriter::try_new(out, schema)?, file, rows: 0 })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows();
        Ok(self.ipc.write(batch)?)
    }

    /// Closes the stream (synced as the quota's files are) and counts it in `spill`.
    pub fn finish(mut self, spill: &SpillMetrics) -> Result<Arc<dyn SpillFile>> {
        self.ipc.finish()?;
        let mut out = self.ipc.into_inner()?.into_inner().map_err(|e| DataFusionError::IoError(e.into_error()))?;
        out.finish()?;
        spill.spill_file_count.add(1);
        spill.spilled_rows.add(self.rows);
        spill.spilled_bytes.add(self.file.size().unwrap_or(0) as usize);
        Ok(self.file)
    }
}

/// Streams a spill file back, one batch read ahead (`max_batch`: its largest batch in memory,
/// if known).
pub(crate) fn read(
    file: Arc<dyn SpillFile>,
    schema: &SchemaRef,
    task: &TaskContext,
    max_batch: Option<usize>,
) -> Result<SendableRecordBatchStream> {
    // Reading does not touch the spill counters (they count writes).
    let manager =
        SpillManager::new(task.runtime_env(), SpillMetrics::new(&ExecutionPlanMetricsSet::new(), 0), schema.clone())
            .with_batch_read_buffer_capacity(1);
    manager.read_spill_as_stream(file, max_batch)
}
