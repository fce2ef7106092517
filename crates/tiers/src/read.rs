//! Reading intermediates back as DataFusion tables, without copying:
//! - memory tier: a `MemTable` over the same `Arc`'d batches;
//! - IPC: a streaming table whose partitions map the file **one record batch at a time** and decode
//!   it in place (arrow's `FileDecoder` over buffers that point into the mapping). Only the pages
//!   of the columns a query touches are read, and each batch's mapping goes away when the batch is
//!   dropped, so a scan of a file larger than memory keeps about one batch per partition resident
//!   (mapping the whole file instead left every page read in the process's RSS until the table
//!   was dropped: 13GiB of RSS for a 5.8GiB intermediate read by three models);
//! - Parquet: DataFusion's Parquet source, with projection and predicate pushdown.
//!
//! Memory tables hold their batches themselves. IPC and Parquet tables are read by path, so the
//! caller keeps its `Arc<Intermediate>` for as long as it queries the table (one clone per
//! consumer step); the file is deleted when the last clone drops.

use crate::error::{Error, Result};
use crate::store::{Intermediate, Tier};
use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::convert::fb_to_schema;
use arrow::ipc::reader::{read_footer_length, FileDecoder};
use arrow::ipc::{root_as_footer, Block, MetadataVersion};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::MemTable;
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
    Statistics, StatisticsArgs,
};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

/// Registers `intermediate` as table `name` in `ctx`, split into up to `partitions` partitions.
pub async fn register(
    ctx: &SessionContext,
    name: &str,
    intermediate: &Arc<Intermediate>,
    partitions: usize,
) -> Result<()> {
    match intermediate.info().tier {
        Tier::Parquet => {
            let path =
                intermediate.path().ok_or_else(|| Error::Invalid("parquet intermediate without a file".into()))?;
            ctx.register_parquet(name, path.to_string_lossy().as_ref(), ParquetReadOptions::default()).await?;
        }
        _ => {
            let table = table(intermediate, partitions)?;
            ctx.register_table(name, table)?;
        }
    }
    Ok(())
}

/// A table over a memory intermediate (a `MemTable`) or an IPC one (a streaming table, see the
/// module docs); neither copies.
pub fn table(intermediate: &Arc<Intermediate>, partitions: usize) -> Result<Arc<dyn TableProvider>> {
    let batches = match intermediate.batches() {
        Some(b) => b.to_vec(), // clones Arcs, not data
        None => {
            let path = intermediate.path().ok_or_else(|| Error::Invalid("intermediate without data".into()))?;
            let info = intermediate.info();
            return ipc_table(path, partitions, info.rows as usize, info.bytes as usize);
        }
    };
    let n = partitions.clamp(1, batches.len().max(1));
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
    for (i, b) in batches.into_iter().enumerate() {
        parts[i % n].push(b);
    }
    Ok(Arc::new(MemTable::try_new(intermediate.schema().clone(), parts)?))
}

/// Reads every batch of an Arrow IPC file through one memory map of the whole file, zero-copy.
pub fn mmap_ipc(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let footer = read_footer(&file, path)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
    let buffer = map_range(&file, path, 0, len)?;
    let mut decoder = FileDecoder::new(footer.schema.clone(), footer.version);
    for block in &footer.dictionaries {
        let (offset, len) = block_range(block);
        decoder.read_dictionary(block, &buffer.slice_with_length(offset as usize, len))?;
    }
    let mut batches = Vec::new();
    for block in &footer.batches {
        let (offset, len) = block_range(block);
        if let Some(batch) = decoder.read_record_batch(block, &buffer.slice_with_length(offset as usize, len))? {
            batches.push(batch);
        }
    }
    Ok(batches)
}

/// The parsed footer of an Arrow IPC file: schema, version, dictionary and record batch blocks.
struct Footer {
    schema: SchemaRef,
    version: MetadataVersion,
    dictionaries: Vec<Block>,
    batches: Vec<Block>,
}

/// The schema of the Arrow IPC file at `path` (from its footer).
pub fn ipc_schema(path: &Path) -> Result<SchemaRef> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(read_footer(&file, path)?.schema)
}

fn read_footer(file: &std::fs::File, path: &Path) -> Result<Footer> {
    use std::os::unix::fs::FileExt;
    let bad = |what: &str| Error::Invalid(format!("{}: not an Arrow IPC file ({what})", path.display()));
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 10 {
        return Err(bad("too short"));
    }
    let mut trailer = [0u8; 10];
    file.read_exact_at(&mut trailer, len - 10).map_err(|e| Error::io(path, e))?;
    let footer_len = read_footer_length(trailer)?;
    let mut buf = vec![0u8; footer_len];
    file.read_exact_at(&mut buf, len - 10 - footer_len as u64).map_err(|e| Error::io(path, e))?;
    let footer = root_as_footer(&buf).map_err(|_| bad("footer"))?;
    Ok(Footer {
        schema: Arc::new(fb_to_schema(footer.schema().ok_or_else(|| bad("schema"))?)),
        version: footer.version(),
        dictionaries: footer.dictionaries().map(|d| d.iter().copied().collect()).unwrap_or_default(),
        batches: footer.recordBatches().map(|b| b.iter().copied().collect()).unwrap_or_default(),
    })
}

/// Maps `len` bytes of `file` at `offset` (any alignment) as an Arrow buffer that unmaps when
/// its last user drops it.
fn map_range(file: &std::fs::File, path: &Path, offset: u64, len: usize) -> Result<Buffer> {
    const PAGE: u64 = 4096;
    let start = offset / PAGE * PAGE;
    let delta = (offset - start) as usize;
    // SAFETY: the file is ours (mode 0600 in our run directory) and is not modified while mapped;
    // deleting it keeps the mapping valid.
    let mmap = unsafe { memmap2::MmapOptions::new().offset(start).len(len + delta).map(file) }
        .map_err(|e| Error::io(path, e))?;
    let ptr = NonNull::new(mmap.as_ptr().wrapping_add(delta) as *mut u8)
        .ok_or_else(|| Error::Invalid(format!("{}: empty mapping", path.display())))?;
    // SAFETY: `ptr` is valid for `len` bytes for as long as the `Mmap` lives, which the buffer owns.
    Ok(unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(mmap)) })
}

fn block_range(block: &Block) -> (u64, usize) {
    (block.offset() as u64, block.bodyLength() as usize + block.metaDataLength() as usize)
}

/// A streaming table over an IPC file: partition `i` reads record batches `i, i + n, i + 2n, ...`.
/// A table over the Arrow IPC file at `path` holding `rows` rows in `bytes` bytes (the join
/// planner's statistics), read memory-mapped and split into up to `partitions` partitions
/// (an IPC hand-off file another process reads, such as an isolated model's child).
pub fn ipc_table(path: &Path, partitions: usize, rows: usize, bytes: usize) -> Result<Arc<dyn TableProvider>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let footer = Arc::new(read_footer(&file, path)?);
    let n = partitions.clamp(1, footer.batches.len().max(1));
    let streams: Vec<Arc<dyn PartitionStream>> = (0..n)
        .map(|i| Arc::new(IpcPartition { path: path.to_path_buf(), footer: footer.clone(), first: i, step: n }) as _)
        .collect();
    let inner = StreamingTable::try_new(footer.schema.clone(), streams)?;
    Ok(Arc::new(IpcTable { inner, rows, bytes }))
}

/// A [`StreamingTable`] that also knows its row count and size. Without them DataFusion's join
/// planner cannot tell the small side of a join from the large one and may build its hash table
/// from a whole large intermediate.
#[derive(Debug)]
struct IpcTable {
    inner: StreamingTable,
    rows: usize,
    bytes: usize,
}

#[async_trait::async_trait]
impl TableProvider for IpcTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let inner = self.inner.scan(state, projection, filters, limit).await?;
        let all = self.inner.schema().fields().len().max(1);
        let columns = projection.map_or(all, |p| p.len());
        let mut stats = Statistics::new_unknown(&inner.schema());
        stats.num_rows = Precision::Exact(self.rows);
        stats.total_byte_size = Precision::Inexact(self.bytes / all * columns);
        Ok(Arc::new(CountedScan { inner, stats: Arc::new(stats) }))
    }
}

/// A scan that reports known statistics for its input, and otherwise is that input.
#[derive(Debug)]
struct CountedScan {
    inner: Arc<dyn ExecutionPlan>,
    stats: Arc<Statistics>,
}

impl DisplayAs for CountedScan {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SpillwayIpcScan: rows={}, ", self.stats.num_rows)?;
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for CountedScan {
    fn name(&self) -> &str {
        "SpillwayIpcScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(datafusion::error::DataFusionError::Internal("SpillwayIpcScan has no children".into()))
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(&self, partition: usize, ctx: Arc<TaskContext>) -> datafusion::error::Result<SendableRecordBatchStream> {
        self.inner.execute(partition, ctx)
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> datafusion::error::Result<Arc<Statistics>> {
        match args.partition() {
            None => Ok(self.stats.clone()),
            Some(_) => {
                let n = self.properties().partitioning.partition_count().max(1);
                let mut part = Statistics::new_unknown(&self.inner.schema());
                part.num_rows = self.stats.num_rows.map(|r| r / n).to_inexact();
                part.total_byte_size = self.stats.total_byte_size.map(|b| b / n).to_inexact();
                Ok(Arc::new(part))
            }
        }
    }
}

struct IpcPartition {
    path: PathBuf,
    footer: Arc<Footer>,
    first: usize,
    step: usize,
}

impl std::fmt::Debug for IpcPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpcPartition({}, batches {} step {})", self.path.display(), self.first, self.step)
    }
}

impl PartitionStream for IpcPartition {
    fn schema(&self) -> &SchemaRef {
        &self.footer.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (path, footer, first, step) = (self.path.clone(), self.footer.clone(), self.first, self.step);
        let open = move || -> Result<(std::fs::File, FileDecoder)> {
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let mut decoder = FileDecoder::new(footer.schema.clone(), footer.version);
            for block in &footer.dictionaries {
                let (offset, len) = block_range(block);
                decoder.read_dictionary(block, &map_range(&file, &path, offset, len)?)?;
            }
            Ok((file, decoder))
        };
        let schema = self.footer.schema.clone();
        let (path, footer) = (self.path.clone(), self.footer.clone());
        let batches = futures::stream::once(async move { open() }).flat_map(move |opened| {
            let (path, footer) = (path.clone(), footer.clone());
            let items: Box<dyn Iterator<Item = datafusion::error::Result<RecordBatch>> + Send> = match opened {
                Err(e) => Box::new(std::iter::once(Err(e.into()))),
                Ok((file, decoder)) => Box::new((first..footer.batches.len()).step_by(step).filter_map(move |i| {
                    let block = &footer.batches[i];
                    let (offset, len) = block_range(block);
                    let decoded = map_range(&file, &path, offset, len)
                        .and_then(|buf| Ok(decoder.read_record_batch(block, &buf)?));
                    decoded.map_err(Into::into).transpose()
                })),
            };
            futures::stream::iter(items)
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }
}
