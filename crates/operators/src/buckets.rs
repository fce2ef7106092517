//! Hash partitioning of a stream into bucket files: the "grace" half of the grace hash join.
//!
//! Rows are routed by a hash of their join keys, with a seed that differs per recursion level
//! and from DataFusion's own repartitioning and hash-table seeds: rows that landed in one
//! partition (or one bucket of the level above) all share those hashes, so reusing a seed would
//! send them all to the same bucket. Equal keys (and all NULL keys) always land in the same
//! bucket, which is what makes joining bucket by bucket exact for every join type.
//!
//! Each bucket is an Arrow IPC stream file in the session's spill directory (DataFusion's
//! `DiskManager`, which spillway points at the run directory, so the files are removed with the
//! run and counted against its temp-space quota). Small routed pieces are coalesced before they
//! are written, in buffers whose total size the caller bounds.

use crate::spill::IpcFile;
use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::hash_utils::{create_hashes, RandomState};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, SpillFile, TaskContext};
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_plan::metrics::SpillMetrics;
use futures::StreamExt;
use std::sync::Arc;

/// The hash seed of recursion level `level` (0 = the first split of a partition).
fn seed(level: usize) -> RandomState {
    RandomState::with_seed(0x5b11_1a7e_0000_0000 ^ (level as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The bucket files of one side of one split. With NULL routing on, the last bucket (index
/// `fanout`) holds the rows with a NULL key.
pub(crate) struct Buckets {
    pub files: Vec<Option<Arc<dyn SpillFile>>>,
    pub rows: Vec<usize>,
    schema: SchemaRef,
}

impl Buckets {
    pub fn total_rows(&self) -> usize {
        self.rows.iter().sum()
    }

    /// Streams bucket `b` back (empty if it has no rows).
    pub fn read(&self, b: usize, task: &Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        read_file(self.files[b].clone(), &self.schema, task)
    }
}

/// Streams a spill file (or nothing) back as record batches.
pub(crate) fn read_file(
    file: Option<Arc<dyn SpillFile>>,
    schema: &SchemaRef,
    task: &Arc<TaskContext>,
) -> Result<SendableRecordBatchStream> {
    match file {
        Some(file) => crate::spill::read(file, schema, task, None),
        None => Ok(Box::pin(datafusion::physical_plan::EmptyRecordBatchStream::new(schema.clone()))),
    }
}

/// Routes batches into `fanout` bucket files by join-key hash.
pub(crate) struct Partitioner {
    keys: Vec<PhysicalExprRef>,
    state: RandomState,
    schema: SchemaRef,
    task: Arc<TaskContext>,
    what: &'static str,
    coalescers: Vec<BatchCoalescer>,
    writers: Vec<Option<IpcFile>>,
    rows: Vec<usize>,
    hashes: Vec<u64>,
    spill: SpillMetrics,
    /// Route rows with a NULL key to bucket `fanout` (for joins where NULL matches nothing).
    nulls_apart: bool,
}

impl Partitioner {
    /// A partitioner for `fanout` buckets at recursion `level`; each bucket buffers up to
    /// `buffer_rows` rows before writing them. With `nulls_apart`, rows with a NULL in any key
    /// go to an extra bucket, `fanout`: where NULL matches nothing they need no join, and
    /// hashed they would all crowd into one bucket that no split could divide.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        keys: Vec<PhysicalExprRef>,
        schema: SchemaRef,
        level: usize,
        fanout: usize,
        nulls_apart: bool,
        buffer_rows: usize,
        task: Arc<TaskContext>,
        spill: SpillMetrics,
        what: &'static str,
    ) -> Self {
        let buckets = fanout + usize::from(nulls_apart);
        let coalescers = (0..buckets).map(|_| BatchCoalescer::new(schema.clone(), buffer_rows.max(1))).collect();
        Self {
            keys,
            state: seed(level),
            schema,
            task,
            what,
            coalescers,
            writers: (0..buckets).map(|_| None).collect(),
            rows: vec![0; buckets],
            hashes: Vec::new(),
            spill,
            nulls_apart,
        }
    }

    /// Routes every row of `batch` to its bucket.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        if self.keys.is_empty() {
            // No keys: one bucket, the whole side in one file.
            self.rows[0] += n;
            self.coalescers[0].push_batch(batch.clone())?;
            return self.drain(0);
        }
        let arrays =
            self.keys.iter().map(|k| k.evaluate(batch).and_then(|v| v.into_array(n))).collect::<Result<Vec<_>>>()?;
        self.hashes.clear();
        self.hashes.resize(n, 0);
        create_hashes(&arrays, &self.state, &mut self.hashes)?;
        let buckets = self.coalescers.len();
        let fanout = (buckets - usize::from(self.nulls_apart)) as u64;
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); buckets];
        let nulls = if self.nulls_apart {
            arrays
                .iter()
                .fold(None, |acc: Option<NullBuffer>, a| NullBuffer::union(acc.as_ref(), a.logical_nulls().as_ref()))
        } else {
            None
        };
        for (row, h) in self.hashes.iter().enumerate() {
            let b = match &nulls {
                Some(n) if n.is_null(row) => fanout as usize,
                _ => (h % fanout) as usize,
            };
            indices[b].push(row as u32);
        }
        for (b, idx) in indices.into_iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            self.rows[b] += idx.len();
            if idx.len() == n {
                self.coalescers[b].push_batch(batch.clone())?;
            } else {
                self.coalescers[b].push_batch_with_indices(batch.clone(), &UInt32Array::from(idx))?;
            }
            self.drain(b)?;
        }
        Ok(())
    }

    /// Routes a whole stream.
    pub async fn push_stream(&mut self, mut stream: SendableRecordBatchStream) -> Result<()> {
        while let Some(batch) = stream.next().await {
            self.push(&batch?)?;
        }
        Ok(())
    }

    fn drain(&mut self, b: usize) -> Result<()> {
        while let Some(done) = self.coalescers[b].next_completed_batch() {
            if self.writers[b].is_none() {
                self.writers[b] = Some(IpcFile::create(&self.task, self.what, &self.schema)?);
            }
            let w = self.writers[b].as_mut().ok_or_else(|| DataFusionError::Internal("bucket writer".into()))?;
            w.write(&done)?;
        }
        Ok(())
    }

    /// Writes what is buffered and closes the files.
    pub fn finish(mut self) -> Result<Buckets> {
        let mut files = Vec::with_capacity(self.coalescers.len());
        for b in 0..self.coalescers.len() {
            self.coalescers[b].finish_buffered_batch()?;
            self.drain(b)?;
            files.push(match self.writers[b].take() {
                Some(w) => Some(w.finish(&self.spill)?),
                None => None,
            });
        }
        Ok(Buckets { files, rows: self.rows, schema: self.schema })
    }
}
